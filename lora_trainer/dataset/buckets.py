"""Aspect-ratio bucketing, numerically identical to kohya sd-scripts.

Pure functions on integers: no image is opened here.
- make_bucket_resolutions: model_util.make_bucket_resolutions
- BucketManager.select_bucket: train_util.BucketManager.select_bucket (both modes)
- crop_offsets: the trim step of train_util.trim_and_resize_if_required

Without enable_bucket there is a single fixed bucket = resolution. kohya's cached-latents
path handles it through the same select_bucket (scale to *cover* the bucket, then trim);
its uncached path instead asserts the image is exactly the resolution (or random-crops a
larger one). We always do the former: cover-resize, then centre crop (random crop if asked),
so any image size works and cached/uncached training see the same pixels.
"""

from __future__ import annotations

import math
import random as _random

from ..errors import ConfigError

Size = tuple[int, int]


def make_bucket_resolutions(max_reso: Size, min_size: int = 256, max_size: int = 1024,
                            divisible: int = 64) -> list[Size]:
    """All (w, h) buckets whose area fits max_reso's area, sides in [min_size, max_size]."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos = set()
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((side, side))  # the square is always present, whatever min/max say
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def validate_bucket_settings(resolution: Size, min_bucket_reso: int, max_bucket_reso: int,
                             bucket_reso_steps: int) -> None:
    """Raise ConfigError (a UserError with `key`) for settings kohya would reject or adjust."""
    if not isinstance(bucket_reso_steps, int) or bucket_reso_steps < 1:
        raise ConfigError("bucket_reso_steps", f"must be a positive whole number, got {bucket_reso_steps!r}.",
                          fix="Use 64 (SD 1.x/2.x) or 32/64 (SDXL).")
    for key, value in (("min_bucket_reso", min_bucket_reso), ("max_bucket_reso", max_bucket_reso)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(key, f"must be a positive whole number, got {value!r}.",
                              fix="Typical values: min 256, max 1024 (SD 1.x) or 2048 (SDXL).")
        if value % bucket_reso_steps:
            lower = value - value % bucket_reso_steps
            raise ConfigError(key, f"{value} is not divisible by bucket_reso_steps ({bucket_reso_steps}).",
                              fix=f"Use {lower or bucket_reso_steps} or {lower + bucket_reso_steps}.")
    if max_bucket_reso < max(resolution):
        raise ConfigError("max_bucket_reso",
                          f"{max_bucket_reso} is smaller than the resolution side {max(resolution)}.",
                          fix=f"Set max_bucket_reso to at least {max(resolution)} "
                              f"(SDXL at 1024: 2048 is common).")
    if max_bucket_reso < min_bucket_reso:
        raise ConfigError("max_bucket_reso",
                          f"{max_bucket_reso} is smaller than min_bucket_reso ({min_bucket_reso}).",
                          fix="Raise max_bucket_reso or lower min_bucket_reso.")


class BucketManager:
    """Chooses each image's bucket and resized size.

    no_upscale=False: predefined buckets from make_bucket_resolutions.
    no_upscale=True: buckets derived from each image's own size (min/max are ignored).
    Use BucketManager.fixed(resolution) for training without enable_bucket.
    """

    def __init__(self, no_upscale: bool, max_reso: Size, min_size: int | None = 256,
                 max_size: int | None = 1024, reso_steps: int | None = 64):
        self.no_upscale = bool(no_upscale)
        self.max_reso = tuple(max_reso)
        self.max_area = self.max_reso[0] * self.max_reso[1]
        self.min_size = min_size
        self.max_size = max_size
        self.reso_steps = reso_steps
        if self.no_upscale:
            self.predefined: list[Size] = []
        else:
            self.predefined = make_bucket_resolutions(self.max_reso, min_size, max_size, reso_steps)
        self._set_predefined(self.predefined)

    @classmethod
    def fixed(cls, resolution: Size) -> "BucketManager":
        """The single bucket used when bucketing is off: exactly `resolution`."""
        manager = cls.__new__(cls)
        manager.no_upscale = False
        manager.max_reso = tuple(resolution)
        manager.max_area = resolution[0] * resolution[1]
        manager.min_size = manager.max_size = manager.reso_steps = None
        manager._set_predefined([tuple(resolution)])
        return manager

    def _set_predefined(self, resos):
        self.predefined = list(resos)
        self._predefined_set = set(self.predefined)
        self._predefined_ars = [w / h for w, h in self.predefined]

    def round_to_steps(self, x: float) -> int:
        """Round half up, then floor to a multiple of reso_steps (kohya's round_to_steps)."""
        x = int(x + 0.5)
        return x - x % self.reso_steps

    def select_bucket(self, image_width: int, image_height: int) -> tuple[Size, Size, float]:
        """(bucket (w, h), resized (w, h), signed aspect-ratio error bucket_ar - image_ar)."""
        aspect_ratio = image_width / image_height
        if not self.no_upscale:
            reso = (image_width, image_height)
            if reso not in self._predefined_set:
                # First bucket with the smallest |AR error| (numpy argmin picks the first too).
                errors = [abs(ar - aspect_ratio) for ar in self._predefined_ars]
                reso = self.predefined[errors.index(min(errors))]
            # Scale so the image covers the bucket; the overflow is trimmed later.
            if aspect_ratio > reso[0] / reso[1]:
                scale = reso[1] / image_height
            else:
                scale = reso[0] / image_width
            resized = (int(image_width * scale + 0.5), int(image_height * scale + 0.5))
        else:
            resized = self._no_upscale_size(image_width, image_height, aspect_ratio)
            # Bucket = resized floored to the step: crop, never pad.
            reso = (resized[0] - resized[0] % self.reso_steps, resized[1] - resized[1] % self.reso_steps)
        ar_error = (reso[0] / reso[1]) - aspect_ratio if reso[1] else float("inf")
        return reso, resized, ar_error

    def _no_upscale_size(self, image_width, image_height, aspect_ratio) -> Size:
        if image_width * image_height <= self.max_area:
            return (image_width, image_height)
        # Shrink to max_area keeping the AR, then round one side to the step and derive
        # the other; keep whichever choice distorts the AR less.
        resized_width = math.sqrt(self.max_area * aspect_ratio)
        resized_height = self.max_area / resized_width
        width_rounded = self.round_to_steps(resized_width)
        height_for_width = self.round_to_steps(width_rounded / aspect_ratio)
        height_rounded = self.round_to_steps(resized_height)
        width_for_height = self.round_to_steps(height_rounded * aspect_ratio)
        ar_by_width = width_rounded / height_for_width if height_for_width else float("inf")
        ar_by_height = width_for_height / height_rounded if height_rounded else float("inf")
        if abs(ar_by_width - aspect_ratio) < abs(ar_by_height - aspect_ratio):
            return (width_rounded, int(width_rounded / aspect_ratio + 0.5))
        return (int(height_rounded * aspect_ratio + 0.5), height_rounded)


def bucket_manager_for(resolution: Size, enable_bucket: bool, min_bucket_reso: int = 256,
                       max_bucket_reso: int = 1024, bucket_reso_steps: int = 64,
                       bucket_no_upscale: bool = False) -> BucketManager:
    """The manager the settings describe; raises ConfigError for invalid bucket settings."""
    resolution = tuple(resolution)
    if not enable_bucket:
        return BucketManager.fixed(resolution)
    validate_bucket_settings(resolution, min_bucket_reso, max_bucket_reso, bucket_reso_steps)
    return BucketManager(bucket_no_upscale, resolution, min_bucket_reso, max_bucket_reso, bucket_reso_steps)


def crop_offsets(resized: Size, bucket: Size, random_crop: bool = False, rng=None) -> tuple[int, int]:
    """(left, top) of the bucket-sized window inside the resized image.

    Centre trim (trim // 2) by default; with random_crop a uniform offset in [0, trim]
    (width drawn first, as kohya does). `rng` is a random.Random (module-level when None).
    """
    rng = rng or _random
    offsets = []
    for have, want in zip(resized, bucket):
        trim = max(0, have - want)
        offsets.append(rng.randint(0, trim) if (random_crop and trim) else trim // 2)
    return offsets[0], offsets[1]


def parse_resolution(value) -> tuple[int, int]:
    """kohya's resolution: 512, "512", "512,768", "512x768" or (w, h) -> (w, h); ValueError otherwise."""
    if isinstance(value, str):
        value = [int(v) for v in value.lower().replace("x", ",").split(",") if v.strip()]
    if isinstance(value, (int, float)):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        value = value * 2
    if len(value) != 2 or min(value) < 1:
        raise ValueError(value)
    return value
