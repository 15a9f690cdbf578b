"""Which modules of the UNet and text encoder get a LoRA, following kohya's networks.lora.

kohya picks "every Linear/Conv2d child of a module of a target class". On A1111's ldm/sgm
UNet the equivalents of kohya's diffusers classes are SpatialTransformer (Transformer2DModel),
ResBlock (ResnetBlock2D), Downsample (Downsample2D) and Upsample (Upsample2D); the HF CLIP
classes are the same as kohya's. Selection works on plain `ModuleInfo` records so it can be
tested against a captured module list without building a model.

torch is imported inside `describe_modules` only, so importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import naming

# Classes whose Linear/Conv2d descendants may be targeted. A module's block_class is the
# nearest ancestor among these (blocks of these kinds never nest in SD models).
BLOCK_CLASSES = frozenset({
    "SpatialTransformer", "ResBlock", "Downsample", "Upsample",
    "CLIPAttention", "CLIPSdpaAttention", "CLIPMLP",
})

# Plain LoRA (kohya's default target) vs the extra classes LoCon (conv_dim) adds.
UNET_LORA_CLASSES = frozenset({"SpatialTransformer"})
UNET_LOCON_EXTRA_CLASSES = frozenset({"ResBlock", "Downsample", "Upsample"})
TEXT_ENCODER_CLASSES = frozenset({"CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"})

UNET_FAMILIES = ("sd1", "sd2", "sdxl")
TE_PREFIXES = naming.TE_PREFIXES


@dataclass(frozen=True)
class ModuleInfo:
    """A Linear or Conv2d of a model, as much as target selection and shapes need."""

    path: str            # dotted path from the root passed to describe_modules
    kind: str            # "linear" | "conv"
    in_features: int     # in_features, or in_channels for a conv
    out_features: int    # out_features, or out_channels for a conv
    kernel_size: tuple[int, int]  # (1, 1) for Linear
    block_class: str     # nearest ancestor class in BLOCK_CLASSES, or ""

    def to_json(self) -> dict:
        return {"path": self.path, "kind": self.kind, "in_features": self.in_features,
                "out_features": self.out_features, "kernel_size": list(self.kernel_size),
                "block_class": self.block_class}

    @classmethod
    def from_json(cls, d: dict) -> "ModuleInfo":
        return cls(path=d["path"], kind=d["kind"], in_features=int(d["in_features"]),
                   out_features=int(d["out_features"]),
                   kernel_size=(int(d["kernel_size"][0]), int(d["kernel_size"][1])),
                   block_class=d["block_class"])


@dataclass(frozen=True)
class Target:
    """One module that gets a LoRA: its kohya name, where it lives, and its shape."""

    kohya_name: str      # e.g. "lora_unet_down_blocks_0_attentions_0_proj_in"
    path: str            # dotted module path inside the root that was described
    kind: str            # "linear" | "conv"
    in_features: int
    out_features: int
    kernel_size: tuple[int, int]
    uses_conv_dim: bool  # True for k×k convs (k > 1): rank conv_dim / alpha conv_alpha

    def lora_shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(lora_down.weight, lora_up.weight) shapes for `rank`, as kohya stores them."""
        if self.kind == "linear":
            return (rank, self.in_features), (self.out_features, rank)
        kh, kw = self.kernel_size
        return (rank, self.in_features, kh, kw), (self.out_features, rank, 1, 1)


def describe_modules(root) -> list[ModuleInfo]:
    """Every nn.Linear and nn.Conv2d under `root` (named_modules order), with its block class."""
    import torch

    class_of = {name: type(mod).__name__ for name, mod in root.named_modules()}
    infos = []
    for name, mod in root.named_modules():
        if isinstance(mod, torch.nn.Linear):
            kind, fin, fout, ks = "linear", mod.in_features, mod.out_features, (1, 1)
        elif isinstance(mod, torch.nn.Conv2d):
            kind, fin, fout = "conv", mod.in_channels, mod.out_channels
            ks = (int(mod.kernel_size[0]), int(mod.kernel_size[1]))
        else:
            continue
        infos.append(ModuleInfo(path=name, kind=kind, in_features=int(fin), out_features=int(fout),
                                kernel_size=ks, block_class=_nearest_block_class(name, class_of)))
    return infos


def _nearest_block_class(path: str, class_of: dict[str, str]) -> str:
    parts = path.split(".")
    for end in range(len(parts) - 1, 0, -1):  # proper ancestors, innermost first
        cls = class_of.get(".".join(parts[:end]), "")
        if cls in BLOCK_CLASSES:
            return cls
    return ""


def _uses_conv_dim(info: ModuleInfo) -> bool:
    # kohya: Linear and 1×1 conv use network_dim; any larger kernel uses conv_dim.
    return info.kind == "conv" and info.kernel_size != (1, 1)


def _target(info: ModuleInfo, kohya_name: str) -> Target:
    return Target(kohya_name=kohya_name, path=info.path, kind=info.kind,
                  in_features=info.in_features, out_features=info.out_features,
                  kernel_size=info.kernel_size, uses_conv_dim=_uses_conv_dim(info))


def select_unet_targets(modules, family: str, conv: bool, num_res_blocks: int) -> list[Target]:
    """UNet targets: attention blocks always; ResBlock/Down/Upsample layers too when conv (LoCon).

    `modules` are ModuleInfo of the ldm/sgm UNetModel (paths like "input_blocks.1.1.proj_in").
    conv_in/out, time_embed and label_emb have no block class and so are never chosen.
    """
    if family not in UNET_FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {UNET_FAMILIES}")
    classes = UNET_LORA_CLASSES | (UNET_LOCON_EXTRA_CLASSES if conv else frozenset())
    targets = []
    for info in modules:
        if info.block_class not in classes:
            continue
        if _uses_conv_dim(info) and not conv:
            continue  # kohya skips k×k convs unless conv_dim is set
        targets.append(_target(info, naming.kohya_unet_name(info.path, family, num_res_blocks)))
    _check_unique(targets)
    return targets


def select_text_encoder_targets(modules, prefix: str) -> list[Target]:
    """Text-encoder targets: Linear layers of CLIP attention (q/k/v/out_proj) and MLP (fc1/fc2).

    `modules` are ModuleInfo of an HF CLIPTextModel (paths like
    "text_model.encoder.layers.0.self_attn.q_proj").
    """
    if prefix not in TE_PREFIXES:
        raise ValueError(f"unknown text-encoder prefix {prefix!r}; expected one of {TE_PREFIXES}")
    targets = [_target(info, naming.kohya_te_name(info.path, prefix))
               for info in modules
               if info.block_class in TEXT_ENCODER_CLASSES and info.kind == "linear"]
    _check_unique(targets)
    return targets


def _check_unique(targets: list[Target]) -> None:
    # Two modules mapping to one kohya name would silently share a LoRA in the file.
    seen = {}
    for t in targets:
        if t.kohya_name in seen:
            raise ValueError(f"modules {seen[t.kohya_name]!r} and {t.path!r} "
                             f"both map to {t.kohya_name!r}")
        seen[t.kohya_name] = t.path
