"""Target selection and kohya naming against kohya's real SD1.5 files.

The module list comes from tests/fixtures/sd15_full_modules.json (a full-size A1111 ldm UNet
and CLIP-L, see capture_sd15_modules.py); the expected names and shapes are those of the
kohya sd-scripts fixtures in ../shared/fixtures/kohya (a missing fixture fails, see kohya_fixtures.py).
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest

from lora_trainer.networks import naming
from lora_trainer.networks.targets import (
    ModuleInfo, select_text_encoder_targets, select_unet_targets,
)

from .kohya_fixtures import kohya_fixture

ROOT = Path(__file__).resolve().parents[2]
MODULES_JSON = ROOT / "tests" / "fixtures" / "sd15_full_modules.json"
A1111_NETWORKS_PY = Path(os.path.expanduser(
    "~/.cache/sd-webui-harness/stable-diffusion-webui/extensions-builtin/Lora/networks.py"))
RANK = 2  # the fixtures were trained with network_dim 2 / conv_dim 2


@pytest.fixture(scope="module")
def sd15():
    data = json.loads(MODULES_JSON.read_text(encoding="utf-8"))
    unet = [ModuleInfo.from_json(m) for m in data["unet"]["modules"]]
    te = [ModuleInfo.from_json(m) for m in data["text_encoder"]["modules"]]
    return unet, te, data["unet"]["num_res_blocks"]


def kohya_modules(run: str) -> dict[str, dict[str, list[int]]]:
    """{module name: {"lora_down.weight": shape, "lora_up.weight": shape, "alpha": []}}."""
    path = kohya_fixture(f"{run}.keys.tsv")
    modules: dict[str, dict[str, list[int]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, shape, _dtype = line.split("\t")
        module, _, tensor = key.partition(".")
        modules.setdefault(module, {})[tensor] = json.loads(shape)
    return modules


def all_targets(sd15, conv):
    unet, te, nrb = sd15
    return select_unet_targets(unet, "sd1", conv, nrb), select_text_encoder_targets(te, "lora_te")


@pytest.mark.parametrize("run, conv, n_unet", [("sd15_lora_te_unet", False, 192),
                                               ("sd15_locon", True, 278)])
def test_selection_matches_kohya_exactly(sd15, run, conv, n_unet):
    unet_t, te_t = all_targets(sd15, conv)
    expected = kohya_modules(run)
    assert len(unet_t) == n_unet and len(te_t) == 72
    ours = [t.kohya_name for t in unet_t + te_t]
    assert len(set(ours)) == len(ours)
    assert set(ours) == set(expected)


@pytest.mark.parametrize("run, conv", [("sd15_lora_te_unet", False), ("sd15_locon", True)])
def test_lora_shapes_match_kohya(sd15, run, conv):
    expected = kohya_modules(run)
    for t in sum(all_targets(sd15, conv), []):
        down, up = t.lora_shapes(RANK)
        assert [list(down), list(up)] == [expected[t.kohya_name]["lora_down.weight"],
                                          expected[t.kohya_name]["lora_up.weight"]], t
        assert expected[t.kohya_name]["alpha"] == []


def test_conv_dim_only_for_kxk_convs(sd15):
    unet_t, _ = all_targets(sd15, conv=True)
    by_dim = {t.kohya_name: t.uses_conv_dim for t in unet_t}
    assert sum(by_dim.values()) == 50  # 44 resnet 3×3 + 3 downsamplers + 3 upsamplers
    assert by_dim["lora_unet_down_blocks_1_resnets_0_conv1"]
    assert not by_dim["lora_unet_down_blocks_1_resnets_0_conv_shortcut"]
    assert not by_dim["lora_unet_down_blocks_1_resnets_0_time_emb_proj"]
    assert not by_dim["lora_unet_down_blocks_0_attentions_0_proj_in"]


def test_never_targets_conv_in_out_time_embed(sd15):
    unet_t, _ = all_targets(sd15, conv=True)
    paths = {t.path for t in unet_t}
    assert not paths & {"input_blocks.0.0", "out.2", "time_embed.0", "time_embed.2"}


def test_inverse_naming_round_trips(sd15):
    unet, te, nrb = sd15
    for m in unet:  # every Linear/Conv, targeted or not
        name = naming.kohya_unet_name(m.path, "sd1", nrb)
        assert naming.ldm_path_from_kohya(name, "sd1", nrb) == m.path
        sdxl_style = naming.kohya_unet_name(m.path, "sdxl", nrb)
        assert naming.ldm_path_from_kohya(sdxl_style, "sd1", nrb) == m.path  # ldm-style accepted too
    for m in te:
        for prefix in ("lora_te", "lora_te1", "lora_te2"):
            name = naming.kohya_te_name(m.path, prefix)
            assert naming.kohya_prefix(name) == prefix
            assert naming.te_path_from_kohya(name, prefix) == m.path


def test_known_names():
    assert naming.kohya_unet_name("input_blocks.1.1.transformer_blocks.0.attn1.to_q", "sd1", 2) == \
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert naming.kohya_unet_name("input_blocks.3.0.op", "sd1", 2) == "lora_unet_down_blocks_0_downsamplers_0_conv"
    assert naming.kohya_unet_name("middle_block.2.out_layers.3", "sd1", 2) == "lora_unet_mid_block_resnets_1_conv2"
    assert naming.kohya_unet_name("output_blocks.2.1.conv", "sd1", 2) == "lora_unet_up_blocks_0_upsamplers_0_conv"
    assert naming.kohya_unet_name("output_blocks.8.2.conv", "sd1", 2) == "lora_unet_up_blocks_2_upsamplers_0_conv"
    assert naming.kohya_unet_name("output_blocks.11.1.proj_out", "sd2", 2) == "lora_unet_up_blocks_3_attentions_2_proj_out"
    assert naming.kohya_unet_name("input_blocks.4.1.transformer_blocks.0.attn1.to_q", "sdxl", 2) == \
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert naming.kohya_te_name("text_model.encoder.layers.0.self_attn.q_proj", "lora_te") == \
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    # SDXL diffusers-style upsamplers (first two up levels have attention)
    assert naming.ldm_path_from_kohya("lora_unet_up_blocks_0_upsamplers_0_conv", "sdxl", 2) == "output_blocks.2.2.conv"


@pytest.mark.parametrize("bad", ["lora_unet_down_blocks_0_resnets_0_bogus", "lora_te_x", "foo_bar",
                                 "lora_unet_mid_block_resnets_5_conv1"])
def test_inverse_rejects_unknown_names(bad):
    with pytest.raises(ValueError):
        naming.ldm_path_from_kohya(bad, "sd1", 2)


def test_forward_rejects_non_block_paths():
    with pytest.raises(ValueError):
        naming.kohya_unet_name("input_blocks.1.0.bogus", "sd1", 2)
    with pytest.raises(ValueError):
        naming.kohya_unet_name("label_emb.0.0", "sd1", 2)


# ---------------------------------------------------------------------------------------
# A1111 maps every name we write back to the same module (uses the assembled WebUI's own
# networks.py at test time when it is present; nothing of it is stored in this repository).


def _load_a1111_converter():
    if not A1111_NETWORKS_PY.exists():
        pytest.skip("assembled WebUI not present")
    tree = ast.parse(A1111_NETWORKS_PY.read_text(encoding="utf-8"))
    wanted = {"re_digits", "re_x_proj", "re_compiled", "suffix_conversion", "convert_diffusers_name_to_compvis"}
    picked = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in wanted:
            picked.append(node)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) in wanted for t in node.targets):
            picked.append(node)
    namespace = {"re": re}
    exec(compile(ast.Module(body=picked, type_ignores=[]), str(A1111_NETWORKS_PY), "exec"), namespace)
    return namespace["convert_diffusers_name_to_compvis"], namespace["re_x_proj"]


def _a1111_lookup(name, layer_names, convert, re_x_proj):
    """The module name A1111's load_network would pick for kohya module `name` (SD1 model)."""
    key = convert(name, False)
    if key in layer_names:
        return key
    m = re_x_proj.match(key)
    if m and m.group(1) in layer_names:
        return m.group(1)
    if "lora_unet" in name:
        key = name.replace("lora_unet", "diffusion_model")
        return key if key in layer_names else None
    return None


@pytest.mark.parametrize("style", ["sd1", "sdxl"])  # sdxl = ldm-style names, also accepted on SD1
def test_a1111_maps_our_names_to_the_same_modules(sd15, style):
    convert, re_x_proj = _load_a1111_converter()
    unet, te, nrb = sd15
    # A1111's network_layer_mapping for SD1: sd_model.model.named_modules() (the UNet sits
    # at .diffusion_model) and cond_stage_model.wrapped.named_modules() (CLIP at .transformer).
    unet_layer = {m.path: "diffusion_model_" + m.path.replace(".", "_") for m in unet}
    te_layer = {m.path: "transformer_" + m.path.replace(".", "_") for m in te}
    layer_names = set(unet_layer.values()) | set(te_layer.values())
    for t in select_unet_targets(unet, style, True, nrb):
        assert _a1111_lookup(t.kohya_name, layer_names, convert, re_x_proj) == unet_layer[t.path], t
    for t in select_text_encoder_targets(te, "lora_te"):
        assert _a1111_lookup(t.kohya_name, layer_names, convert, re_x_proj) == te_layer[t.path], t
