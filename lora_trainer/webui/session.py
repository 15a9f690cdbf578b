"""Borrow the WebUI's model for a run and give it back exactly as it was.

Before: any LoRA the built-in Lora extension merged into the weights is restored, every base
weight is frozen, alternative UNets and hypernetworks are switched off. After (finished,
stopped or failed): every flag is back, weight-dependent caches are reset, memory released.
"""
from __future__ import annotations

import contextlib
import gc
import sys

import torch

from ..errors import UserError


def builtin_lora_module():
    return sys.modules.get("networks")   # the Lora extension's top-level module name


def clear_builtin_lora_state(sd_model) -> None:
    """Undo the Lora extension's in-place merge now (it would otherwise restore lazily, mid-training)."""
    networks = builtin_lora_module()
    if networks is None or not hasattr(networks, "network_restore_weights_from_backup"):
        return
    networks.loaded_networks.clear()
    with torch.no_grad():             # base weights may still require grad (A1111 loads them so)
        _restore_backups(networks, sd_model)


def _restore_backups(networks, sd_model) -> None:
    for module in sd_model.modules():
        if getattr(module, "network_weights_backup", None) is not None or getattr(module, "network_bias_backup", None) is not None:
            networks.network_restore_weights_from_backup(module)
            module.network_current_names = ()         # the backup stays: it is the original


def reset_weight_caches() -> None:
    from modules import processing
    processing.StableDiffusionProcessing.cached_c = [None, None]
    processing.StableDiffusionProcessing.cached_uc = [None, None]
    processing.StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None]
    processing.StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None]


def refresh_lora_list() -> None:
    networks = builtin_lora_module()
    if networks is not None and hasattr(networks, "list_available_networks"):
        networks.list_available_networks()


SDP_TITLE = "sdp - scaled dot product"
FAST_BACKWARD = ("sdp", "sdp-no-mem", "xformers")


@contextlib.contextmanager
def training_attention():
    """On CUDA, train with torch's scaled-dot-product attention (fused backward; A1111's
    Doggettx / sub-quadratic fallbacks cost more), then put the WebUI's choice back. On CPU
    A1111's choice (InvokeAI) stays: SDPA's CPU backward was slower (full-size SD1.5, 256², 2 cores,
    frozen fwd+bwd in the training layout: 2.58 s with SDPA vs 2.23 s with InvokeAI)."""
    from modules import devices, sd_hijack
    before = sd_hijack.current_optimizer
    switch = devices.device.type == "cuda" and (before is None or before.name not in FAST_BACKWARD)
    if switch and any(o.title() == SDP_TITLE for o in sd_hijack.optimizers):
        sd_hijack.model_hijack.apply_optimizations(SDP_TITLE)
    else:
        switch = False
    try:
        yield
    finally:
        if switch:
            sd_hijack.model_hijack.apply_optimizations(before.title() if before is not None else "None")


def _contiguous_output(module, inputs, output):
    if isinstance(output, torch.Tensor) and not output.is_contiguous():
        return output.contiguous()
    return output


@contextlib.contextmanager
def contiguous_transformer_outputs(sd_model):
    """On CPU, hand every SpatialTransformer's output on as plain NCHW while training.

    A1111 patches SpatialTransformer.forward to skip `.contiguous()`, so its output stays a
    channels-last view; every following 3×3 conv then makes mkldnn re-lay its weight out to
    channels-last, in the forward and again in the backward (59 MB per 1280-channel conv).
    Copying the small activation instead is ~1.5× faster per step (full-size SD1.5, 256²,
    2 cores: bare fwd+bwd 3.9 s → 2.6 s). The values are the same; hooks are removed after."""
    from modules import devices
    if devices.device.type != "cpu":
        yield
        return
    handles = [module.register_forward_hook(_contiguous_output) for module in sd_model.model.diffusion_model.modules()
               if type(module).__name__ == "SpatialTransformer"]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def current_model():
    from modules import shared
    if getattr(shared.cmd_opts, "lowvram", False):
        raise UserError("training is not possible with --lowvram (its hooks evict weights the backward pass needs).",
                        fix="restart the WebUI without --lowvram (--medvram works with the text encoder off)")
    model = shared.sd_model
    if model is None:
        raise UserError("no checkpoint is loaded.", fix="select a checkpoint in the WebUI first")
    return model


@contextlib.contextmanager
def borrowed_model(train_text_encoder: bool, restore_merged: bool = True):
    from modules import devices, sd_unet, shared
    m = current_model()
    if getattr(m, "lowvram", False) and train_text_encoder:
        raise UserError("--medvram swaps the text encoder out mid-step, so it cannot be trained.",
                        fix="set network_train_unet_only, or restart without --medvram")
    identity = (getattr(m, "sd_checkpoint_info", None), getattr(m, "sd_model_hash", None))
    requires_grad = [(p, p.requires_grad) for p in m.parameters()]
    old_hypernetworks = shared.loaded_hypernetworks
    old_parallel = shared.parallel_processing_allowed
    old_unet_option = getattr(sd_unet, "current_unet_option", None)
    if restore_merged:
        clear_builtin_lora_state(m)
    sd_unet.apply_unet("None")
    shared.loaded_hypernetworks = []
    for p, _ in requires_grad:
        p.requires_grad_(False)
    try:
        with training_attention(), contiguous_transformer_outputs(m):
            yield m
    finally:
        for p, flag in requires_grad:
            p.requires_grad_(flag)
            p.grad = None
        shared.loaded_hypernetworks = old_hypernetworks
        shared.parallel_processing_allowed = old_parallel
        if old_unet_option is not None:
            sd_unet.apply_unet()
        reset_weight_caches()
        if getattr(m, "lowvram", False):
            from modules import lowvram
            lowvram.send_everything_to_cpu()
        release_memory()
        if shared.sd_model is not m or (getattr(m, "sd_checkpoint_info", None), getattr(m, "sd_model_hash", None)) != identity:
            print("[lora-trainer] warning: the WebUI's model changed during training", file=sys.stderr)


def release_memory() -> None:
    """Free what the run allocated and hand it back to the OS. glibc keeps freed heap pages in
    its arenas, so without malloc_trim the WebUI's RSS stayed ~1 GB higher after a full-size run."""
    from modules import devices
    gc.collect()
    devices.torch_gc()
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):      # not glibc (musl): nothing to trim
            pass


def state_dict_sha256(sd_model) -> str:
    """A fingerprint of every weight and buffer: proves a run handed the model back unchanged."""
    import hashlib
    h = hashlib.sha256()
    for key, tensor in sorted(sd_model.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
