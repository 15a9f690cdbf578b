"""The small model interface the engine trains through (the WebUI adapter implements it).

The engine never imports A1111: unit tests drive the loop with a tiny torch model through
this same interface, and the e2e tier drives the real ldm model.
"""
from __future__ import annotations

import contextlib
from typing import Any, Protocol


class TrainModel(Protocol):
    family: str                 # "sd1" | "sd2" | "sdxl"
    prediction_type: str        # "epsilon" | "v"
    num_res_blocks: int
    device: Any                 # torch.device
    alphas_cumprod: Any         # fp32 tensor [1000], the model's ORIGINAL schedule
    weight_dtype: Any           # the dtype the host computes the UNet in (decides mixed_precision "auto")

    def unet_root(self): ...
    def text_encoder_roots(self) -> list: ...            # [(kohya prefix, HF CLIPTextModel)]
    def encode_images(self, pixels01): ...               # (B,3,H,W) in [0,1] -> latents (fp32)
    def encode_captions(self, captions: list[str], sizes: list[tuple[int, int]]): ...
    def stack_conds(self, conds: list): ...              # one batch from captions encoded one by one
    def predict(self, x_t, t, cond): ...                 # the model's own apply_model, under the engine's autocast
    def cond_to(self, cond, device): ...                 # move a cond (tensor or dict) to device

    def gradient_checkpointing(self, enabled: bool) -> contextlib.AbstractContextManager: ...
    def describe(self) -> dict: ...                      # sd_model_name, hashes, vae, clip_skip, ...
