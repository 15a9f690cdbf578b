"""LR schedules by kohya's lr_scheduler name, as LambdaLR multipliers of each group's LR.

kohya builds these with transformers' get_constant_schedule_with_warmup and
get_cosine_schedule_with_warmup (num_cycles 0.5); the multipliers here are the same formulas:
warmup is step / warmup (0 at the first step, 1.0 from step == warmup on), then cosine decays
to 0 at total_steps.
"""
from __future__ import annotations

import math


def warmup_steps(cfg, total_steps: int) -> int:
    """kohya: a float lr_warmup_steps is a ratio of the total steps (int() of the product)."""
    w = cfg.lr_warmup_steps
    return int(w * total_steps) if 0 < w < 1 else int(w)


def lr_multiplier(name: str, step: int, total_steps: int, warmup: int) -> float:
    if name != "constant" and step < warmup:
        return step / max(1, warmup)
    if name == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return 1.0


def make_scheduler(optimizer, cfg, total_steps: int):
    import torch
    warmup = warmup_steps(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(cfg.lr_scheduler, step, total_steps, warmup))
