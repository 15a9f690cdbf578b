"""What every family's adapter shares: family detection, the WebUI's autocast neutralised, WebUI
options set for a moment, the VAE (encode and round trip), the precision report, the identity
written into the metadata.

Only lora_trainer/webui/ imports A1111's `modules.*`.
"""
from __future__ import annotations

import contextlib
import os

import torch

from ...errors import UserError


def model_family(sd_model) -> str:
    if getattr(sd_model, "is_sd3", False):
        return "sd3"
    if getattr(sd_model, "is_sdxl", False) or hasattr(sd_model, "conditioner"):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        return "sd2"
    return "sd1"


@contextlib.contextmanager
def engine_autocast():
    """Let the engine's autocast (its `mixed_precision`) decide: A1111 wraps apply_model and its
    text encoders in `devices.autocast()`, whose inner torch.autocast("cuda") would override a
    bf16 choice with fp16. Restored after the call."""
    from modules import devices
    saved = devices.autocast
    devices.autocast = lambda disable=False: contextlib.nullcontext()
    try:
        yield
    finally:
        devices.autocast = saved


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


def compute_dtype_of(sd_model):
    """The dtype the WebUI computes its UNet in: its weights' dtype, or with fp8 weight storage
    the dtype it casts them to for each layer (A1111: dtype_inference on GPU, bf16 on CPU)."""
    from modules import devices
    dtype = next(sd_model.model.diffusion_model.parameters()).dtype
    if dtype.itemsize == 1:                      # float8_e4m3fn / e5m2 storage
        inference = getattr(devices, "dtype_inference", torch.float16)
        return inference if inference in (torch.float16, torch.bfloat16) else torch.bfloat16
    return dtype


def precision_report(cfg, sd_model) -> dict:
    """The WebUI's own dtypes and what the run would use: shown in the scan before Start."""
    from modules import devices, shared
    from ...training.precision import dtype_name, resolve_precision

    def dtype_of(module):
        p = next(module.parameters(), None) if module is not None else None
        return dtype_name(p.dtype) if p is not None else None
    opts = shared.cmd_opts
    report = {
        "torch": torch.__version__, "device": devices.device.type,
        "unet_dtype": dtype_of(sd_model.model.diffusion_model),
        "vae_dtype": dtype_of(getattr(sd_model, "first_stage_model", None)),
        "text_encoder_dtype": dtype_of(getattr(sd_model, "cond_stage_model", None)
                                       or getattr(sd_model, "conditioner", None)),
        "no_half": bool(getattr(opts, "no_half", False)), "no_half_vae": bool(getattr(opts, "no_half_vae", False)),
        "upcast_sampling": bool(getattr(opts, "upcast_sampling", False)),
        "fp8_storage": bool(getattr(devices, "fp8", False)),
        "requested": cfg.mixed_precision,
    }
    try:
        p = resolve_precision(cfg, devices.device, compute_dtype_of(sd_model))
        report.update(mixed_precision=p.name, compute_dtype=dtype_name(p.compute_dtype or torch.float32),
                      master_weights=dtype_name(p.param_dtype), loss_scaling=p.needs_scaler, error=None)
    except UserError as e:
        report.update(mixed_precision=None, error=e.as_dict())
    return report


def scan_summary(cfg) -> dict:
    """The trainer's scan of the dataset plus the precision the loaded model would train in (the
    API's and the tab's Scan). Read without the queue lock: a scan must not wait for a long run."""
    from modules import shared
    from ...dataset.scan import scan_dataset
    summary = scan_dataset(cfg).summary()
    if shared.sd_model is not None:
        summary["precision"] = precision_report(cfg, shared.sd_model)
    return summary


class WebUIAdapter:
    """The WebUI's loaded model (shared.sd_model) behind the engine's TrainModel interface: the
    parts every family shares. A family's subclass (sd1.SD1Model, …) adds what differs: the
    UNet and text-encoder roots, caption encoding, apply_model, gradient checkpointing."""

    family: str

    def __init__(self, sd_model, clip_skip: int | None = None):
        from modules import devices, shared
        self.m = sd_model
        self.prediction_type = "v" if getattr(sd_model, "parameterization", "eps") == "v" else "epsilon"
        self.device = devices.device
        original = getattr(sd_model, "alphas_cumprod_original", sd_model.alphas_cumprod)
        self.alphas_cumprod = original.detach().to(self.device, torch.float32)
        self.weight_dtype = compute_dtype_of(sd_model)
        self.clip_skip = clip_skip if clip_skip is not None else int(shared.opts.data.get("CLIP_stop_at_last_layers", 1))

    # -- images
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
        from ...dataset.latents import pil_to_tensor
        z = self.encode_images(pil_to_tensor(image).unsqueeze(0))
        stats = {"latent_mean": float(z.mean()), "latent_std": float(z.std()),
                 "scale_factor": float(self.m.scale_factor)}
        x = sd_samplers_common.samples_to_images_tensor(z.to(self.device), approximation=0, model=self.m)
        x = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="PNG")
        return buf.getvalue(), stats

    # -- identity, for metadata
    def describe(self) -> dict:
        from modules import sd_vae
        info = getattr(self.m, "sd_checkpoint_info", None)
        vae_file = getattr(sd_vae, "loaded_vae_file", None)
        return {
            "sd_model_name": getattr(info, "model_name", None) or getattr(info, "name", "unknown"),
            "sd_model_hash": getattr(info, "shorthash", None) or getattr(self.m, "sd_model_hash", None),
            "new_sd_model_hash": getattr(info, "sha256", None),
            "vae_name": vae_file and os.path.basename(vae_file),
            "clip_skip": self.clip_skip,
            "v_parameterization": self.prediction_type == "v",
        }
