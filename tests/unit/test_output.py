"""Saved LoRA files: metadata like kohya's, hashes like kohya's and A1111's, safe names and writes."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import safetensors.torch
from safetensors.torch import load_file

from lora_trainer.errors import UserError
from lora_trainer.output import card, hashes, metadata, save

from .kohya_fixtures import kohya_fixture

A1111_HASHES_PY = Path(os.path.expanduser(
    "~/.cache/sd-webui-harness/stable-diffusion-webui/modules/hashes.py"))
RUNS = ["sd15_lora_te_unet", "sd15_locon", "sdxl_lora_te_unet", "sdxl_locon"]
# placeholders in the .metadata.json fixtures, or values that are ours by design
NOT_COMPARABLE = {"ss_session_id", "ss_training_started_at", "ss_training_finished_at", "modelspec.date",
                  "sshs_model_hash", "sshs_legacy_hash", "ss_sd_scripts_commit_hash",
                  "modelspec.implementation_version"}


def kohya_json(run):
    return json.loads(kohya_fixture(f"{run}.metadata.json").read_text(encoding="utf-8"))


def file_metadata(path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__", {})


def value_kind(v: str) -> str:
    """How a reader would interpret a metadata string."""
    if v in ("True", "False"):
        return "bool"
    if v == "None":
        return "none"
    if v.startswith("(") and v.endswith(")"):
        return "tuple"
    try:
        parsed = json.loads(v)
    except ValueError:
        return "str"
    if parsed is None:
        return "null"
    if isinstance(parsed, bool):
        return "jsonbool"
    if isinstance(parsed, (int, float)):
        return "number"
    return type(parsed).__name__  # dict / list / str


def kohya_like_cfg(run, **over):
    """Our config for the same settings as the kohya fixture run (see its .args.txt)."""
    cfg = dict(output_name=run, learning_rate=1e-4, unet_lr=None, text_encoder_lr=None, network_dim=2,
               network_alpha=1, network_type="locon" if "locon" in run else "lora", conv_dim=2, conv_alpha=1,
               network_train_unet_only=False, optimizer_type="AdamW", optimizer_args=[],
               lr_scheduler="constant", lr_warmup_steps=0, max_train_epochs=None, max_train_steps=1,
               train_batch_size=1, resolution=256, enable_bucket=False, min_bucket_reso=256,
               max_bucket_reso=1024, bucket_reso_steps=64, bucket_no_upscale=False, flip_aug=False,
               shuffle_caption=False, keep_tokens=0, caption_extension=".txt", seed=1,
               save_every_n_epochs=None, save_precision="fp16", min_snr_gamma=None, noise_offset=None,
               mixed_precision="no", max_grad_norm=1.0, gradient_accumulation_steps=1,
               training_comment=None, trigger_words="")
    cfg.update(over)
    return SimpleNamespace(**cfg)


def kohya_like_run(run, **over):
    ref = kohya_json(run)
    info = dict(session_id=2578156006, training_started_at=1795347466.638739,
                training_finished_at=1795347522.385791, epoch=1, steps=1, max_train_steps=1,
                num_train_images=80, num_batches_per_epoch=80, num_epochs=1,
                tag_frequency=json.loads(ref["ss_tag_frequency"]),
                dataset_dirs={"10_sks shape": {"n_repeats": 10, "img_count": 8}}, bucket_info=None,
                family="sdxl" if run.startswith("sdxl") else "sd1", v_parameterization=False,
                sd_model_name=ref["ss_sd_model_name"], sd_model_hash="IsADirectory",
                new_sd_model_hash="IsADirectory", clip_skip=None, optimizer="", mixed_precision="no",
                resolution=(256, 256), gradient_checkpointing=False, cache_latents=True)
    info.update(over)
    return metadata.RunInfo(**info)


# ---------------------------------------------------------------------------------------
# metadata


@pytest.mark.parametrize("run", RUNS)
def test_metadata_has_exactly_kohyas_keys_and_values(run):
    ref = kohya_json(run)
    ours = metadata.build_metadata(kohya_like_cfg(run), kohya_like_run(run))
    assert all(isinstance(v, str) for v in ours.values())
    assert set(ours) | {"sshs_model_hash", "sshs_legacy_hash"} == set(ref)
    for key in set(ref) - NOT_COMPARABLE:
        if value_kind(ref[key]) in ("dict", "list"):
            assert json.loads(ours[key]) == json.loads(ref[key]), key
        else:
            assert ours[key] == ref[key], key
    assert ours["ss_sd_scripts_commit_hash"].startswith("lora_trainer/")
    assert ours["modelspec.implementation_version"] == ours["ss_sd_scripts_commit_hash"]
    assert ours["ss_session_id"] == "2578156006"
    assert ours["ss_training_started_at"] == "1795347466.638739"
    assert ours["ss_training_finished_at"] == "1795347522.385791"


def test_metadata_value_types_match_kohyas_with_other_settings():
    real = kohya_fixture("sd15_locon.safetensors")  # real ids and timestamps, not placeholders
    ref = file_metadata(real)
    cfg = kohya_like_cfg("sd15_locon", network_dim=16, network_alpha=8, unet_lr=2e-4, text_encoder_lr=5e-5,
                         enable_bucket=True, min_bucket_reso=320, max_bucket_reso=768, seed=42,
                         noise_offset=0.05, min_snr_gamma=5.0, training_comment="hi", flip_aug=True,
                         optimizer_args=["weight_decay=0.1"], trigger_words="sks shape")
    run = kohya_like_run("sd15_locon", clip_skip=2, resolution=(512, 768), mixed_precision="fp16",
                         bucket_info={"buckets": {0: {"resolution": [512, 768], "count": 8}},
                                      "mean_img_ar_error": 0.0})
    ours = metadata.build_metadata(cfg, run)
    for key, kohya_value in ref.items():
        if key in ("sshs_model_hash", "sshs_legacy_hash"):
            continue
        k_kind = value_kind(kohya_value)
        if k_kind in ("none", "null"):
            continue  # unset in kohya's run, set in ours
        assert value_kind(ours[key]) == k_kind, (key, kohya_value, ours[key])
    assert ours["ss_network_alpha"] == "8.0" and ours["ss_network_dim"] == "16"
    assert ours["ss_resolution"] == "(512, 768)" and ours["modelspec.resolution"] == "512x768"
    assert ours["ss_min_bucket_reso"] == "320" and ours["ss_max_bucket_reso"] == "768"
    assert value_kind(ours["ss_bucket_info"]) == "dict"
    assert json.loads(ours["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1", "dropout": None}
    assert ours["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.1)"
    assert ours["modelspec.encoder_layer"] == "2"
    assert ours["modelspec.trigger_phrase"] == "sks shape"
    assert ours["ss_clip_skip"] == "2"


def test_metadata_family_specific_values():
    sd2v = metadata.build_metadata(kohya_like_cfg("x"), kohya_like_run("sd15_lora_te_unet", family="sd2",
                                                                        v_parameterization=True))
    assert sd2v["ss_v2"] == "True" and sd2v["ss_base_model_version"] == "sd_v2_v"
    assert sd2v["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert sd2v["modelspec.prediction_type"] == "v"
    with_vae = metadata.build_metadata(kohya_like_cfg("x"), kohya_like_run(
        "sd15_lora_te_unet", vae_name="vae.pt", vae_hash="abcd1234", new_vae_hash="ff" * 32))
    assert with_vae["ss_vae_name"] == "vae.pt" and with_vae["ss_new_vae_hash"] == "ff" * 32
    unset_alpha = metadata.build_metadata(kohya_like_cfg("x", network_dim=8, network_alpha=None),
                                          kohya_like_run("sd15_lora_te_unet"))
    assert unset_alpha["ss_network_alpha"] == "8.0"  # kohya uses alpha = dim when unset
    stem = metadata.build_metadata(kohya_like_cfg("x"), kohya_like_run("sd15_lora_te_unet"),
                                   file_stem="x-000002")
    assert stem["ss_output_name"] == "x-000002" and stem["modelspec.title"] == "x"


def test_optimizer_description_from_object():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    assert metadata.optimizer_description(opt) == "torch.optim.adamw.AdamW"
    assert metadata.optimizer_description(opt, ["betas=(0.9, 0.99)", "weight_decay=0.01"]) == \
        "torch.optim.adamw.AdamW(betas=(0.9, 0.99),weight_decay=0.01)"


# ---------------------------------------------------------------------------------------
# hashes


def a1111_addnet_hash(path) -> str:
    """A1111's hashes.addnet_hash_safetensors, loaded from the assembled WebUI when present."""
    if A1111_HASHES_PY.exists():
        tree = ast.parse(A1111_HASHES_PY.read_text(encoding="utf-8"))
        fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "addnet_hash_safetensors"]
        namespace = {"hashlib": hashlib}
        exec(compile(ast.Module(body=fn, type_ignores=[]), str(A1111_HASHES_PY), "exec"), namespace)
        with open(path, "rb") as f:
            return namespace["addnet_hash_safetensors"](f)
    data = Path(path).read_bytes()  # same algorithm, written out
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


@pytest.mark.parametrize("run", RUNS)
def test_hashes_reproduce_kohya_fixture_files(run):
    path = kohya_fixture(f"{run}.safetensors")
    stored = file_metadata(path)
    assert hashes.addnet_hash_file(path) == stored["sshs_model_hash"]
    model_hash, legacy_hash = hashes.model_hashes(load_file(path), hashes.ss_only(stored))
    assert (model_hash, legacy_hash) == (stored["sshs_model_hash"], stored["sshs_legacy_hash"])


def small_lora():
    torch.manual_seed(0)
    t = {}
    for i in range(3):
        name = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q{i}"
        t[f"{name}.lora_down.weight"] = torch.randn(8, 320)
        t[f"{name}.lora_up.weight"] = torch.randn(320, 8)
        t[f"{name}.alpha"] = torch.tensor(4.0)
    t["lora_unet_big.lora_down.weight"] = torch.randn(600, 1024)  # > 1 MiB so the legacy hash covers data
    return t


def test_saved_file_hashes_match_addnet_and_a1111(tmp_path):
    md = metadata.build_metadata(kohya_like_cfg("mine"), kohya_like_run("sd15_lora_te_unet"))
    out = tmp_path / "mine.safetensors"
    written = save.save_lora_file(out, small_lora(), md, "fp16")
    on_disk = file_metadata(out)
    assert on_disk == written
    assert written["sshs_model_hash"] == hashes.addnet_hash_file(out) == a1111_addnet_hash(out)
    # kohya's precalculate_safetensors_hashes, written out: safetensors.torch.save of the saved tensors with
    # only the ss_* metadata; model hash = sha256 after the header, legacy = sha256 of 0x100000..0x10FFFF, 8 hex
    serialised = safetensors.torch.save(load_file(out), {k: v for k, v in on_disk.items() if k.startswith("ss_")})
    header = 8 + int.from_bytes(serialised[:8], "little")
    assert written["sshs_model_hash"] == hashlib.sha256(serialised[header:]).hexdigest()
    assert written["sshs_legacy_hash"] == hashlib.sha256(serialised[0x100000:0x110000]).hexdigest()[:8]
    assert len(serialised) > 0x110000 and written["sshs_legacy_hash"] != hashlib.sha256(b"").hexdigest()[:8]
    assert {k: v for k, v in written.items() if not k.startswith("sshs_")} == md


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                              ("float", torch.float32)])
def test_save_casts_every_tensor_including_alpha(tmp_path, precision, dtype):
    out = tmp_path / "p.safetensors"
    save.save_lora_file(out, small_lora(), {"ss_network_dim": "8"}, precision)
    loaded = load_file(out)
    assert all(t.dtype == dtype for t in loaded.values())
    alpha = loaded["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q0.alpha"]
    assert alpha.shape == () and float(alpha) == 4.0


def test_atomic_save_leaves_no_tmp(tmp_path):
    out = tmp_path / "a.safetensors"
    save.save_lora_file(out, small_lora(), {}, "fp16")
    save.save_lora_file(out, small_lora(), {}, "fp16")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_failed_save_keeps_old_file_and_removes_tmp(tmp_path, monkeypatch):
    out = tmp_path / "a.safetensors"
    save.save_lora_file(out, small_lora(), {"ss_output_name": "old"}, "fp16")

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(save.os, "replace", broken_replace)
    with pytest.raises(OSError):
        save.save_lora_file(out, small_lora(), {"ss_output_name": "new"}, "fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]
    assert file_metadata(out)["ss_output_name"] == "old"


def test_save_rejects_non_string_metadata(tmp_path):
    with pytest.raises(TypeError):
        save.save_lora_file(tmp_path / "x.safetensors", small_lora(), {"ss_network_dim": 8}, "fp16")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# names and paths


@pytest.mark.parametrize("bad", ["../x", "a/b", "C:\\x", "", "con\x00", "C:x", "x\\y", "name.", "name ",
                                 "a..b", "what?", "CON", "nul.txt", "x" * 201, "x.safetensors", " x"])
def test_output_name_validation_rejects(bad):
    with pytest.raises(UserError) as e:
        save.resolve_output_name(bad)
    assert e.value.key == "output_name" and e.value.fix


@pytest.mark.parametrize("good", ["my_lora", "sks-shape v2", "x" * 200, "ünïcödé", "a.b"])
def test_output_name_validation_accepts(good):
    assert save.resolve_output_name(good) == good


def test_output_paths_use_kohya_names(tmp_path):
    assert save.output_paths(tmp_path, "mine") == tmp_path / "mine.safetensors"
    assert save.output_paths(tmp_path, "mine", epoch=4) == tmp_path / "mine-000004.safetensors"
    with pytest.raises(UserError):
        save.output_paths(tmp_path, "../mine")


def test_output_paths_refuse_symlink_escape(tmp_path):
    lora_dir, elsewhere = tmp_path / "Lora", tmp_path / "elsewhere"
    lora_dir.mkdir()
    elsewhere.mkdir()
    try:
        (lora_dir / "evil.safetensors").symlink_to(elsewhere / "evil.safetensors")
    except (OSError, NotImplementedError):
        pytest.skip("cannot create symlinks here")
    with pytest.raises(UserError) as e:
        save.output_paths(lora_dir, "evil")
    assert e.value.key == "output_name"


def test_output_paths_allow_symlinked_lora_dir(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "Lora"
    try:
        link.symlink_to(real, target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("cannot create symlinks here")
    assert save.output_paths(link, "ok") == link / "ok.safetensors"


def test_check_overwrite(tmp_path):
    path = tmp_path / "mine.safetensors"
    save.check_overwrite(path, overwrite=False)  # nothing there yet
    path.write_bytes(b"x")
    with pytest.raises(UserError) as e:
        save.check_overwrite(path, overwrite=False)
    assert "mine.safetensors" in e.value.text()
    assert e.value.fix == "choose another output_name or set overwrite"
    save.check_overwrite(path, overwrite=True)
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(UserError):
        save.check_overwrite(tmp_path / "dir.safetensors", overwrite=True)


# ---------------------------------------------------------------------------------------
# A1111 sidecar


def test_write_card(tmp_path):
    lora = tmp_path / "mine-000004.safetensors"
    path = card.write_card(lora, "sks shape", 0.8, "SD1", "trained with lora_trainer", description="a shape")
    assert path == tmp_path / "mine-000004.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == {"description": "a shape", "sd version": "SD1", "activation text": "sks shape",
                    "preferred weight": 0.8, "negative text": "", "notes": "trained with lora_trainer"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine-000004.json"]
    # rewriting keeps what the user added elsewhere in the card
    data["negative text"] = "blurry"
    data["extra"] = 1
    path.write_text(json.dumps(data), encoding="utf-8")
    card.write_card(lora, ["sks", "shape"], 1, "SDXL", "")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["activation text"] == "sks, shape" and data["sd version"] == "SDXL"
    assert data["negative text"] == "blurry" and data["extra"] == 1
    with pytest.raises(ValueError):
        card.write_card(lora, "", 1, "SD3", "")
