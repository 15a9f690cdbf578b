"""LR schedules by kohya's lr_scheduler name, as LambdaLR multipliers of each group's LR."""
from __future__ import annotations

import math


def warmup_steps(cfg, total_steps: int) -> int:
    w = cfg.lr_warmup_steps
    return int(w * total_steps) if 0 < w < 1 else int(w)


def lr_multiplier(name: str, step: int, total_steps: int, warmup: int) -> float:
    if warmup and step < warmup and name != "constant":
        return (step + 1) / warmup
    if name == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def make_scheduler(optimizer, cfg, total_steps: int):
    import torch
    warmup = warmup_steps(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(cfg.lr_scheduler, step, total_steps, warmup))
