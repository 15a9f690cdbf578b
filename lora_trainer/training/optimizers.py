"""Optimizer factory by kohya's optimizer_type name."""
from __future__ import annotations

import functools

from ..errors import ConfigError


def param_groups(network, cfg) -> list[dict]:
    groups = [{"params": list(network.parameters_of("unet")), "lr": cfg.effective_unet_lr, "name": "unet"}]
    te = list(network.parameters_of("text_encoder"))
    if te:
        groups.append({"params": te, "lr": cfg.effective_text_encoder_lr, "name": "text_encoder"})
    return [g for g in groups if g["params"]]


@functools.lru_cache(maxsize=None)
def fused_adamw_works(device_type: str, dtype) -> bool:
    """Try one fused step on a scratch tensor: torch 2.1 builds a fused CPU AdamW and then fails
    at its first step (no CPU kernel before 2.4), so construction alone proves nothing."""
    import torch
    try:
        p = torch.zeros(2, device=device_type, dtype=dtype, requires_grad=True)
        p.grad = torch.ones_like(p)
        torch.optim.AdamW([p], lr=1e-3, fused=True).step()
        return True
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False


def make_optimizer(network, cfg):
    groups = param_groups(network, cfg)
    kwargs = cfg.optimizer_kwargs()
    if cfg.optimizer_type == "AdamW":
        import torch
        if "fused" not in kwargs and "foreach" not in kwargs:
            # hundreds of small tensors: the fused kernel (CPU since torch 2.4) is ~4x the default loop
            first = groups[0]["params"][0]
            kwargs["fused" if fused_adamw_works(first.device.type, first.dtype) else "foreach"] = True
        try:
            return torch.optim.AdamW(groups, lr=cfg.effective_unet_lr, **kwargs)
        except TypeError as e:
            raise ConfigError("optimizer_args", f"AdamW rejected them: {e}", "use AdamW's arguments (betas, eps, weight_decay)") from None
    if cfg.optimizer_type == "Prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise ConfigError("optimizer_type", "Prodigy is not installed.",
                              "restart the WebUI so install.py adds prodigyopt, or pip install prodigyopt") from None
        lrs = {g["lr"] for g in groups} - {0.0}
        if len(lrs) > 1:
            raise ConfigError("text_encoder_lr", "Prodigy needs one learning rate for all groups.",
                              "set text_encoder_lr equal to unet_lr (or 0 to freeze it)")
        try:
            return Prodigy(groups, lr=cfg.effective_unet_lr, **kwargs)
        except TypeError as e:
            raise ConfigError("optimizer_args", f"Prodigy rejected them: {e}",
                              "use Prodigy's arguments: betas, beta3, eps, weight_decay, decouple, use_bias_correction, "
                              "safeguard_warmup, d0, d_coef, growth_rate, slice_p") from None
    raise ConfigError("optimizer_type", f"'{cfg.optimizer_type}' is not supported.", "use AdamW or Prodigy")


def describe_optimizer(optimizer, cfg) -> str:
    """kohya's ss_optimizer: 'module.Class(args)'."""
    cls = type(optimizer)
    name = f"{cls.__module__}.{cls.__name__}"
    args = ",".join(f"{k}={v}" for k, v in cfg.optimizer_kwargs().items())
    return f"{name}({args})" if args else name
