"""Pixels for training and the in-memory latent cache. Imported at training time only.

torch is imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

from PIL import Image, ImageOps

from ..errors import TrainingStopped
from .buckets import crop_offsets
from .images import open_image


def resize_for_bucket(image: Image.Image, item, flip: bool = False, random_crop: bool = False,
                      rng=None) -> Image.Image:
    """Resize to item.resized, crop to item.bucket (centre unless random_crop), optionally mirror.

    Area-averaging (BOX) when shrinking on both axes, LANCZOS otherwise, as kohya does
    (cv2 INTER_AREA / PIL LANCZOS in library.utils.resize_image).
    """
    resized, bucket = tuple(item.resized), tuple(item.bucket)
    if image.size != resized:
        shrinking = image.width >= resized[0] and image.height >= resized[1]
        method = Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS
        image = image.resize(resized, method)
    left, top = crop_offsets(resized, bucket, random_crop, rng)
    if (left, top, resized) != (0, 0, bucket):
        image = image.crop((left, top, left + bucket[0], top + bucket[1]))
    return ImageOps.mirror(image) if flip else image


def pil_to_tensor(image: Image.Image):
    """RGB PIL image -> float32 tensor (3, H, W) in [0, 1] (no numpy needed)."""
    import torch

    width, height = image.size
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(height, width, 3).permute(2, 0, 1).float().div_(255.0)


def prepare_pixels(item, flip: bool, random_crop: bool = False, rng=None):
    """The training pixels of one sample: float32 tensor (3, bucket_h, bucket_w) in [0, 1]."""
    return pil_to_tensor(resize_for_bucket(open_image(item.path), item, flip, random_crop, rng))


class LatentCache:
    """Latents of every image (and of its mirror image when flip_aug), on CPU, float32.

    Built once before training with an `encode(pixels (B,3,H,W) in [0,1]) -> latents (B,...)`
    callable (the VAE wrapper does scaling/normalisation). Keyed by image path and flip.
    """

    def __init__(self):
        self._latents: dict[tuple[str, bool], object] = {}
        self.flip_aug = False

    @classmethod
    def build(cls, items, encode, flip_aug: bool, progress=None, should_stop=None,
              batch_size: int = 4) -> "LatentCache":
        """Encode each distinct image once (plus its flip when flip_aug), grouped by bucket.

        progress(done_images, total_images) is called after each batch; should_stop() is
        checked before each batch and raises TrainingStopped when it returns True.
        """
        import torch

        cache = cls()
        cache.flip_aug = bool(flip_aug)
        unique: dict[str, object] = {}
        for item in items:  # repeats and duplicates share one latent
            unique.setdefault(str(item.path), item)
        by_bucket: dict[tuple[int, int], list] = {}
        for item in unique.values():
            by_bucket.setdefault(tuple(item.bucket), []).append(item)

        total, done = len(unique), 0
        batch_size = max(1, int(batch_size))
        for bucket in sorted(by_bucket):
            group = by_bucket[bucket]
            for start in range(0, len(group), batch_size):
                if should_stop is not None and should_stop():
                    raise TrainingStopped()
                chunk = group[start:start + batch_size]
                pixels = torch.stack([prepare_pixels(item, False) for item in chunk])
                cache._store(chunk, False, encode, pixels)
                if flip_aug:
                    cache._store(chunk, True, encode, torch.flip(pixels, dims=[-1]))
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        return cache

    def _store(self, chunk, flip: bool, encode, pixels):
        import torch

        with torch.no_grad():
            latents = encode(pixels)
        if latents.shape[0] != len(chunk):
            raise RuntimeError(f"encode returned {latents.shape[0]} latents for {len(chunk)} images")
        for item, latent in zip(chunk, latents):
            self._latents[(str(item.path), flip)] = latent.detach().to("cpu", torch.float32).clone()

    def get(self, item, flip: bool = False):
        """The cached latent of `item` (its mirrored version when flip)."""
        key = (str(item.path), bool(flip))
        try:
            return self._latents[key]
        except KeyError:
            what = "flipped latent" if flip else "latent"
            raise KeyError(f"no cached {what} for {item.path}"
                           + (" (the cache was built without flip_aug)" if flip and not self.flip_aug
                              else "")) from None

    def __contains__(self, key) -> bool:
        item, flip = key
        return (str(item.path), bool(flip)) in self._latents

    def __len__(self) -> int:
        return len(self._latents)
