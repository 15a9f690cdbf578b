#!/usr/bin/env python3
"""Build a FULL-SIZE SD1.5-architecture checkpoint with random weights, for the benchmarks.

Nothing is downloaded: the model is built with ldm from the WebUI's repositories/ and its stock
configs/v1-inference.yaml; the text encoder is a transformers CLIPTextModel built from a local
CLIP-L-shaped config (hidden 768, 12 layers, 12 heads, intermediate 3072, vocab 49408, 77 positions,
quick_gelu).

Writes into the cache folder (default <DEST>/bench-models, DEST resolved like the harness:
$WEBUI_DEST, $DEST, else ${XDG_CACHE_HOME:-~/.cache}/sd-webui-harness):
  sd15-random.safetensors  fp16, LDM key names, ONE metadata key (stable file bytes / model hash)
  sd15-random.yaml         v1-inference.yaml + cond_stage_config.params.version = the CLIP dir below
                           (A1111 prefers a yaml next to the checkpoint over guessing a config; the stock
                           config would resolve openai/clip-vit-large-patch14, which is not available offline)
  clip-l-random/           config.json (768 wide) + tokenizer files copied from the harness's tiny-clip dir

Reused when both files are present (use --force to rebuild). Takes ~45 s and ~7 GB RAM once.

usage: DEST/venv/bin/python bench/make_full_sd15.py [--out DIR] [--name sd15-random] [--seed 0] [--force]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

CLIP_L_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "vocab_size": 49408,
}

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def harness_dest() -> str:
    d = os.environ.get("WEBUI_DEST") or os.environ.get("DEST") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sd-webui-harness")
    return os.path.abspath(d)


def default_out() -> str:
    return os.path.join(harness_dest(), "bench-models")


def paths(out_dir: str, name: str) -> dict:
    return {"ckpt": os.path.join(out_dir, name + ".safetensors"), "yaml": os.path.join(out_dir, name + ".yaml"),
            "clip": os.path.join(out_dir, "clip-l-random")}


def is_built(out_dir: str, name: str = "sd15-random") -> bool:
    p = paths(out_dir, name)
    return all(os.path.exists(x) for x in (p["ckpt"], p["yaml"], os.path.join(p["clip"], "config.json")))


def tokenizer_source(webui: str) -> str:
    base = os.path.join(webui, "models", "tiny-clip")
    for sub in ("clip-tokenizer", "tiny-sd15", "tiny-sdxl"):
        d = os.path.join(base, sub)
        if all(os.path.exists(os.path.join(d, f)) for f in TOKENIZER_FILES):
            return d
    raise SystemExit(f"no CLIP tokenizer files under {base} (run the harness's make_tiny_sd15.py first)")


def peak_rss_gb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return float("nan")


def build(out_dir: str, name: str, seed: int, webui: str) -> None:
    t0 = time.time()
    sys.path.insert(0, os.path.join(webui, "repositories", "stable-diffusion-stability-ai"))
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel  # noqa: F401  (ldm imports it too)

    p = paths(out_dir, name)
    os.makedirs(p["clip"], exist_ok=True)
    src = tokenizer_source(webui)
    for f in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(src, f), os.path.join(p["clip"], f))
    with open(os.path.join(p["clip"], "config.json"), "w") as f:
        json.dump(CLIP_L_CONFIG, f, indent=2)

    cfg = OmegaConf.load(os.path.join(webui, "configs", "v1-inference.yaml"))
    cfg.model.params.cond_stage_config.params = OmegaConf.create({"version": p["clip"]})
    yaml_tmp = p["yaml"] + ".tmp"
    OmegaConf.save(cfg, yaml_tmp)

    import ldm.modules.encoders.modules as enc
    from ldm.util import instantiate_from_config
    # ldm calls CLIPTextModel.from_pretrained(version), which wants a weights file: build from the config only
    enc.CLIPTextModel.from_pretrained = classmethod(lambda cls, path, **kw: cls(CLIPTextConfig.from_pretrained(path)))

    torch.manual_seed(seed)
    model = instantiate_from_config(cfg.model)
    model.eval()
    print(f"[make_full_sd15] model built in {time.time() - t0:.1f}s", flush=True)

    # re-randomise everything: ldm zero-initialises several output convs / proj_out layers (the UNet output
    # would be 0), and LayerNorm/GroupNorm affine params of 1/0 make the CLIP output mean ~0 (A1111's
    # "Original" emphasis then divides by ~0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Conv1d)):
                fan_in = mod.weight[0].numel()
                bound = 1.0 / fan_in ** 0.5
                mod.weight.copy_((torch.rand(mod.weight.shape, generator=g) * 2 - 1) * bound * 3 ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_((torch.rand(mod.bias.shape, generator=g) * 2 - 1) * bound)
            elif isinstance(mod, torch.nn.Embedding):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.02)
            elif isinstance(mod, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and mod.weight is not None:
                mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))

    # fp16 copy tensor by tensor (one fp32 model + one fp16 state dict in memory at once)
    sd = {}
    groups: dict[str, int] = {}
    for k, v in model.state_dict().items():
        groups[k.split(".")[0]] = groups.get(k.split(".")[0], 0) + v.numel()
        sd[k] = v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous().clone()
    del model
    tmp = p["ckpt"] + ".tmp"
    # ONE metadata key: safetensors writes metadata in hash-map order, so more keys would give different
    # file bytes (and a different A1111 "Model hash") on every build
    save_file(sd, tmp, metadata={"bench_model": f"sd15-arch full-size random-init seed={seed}"})
    os.replace(tmp, p["ckpt"])
    os.replace(yaml_tmp, p["yaml"])
    n = sum(groups.values())
    print(f"[make_full_sd15] wrote {p['ckpt']} ({os.path.getsize(p['ckpt']) / 1e9:.2f} GB, {len(sd)} tensors, "
          f"{n / 1e6:.1f} M values: " + ", ".join(f"{k}={v / 1e6:.1f}M" for k, v in groups.items() if v >= 1e5) + ")")
    print(f"[make_full_sd15] wrote {p['yaml']} and {p['clip']}/")
    print(f"[make_full_sd15] {time.time() - t0:.1f}s, peak RSS {peak_rss_gb():.1f} GiB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=default_out(), help="cache folder (default: %(default)s)")
    ap.add_argument("--name", default="sd15-random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--webui", default=os.path.join(harness_dest(), "stable-diffusion-webui"))
    ap.add_argument("--force", action="store_true", help="rebuild even when the files exist")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    if is_built(out, args.name) and not args.force:
        print(f"[make_full_sd15] reusing {paths(out, args.name)['ckpt']}")
        return 0
    os.makedirs(out, exist_ok=True)
    build(out, args.name, args.seed, os.path.abspath(args.webui))
    return 0


if __name__ == "__main__":
    sys.exit(main())
