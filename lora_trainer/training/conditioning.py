"""Caption conditioning for the loop: each caption encoded once while the text encoder is frozen.

Keyed per caption (not per batch: with batch > 1 nearly every batch is new, so a per-batch key
misses almost always and grows without bound), stored on the CPU, stacked per batch by the
model (which pads longer 75-token-chunk captions the way its own batched encoding does).
"""
from __future__ import annotations

import torch


class CaptionConditioning:
    def __init__(self, model, cache: bool):
        self.model = model
        self.cache = cache
        self.store: dict = {}

    def __call__(self, texts: list[str], sizes: list) -> object:
        model = self.model
        if not self.cache:
            return model.encode_captions(list(texts), list(sizes))
        conds = []
        for text, size in zip(texts, sizes):
            key = (text, tuple(size))
            cond = self.store.get(key)
            if cond is None:
                with torch.no_grad():
                    cond = model.cond_to(model.encode_captions([text], [size]), "cpu")
                self.store[key] = cond
            conds.append(cond)
        return model.cond_to(model.stack_conds(conds), model.device)
