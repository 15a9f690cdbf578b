"""Forward diffusion on the model's own DDPM schedule."""
from __future__ import annotations

import torch


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float | None) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=torch.float32)
    if noise_offset:
        # kohya/crosslabs: a per-channel constant shift so the model can learn overall brightness
        noise = noise + noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator,
                                                   device=latents.device, dtype=torch.float32)
    return noise


def sample_timesteps(batch: int, generator: torch.Generator, device, num_timesteps: int = 1000) -> torch.Tensor:
    return torch.randint(0, num_timesteps, (batch,), generator=generator, device=device)


def add_noise(latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def training_target(latents, noise, t, alphas_cumprod, prediction_type: str) -> torch.Tensor:
    if prediction_type == "v":
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * noise - (1 - a).sqrt() * latents
    return noise
