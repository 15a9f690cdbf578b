"""What an imported file becomes: copied as it is, or re-encoded as an upright RGB PNG.

PNG/JPEG files that are already 8-bit RGB/grey, upright, opaque and single-frame are copied
byte for byte; everything else is decoded (through lora_trainer.dataset.images) and written
as PNG. `changes()` says in words what the conversion did, for the import report.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

# The decoder's own safe open and RGB normalisation, so an import converts exactly as training reads.
from ..dataset.images import _ALPHA_MODES, _EXIF_ORIENTATION, _SIXTEEN_BIT_MODES, _decoding, _to_rgb

FRAMES_FIRST = "first"
FRAMES_ALL = "all"
DEFAULT_MAX_FRAMES = 300          # frames written per animated file with frames="all"

COPYABLE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg"}  # MPO: phone JPEG + extras
_COPYABLE_MODES = ("RGB", "L")
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}

FORMAT_FIXES = {
    ".heic": "Convert it to JPEG or PNG (iPhone: Settings > Camera > Formats > Most Compatible), "
             "or install pillow-heif.",
    ".avif": "Convert it to PNG or JPEG (or install pillow-avif-plugin, which the WebUI ships).",
    ".jxl": "Convert it to PNG or JPEG (or install a JPEG XL plugin for Pillow).",
    ".svg": "Export it as a PNG at the size you want to train on.",
    ".psd": "Export a flattened PNG from your image editor.",
    ".dng": "Export a JPEG or PNG from your raw converter.",
}
FORMAT_FIXES[".heif"] = FORMAT_FIXES[".heic"]
for _raw in (".cr2", ".nef", ".arw"):
    FORMAT_FIXES[_raw] = FORMAT_FIXES[".dng"]


@dataclass(frozen=True)
class Header:
    format: str | None
    mode: str | None
    frames: int
    orientation: int
    transparency: bool

    @property
    def copyable(self) -> bool:
        """True when the file's own bytes are what training would read anyway."""
        return (self.format in COPYABLE_FORMATS and self.mode in _COPYABLE_MODES
                and not self.transparency and self.orientation == 1 and self.frames == 1)


def read_header(path) -> Header:
    """What the file is, for the copy-or-re-encode decision. Called only after open_image()
    decoded the file, so a failure here is unexpected: it just forces a re-encode."""
    try:
        with _decoding(path) as im:
            frames = int(getattr(im, "n_frames", 1) or 1) if getattr(im, "is_animated", False) else 1
            if im.format == "MPO":
                frames = 1  # the extra "frames" are depth maps / previews, not an animation
            transparency = im.mode in _ALPHA_MODES or "transparency" in im.info
            try:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            except Exception:  # malformed EXIF; open_image kept the pixels as stored too
                orientation = 1
            return Header(im.format, im.mode, frames, orientation, transparency)
    except Exception:
        return Header(None, None, 1, 1, True)


def changes(header: Header, frame: int | None) -> list[str]:
    out = []
    if header.format not in COPYABLE_FORMATS:
        out.append(f"{header.format or 'image'} converted to PNG")
    if header.orientation in _TRANSPOSE:
        out.append(f"EXIF orientation {header.orientation} baked in")
    if header.transparency:
        out.append("transparency flattened onto white")
    if header.mode in _SIXTEEN_BIT_MODES:
        out.append("16-bit converted to 8-bit")
    if header.mode == "CMYK":
        out.append("CMYK converted to RGB (no colour profile applied)")
    if header.format in COPYABLE_FORMATS and header.mode not in \
            _COPYABLE_MODES + _ALPHA_MODES + _SIXTEEN_BIT_MODES + ("CMYK",) and not header.transparency:
        out.append(f"{header.mode or 'image'} mode converted to RGB")
    if header.frames > 1:
        out.append(f"animated: frame {(frame or 0) + 1} of {header.frames}")
    return out


def _frame_to_rgb(im: Image.Image, orientation: int) -> Image.Image:
    """The current frame of an animation as upright RGB on white (frames are 8-bit)."""
    rgb = _to_rgb(im)
    if orientation in _TRANSPOSE:
        return rgb.transpose(_TRANSPOSE[orientation])
    return rgb.copy() if rgb is im else rgb  # the file's image moves on to the next frame


def later_frames(path, header: Header, max_frames: int):
    """Yield (index, RGB image) for frames 1..; a decoding error ends the sequence by raising.

    Pillow's own exceptions reach the caller (not dataset.images' UserError): the import
    reports them per frame, after the frames that did decode.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with open(path, "rb") as fp, Image.open(fp) as im:
            for index in range(1, min(header.frames, max_frames)):
                im.seek(index)
                yield index, _frame_to_rgb(im, header.orientation)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
