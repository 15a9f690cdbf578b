"""The loss, always in fp32, with min-SNR-gamma weighting (Hang et al. 2023, as kohya applies it)."""
from __future__ import annotations

import torch


def snr(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod[t]
    return a / (1 - a)


def min_snr_weight(t, alphas_cumprod, gamma: float, prediction_type: str) -> torch.Tensor:
    s = snr(t, alphas_cumprod)
    clipped = torch.minimum(s, torch.full_like(s, gamma))
    # eps-prediction: min(snr, γ)/snr ; v-prediction: min(snr, γ)/(snr+1)
    return clipped / (s + 1) if prediction_type == "v" else clipped / s


def diffusion_loss(pred, target, t, alphas_cumprod, *, min_snr_gamma=None, prediction_type="epsilon",
                   weights=None) -> torch.Tensor:
    """Mean over the batch; `weights` (per sample) is kohya's prior_loss_weight for reg images."""
    per_sample = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if weights is not None:
        per_sample = per_sample * weights
    if min_snr_gamma:
        per_sample = per_sample * min_snr_weight(t, alphas_cumprod, min_snr_gamma, prediction_type)
    return per_sample.mean()
