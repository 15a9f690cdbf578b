"""kohya LoRA module names for A1111's ldm/sgm UNet and HF CLIP paths, and back.

What kohya writes (and A1111 reads):
- SD1/SD2: kohya trains on a UNet with diffusers attribute names, so its files say
  `lora_unet_down_blocks_0_attentions_0_...`. A1111's `convert_diffusers_name_to_compvis`
  maps those back to ldm `input_blocks_1_1_...`; we write the same diffusers-style names
  so our files look like kohya's to every other tool.
- SDXL: kohya keeps the ldm/sgm names (`lora_unet_input_blocks_4_1_...`); A1111 loads
  them through its "lora_unet" -> "diffusion_model" fallback.
- Text encoders: prefix + HF CLIPTextModel path (`lora_te_text_model_encoder_layers_0_...`).
In every case the module name is the dotted path with dots replaced by underscores.

ldm UNet layout (num_res_blocks = nrb): input_blocks[0] is conv_in; then per level `nrb`
blocks [ResBlock, SpatialTransformer?] and, except at the last level, one [Downsample].
output_blocks hold per level nrb+1 blocks [ResBlock, SpatialTransformer?, Upsample?].
"""

from __future__ import annotations

import re

UNET_PREFIX = "lora_unet"
TE_PREFIXES = ("lora_te", "lora_te1", "lora_te2")

# ldm ResBlock attribute path <-> diffusers ResnetBlock2D attribute name.
_RESNET_LDM_TO_DIFFUSERS = {
    "in_layers.2": "conv1",
    "out_layers.3": "conv2",
    "emb_layers.1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
    "in_layers.0": "norm1",
    "out_layers.0": "norm2",
}
_RESNET_DIFFUSERS_TO_LDM = {v: k for k, v in _RESNET_LDM_TO_DIFFUSERS.items()}

# Attribute names that contain underscores, so an underscored name can be split back into
# a dotted path unambiguously (every other path component is a single token or a number).
_MULTI_TOKEN_ATTRS = frozenset({
    # ldm / sgm UNet
    "input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb",
    "transformer_blocks", "proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out",
    "in_layers", "out_layers", "emb_layers", "skip_connection",
    # HF CLIPTextModel
    "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "token_embedding", "position_embedding", "final_layer_norm", "layer_norm1", "layer_norm2",
})
_MAX_ATTR_TOKENS = max(len(a.split("_")) for a in _MULTI_TOKEN_ATTRS)
_SINGLE_TOKEN = re.compile(r"^[A-Za-z][A-Za-z0-9]*$|^\d+$")


def _underscored(path: str) -> str:
    return path.replace(".", "_")


# ---------------------------------------------------------------------------------------
# forward: module path -> kohya name


def kohya_unet_name(ldm_path: str, family: str, num_res_blocks: int) -> str:
    """kohya's name for the ldm/sgm UNet module at `ldm_path` (relative to the UNetModel)."""
    if family == "sdxl":
        return f"{UNET_PREFIX}_{_underscored(ldm_path)}"
    if family not in ("sd1", "sd2"):
        raise ValueError(f"unknown model family {family!r}")
    return f"{UNET_PREFIX}_{_diffusers_name(ldm_path, num_res_blocks)}"


def kohya_te_name(hf_path: str, prefix: str) -> str:
    """kohya's name for the HF CLIPTextModel module at `hf_path`."""
    if prefix not in TE_PREFIXES:
        raise ValueError(f"unknown text-encoder prefix {prefix!r}")
    return f"{prefix}_{_underscored(hf_path)}"


def _diffusers_name(ldm_path: str, nrb: int) -> str:
    parts = ldm_path.split(".")
    per_level = nrb + 1
    try:
        head = parts[0]
        if head == "input_blocks":
            k, sub, rest = int(parts[1]), int(parts[2]), parts[3:]
            if k == 0 and sub == 0 and not rest:
                return "conv_in"
            level, j = divmod(k - 1, per_level)
            if k >= 1 and j < nrb and sub == 0:
                return f"down_blocks_{level}_resnets_{j}_{_resnet_suffix(rest)}"
            if k >= 1 and j < nrb and sub == 1 and rest:
                return f"down_blocks_{level}_attentions_{j}_{'_'.join(rest)}"
            if k >= 1 and j == nrb and sub == 0 and rest == ["op"]:
                return f"down_blocks_{level}_downsamplers_0_conv"
        elif head == "middle_block":
            sub, rest = int(parts[1]), parts[2:]
            if sub in (0, 2):
                return f"mid_block_resnets_{sub // 2}_{_resnet_suffix(rest)}"
            if sub == 1 and rest:
                return f"mid_block_attentions_0_{'_'.join(rest)}"
        elif head == "output_blocks":
            k, sub, rest = int(parts[1]), int(parts[2]), parts[3:]
            level, j = divmod(k, per_level)
            if sub == 0:
                return f"up_blocks_{level}_resnets_{j}_{_resnet_suffix(rest)}"
            # The Upsample is the last block of a level: sub 1 without attention, else 2.
            if sub in (1, 2) and rest == ["conv"] and j == nrb:
                return f"up_blocks_{level}_upsamplers_0_conv"
            if sub == 1 and rest:
                return f"up_blocks_{level}_attentions_{j}_{'_'.join(rest)}"
        elif head == "out" and parts[1:] == ["2"]:
            return "conv_out"
        elif head == "time_embed" and len(parts) == 2 and parts[1] in ("0", "2"):
            return f"time_embedding_linear_{int(parts[1]) // 2 + 1}"
    except (IndexError, ValueError):
        pass
    raise ValueError(f"no kohya SD1/SD2 name for UNet module {ldm_path!r}")


def _resnet_suffix(rest: list[str]) -> str:
    key = ".".join(rest)
    if key not in _RESNET_LDM_TO_DIFFUSERS:
        raise ValueError(f"unknown ResBlock layer {key!r}")
    return _RESNET_LDM_TO_DIFFUSERS[key]


# ---------------------------------------------------------------------------------------
# inverse: kohya name -> module path


def kohya_prefix(name: str) -> str:
    """The network prefix of a module name: "lora_unet", "lora_te", "lora_te1" or "lora_te2"."""
    for prefix in (UNET_PREFIX, "lora_te1", "lora_te2", "lora_te"):
        if name.startswith(prefix + "_"):
            return prefix
    raise ValueError(f"{name!r} has no known kohya prefix (lora_unet_/lora_te_/lora_te1_/lora_te2_)")


def ldm_path_from_kohya(name: str, family: str, num_res_blocks: int) -> str:
    """The ldm/sgm UNet module path named by a kohya `lora_unet_...` name.

    Accepts both spellings A1111 accepts: diffusers-style (kohya SD1/SD2) and ldm-style
    (kohya SDXL, and SD1 files from other trainers).
    """
    if family not in ("sd1", "sd2", "sdxl"):
        raise ValueError(f"unknown model family {family!r}")
    if kohya_prefix(name) != UNET_PREFIX:
        raise ValueError(f"{name!r} is not a UNet module name")
    rest = name[len(UNET_PREFIX) + 1:]
    if rest.startswith(("input_blocks_", "middle_block_", "output_blocks_", "time_embed_",
                        "label_emb_", "out_")):
        return _dotted(rest)
    return _ldm_path_from_diffusers(rest, family, num_res_blocks)


def te_path_from_kohya(name: str, prefix: str) -> str:
    """The HF CLIPTextModel module path named by a kohya text-encoder name."""
    if prefix not in TE_PREFIXES:
        raise ValueError(f"unknown text-encoder prefix {prefix!r}")
    if kohya_prefix(name) != prefix:
        raise ValueError(f"{name!r} does not start with {prefix + '_'!r}")
    return _dotted(name[len(prefix) + 1:])


def _ldm_path_from_diffusers(rest: str, family: str, nrb: int) -> str:
    per_level = nrb + 1
    if rest == "conv_in":
        return "input_blocks.0.0"
    if rest == "conv_out":
        return "out.2"
    m = re.fullmatch(r"time_embedding_linear_([12])", rest)
    if m:
        return f"time_embed.{int(m[1]) * 2 - 2}"
    m = re.fullmatch(r"down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", rest)
    if m:
        level, kind, j, tail = int(m[1]), m[2], int(m[3]), m[4]
        block = f"input_blocks.{1 + level * per_level + j}"
        return _block_path(block, kind, tail)
    m = re.fullmatch(r"down_blocks_(\d+)_downsamplers_0_conv", rest)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op"
    m = re.fullmatch(r"mid_block_attentions_0_(.+)", rest)
    if m:
        return f"middle_block.1.{_dotted(m[1])}"
    m = re.fullmatch(r"mid_block_resnets_([01])_(.+)", rest)
    if m:
        return f"middle_block.{int(m[1]) * 2}.{_resnet_path(m[2])}"
    m = re.fullmatch(r"up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", rest)
    if m:
        level, kind, j, tail = int(m[1]), m[2], int(m[3]), m[4]
        return _block_path(f"output_blocks.{level * per_level + j}", kind, tail)
    m = re.fullmatch(r"up_blocks_(\d+)_upsamplers_0_conv", rest)
    if m:
        level = int(m[1])
        # SD1/SD2: the first up level has no attention, so its Upsample sits at sub-index 1
        # (A1111 assumes the same); SDXL's first two up levels both have attention.
        sub = 1 if (family != "sdxl" and level == 0) else 2
        return f"output_blocks.{level * per_level + nrb}.{sub}.conv"
    raise ValueError(f"cannot map kohya UNet name {'lora_unet_' + rest!r} to an ldm module")


def _block_path(block: str, kind: str, tail: str) -> str:
    if kind == "resnets":
        return f"{block}.0.{_resnet_path(tail)}"
    return f"{block}.1.{_dotted(tail)}"


def _resnet_path(tail: str) -> str:
    if tail not in _RESNET_DIFFUSERS_TO_LDM:
        raise ValueError(f"unknown ResnetBlock2D layer {tail!r}")
    return _RESNET_DIFFUSERS_TO_LDM[tail]


def _dotted(underscored: str) -> str:
    """Split an underscored module name back into its dotted path (greedy on known names)."""
    tokens = underscored.split("_")
    parts, i = [], 0
    while i < len(tokens):
        for n in range(min(_MAX_ATTR_TOKENS, len(tokens) - i), 0, -1):
            candidate = "_".join(tokens[i:i + n])
            if (n > 1 and candidate in _MULTI_TOKEN_ATTRS) or (n == 1 and _SINGLE_TOKEN.match(candidate)):
                parts.append(candidate)
                i += n
                break
        else:
            raise ValueError(f"cannot split {underscored!r} into a module path")
    return ".".join(parts)
