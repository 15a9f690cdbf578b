"""Small training folders the e2e tests build themselves (kohya layout)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image, ImageDraw

# tiny-sd15 at 64²: the smallest training that still exercises every part
TINY = {"resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128, "network_dim": 4, "network_alpha": 4,
        "learning_rate": 1e-3}


def red_square_set(root: Path, n=4, size=64, repeats=10, caption="sks square") -> Path:
    """A concept that is easy to learn: a red square on white, captioned with a trigger word."""
    folder = Path(root) / f"{repeats}_sks square"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", (size, size), "white")
        o = (size // 16) * (i % 3)
        ImageDraw.Draw(im).rectangle([size // 4 + o, size // 4, size * 3 // 4 + o, size * 3 // 4], fill=(220, 20, 20))
        im.save(folder / f"square_{i}.png")
        (folder / f"square_{i}.txt").write_text(caption, encoding="utf-8")
    return Path(root)


def png_b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def image_from_png(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")
