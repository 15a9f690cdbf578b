"""SD1.x (ldm LatentDiffusion, HF CLIP text encoder) as loaded by the WebUI.

Captions are encoded through the WebUI's own conditioning path (clip skip, emphasis, 75-token
chunks, embeddings) so that training sees exactly what generation will.
"""
from __future__ import annotations

import contextlib

import torch

from .common import WebUIAdapter, engine_autocast, temp_opts


class SD1Model(WebUIAdapter):
    """SD1.x (ldm LatentDiffusion) as loaded by the WebUI."""

    family = "sd1"

    def __init__(self, sd_model, clip_skip: int | None = None):
        super().__init__(sd_model, clip_skip)
        self._empty_chunk = None
        nrb = sd_model.model.diffusion_model.num_res_blocks
        self.num_res_blocks = int(nrb[0] if isinstance(nrb, (list, tuple)) else nrb)

    # -- what gets adapters
    def unet_root(self):
        return self.m.model.diffusion_model

    def text_encoder_roots(self):
        return [("lora_te", self.m.cond_stage_model.wrapped.transformer)]

    # -- captions
    def encode_captions(self, captions: list[str], sizes):
        with temp_opts(CLIP_stop_at_last_layers=self.clip_skip), engine_autocast():
            cond = self.m.cond_stage_model(list(captions))
        return cond.float() if not torch.is_grad_enabled() else cond

    def stack_conds(self, conds: list):
        """One batch from captions encoded one by one. A caption of more 75-token chunks is
        longer; the shorter ones get encoded empty chunks appended, as the WebUI's own batched
        encoding pads them (each chunk goes through CLIP on its own, so the values agree)."""
        longest = max(c.shape[1] for c in conds)
        if any(c.shape[1] != longest for c in conds):
            if self._empty_chunk is None:
                with torch.no_grad():
                    self._empty_chunk = self.encode_captions([""], [None]).float().cpu()
            chunk = self._empty_chunk
            conds = [c if c.shape[1] == longest else
                     torch.cat([c] + [chunk.to(c.device, c.dtype)] * ((longest - c.shape[1]) // chunk.shape[1]), dim=1)
                     for c in conds]
        return torch.cat(conds, dim=0)

    # -- the denoiser
    def predict(self, x_t, t, cond):
        with engine_autocast():
            return self.m.apply_model(x_t, t, cond)

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
