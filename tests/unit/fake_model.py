"""A tiny torch model behind the engine's TrainModel interface (no WebUI needed).

Its module names follow the ldm UNet (input_blocks.1.1 = a SpatialTransformer) so target
selection and kohya naming run exactly as on the real model.
"""
from __future__ import annotations

import contextlib
import zlib

import torch
from torch import nn


class CrossAttention(nn.Module):
    def __init__(self, dim, ctx):
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim, bias=False), nn.Linear(ctx, dim, bias=False), nn.Linear(ctx, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))

    def forward(self, x, context):
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        w = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        return self.to_out(w @ v)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, ctx):
        super().__init__()
        self.attn2 = CrossAttention(dim, ctx)
        self.ff = nn.Module()
        self.ff.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x, context):
        x = x + self.attn2(x, context)
        return x + self.ff.net(x)


class SpatialTransformer(nn.Module):
    def __init__(self, channels, dim, ctx):
        super().__init__()
        self.proj_in = nn.Conv2d(channels, dim, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(dim, ctx)])
        self.proj_out = nn.Conv2d(dim, channels, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        t = self.proj_in(x).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            t = block(t, context)
        return x + self.proj_out(t.transpose(1, 2).reshape(b, -1, h, w))


class TinyUNet(nn.Module):
    def __init__(self, ctx=8):
        super().__init__()
        self.input_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 8, 3, padding=1)),
                                           nn.ModuleList([nn.Identity(), SpatialTransformer(8, 16, ctx)])])
        self.out = nn.Conv2d(8, 4, 3, padding=1)
        self.time = nn.Linear(1, 8)
        self.num_res_blocks = [2]

    def forward(self, x, t, context):
        h = self.input_blocks[0](x) + self.time(t.float().view(-1, 1) / 1000)[:, :, None, None]
        h = self.input_blocks[1][1](h, context)
        return self.out(h)


class FakeModel:
    family, prediction_type, num_res_blocks = "sd1", "epsilon", 2
    weight_dtype = torch.float32

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.device = torch.device("cpu")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.unet = TinyUNet()
        for p in self.unet.parameters():
            p.requires_grad_(False)
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()
        self.mix = torch.randn(4, 3, generator=g)

    def unet_root(self):
        return self.unet

    def text_encoder_roots(self):
        return []

    def encode_images(self, pixels01):
        x = torch.nn.functional.avg_pool2d(pixels01 * 2 - 1, 8)
        return torch.einsum("oc,bchw->bohw", self.mix, x)

    def encode_captions(self, captions, sizes):
        rows = []
        for text in captions:
            g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
            rows.append(torch.randn(3, 8, generator=g))
        self.encoded_captions = getattr(self, "encoded_captions", 0) + len(captions)
        return torch.stack(rows)

    def stack_conds(self, conds):
        return torch.cat(conds, dim=0)

    def predict(self, x_t, t, cond):
        return self.unet(x_t, t, cond)

    def cond_to(self, cond, device):
        return cond.to(device)

    def gradient_checkpointing(self, enabled):
        return contextlib.nullcontext()

    def describe(self):
        return {"sd_model_name": "fake", "sd_model_hash": "0123456789", "clip_skip": 1}
