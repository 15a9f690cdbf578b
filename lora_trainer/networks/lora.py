"""LoRA (kohya networks.lora): out += up(down(x)) * alpha/dim, on Linear and Conv2d layers."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import NetworkModule


def _pointwise(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 1×1, stride-1 conv as one matmul over the flattened pixels: for these thin (dim-wide)
    shapes it is several times cheaper on CPU than a convolution call, forward and backward."""
    b, c, h, w = x.shape
    return torch.matmul(weight.flatten(1), x.reshape(b, c, h * w)).view(b, -1, h, w)


def _channels_last(t: torch.Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class LoRAModule(NetworkModule):
    """down: [dim, in] (Linear) or [dim, in, kh, kw] with the base conv's stride/padding;
    up: [out, dim] or [out, dim, 1, 1]. down is kaiming-uniform, up is zero (starts as a no-op)."""

    def __init__(self, name: str, base: torch.nn.Module, dim: int, alpha: float):
        super().__init__(name, dim, alpha)
        if isinstance(base, torch.nn.Conv2d):
            self.is_conv = True
            self.stride, self.padding, self.dilation = base.stride, base.padding, base.dilation
            kh, kw = base.kernel_size
            self.down_is_pointwise = (kh, kw) == (1, 1) and tuple(base.stride) == (1, 1) and base.padding in ((0, 0), 0)
            down_shape = (dim, base.in_channels, kh, kw)
            up_shape = (base.out_channels, dim, 1, 1)
        elif isinstance(base, torch.nn.Linear):
            self.is_conv = False
            down_shape = (dim, base.in_features)
            up_shape = (base.out_features, dim)
        else:
            raise TypeError(f"LoRA needs a Linear or Conv2d, got {type(base).__name__} for {name}")
        self.lora_down = torch.nn.Parameter(torch.empty(down_shape, dtype=torch.float32))
        self.lora_up = torch.nn.Parameter(torch.zeros(up_shape, dtype=torch.float32))
        torch.nn.init.kaiming_uniform_(self.lora_down, a=math.sqrt(5))

    def delta(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        # the scale goes on the dim-wide middle tensor: its backward is then a small multiply,
        # not one over the base's (much wider) output
        if self.is_conv:
            if self.down_is_pointwise:
                h = _pointwise(self.lora_down, x)
            else:
                h = F.conv2d(x, self.lora_down, None, self.stride, self.padding, self.dilation)
            return _pointwise(self.lora_up, h * scale)
        return F.linear(F.linear(x, self.lora_down) * scale, self.lora_up)

    def add_delta(self, x: torch.Tensor, output: torch.Tensor, scale: float) -> torch.Tensor:
        """output + delta(x, scale) with the sum done by the up matmul (addmm: no delta tensor, no
        separate add over the base's output; the scale is its alpha). Channels-last convs (A1111's
        proj_out input) stay channels-last: pixels x channels matmuls on the NHWC data, no copies."""
        down, up = self.lora_down, self.lora_up
        if output.dtype != down.dtype or x.dtype != down.dtype or self._autocast_on():
            return super().add_delta(x, output, scale)
        if not self.is_conv:
            h = torch.mm(x.reshape(-1, x.shape[-1]), down.t())
            return torch.addmm(output.reshape(-1, output.shape[-1]), h, up.t(), alpha=scale).view(output.shape)
        b, c, height, width = x.shape
        oc = output.shape[1]
        if self.down_is_pointwise and _channels_last(x) and _channels_last(output):
            h = torch.mm(x.permute(0, 2, 3, 1).reshape(-1, c), down.flatten(1).t())
            y = torch.addmm(output.permute(0, 2, 3, 1).reshape(-1, oc), h, up.flatten(1).t(), alpha=scale)
            return y.view(b, height, width, oc).permute(0, 3, 1, 2)
        if not output.is_contiguous():                 # keep the base output's layout, as output + d does
            return super().add_delta(x, output, scale)
        if self.down_is_pointwise:
            h = torch.matmul(down.flatten(1), x.reshape(b, c, height * width))
        else:
            h = F.conv2d(x, down, None, self.stride, self.padding, self.dilation).flatten(2)
        o = output.reshape(b, oc, -1)
        if b == 1:
            y = torch.addmm(o[0], up.flatten(1), h[0], alpha=scale).unsqueeze(0)
        else:
            y = torch.baddbmm(o, up.flatten(1).expand(b, -1, -1), h, alpha=scale)
        return y.view(output.shape)

    def weight_delta(self) -> torch.Tensor:
        """The dense ΔW this adapter adds (used by tests and the verifier)."""
        if self.is_conv:
            up = self.lora_up.flatten(1)
            return (up @ self.lora_down.flatten(1)).reshape(up.shape[0], *self.lora_down.shape[1:]) * self.scale
        return self.lora_up @ self.lora_down * self.scale

    def kohya_tensors(self) -> dict[str, torch.Tensor]:
        return {"lora_down.weight": self.lora_down, "lora_up.weight": self.lora_up, "alpha": self.alpha}

    def load_kohya_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            down = tensors["lora_down.weight"].to(torch.float32)
            up = tensors["lora_up.weight"].to(torch.float32)
            if down.shape != self.lora_down.shape or up.shape != self.lora_up.shape:
                raise ValueError(f"{self.name}: file shapes {tuple(down.shape)}/{tuple(up.shape)} do not match "
                                 f"{tuple(self.lora_down.shape)}/{tuple(self.lora_up.shape)}")
            self.lora_down.copy_(down)
            self.lora_up.copy_(up)
            if "alpha" in tensors:
                alpha = float(tensors["alpha"].float().item())
                self.alpha.fill_(alpha)
                self.scale = alpha / self.dim
