"""LoCon (kohya's conv_dim/conv_alpha): LoRA plus the 3x3 convs of res/down/up blocks.

The math is LoRA's (a k x k down conv with the base's stride/padding, a 1x1 up conv);
what differs is which layers get an adapter and which dim/alpha they use.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkType:
    name: str
    targets_convs: bool     # also target ResBlock/Downsample/Upsample layers

    def dim_alpha(self, target, cfg) -> tuple[int, float]:
        if target.uses_conv_dim:
            return cfg.conv_dim, cfg.conv_alpha
        return cfg.network_dim, cfg.network_alpha


LORA = NetworkType("lora", targets_convs=False)
LOCON = NetworkType("locon", targets_convs=True)
NETWORK_TYPES = {t.name: t for t in (LORA, LOCON)}
