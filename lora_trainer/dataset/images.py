"""Safe image decoding: every failure becomes a UserError naming the file and the fix.

Only Pillow is needed here (the dataset scan runs without torch/numpy).
Two process-wide Pillow settings are deliberately left alone, because changing them
would change every ``Image.open`` in the WebUI process:
``ImageFile.LOAD_TRUNCATED_IMAGES`` (we call ``load()`` and report truncation instead) and
``Image.MAX_IMAGE_PIXELS`` (we turn the bomb *warning* into an error for our own calls only).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

# What kohya's loader globs for (train_util IMAGE_EXTENSIONS); we match case-insensitively.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Image formats people drop into datasets that the trainer does not read: reported, not used.
UNSUPPORTED_IMAGE_EXTENSIONS = (
    ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jfif", ".jpe", ".jp2",
    ".ico", ".psd", ".svg", ".dng", ".cr2", ".nef", ".arw", ".apng", ".tga",
)

_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)  # transpose/rotate-90 family: width and height trade places
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")

_FIX_REPLACE = "Re-export or re-download the image (or delete it from the dataset folder)."


def is_image_file(path) -> bool:
    """True when the file's extension is one the trainer reads (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_unsupported_image_file(path) -> bool:
    """True for known image formats the trainer does not read (GIF, TIFF, HEIC, ...)."""
    return Path(path).suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS


@contextlib.contextmanager
def _decoding(path):
    """Open `path` with Pillow; map every way it can fail to a UserError.

    An image above Pillow's MAX_IMAGE_PIXELS (read, never changed) is refused here, by its
    header, before any pixel is decoded. No warnings.catch_warnings: it edits the process-wide
    filter list and is not thread-safe, and the tagger decodes in a thread pool.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UserError("The image file is empty (0 bytes).", path=path,
                            fix="Delete it, or copy the original image again.")
    except FileNotFoundError:
        raise UserError("The image file does not exist.", path=path,
                        fix="Check the path; the file may have been moved or deleted.") from None
    except OSError as exc:
        raise UserError(f"The image file cannot be read ({exc.strerror or exc}).", path=path,
                        fix="Check the file permissions.") from None
    try:
        # We open the file ourselves so it is closed even when Image.open raises.
        with open(path, "rb") as fp, Image.open(fp) as im:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and im.size[0] * im.size[1] > limit:
                raise Image.DecompressionBombError(
                    f"{im.size[0]}x{im.size[1]} = {im.size[0] * im.size[1]} pixels exceeds the limit of "
                    f"{limit} pixels")
            yield im
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(
            f"The image is too large to decode safely: {str(exc).rstrip('.')}.", path=path,
            fix="Downscale it (for example to 2048 px on the long side) before training.",
        ) from None
    except UnidentifiedImageError:
        raise UserError(
            "The file is not an image Pillow can read (its contents are not PNG/JPEG/WebP/BMP, "
            "whatever the extension says).", path=path,
            fix="Re-save it as PNG or JPEG, or delete it from the dataset folder.",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncation as "image file is truncated (...)"; broken chunks as SyntaxError.
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower():
            message = f"The image is truncated (incomplete file: {text})."
        else:
            message = f"The image is corrupt or cannot be decoded ({text})."
        raise UserError(message, path=path, fix=_FIX_REPLACE) from None


def _orientation(im) -> int:
    """EXIF orientation (1..8), 1 when absent or unreadable. May trigger a load for PNG."""
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # broken EXIF must not make a good image unusable
        return 1


def _header_orientation(im) -> int:
    """Orientation from EXIF already in the header (never forces a full decode)."""
    raw = im.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:
        return 1


def _oriented(size, orientation):
    w, h = size
    return (h, w) if orientation in _SWAPS_SIDES else (w, h)


def image_size(path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation 5-8 swaps them), from the header only.

    Does not decode the pixels, so it does not catch truncated files; see check_image.
    """
    with _decoding(path) as im:
        return _oriented(im.size, _header_orientation(im))


def check_image(path) -> tuple[int, int]:
    """Decode the whole file once (catching truncation) and return its displayed (w, h).

    JPEGs are decoded in draft (DCT-scaled) mode: every byte of the stream is still read,
    so truncation is still detected, at a fraction of the cost. Pixels are not returned.
    """
    with _decoding(path) as im:
        size = im.size
        if im.format == "JPEG":
            im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
        im.load()
        return _oriented(size, _orientation(im))


def _to_rgb(im: Image.Image) -> Image.Image:
    """Normalise any decoded mode to 8-bit RGB, compositing transparency on white."""
    if im.mode in _SIXTEEN_BIT_MODES:
        # convert("L") would clip 16-bit values at 255 (almost all white): scale down first.
        im = im.convert("I") if im.mode != "I" else im
        im = im.point(lambda v: v * (1 / 256)).convert("L")
    has_alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
    if has_alpha:
        # convert("RGBA") turns LA / palette / tRNS transparency into a real alpha channel;
        # a plain convert("RGB") would show the hidden colour (usually black).
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")  # CMYK, L, 1, P, YCbCr: naive conversion, no ICC
    return im


def open_image(path) -> Image.Image:
    """Fully decoded RGB image with EXIF orientation baked in and alpha flattened on white.

    Raises UserError (naming the file and the fix) for empty, non-image, truncated,
    oversized (decompression bomb) and otherwise unreadable files.
    """
    with _decoding(path) as im:
        im.load()
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # malformed EXIF: keep the pixels as stored
            upright = im
        try:
            rgb = _to_rgb(upright)
        except (ValueError, OSError) as exc:
            raise UserError(f"The image uses a colour mode that cannot be converted to RGB "
                            f"({im.mode}: {exc}).", path=path,
                            fix="Re-save it as an ordinary RGB PNG or JPEG.") from None
        # Detach from the file object that is about to be closed.
        return rgb.copy() if rgb is im else rgb

