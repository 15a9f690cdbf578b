"""Verify a saved file against the WebUI's own Lora extension.

Reports the file's keys that the built-in Lora extension would not match (it drops them
silently), and the largest deviation between our network (loaded from the file) and the
WebUI's own <lora:name:1> application of it, on the UNet output and on the conditioning.
"""
from __future__ import annotations

import os
import sys

import torch

from ..errors import UserError
from ..networks.factory import network_from_state_dict
from .models import adapter_for
from .session import borrowed_model, clear_builtin_lora_state


def resolve_lora_file(lora_dir: str, name: str) -> str:
    if not name or "\x00" in name:
        raise UserError("no file given.", fix='pass {"file": "<name>.safetensors"} (relative to models/Lora)')
    rel = name if name.endswith(".safetensors") else name + ".safetensors"
    root = os.path.realpath(lora_dir)
    path = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, path]) != root:
        raise UserError("the file is outside models/Lora.", path=name, fix="give a name relative to models/Lora")
    if not os.path.isfile(path):
        raise UserError("no such LoRA file.", path=name, fix="check the name in the job's files list")
    return path


def a1111_unmatched_modules(stem: str, path: str, file_modules: set[str]) -> list[str]:
    network, networks = sys.modules["network"], sys.modules["networks"]
    loaded = networks.load_network(stem, network.NetworkOnDisk(stem, path))
    matched = {m.network_key.partition(".")[0] for m in loaded.modules.values()}
    return sorted(file_modules - matched)


def verify_file(lora_dir: str, name: str, prompt: str = "a photo of sks", seed: int = 0) -> dict:
    from safetensors.torch import load_file
    path = resolve_lora_file(lora_dir, name)
    stem = os.path.splitext(os.path.basename(path))[0]
    state = load_file(path)
    file_modules = {k.partition(".")[0] for k in state}
    networks = sys.modules["networks"]
    with borrowed_model(train_text_encoder=False) as sd_model, torch.no_grad():
        model = adapter_for(sd_model)
        ours, unknown = network_from_state_dict(state, model)
        unmatched = a1111_unmatched_modules(stem, path, file_modules)

        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((1, 4, 8, 8), generator=gen).to(model.device)
        t = torch.tensor([500], device=model.device)

        from modules import devices
        from ..config import TrainConfig
        from ..training.precision import resolve_precision
        precision = resolve_precision(TrainConfig(), devices.device, model.weight_dtype)   # "auto"

        def run():           # in the WebUI's own precision ("auto"), as its generation runs
            with precision.autocast():
                cond = model.encode_captions([prompt], [(64, 64)]).float()
                return cond, model.predict(x, t, cond.clone()).float()

        base_cond, base_out = run()
        with ours.attached():
            our_cond, our_out = run()
        networks.process_network_files([stem])
        try:
            networks.load_networks([stem], [1.0], [1.0], [None])
            their_cond, their_out = run()
        finally:
            networks.load_networks([])
            clear_builtin_lora_state(sd_model)
    return {
        "file": os.path.relpath(path, lora_dir),
        "modules": len(file_modules),
        "unmatched_keys": unmatched,
        "modules_unknown_to_trainer": unknown,
        "max_abs_diff": float((our_out - their_out).abs().max()),
        "max_abs_diff_cond": float((our_cond - their_cond).abs().max()),
        "lora_effect": float((our_out - base_out).abs().max()),
        "lora_effect_cond": float((our_cond - base_cond).abs().max()),   # 0 when no text-encoder module trained
        "conv3x3_modules": len({k.partition(".")[0] for k, v in state.items()
                                if k.endswith("lora_down.weight") and v.dim() == 4 and v.shape[-1] == 3}),
    }
