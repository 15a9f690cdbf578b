"""End-to-end: train through our API in the real WebUI (tiny SD1.5), then use the file there."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from .datasets import TINY, red_square_set


def test_scan_reports_the_dataset(webui, dataset):
    summary = webui.post("/lora-trainer/v1/scan", {"train_data_dir": str(dataset), **TINY, "max_train_epochs": 3})
    assert summary["ok"] and summary["num_images"] == 4 and summary["num_train_images"] == 40
    assert summary["steps_per_epoch"] == 40 and summary["total_steps"] == 120
    assert summary["folders"][0]["repeats"] == 10 and summary["folders"][0]["captions_found"] == 4


def test_bad_config_is_422_naming_the_key(webui, dataset):
    status, body = webui.request("POST", "/lora-trainer/v1/jobs", {"train_data_dir": str(dataset), "network_dim": "big"})
    assert status == 422 and body["detail"]["key"] == "network_dim" and body["detail"]["fix"]
    status, body = webui.request("POST", "/lora-trainer/v1/jobs", {"train_data_dir": str(dataset), "output_name": "../../evil"})
    assert status == 422 and body["detail"]["key"] == "output_name"


def test_file_lands_in_models_lora_and_is_listed_without_restart(webui, dataset):
    job = webui.train({"train_data_dir": str(dataset), **TINY, "max_train_epochs": 2, "save_every_n_epochs": 1,
                       "output_name": "landing", "trigger_words": "sks square"})
    assert job["state"] == "finished", job
    assert job["files"] == ["landing-000001.safetensors", "landing.safetensors"]
    assert job["step"] == job["total_steps"] == 80
    path = webui.lora_dir / "landing.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["ss_output_name"] == "landing" and meta["ss_network_module"] == "networks.lora"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_steps"] == "80" and meta["ss_epoch"] == "2"
    assert meta["modelspec.trigger_phrase"] == "sks square"
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    card = json.loads((webui.lora_dir / "landing.json").read_text())
    assert card["activation text"] == "sks square" and card["sd version"] == "SD1"
    names = {entry["name"] for entry in webui.get("/sdapi/v1/loras")}
    assert {"landing", "landing-000001"} <= names
    # the same name again is refused, nothing is overwritten
    again = webui.train({"train_data_dir": str(dataset), **TINY, "max_train_epochs": 1, "output_name": "landing"})
    assert again["state"] == "failed" and "landing.safetensors" in again["error"]


@pytest.mark.parametrize("network", [{"network_type": "lora"}, {"network_type": "locon", "conv_dim": 4, "conv_alpha": 2}])
def test_parity_with_the_webuis_own_lora_application(webui, dataset, network):
    name = f"parity_{network['network_type']}"
    job = webui.train({"train_data_dir": str(dataset), **TINY, "max_train_steps": 30, "learning_rate": 1e-2,
                       "save_precision": "float", "output_name": name, **network})
    assert job["state"] == "finished", job
    report = webui.post("/lora-trainer/v1/verify", {"file": f"{name}.safetensors"})
    assert report["unmatched_keys"] == [] and report["modules_unknown_to_trainer"] == []
    assert report["lora_effect"] > 1e-3            # the network does something ...
    assert report["lora_effect_cond"] > 1e-3       # ... the text encoder's part too ...
    assert report["max_abs_diff"] <= 1e-5          # ... and the WebUI applies exactly that
    assert report["max_abs_diff_cond"] <= 1e-5
    # tiny-sd15, LoRA: 6 transformer blocks x (attn1/attn2 q k v out, ff x2, proj_in/out) + 2 CLIP layers x 6;
    # LoCon adds the res/down/up blocks' convs, most of them 3x3
    if network["network_type"] == "locon":
        assert report["modules"] == 129 and report["conv3x3_modules"] >= 20, report
    else:
        assert report["modules"] == 6 * 12 + 2 * 6 and report["conv3x3_modules"] == 0, report


def _weights(webui) -> str:
    return webui.get("/lora-trainer/v1/model?weights_hash=true")["state_dict_sha256"]


@pytest.fixture(scope="module")
def lora_to_merge(webui, dataset):
    """This module's own LoRA, for generations that leave it merged into the weights."""
    job = webui.train({"train_data_dir": str(dataset), **TINY, "max_train_steps": 5, "learning_rate": 1e-2,
                       "output_name": "handback_merge", "overwrite": True})
    assert job["state"] == "finished", job
    return "handback_merge"


def _merged_state(webui, lora):
    """Generate with and without the LoRA, then leave it merged; the weights' hash before any
    further txt2img is what a run must hand back (a txt2img would itself restore the merge)."""
    plain = webui.txt2img("sks square", seed=99, steps=4)
    base = _weights(webui)
    with_lora = webui.txt2img(f"sks square <lora:{lora}:1>", seed=99, steps=4)
    assert _weights(webui) != base                  # the Lora extension really merged into the weights
    return base, plain, with_lora


def _assert_handed_back(webui, lora, base, plain, with_lora):
    assert _weights(webui) == base                  # before any txt2img: our restore, not the WebUI's
    assert webui.txt2img("sks square", seed=99, steps=4) == plain
    assert webui.txt2img(f"sks square <lora:{lora}:1>", seed=99, steps=4) == with_lora


def _wait_for_step(webui, job_id, n, timeout=300):
    deadline = time.time() + timeout
    while webui.get(f"/lora-trainer/v1/jobs/{job_id}")["step"] < n:
        assert time.time() < deadline, f"job {job_id} did not reach step {n} in {timeout}s"
        time.sleep(0.05)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_model_is_handed_back_exactly_after_finished_stopped_and_failed_runs(webui, dataset, lora_to_merge, precision):
    base = {"train_data_dir": str(dataset), **TINY, "overwrite": True, "network_type": "locon", "conv_dim": 4,
            "mixed_precision": precision}
    state = _merged_state(webui, lora_to_merge)
    finished = webui.train({**base, "output_name": "handback_ok", "max_train_steps": 20})
    assert finished["state"] == "finished" and finished["mixed_precision"] == precision, finished
    _assert_handed_back(webui, lora_to_merge, *state)

    state = _merged_state(webui, lora_to_merge)
    job = webui.post("/lora-trainer/v1/jobs", {**base, "output_name": "handback_stop", "max_train_steps": 100000})
    webui.wait_job(job["id"], until=("running",), timeout=120)
    _wait_for_step(webui, job["id"], 3)
    webui.post(f"/lora-trainer/v1/jobs/{job['id']}/stop")
    stopped = webui.wait_job(job["id"])
    assert stopped["state"] == "stopped" and stopped["files"] == ["handback_stop.safetensors"]
    assert 3 <= stopped["step"] < 100000
    _assert_handed_back(webui, lora_to_merge, *state)

    state = _merged_state(webui, lora_to_merge)
    failed = webui.train({**base, "output_name": "handback_fail", "max_train_steps": 50}, debug={"fail_at_step": 5})
    assert failed["state"] == "failed" and "injected failure" in failed["error"]
    assert not (webui.lora_dir / "handback_fail.safetensors").exists()
    _assert_handed_back(webui, lora_to_merge, *state)


def test_the_handback_check_catches_a_run_that_skips_the_restore(webui, dataset, lora_to_merge):
    """The same check on a run told (debug hook) not to restore the merged LoRA must fail."""
    base_hash, plain, _ = _merged_state(webui, lora_to_merge)
    job = webui.train({"train_data_dir": str(dataset), **TINY, "overwrite": True, "max_train_steps": 3,
                       "output_name": "handback_unrestored"}, debug={"keep_merged_loras": True})
    assert job["state"] == "finished", job
    assert _weights(webui) != base_hash             # the merge is still in the weights: the check sees it
    assert webui.txt2img("sks square", seed=99, steps=4) == plain     # (the WebUI's own restore, for the next test)
    assert _weights(webui) == base_hash


def test_txt2img_during_training_waits_and_is_unchanged(webui, dataset):
    expected = webui.txt2img("a photo of a cat", seed=4321, steps=4)
    job = webui.post("/lora-trainer/v1/jobs", {"train_data_dir": str(dataset), **TINY, "overwrite": True,
                                                "output_name": "concurrent", "max_train_steps": 150})
    webui.wait_job(job["id"], until=("running",), timeout=120)
    result = {}

    def generate():
        result["png"] = webui.txt2img("a photo of a cat", seed=4321, steps=4)
        result["at"] = time.time()
    thread = threading.Thread(target=generate)
    thread.start()
    thread.join(600)
    done = webui.wait_job(job["id"])
    assert done["state"] == "finished"
    assert result["at"] >= done["finished_at"]     # it waited for the training
    assert result["png"] == expected               # and training left no trace on it


def test_second_job_is_queued_while_one_runs(webui, dataset):
    cfg = {"train_data_dir": str(dataset), **TINY, "overwrite": True, "max_train_steps": 60}
    first = webui.post("/lora-trainer/v1/jobs", {**cfg, "output_name": "queue_a"})
    second = webui.post("/lora-trainer/v1/jobs", {**cfg, "output_name": "queue_b"})
    webui.wait_job(first["id"], until=("running",), timeout=120)
    assert webui.get(f"/lora-trainer/v1/jobs/{second['id']}")["state"] == "queued"
    a, b = webui.wait_job(first["id"]), webui.wait_job(second["id"])
    assert a["state"] == b["state"] == "finished" and b["started_at"] >= a["finished_at"]


def test_gradient_checkpointing_still_trains_the_lora(webui, dataset):
    """A1111's reentrant checkpointing would give LoRA zero gradients; ours must not."""
    job = webui.train({"train_data_dir": str(dataset), **TINY, "max_train_steps": 20, "learning_rate": 1e-2,
                       "gradient_checkpointing": True, "network_type": "locon", "conv_dim": 4,
                       "network_train_unet_only": True, "output_name": "checkpointed", "save_precision": "float"})
    assert job["state"] == "finished", job
    with safe_open(str(webui.lora_dir / "checkpointed.safetensors"), "pt") as f:
        ups = [f.get_tensor(k) for k in f.keys() if k.endswith("lora_up.weight")]
    assert ups and all(float(u.abs().max()) > 0 for u in ups)   # every adapter received gradients
    assert job["eval_loss_end"] < job["eval_loss_start"]


@pytest.fixture(scope="module")
def denoiser(webui, tmp_path_factory):
    """A tiny SD1.5 that can already denoise (see make_denoiser.py), loaded in the WebUI for the
    learning test; the harness's tiny-sd15 is put back afterwards."""
    import os
    import subprocess
    import sys
    from .webui import harness_dest
    out = tmp_path_factory.mktemp("denoiser") / "tiny-sd15-denoiser.safetensors"
    models = webui.data_dir / "models" / "Stable-diffusion"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    subprocess.run([str(harness_dest() / "venv" / "bin" / "python"), str(Path(__file__).with_name("make_denoiser.py")),
                    "--src", str(models / "tiny-sd15.safetensors"), "--out", str(out), "--steps", "1000"],
                   check=True, env=env, stdout=sys.stderr)
    for ext in (".safetensors", ".yaml"):
        (models / f"tiny-sd15-denoiser{ext}").write_bytes(out.with_suffix(ext).read_bytes())
    webui.post("/sdapi/v1/refresh-checkpoints")
    webui.post("/sdapi/v1/options", {"sd_model_checkpoint": "tiny-sd15-denoiser.safetensors"})
    try:
        assert webui.get("/lora-trainer/v1/model")["checkpoint"].startswith("tiny-sd15-denoiser")
        yield "tiny-sd15-denoiser"
    finally:
        webui.post("/sdapi/v1/options", {"sd_model_checkpoint": "tiny-sd15.safetensors"})


def test_learning_a_small_concept(webui, denoiser, tmp_path, capsys):
    """Acceptance (c): the fixed-noise training loss falls by at least half, and same-seed txt2img
    with the LoRA is at least 30 % closer (MSE) to the VAE round-trip of the training image than
    without it (summed over four seeds, so one lucky seed cannot pass it)."""
    import base64
    from .datasets import png_b64
    from .webui import pixels_of
    ds = red_square_set(tmp_path, n=1)
    job = webui.train({"train_data_dir": str(ds), **TINY, "output_name": "concept", "overwrite": True,
                       "network_type": "locon", "network_dim": 16, "network_alpha": 16, "conv_dim": 16,
                       "conv_alpha": 16, "learning_rate": 1e-2, "lr_scheduler": "constant", "train_batch_size": 4,
                       "min_snr_gamma": 5, "max_train_steps": 400})
    assert job["state"] == "finished", job
    assert job["eval_loss_end"] <= 0.5 * job["eval_loss_start"], job
    roundtrip = webui.post("/lora-trainer/v1/vae-roundtrip", {"image": png_b64(ds / "10_sks square" / "square_0.png")})
    assert 0.7 < roundtrip["latent_std"] < 1.4, roundtrip      # the denoiser's calibrated scale factor
    target = pixels_of(base64.b64decode(roundtrip["image"]))
    with_lora, without = [], []
    for seed in (7, 8, 9, 10):
        plain = pixels_of(webui.txt2img("sks square", seed=seed, steps=20))
        lora = pixels_of(webui.txt2img("sks square <lora:concept:1>", seed=seed, steps=20))
        without.append(float(((plain - target) ** 2).mean()))
        with_lora.append(float(((lora - target) ** 2).mean()))
    ratio = sum(with_lora) / sum(without)
    with capsys.disabled():
        print(f"\n[learning] fixed-noise loss {job['eval_loss_start']:.4f} -> {job['eval_loss_end']:.4f}; "
              f"txt2img MSE to the VAE round-trip with/without the LoRA: {ratio:.3f} "
              f"(per seed {[round(a / b, 3) for a, b in zip(with_lora, without)]})")
    assert ratio <= 0.7, (with_lora, without)
