"""Adapter: the WebUI's loaded model (shared.sd_model) behind the engine's TrainModel interface.

Only this package imports A1111's `modules.*`. Captions are encoded through the WebUI's own
conditioning path (clip skip, emphasis, 75-token chunks, embeddings) so that training sees
exactly what generation will.
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import UserError


def model_family(sd_model) -> str:
    if getattr(sd_model, "is_sd3", False):
        return "sd3"
    if getattr(sd_model, "is_sdxl", False) or hasattr(sd_model, "conditioner"):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        return "sd2"
    return "sd1"


@contextlib.contextmanager
def temp_opts(**values):
    """Set WebUI options for a moment; restores keys that were absent too (override_settings does not)."""
    from modules import shared
    saved = {k: (k in shared.opts.data, shared.opts.data.get(k)) for k in values}
    shared.opts.data.update(values)
    try:
        yield
    finally:
        for k, (had, v) in saved.items():
            if had:
                shared.opts.data[k] = v
            else:
                shared.opts.data.pop(k, None)


class WebUIModel:
    """SD1.x (ldm LatentDiffusion) as loaded by the WebUI."""

    def __init__(self, sd_model, clip_skip: int | None = None):
        from modules import devices, shared
        self.m = sd_model
        self.family = model_family(sd_model)
        if self.family != "sd1":
            raise UserError(f"the loaded checkpoint is {self.family.upper()}; this version trains SD1.x models only.",
                            fix="load an SD1.x checkpoint (e.g. SD1.5) in the WebUI's checkpoint dropdown")
        self.prediction_type = "v" if getattr(sd_model, "parameterization", "eps") == "v" else "epsilon"
        self.device = devices.device
        original = getattr(sd_model, "alphas_cumprod_original", sd_model.alphas_cumprod)
        self.alphas_cumprod = original.detach().to(self.device, torch.float32)
        nrb = sd_model.model.diffusion_model.num_res_blocks
        self.num_res_blocks = int(nrb[0] if isinstance(nrb, (list, tuple)) else nrb)
        self.clip_skip = clip_skip if clip_skip is not None else int(shared.opts.data.get("CLIP_stop_at_last_layers", 1))

    # -- what gets adapters
    def unet_root(self):
        return self.m.model.diffusion_model

    def text_encoder_roots(self):
        return [("lora_te", self.m.cond_stage_model.wrapped.transformer)]

    # -- data
    @torch.no_grad()
    def encode_images(self, pixels01: torch.Tensor) -> torch.Tensor:
        """Latents with the WebUI's own VAE, in fp32 (fp16 VAEs overflow); deterministic (the mean)."""
        from modules import devices
        vae = self.m.first_stage_model
        old_vae_dtype, old_param_dtype = devices.dtype_vae, next(vae.parameters()).dtype
        devices.dtype_vae = torch.float32          # A1111's first_stage hijack casts inputs to dtype_vae
        vae.to(torch.float32)
        try:
            x = (pixels01 * 2 - 1).to(self.device, torch.float32)
            with devices.without_autocast():
                dist = self.m.encode_first_stage(x)
                z = dist.mode() * self.m.scale_factor if hasattr(dist, "mode") else self.m.get_first_stage_encoding(dist)
            if not torch.isfinite(z).all():
                raise UserError("the VAE produced NaN latents.", fix="select another VAE in the WebUI settings")
            return z.float().cpu()
        finally:
            devices.dtype_vae = old_vae_dtype
            vae.to(old_param_dtype)

    @torch.no_grad()
    def roundtrip(self, image) -> tuple[bytes, dict]:
        """PNG bytes of an RGB PIL image after encode_images and the WebUI's own decode, and the
        statistics of its latents (SD's scale_factor is meant to give them a std near 1)."""
        import io
        from PIL import Image
        from modules import sd_samplers_common
        from ..dataset.latents import pil_to_tensor
        z = self.encode_images(pil_to_tensor(image).unsqueeze(0))
        stats = {"latent_mean": float(z.mean()), "latent_std": float(z.std()),
                 "scale_factor": float(self.m.scale_factor)}
        x = sd_samplers_common.samples_to_images_tensor(z.to(self.device), approximation=0, model=self.m)
        x = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="PNG")
        return buf.getvalue(), stats

    def encode_captions(self, captions: list[str], sizes):
        from modules import devices
        with temp_opts(CLIP_stop_at_last_layers=self.clip_skip), devices.autocast():
            cond = self.m.cond_stage_model(list(captions))
        return cond.float() if not torch.is_grad_enabled() else cond

    def predict(self, x_t, t, cond):
        return self.m.apply_model(x_t, t, cond)

    def autocast(self):
        return contextlib.nullcontext()          # apply_model runs its own devices.autocast()

    def cond_to(self, cond, device):
        return cond.to(device)

    @contextlib.contextmanager
    def gradient_checkpointing(self, enabled: bool):
        """Non-reentrant checkpointing of ldm blocks (A1111's reentrant one gives LoRA zero gradients)."""
        if not enabled:
            yield
            return
        import torch.utils.checkpoint as cp
        from ldm.modules.attention import BasicTransformerBlock
        from ldm.modules.diffusionmodules.openaimodel import ResBlock

        def transformer_forward(block, x, context=None):
            return cp.checkpoint(block._forward, x, context, use_reentrant=False)

        def resblock_forward(block, x, emb):
            return cp.checkpoint(block._forward, x, emb, use_reentrant=False)

        saved = {BasicTransformerBlock: BasicTransformerBlock.forward, ResBlock: ResBlock.forward}
        BasicTransformerBlock.forward, ResBlock.forward = transformer_forward, resblock_forward
        try:
            yield
        finally:
            for cls, fn in saved.items():
                cls.forward = fn

    # -- identity, for metadata
    def describe(self) -> dict:
        from modules import devices, sd_vae
        info = getattr(self.m, "sd_checkpoint_info", None)
        vae_file = getattr(sd_vae, "loaded_vae_file", None)
        return {
            "sd_model_name": getattr(info, "model_name", None) or getattr(info, "name", "unknown"),
            "sd_model_hash": getattr(info, "shorthash", None) or getattr(self.m, "sd_model_hash", None),
            "new_sd_model_hash": getattr(info, "sha256", None),
            "vae_name": vae_file and __import__("os").path.basename(vae_file),
            "clip_skip": self.clip_skip,
            "v_parameterization": self.prediction_type == "v",
            "mixed_precision": "fp16" if self.device.type == "cuda" and devices.dtype_unet == torch.float16 else "no",
        }
