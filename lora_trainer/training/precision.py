"""What `mixed_precision`, `full_bf16` and `full_fp16` mean on the installed torch and device.

The LoRA parameters are fp32 master weights (bf16 only with full_bf16); the forward runs
under torch autocast in the chosen dtype; fp16 scales the loss with whichever GradScaler the
installed torch has. Every capability is detected by trying it, never assumed from a version
(A1111 v1.10.1 installs torch 2.1.2: no torch.amp.GradScaler, CPU autocast bf16 only).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass

import torch

from ..errors import ConfigError

HALF = {torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    name: str                              # what ran: "no" | "fp16" | "bf16" (ss_mixed_precision)
    device_type: str
    compute_dtype: torch.dtype | None      # None: no autocast
    param_dtype: torch.dtype = torch.float32
    full: bool = False                     # full_bf16: the network itself in bf16

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self):
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute_dtype)

    def make_scaler(self):
        return make_grad_scaler(self.device_type) if self.needs_scaler else None


@functools.lru_cache(maxsize=None)
def autocast_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch really autocasts `dtype` on `device_type` (torch 2.1.2 raises, or
    warns and disables, for float16 on CPU)."""
    if device_type == "cuda" and not torch.cuda.is_available():
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = torch.ones(2, 2, device=device_type)
            with torch.autocast(device_type, dtype=dtype):
                out = a @ a
        return out.dtype == dtype
    except (RuntimeError, ValueError, TypeError, AssertionError):
        return False


def grad_scaler_class(device_type: str):
    """The GradScaler this torch has for the device: torch.amp's (torch >= 2.3, CPU too), else
    torch.cuda.amp's (torch 2.1/2.2, CUDA only); None when there is none."""
    amp_scaler = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if amp_scaler is not None:
        return functools.partial(amp_scaler, device_type)
    if device_type == "cuda":
        return torch.cuda.amp.GradScaler
    return None


def make_grad_scaler(device_type: str):
    cls = grad_scaler_class(device_type)
    if cls is None:
        raise ConfigError("mixed_precision", f"this torch ({torch.__version__}) has no loss scaler for {device_type}.",
                          "use mixed_precision 'bf16' or 'no'")
    return cls()


def resolve_precision(cfg, device, weight_dtype: torch.dtype) -> Precision:
    """The precision a run uses, or a ConfigError saying why the request cannot run here.

    `auto` follows the WebUI: fp16/bf16 when it holds the UNet in half, fp32 otherwise. (full_fp16
    is refused by the config itself.)"""
    device_type = torch.device(device).type
    requested = cfg.mixed_precision
    if requested == "auto":
        requested = HALF.get(weight_dtype, "no")
    if cfg.full_bf16 and requested != "bf16":
        raise ConfigError("full_bf16", f"needs mixed_precision 'bf16', not '{requested}' (as in kohya).",
                          "set mixed_precision to 'bf16'")
    if requested == "no":
        if weight_dtype in HALF:
            raise ConfigError("mixed_precision", f"'no' (fp32) is impossible: the WebUI holds the model in "
                              f"{HALF[weight_dtype]} and training in place never makes a second fp32 copy.",
                              "use mixed_precision 'fp16' or 'bf16' (or 'auto'), or start the WebUI with --no-half")
        return Precision("no", device_type, None)
    dtype = DTYPES[requested]
    if not autocast_works(device_type, dtype):
        other = "'bf16' or 'no'" if requested == "fp16" else "'fp16' or 'no'"
        why = " (this GPU has no bf16)" if device_type == "cuda" else ""
        when = " (CPU float16 autocast needs torch >= 2.3)" if (device_type, requested) == ("cpu", "fp16") else ""
        raise ConfigError("mixed_precision", f"this torch ({torch.__version__}) cannot autocast {requested} on "
                          f"{device_type}{why}.", f"use {other}{when}")
    if requested == "fp16" and grad_scaler_class(device_type) is None:
        raise ConfigError("mixed_precision", f"this torch ({torch.__version__}) has no fp16 loss scaler for {device_type}.",
                          "use mixed_precision 'bf16' or 'no'")
    return Precision(requested, device_type, dtype, torch.bfloat16 if cfg.full_bf16 else torch.float32, cfg.full_bf16)


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")
