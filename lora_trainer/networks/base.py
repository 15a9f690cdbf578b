"""Shared base of every network type: a hooked module and the container that owns them.

Why hooks: A1111's Lora extension merges into base weights in place and keys its backups
on module identity, so we never touch `.weight` and never replace modules in the tree.
Our parameters live in `Network` (outside the model's module tree): a `.to()` on the model
cannot split them from their optimizer state.
"""
from __future__ import annotations

import contextlib

import torch


def autocast_probe(device_type: str):
    """A call answering "is autocast on for this device?" on every torch: 2.1 has no device
    argument (its plain form is CUDA only, CPU has its own function), 2.4+ deprecates those."""
    try:
        torch.is_autocast_enabled(device_type)
        return lambda: torch.is_autocast_enabled(device_type)
    except TypeError:
        return torch.is_autocast_cpu_enabled if device_type == "cpu" else torch.is_autocast_enabled


class NetworkModule(torch.nn.Module):
    """One adapter attached to one base Linear/Conv2d through a removable forward hook."""

    def __init__(self, name: str, dim: int, alpha: float):
        super().__init__()
        self.name = name
        self.dim = dim
        # kohya: alpha falls back to dim when unset; saved as a 0-dim tensor "<name>.alpha"
        alpha = float(alpha) if alpha else float(dim)
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32))
        self.scale = alpha / dim
        self.multiplier = 1.0
        self._handle = None

    def delta(self, x: torch.Tensor, scale: float) -> torch.Tensor:  # pragma: no cover - abstract
        """What the adapter adds to the base output, already multiplied by `scale`."""
        raise NotImplementedError

    def add_delta(self, x: torch.Tensor, output: torch.Tensor, scale: float) -> torch.Tensor:
        """output + delta(x, scale), as a new tensor (subclasses fuse the sum into their last matmul)."""
        d = self.delta(x, scale)
        if d.dtype != output.dtype:
            d = d.to(output.dtype)
        return output + d

    def _hook(self, module, inputs, output):
        x = inputs[0]
        if x.dtype != self._dtype and not self._autocast_on():   # under autocast its own casts apply
            x = x.to(self._dtype)
        return self.add_delta(x, output, self.multiplier * self.scale)

    def attach(self, base: torch.nn.Module) -> None:
        self.detach()
        first = next(self.parameters())
        self._dtype = first.dtype                     # looked up once, not on every forward
        self._autocast_on = autocast_probe(first.device.type)
        self._handle = base.register_forward_hook(self._hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def kohya_tensors(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_kohya_tensors(self, tensors: dict[str, torch.Tensor]) -> None:  # pragma: no cover
        raise NotImplementedError


class Network(torch.nn.Module):
    """All adapters of one run, keyed by kohya name; attaches them to the model's modules."""

    def __init__(self):
        super().__init__()
        self.adapters = torch.nn.ModuleDict()
        self._bases: dict[str, torch.nn.Module] = {}
        self._groups: dict[str, str] = {}         # kohya name -> "unet" | "text_encoder"

    def add(self, adapter: NetworkModule, base: torch.nn.Module, group: str) -> None:
        self.adapters[adapter.name] = adapter
        self._bases[adapter.name] = base
        self._groups[adapter.name] = group

    def __len__(self):
        return len(self.adapters)

    def count(self, group: str) -> int:
        return sum(1 for g in self._groups.values() if g == group)

    def attach(self) -> None:
        for name, adapter in self.adapters.items():
            adapter.attach(self._bases[name])

    def detach(self) -> None:
        for adapter in self.adapters.values():
            adapter.detach()

    @contextlib.contextmanager
    def attached(self):
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    def set_multiplier(self, value: float) -> None:
        for adapter in self.adapters.values():
            adapter.multiplier = value

    def parameters_of(self, group: str):
        for name, adapter in self.adapters.items():
            if self._groups[name] == group:
                yield from adapter.parameters()

    def kohya_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for adapter in self.adapters.values():
            for suffix, tensor in adapter.kohya_tensors().items():
                out[f"{adapter.name}.{suffix}"] = tensor.detach()
        return out

    def load_kohya_state_dict(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Load a kohya file's tensors; returns the file's module names we have no adapter for."""
        by_module: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in state.items():
            module, _, suffix = key.partition(".")
            by_module.setdefault(module, {})[suffix] = tensor
        unknown = []
        for module, tensors in by_module.items():
            if module not in self.adapters:
                unknown.append(module)
                continue
            self.adapters[module].load_kohya_tensors(tensors)
        return sorted(unknown)
