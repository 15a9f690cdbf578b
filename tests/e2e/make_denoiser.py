"""Build a tiny SD1.5 that can already denoise, for the learning test (run with the WebUI venv's python).

The harness's tiny-sd15 has random weights: its UNet cannot denoise at all and its scale factor
(SD's 0.18215) leaves the random VAE's latents at a std of ~0.09, 160× under the sampler's
start noise, so no LoRA can make a txt2img resemble anything (measured: even training every
weight LoCon targets only gets 27 % closer). Real LoRA training starts from a model that
denoises, so this builds one:
  * scale_factor = 1 / std of the VAE's latent means over the images below (what SD's own
    value was computed as), written into the yaml beside the checkpoint;
  * the UNet pre-trained (all of it, a few hundred AdamW steps) on generated coloured
    circles/triangles/squares on white with captions - never the red square the test teaches.
Same seed, same bytes. Everything else (VAE, text encoder, schedule) is copied from the source.

usage: python make_denoiser.py --src DIR/tiny-sd15.safetensors --out DIR/NAME.safetensors [--steps N]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

COLOURS = {"blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (230, 200, 30), "purple": (140, 40, 170),
           "black": (20, 20, 20), "orange": (240, 140, 20)}
SHAPES = ("circle", "triangle", "square")


def shapes_dataset(n: int, size: int, seed: int):
    """(PIL image, caption) pairs: one coloured shape on white, no red."""
    from PIL import Image, ImageDraw
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        side = rng.randint(size // 3, size // 2)
        x0, y0 = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
        im = Image.new("RGB", (size, size), "white")
        d = ImageDraw.Draw(im)
        box = [x0, y0, x0 + side, y0 + side]
        if shape == "circle":
            d.ellipse(box, fill=COLOURS[colour])
        elif shape == "triangle":
            d.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side // 2, y0)], fill=COLOURS[colour])
        else:
            d.rectangle(box, fill=COLOURS[colour])
        out.append((im, f"a {colour} {shape}"))
    return out


def load_ldm(webui: Path, yaml: Path, weights: Path):
    """ldm's LatentDiffusion from the yaml, with the checkpoint's weights; and the checkpoint's own tensors."""
    sys.path.insert(0, str(webui / "repositories" / "stable-diffusion-stability-ai"))
    import transformers
    from omegaconf import OmegaConf
    from safetensors.torch import load_file
    # the yaml names a local CLIP *config* dir (no weights there): build it from the config,
    # the checkpoint then supplies the weights, as A1111 does
    transformers.CLIPTextModel.from_pretrained = classmethod(
        lambda cls, path, **kw: cls(transformers.CLIPTextConfig.from_pretrained(path)))
    import ldm.modules.encoders.modules as encoders
    encoders.CLIPTextModel = transformers.CLIPTextModel
    from ldm.util import instantiate_from_config
    config = OmegaConf.load(str(yaml))
    model = instantiate_from_config(config.model)
    state = load_file(str(weights))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.cond_stage_model.device = "cpu"
    return model.eval(), state


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="the tiny-sd15 .safetensors (its .yaml beside it)")
    ap.add_argument("--out", required=True, help="the .safetensors to write (a .yaml is written beside it)")
    ap.add_argument("--webui", default=None, help="the assembled stable-diffusion-webui (default: inferred from --src)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    src = Path(args.src).resolve()
    webui = Path(args.webui) if args.webui else src.parents[2]
    t0 = time.time()
    import numpy as np
    import torch
    model, state = load_ldm(webui, src.with_suffix(".yaml"), src)
    torch.manual_seed(args.seed)

    data = shapes_dataset(args.images, 64, args.seed)
    pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
                          for im, _ in data])
    with torch.no_grad():
        means = model.first_stage_model.encode(pixels).mean
        scale_factor = float(1.0 / means.std())
        latents = means * scale_factor
        conds = torch.cat([model.get_learned_conditioning([c]) for _, c in data])
        uncond = model.get_learned_conditioning([""])

    unet = model.model
    model.requires_grad_(False)
    unet.requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.0)
    alphas = model.alphas_cumprod.float()
    gen = torch.Generator().manual_seed(args.seed)
    unet.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(data), (args.batch,), generator=gen)
        z0 = latents[idx]
        cond = conds[idx].clone()
        drop = torch.rand(args.batch, generator=gen) < 0.1       # some unconditional samples, for CFG
        cond[drop] = uncond
        t = torch.randint(0, alphas.shape[0], (args.batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        loss = torch.nn.functional.mse_loss(model.apply_model(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, cond), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"[make_denoiser] step {step} loss {loss.item():.4f}", flush=True)

    from safetensors.torch import save_file
    trained = {f"model.{k}": v.detach() for k, v in unet.state_dict().items()}
    out_state = {k: (trained[k].to(v.dtype).contiguous() if k in trained else v) for k, v in state.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file(out_state, str(tmp))
    yaml = src.with_suffix(".yaml").read_text()
    if "scale_factor: 0.18215" not in yaml:
        raise SystemExit(f"{src.with_suffix('.yaml')}: no 'scale_factor: 0.18215' line to replace")
    out.with_suffix(".yaml").write_text(yaml.replace("scale_factor: 0.18215", f"scale_factor: {scale_factor:.6f}"))
    tmp.replace(out)
    print(f"[make_denoiser] wrote {out} (scale_factor {scale_factor:.4f}, {args.steps} steps, "
          f"{time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
