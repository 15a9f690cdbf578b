"""Dataset projects: a folder the user names, holding `images/`, `project.json` and `.trash/`.

Layout of a project folder (under a configurable projects root):

    <root>/<name>/project.json   manifest: where every image came from, the undo history
    <root>/<name>/images/        the working copies: PNG/JPEG only, EXIF baked, alpha on white,
                                 captions next to them (<stem>.txt), one flat folder
    <root>/<name>/.trash/<op>/   what a batch operation removed or overwrote, for undo_last()
    <root>/<name>/.staging/      zip extraction scratch space (removed after each import)

Rules the code keeps:
- sources are only ever read (copied or decoded); nothing is written outside the project;
- every destructive change to images/ goes through an Operation, which first moves (or
  copies) the old file into .trash/<op>/ so undo_last() can put it back;
- every file that is not imported is reported by name with a fix (FileProblem), and no
  bad input raises: only a bad *source* (missing folder, not a zip) raises UserError;
- Pillow's process-wide flags (LOAD_TRUNCATED_IMAGES, MAX_IMAGE_PIXELS) are not touched.

Only Pillow is needed here (decoding goes through lora_trainer.dataset.images).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import shutil
import stat
import time
import unicodedata
import warnings
import zipfile
import zlib
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from ..dataset.captions import CAPTION_EXTENSIONS
from ..dataset.images import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS, open_image
from ..errors import UserError
from ..output.save import write_text_atomic
from .problems import FileProblem

MANIFEST_NAME = "project.json"
IMAGES_DIR = "images"
TRASH_DIR = ".trash"
STAGING_DIR = ".staging"
FORMAT_VERSION = 1

FRAMES_FIRST = "first"
FRAMES_ALL = "all"
DEFAULT_MAX_FRAMES = 300          # frames written per animated file with frames="all"
MAX_CAPTION_BYTES = 1 << 20       # a "caption" larger than this is not a caption
MAX_FOLDER_DEPTH = 64

# Everything we try to decode on import (the trainer's formats and the ones we convert).
_CANDIDATE_EXTENSIONS = frozenset(IMAGE_EXTENSIONS) | frozenset(UNSUPPORTED_IMAGE_EXTENSIONS)
_CAPTION_EXTENSIONS = tuple(CAPTION_EXTENSIONS)
_JUNK_FILES = frozenset({"thumbs.db", "desktop.ini", ".ds_store", "ehthumbs.db"})
_JUNK_FOLDERS = frozenset({"__macosx"})

_COPYABLE_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg"}  # MPO: phone JPEG + extras
_COPYABLE_MODES = ("RGB", "L")
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}

_FORMAT_FIXES = {
    ".heic": "Convert it to JPEG or PNG (iPhone: Settings > Camera > Formats > Most Compatible), "
             "or install pillow-heif.",
    ".avif": "Convert it to PNG or JPEG (or install pillow-avif-plugin, which the WebUI ships).",
    ".jxl": "Convert it to PNG or JPEG (or install a JPEG XL plugin for Pillow).",
    ".svg": "Export it as a PNG at the size you want to train on.",
    ".psd": "Export a flattened PNG from your image editor.",
    ".dng": "Export a JPEG or PNG from your raw converter.",
}
_FORMAT_FIXES[".heif"] = _FORMAT_FIXES[".heic"]
for _raw in (".cr2", ".nef", ".arw"):
    _FORMAT_FIXES[_raw] = _FORMAT_FIXES[".dng"]

_INVALID_NAME_CHARS = frozenset('<>:"/\\|?*')
_RESERVED_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                             *(f"LPT{i}" for i in range(1, 10))})
_MAX_STEM_BYTES = 150   # leaves room for "_123_f000.caption" under the usual 255-byte limit
_MAX_PROJECT_NAME = 80
_UTF8_BOM = b"\xef\xbb\xbf"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _within(path: str, folder: str) -> bool:
    """True when real path `path` is `folder` or inside it (both already realpath'd)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while chunk := fp.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- names

def clean_stem(stem: str) -> str:
    """A file-name stem that is safe on Windows, macOS and Linux (never empty, never hidden)."""
    stem = unicodedata.normalize("NFC", stem)  # macOS hands out decomposed (NFD) names
    stem = "".join("_" if (c in _INVALID_NAME_CHARS or ord(c) < 32) else c for c in stem)
    stem = stem.strip().lstrip(".").strip().rstrip(". ")
    if stem.split(".")[0].upper() in _RESERVED_NAMES:
        stem += "_"
    encoded = stem.encode("utf-8")
    if len(encoded) > _MAX_STEM_BYTES:
        stem = encoded[:_MAX_STEM_BYTES].decode("utf-8", "ignore").rstrip(". ")
    return stem or "image"


class _NameAllocator:
    """Hands out stems unique case-insensitively among everything already in images/.

    Uniqueness is by *stem*, not by file name, so that `a.png` and `a.jpg` never share
    `a.txt` (kohya pairs captions by stem).
    """

    def __init__(self, existing_names):
        self.taken = {os.path.splitext(n)[0].lower() for n in existing_names}

    def claim(self, stem: str) -> str:
        candidate, counter = stem, 1
        while candidate.lower() in self.taken:
            candidate = f"{stem}_{counter}"
            counter += 1
        self.taken.add(candidate.lower())
        return candidate


def validate_project_name(name) -> str:
    """The project name, stripped; UserError (key "project name") when unusable as a folder."""
    text = unicodedata.normalize("NFC", str(name or "")).strip()
    fix = "Use letters, digits, spaces, '-' or '_' (e.g. my_character)."
    if not text:
        raise UserError("The project name is empty.", fix=fix, key="project name")
    bad = sorted({c for c in text if c in _INVALID_NAME_CHARS or ord(c) < 32})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise UserError(f"The project name {text!r} contains characters a folder name cannot "
                        f"have: {shown}.", fix=fix, key="project name")
    if text.startswith(".") or text.endswith("."):
        raise UserError(f"The project name {text!r} starts or ends with a dot.", fix=fix,
                        key="project name")
    if text.split(".")[0].upper() in _RESERVED_NAMES:
        raise UserError(f"{text!r} is a reserved name on Windows.", fix=fix, key="project name")
    if len(text) > _MAX_PROJECT_NAME:
        raise UserError(f"The project name is {len(text)} characters long.",
                        fix=f"Use at most {_MAX_PROJECT_NAME} characters.", key="project name")
    return text


# ---------------------------------------------------------------- reports

@dataclass
class ImportedImage:
    """One file written into images/."""

    name: str                     # file name inside images/
    source: str                   # the source as the user knows it (path, or archive.zip/member)
    size: tuple[int, int]         # (w, h) as written (EXIF orientation applied)
    copied: bool                  # True: the source bytes were copied unchanged
    source_format: str | None     # what Pillow read: "JPEG", "GIF", "WEBP", ...
    changes: list[str] = field(default_factory=list)   # what was normalised, in words
    frame: int | None = None      # frame index for frames="all" imports of animations
    captions: list[str] = field(default_factory=list)  # caption files written next to it

    def as_dict(self) -> dict:
        out = asdict(self)
        out["size"] = list(self.size)
        return out


@dataclass
class ImportReport:
    source: str
    operation: str | None = None                      # undo id (None when nothing was written)
    imported: list[ImportedImage] = field(default_factory=list)
    skipped: list[FileProblem] = field(default_factory=list)   # not imported: why, and the fix
    warnings: list[FileProblem] = field(default_factory=list)  # imported, but check it
    stopped: bool = False                             # should_stop() ended it early

    def summary(self) -> str:
        text = f"Imported {len(self.imported)} image(s) from {self.source}"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} file(s)"
        if self.warnings:
            text += f"; {len(self.warnings)} warning(s)"
        if self.stopped:
            text += "; stopped before the end"
        return text + "."

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "operation": self.operation,
            "imported": [i.as_dict() for i in self.imported],
            "skipped": [p.as_dict() for p in self.skipped],
            "warnings": [p.as_dict() for p in self.warnings],
            "stopped": self.stopped,
            "counts": {"imported": len(self.imported), "skipped": len(self.skipped),
                       "warnings": len(self.warnings)},
            "summary": self.summary(),
        }


@dataclass
class OperationReport:
    """Result of trash() / undo_last()."""

    kind: str                      # "trash" | "undo"
    operation: str | None          # the operation recorded (trash) or undone (undo)
    message: str
    names: list[str] = field(default_factory=list)      # trashed, or restored by undo
    removed: list[str] = field(default_factory=list)    # undo: files an undone import had added
    problems: list[FileProblem] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "operation": self.operation, "message": self.message,
                "names": list(self.names), "removed": list(self.removed),
                "problems": [p.as_dict() for p in self.problems]}


@dataclass(frozen=True)
class ZipLimits:
    """Refuse archives (or entries) beyond these: zip bombs, accidental huge uploads."""

    max_members: int = 50_000
    max_total_bytes: int = 16 << 30      # uncompressed, whole archive
    max_member_bytes: int = 1 << 30      # uncompressed, one entry
    max_ratio: float = 200.0             # uncompressed / compressed, for entries over ratio_floor
    ratio_floor: int = 32 << 20


# ---------------------------------------------------------------- captions

def _read_caption(path: Path, shown: str) -> tuple[str | None, FileProblem | None]:
    """(text, problem): UTF-8 with the BOM stripped; UTF-16 with BOM decoded; anything else
    that is not UTF-8 is decoded as cp1252 with a warning (text is kept, the user checks it)."""
    try:
        size = path.stat().st_size
        if size > MAX_CAPTION_BYTES:
            return None, FileProblem(shown, f"The caption file is {size // 1024} KiB, too large "
                                     "for a caption; it was not imported.",
                                     "Captions are one line of text; check this file.",
                                     "caption_too_large", "warning")
        data = path.read_bytes()
    except OSError as exc:
        return None, FileProblem(shown, f"The caption file cannot be read ({exc.strerror or exc});"
                                 " the image was imported without it.",
                                 "Check the file permissions.", "caption_unreadable", "warning")
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    elif data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16"), None   # Notepad's "Unicode": converted to UTF-8
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        text = data.decode("cp1252", errors="replace")
        return text, FileProblem(
            shown,
            f"The caption is not UTF-8 (byte 0x{data[exc.start]:02x} at position {exc.start}); "
            "it was read as Windows-1252 (cp1252) and saved as UTF-8.",
            "Check accented or special characters in the imported caption; save captions as "
            "UTF-8 in future.", "caption_not_utf8", "warning")


# ---------------------------------------------------------------- image headers and frames

@dataclass(frozen=True)
class _Header:
    format: str | None
    mode: str | None
    frames: int
    orientation: int
    transparency: bool


def _header(path) -> _Header:
    """What the file is, for the copy-or-re-encode decision. Called only after open_image()
    decoded the file, so a failure here is unexpected: it just forces a re-encode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as fp, Image.open(fp) as im:
                frames = int(getattr(im, "n_frames", 1) or 1) if getattr(im, "is_animated", False) else 1
                if im.format == "MPO":
                    frames = 1  # the extra "frames" are depth maps / previews, not an animation
                transparency = im.mode in _ALPHA_MODES or "transparency" in im.info
                try:
                    orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
                except Exception:  # malformed EXIF; open_image kept the pixels as stored too
                    orientation = 1
                return _Header(im.format, im.mode, frames, orientation, transparency)
    except Exception:
        return _Header(None, None, 1, 1, True)


def _changes(header: _Header, frame: int | None) -> list[str]:
    out = []
    if header.format not in _COPYABLE_FORMATS:
        out.append(f"{header.format or 'image'} converted to PNG")
    if header.orientation in _TRANSPOSE:
        out.append(f"EXIF orientation {header.orientation} baked in")
    if header.transparency:
        out.append("transparency flattened onto white")
    if header.mode in _SIXTEEN_BIT_MODES:
        out.append("16-bit converted to 8-bit")
    if header.mode == "CMYK":
        out.append("CMYK converted to RGB (no colour profile applied)")
    if header.format in _COPYABLE_FORMATS and header.mode not in \
            _COPYABLE_MODES + _ALPHA_MODES + _SIXTEEN_BIT_MODES + ("CMYK",) and not header.transparency:
        out.append(f"{header.mode or 'image'} mode converted to RGB")
    if header.frames > 1:
        out.append(f"animated: frame {(frame or 0) + 1} of {header.frames}")
    return out


def _frame_to_rgb(im: Image.Image, orientation: int) -> Image.Image:
    """The current frame of an animation as upright RGB on white (frames are 8-bit)."""
    frame = im
    if frame.mode in _SIXTEEN_BIT_MODES:
        frame = frame.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    rgba = frame.convert("RGBA")
    if orientation in _TRANSPOSE:
        rgba = rgba.transpose(_TRANSPOSE[orientation])
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _later_frames(path, header: _Header, max_frames: int):
    """Yield (index, RGB image) for frames 1..; a decoding error ends the sequence by raising."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with open(path, "rb") as fp, Image.open(fp) as im:
            for index in range(1, min(header.frames, max_frames)):
                im.seek(index)
                yield index, _frame_to_rgb(im, header.orientation)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- operations (trash / undo)

class Operation:
    """One batch change to images/. Use through Project.operation(kind):

        with project.operation("reencode") as op:
            op.before_change("a.png")   # copy kept in .trash/<op>/ ; then overwrite a.png
            op.remove("b.png")          # moved into .trash/<op>/
            op.added("c.png")           # a new file: undo deletes it

    undo_last() reverses the entries in reverse order.
    """

    def __init__(self, project: "Project", kind: str, description: str = ""):
        self.project = project
        self.kind = kind
        self.description = description
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.id = f"{stamp}-{kind}-{secrets.token_hex(3)}"
        self.dir = project.trash_dir / self.id
        self.created = _now()
        self.entries: list[dict] = []

    def _keep_path(self, name: str) -> Path:
        files = self.dir / "files"
        files.mkdir(parents=True, exist_ok=True)
        return files / f"{len(self.entries):05d}_{name}"

    def added(self, name: str) -> None:
        self.entries.append({"action": "added", "name": name})

    def remove(self, name: str) -> None:
        """Move images/<name> into this operation's trash folder."""
        source = self.project._member(name)
        kept = self._keep_path(source.name)
        os.replace(source, kept)  # same file system: the trash is inside the project
        self.entries.append({"action": "removed", "name": source.name,
                             "kept": kept.relative_to(self.dir).as_posix(),
                             "manifest": self.project.manifest["images"].pop(source.name, None)})

    def before_change(self, name: str) -> None:
        """Keep a copy of images/<name> before it is overwritten or re-encoded."""
        source = self.project._member(name)
        if any(e["name"] == source.name and e["action"] in ("added", "changed")
               for e in self.entries):
            return  # already kept (or created by this operation: undo deletes it anyway)
        kept = self._keep_path(source.name)
        shutil.copy2(source, kept)
        self.entries.append({"action": "changed", "name": source.name,
                             "kept": kept.relative_to(self.dir).as_posix(),
                             "manifest": self.project.manifest["images"].get(source.name)})

    def _write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.dir / "operation.json", json.dumps(
            {"id": self.id, "kind": self.kind, "description": self.description,
             "created": self.created, "entries": self.entries}, ensure_ascii=False, indent=1))


# ---------------------------------------------------------------- the project

@dataclass
class _Item:
    """One image to import, with the caption files found next to it."""

    path: Path
    display: str
    captions: list[tuple[Path, str]]  # (path, display)


class Project:
    """A dataset project folder. `Project(root)` opens it, creating it when missing.

    `root` is the project folder itself (see create_project / open_project for the
    "<projects root>/<name>" convention). create=False raises UserError when `root`
    is not a project yet.
    """

    def __init__(self, root, create: bool = True):
        self.root = Path(os.path.abspath(os.path.expanduser(str(root))))
        self.warnings: list[FileProblem] = []
        if self.root.exists() and not self.root.is_dir():
            raise UserError("This is a file, not a project folder.", path=self.root,
                            fix="Choose another project name or location.")
        if not self.manifest_path.is_file():
            if not create:
                raise UserError("This folder is not a dataset project (it has no project.json).",
                                path=self.root, fix="Create the project first, or pick another one.")
            self.root.mkdir(parents=True, exist_ok=True)
        if self.images_dir.is_symlink() or (self.images_dir.exists() and not self.images_dir.is_dir()):
            raise UserError("The project's images/ is not a plain folder (a link or a file).",
                            path=self.images_dir,
                            fix="Move it away; the project keeps its images in a real images/ folder.")
        if self.trash_dir.is_symlink() or (self.trash_dir.exists() and not self.trash_dir.is_dir()):
            raise UserError("The project's .trash/ is not a plain folder (a link or a file).",
                            path=self.trash_dir, fix="Move it away; the trash must live inside the project.")
        self.images_dir.mkdir(exist_ok=True)
        self.manifest = self._load_manifest()
        self._remove_leftovers()

    # -- paths and manifest

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.root.name)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def images_dir(self) -> Path:
        return self.root / IMAGES_DIR

    @property
    def trash_dir(self) -> Path:
        return self.root / TRASH_DIR

    def _new_manifest(self) -> dict:
        return {"format": FORMAT_VERSION, "name": self.root.name, "created": _now(),
                "images": {}, "history": []}

    def _load_manifest(self) -> dict:
        if not self.manifest_path.is_file():
            manifest = self._new_manifest()
            self.manifest = manifest
            self._save_manifest()
            return manifest
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            # The images are the truth; a broken manifest only loses provenance and undo.
            backup = self.manifest_path.with_name(f"{MANIFEST_NAME}.broken-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.manifest_path, backup)
            self.warnings.append(FileProblem(
                str(self.manifest_path), f"The project manifest could not be read ({exc}); a new "
                f"one was started and the old one kept as {backup.name}. The images are unchanged; "
                "their import history and the undo list were lost.",
                "Nothing to do, unless you edited project.json by hand.", "manifest_broken",
                "warning"))
            manifest = self._new_manifest()
            self.manifest = manifest
            self._save_manifest()
            return manifest
        base = self._new_manifest()
        for key in ("images", "history"):
            if not isinstance(manifest.get(key), type(base[key])):
                manifest[key] = base[key]
        manifest.setdefault("format", FORMAT_VERSION)
        manifest.setdefault("name", self.root.name)
        return manifest

    def _save_manifest(self) -> None:
        write_text_atomic(self.manifest_path, json.dumps(self.manifest, ensure_ascii=False, indent=1))

    def _remove_leftovers(self) -> None:
        """A crash mid-import can leave temp files and staging folders; they are ours."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.images_dir):
                if entry.name.startswith(".tmp-import-") and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
        staging = self.root / STAGING_DIR
        if staging.is_symlink():
            os.unlink(staging)  # never extract through a link that leads out of the project
        elif staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)

    # -- listing

    def image_names(self) -> list[str]:
        """Image files in images/ (the trainer's extensions, not hidden), sorted."""
        with os.scandir(self.images_dir) as it:
            names = [e.name for e in it if not e.name.startswith(".")
                     and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
                     and e.is_file(follow_symlinks=False)]
        return sorted(names, key=lambda n: (n.lower(), n))

    def image_paths(self) -> list[Path]:
        return [self.images_dir / n for n in self.image_names()]

    def history(self) -> list[dict]:
        """Undoable operations, oldest first: id, kind, description, created, counts."""
        out = []
        for op_id in self.manifest["history"]:
            info = {"id": op_id}
            with contextlib.suppress(OSError, ValueError):
                data = json.loads((self.trash_dir / op_id / "operation.json").read_text("utf-8"))
                counts: dict[str, int] = {}
                for entry in data.get("entries", []):
                    counts[entry["action"]] = counts.get(entry["action"], 0) + 1
                info.update(kind=data.get("kind"), description=data.get("description"),
                            created=data.get("created"), counts=counts)
            out.append(info)
        return out

    def _plain_name(self, name) -> str:
        text = str(name)
        if os.sep in text or "/" in text or (os.altsep and os.altsep in text):
            path = Path(text)
            if os.path.realpath(path.parent) != os.path.realpath(self.images_dir):
                raise UserError("This file is not in the project's images folder.", path=text,
                                fix="Pick images from this project's list.")
            text = path.name
        if text in ("", ".", "..") or text.startswith("."):
            raise UserError("Not an image name of this project.", path=text,
                            fix="Pick images from this project's list.")
        return text

    def _member(self, name) -> Path:
        """images/<name> for a plain name (or a path inside images/); UserError otherwise."""
        text = self._plain_name(name)
        path = self.images_dir / text
        if not path.is_file() or path.is_symlink():
            raise UserError("This file is not in the project's images folder (any more).",
                            path=text, fix="Refresh the list; it may have been removed already.")
        return path

    # -- operations

    @contextlib.contextmanager
    def operation(self, kind: str, description: str = ""):
        """Record a batch change (see Operation). Only operations with entries are kept."""
        op = Operation(self, kind, description)
        try:
            yield op
        finally:
            if op.entries:
                op._write()
                self.manifest["history"].append(op.id)
            elif op.dir.exists():
                shutil.rmtree(op.dir, ignore_errors=True)
            self._save_manifest()

    def trash(self, names) -> OperationReport:
        """Move images (and their caption/sidecar files) to .trash/; undo_last() restores them."""
        report = OperationReport("trash", None, "")
        if isinstance(names, (str, os.PathLike)):
            names = [names]
        wanted: list[str] = []
        for name in names:
            try:
                path = self._member(name)
            except UserError as exc:
                report.problems.append(FileProblem.from_user_error(exc, kind="not_in_project"))
                continue
            if path.name not in wanted:
                wanted.append(path.name)
        with os.scandir(self.images_dir) as it:
            present = sorted(e.name for e in it if not e.name.startswith("."))
        keep_stems = {os.path.splitext(n)[0] for n in present
                      if n not in wanted and os.path.splitext(n)[1].lower() in _CANDIDATE_EXTENSIONS}
        with self.operation("trash", f"Moved {len(wanted)} image(s) to the trash") as op:
            for name in wanted:
                try:
                    op.remove(name)
                except (UserError, OSError) as exc:
                    report.problems.append(FileProblem(name, f"Could not move it to the trash ({exc}).",
                                                       "Check the file permissions.", "trash_failed"))
                    continue
                report.names.append(name)
                stem = os.path.splitext(name)[0]
                if stem in keep_stems:
                    continue  # another image still uses <stem>.txt
                for other in present:
                    if other != name and other not in wanted and os.path.splitext(other)[0] == stem:
                        with contextlib.suppress(UserError, OSError):
                            op.remove(other)
            report.operation = op.id if op.entries else None
        report.message = (f"Moved {len(report.names)} image(s) to the trash (undo is available)."
                          if report.names else "Nothing was moved to the trash.")
        return report

    def undo_last(self) -> OperationReport:
        """Reverse the most recent batch operation (import, trash, or any Operation)."""
        report = OperationReport("undo", None, "")
        history = self.manifest["history"]
        data = None
        while history:
            op_id = history[-1]
            try:
                data = json.loads((self.trash_dir / op_id / "operation.json").read_text("utf-8"))
                break
            except (OSError, ValueError):
                history.pop()
                report.problems.append(FileProblem(str(self.trash_dir / op_id),
                                                   "The saved state of this operation is missing; "
                                                   "it cannot be undone.", None,
                                                   "undo_missing", "warning"))
        if data is None:
            self._save_manifest()
            report.message = "Nothing to undo."
            return report
        op_dir = self.trash_dir / data["id"]
        real_op = os.path.realpath(op_dir)
        images = self.manifest["images"]
        for entry in reversed(data.get("entries", [])):
            action, name = entry.get("action"), entry.get("name", "")
            try:
                name = self._plain_name(name)
            except UserError as exc:
                report.problems.append(FileProblem.from_user_error(exc, kind="undo_bad_entry"))
                continue
            target = self.images_dir / name
            if action == "added":
                if target.is_file() and not target.is_symlink():
                    target.unlink()
                    report.removed.append(name)
                images.pop(name, None)
                continue
            kept = op_dir / str(entry.get("kept", ""))
            if not _within(os.path.realpath(kept), real_op) or not kept.is_file():
                report.problems.append(FileProblem(name, "Its saved copy is missing from the "
                                                   "trash; it was not restored.", None,
                                                   "undo_missing", "warning"))
                continue
            if action == "removed" and target.exists():
                stem, ext = os.path.splitext(name)
                free = _NameAllocator(os.listdir(self.images_dir)).claim(f"{stem}_restored")
                report.problems.append(FileProblem(name, f"A file with this name exists again; "
                                                   f"it was restored as {free}{ext}.", None,
                                                   "undo_renamed", "note"))
                name, target = free + ext, self.images_dir / (free + ext)
            os.replace(kept, target)
            if entry.get("manifest") is not None:
                images[name] = entry["manifest"]
            report.names.append(name)
        history.pop()
        self._save_manifest()
        shutil.rmtree(op_dir, ignore_errors=True)
        report.operation = data["id"]
        what = data.get("description") or data.get("kind")
        report.message = f"Undid: {what}."
        return report

    def empty_trash(self) -> int:
        """Delete .trash/ for good (the undo history goes with it). Returns bytes freed."""
        freed = 0
        if self.trash_dir.is_dir() and not self.trash_dir.is_symlink():
            for folder, _dirs, files in os.walk(self.trash_dir):
                for name in files:
                    with contextlib.suppress(OSError):
                        freed += os.lstat(os.path.join(folder, name)).st_size
            shutil.rmtree(self.trash_dir, ignore_errors=True)
        self.manifest["history"] = []
        self._save_manifest()
        return freed

    # -- import: public entry points

    def import_folder(self, src, recursive: bool = True, progress=None, should_stop=None, *,
                      frames: str = FRAMES_FIRST, max_frames: int = DEFAULT_MAX_FRAMES) -> ImportReport:
        """Copy every image under `src` into images/ (converted where needed).

        progress(done, total, source_name) is called before each file; should_stop() is
        polled between files. frames: "first" or "all" for animated GIF/WebP/PNG.
        Raises UserError only for a bad `src`; per-file trouble lands in the report.
        """
        frames = _check_frames(frames)
        source = Path(os.path.abspath(os.path.expanduser(str(src))))
        if not source.is_dir():
            raise UserError("The folder to import from does not exist (or is not a folder).",
                            path=source, fix="Check the path; paste the folder that holds your images.")
        real_source, real_root = os.path.realpath(source), os.path.realpath(self.root)
        if _within(real_source, real_root):
            raise UserError("The folder to import from is inside this project.", path=source,
                            fix="Import from the folder that holds your original images.")
        report = ImportReport(source=str(source))
        items = self._collect(source, recursive, report, skip_real=(real_root,))
        with self.operation("import", f"Import from {source}") as op:
            self._import_items(items, op, report, frames, max_frames, progress, should_stop)
            report.operation = op.id if op.entries else None
        return report

    def import_files(self, paths, names=None, progress=None, should_stop=None, *,
                     frames: str = FRAMES_FIRST, max_frames: int = DEFAULT_MAX_FRAMES,
                     zip_limits: ZipLimits | None = None) -> ImportReport:
        """Import uploaded files: images, their .txt captions (paired by name) and zips.

        `names` (optional, same length) are the names the user uploaded, when the paths
        are temp files with other names.
        """
        frames = _check_frames(frames)
        paths = [Path(p) for p in paths]
        shown = [str(n) for n in names] if names is not None else [str(p) for p in paths]
        if len(shown) != len(paths):
            raise ValueError("names must match paths one to one")
        report = ImportReport(source="uploaded files")
        with self.operation("import", "Import of uploaded files") as op:
            plain = []
            for path, display in zip(paths, shown):
                if os.path.splitext(display)[1].lower() == ".zip":
                    try:
                        self._import_zip_into(path, display, op, report, frames, max_frames,
                                              None, should_stop, zip_limits or ZipLimits())
                    except UserError as exc:
                        report.skipped.append(FileProblem.from_user_error(exc, kind="zip_unreadable",
                                                                          path=display))
                elif not path.is_file():
                    report.skipped.append(FileProblem(display, "The uploaded file is missing.",
                                                      "Upload it again.", "missing"))
                else:
                    plain.append((path, Path(display).name, display))
            items = self._group(plain, report)
            self._import_items(items, op, report, frames, max_frames, progress, should_stop)
            report.operation = op.id if op.entries else None
        return report

    def import_zip(self, path, progress=None, should_stop=None, *, frames: str = FRAMES_FIRST,
                   max_frames: int = DEFAULT_MAX_FRAMES, limits: ZipLimits | None = None) -> ImportReport:
        """Import the images (and captions) inside a zip archive, safely.

        Entries with absolute paths or '..' (zip-slip), links, encrypted entries and entries
        beyond `limits` are skipped and reported; an archive beyond the limits as a whole,
        or one that is not a zip, raises UserError.
        """
        frames = _check_frames(frames)
        archive = Path(os.path.abspath(os.path.expanduser(str(path))))
        report = ImportReport(source=str(archive))
        with self.operation("import", f"Import from {archive.name}") as op:
            self._import_zip_into(archive, str(archive), op, report, frames, max_frames, progress,
                                  should_stop, limits or ZipLimits())
            report.operation = op.id if op.entries else None
        return report

    # -- import: collecting sources

    def _collect(self, top: Path, recursive: bool, report: ImportReport, skip_real=(),
                 display=str) -> list[_Item]:
        """Breadth-first walk (top-level files get the plain names), following folder links
        but never the same real folder twice (link loops), skipping hidden folders."""
        items: list[_Item] = []
        try:
            st = os.stat(top)
            visited = {(st.st_dev, st.st_ino)}
        except OSError:
            visited = set()
        queue = deque([(top, 0)])
        while queue:
            folder, depth = queue.popleft()
            try:
                with os.scandir(folder) as it:
                    # Case-insensitive order, lower case first: a.png before A.PNG gets "a".
                    entries = sorted(it, key=lambda e: (e.name.casefold(), e.name.swapcase()))
            except OSError as exc:
                report.skipped.append(FileProblem(display(folder), f"The folder cannot be read "
                                                  f"({exc.strerror or exc}).",
                                                  "Check its permissions.", "unreadable_folder"))
                continue
            files = []
            for entry in entries:
                path = Path(entry.path)
                shown = display(path)
                try:
                    is_link = entry.is_symlink()
                    if is_link and not os.path.exists(entry.path):
                        report.skipped.append(FileProblem(shown, "This is a link to something that "
                                                          "does not exist.", "Delete the link, or "
                                                          "point it at the real file.",
                                                          "broken_link", "note"))
                        continue
                    is_dir = entry.is_dir()
                    is_file = not is_dir and entry.is_file()
                except OSError as exc:
                    report.skipped.append(FileProblem(shown, f"It cannot be read ({exc.strerror or exc}).",
                                                      "Check its permissions.", "unreadable"))
                    continue
                if is_dir:
                    self._queue_folder(path, shown, entry.name, depth, recursive, visited,
                                       skip_real, queue, report)
                elif is_file:
                    real = os.path.realpath(path) if is_link else None
                    if real and any(_within(real, s) for s in skip_real):
                        report.skipped.append(FileProblem(shown, "This link points into the "
                                                          "project itself; not imported.",
                                                          "Nothing to do.", "inside_project", "note"))
                        continue
                    files.append((path, entry.name, shown))
                else:
                    report.skipped.append(FileProblem(shown, "Not a regular file (a device, pipe or "
                                                      "socket); not imported.",
                                                      "Nothing to do: only regular files are imported.",
                                                      "not_file", "note"))
            items.extend(self._group(files, report))
        return items

    @staticmethod
    def _queue_folder(path, shown, name, depth, recursive, visited, skip_real, queue, report):
        if name.startswith(".") or name.lower() in _JUNK_FOLDERS:
            report.skipped.append(FileProblem(shown, "Hidden or system folder; not imported.",
                                              "Rename it without the leading dot to import it.",
                                              "hidden", "note"))
            return
        if not recursive:
            report.skipped.append(FileProblem(shown, "Subfolder not imported (recursive import "
                                              "is off).", "Turn on recursive import to include it.",
                                              "subfolder", "note"))
            return
        real = os.path.realpath(path)
        if any(_within(real, s) for s in skip_real):
            report.skipped.append(FileProblem(shown, "This is the project folder itself; not "
                                              "imported into itself.", "Nothing to do.", "inside_project",
                                              "note"))
            return
        if depth + 1 > MAX_FOLDER_DEPTH:
            report.skipped.append(FileProblem(shown, f"Folders nested deeper than {MAX_FOLDER_DEPTH} "
                                              "levels are not imported.", "Flatten the folder tree.",
                                              "too_deep", "warning"))
            return
        try:
            st = os.stat(path)
        except OSError as exc:
            report.skipped.append(FileProblem(shown, f"The folder cannot be read ({exc.strerror or exc}).",
                                              "Check its permissions.", "unreadable_folder"))
            return
        key = (st.st_dev, st.st_ino)
        if key in visited:
            report.skipped.append(FileProblem(shown, "This folder link leads back to a folder "
                                              "already imported (a link loop); not followed.",
                                              "Nothing to do; remove the link if it is a mistake.",
                                              "link_loop", "note"))
            return
        visited.add(key)
        queue.append((path, depth + 1))

    @staticmethod
    def _group(files, report: ImportReport) -> list[_Item]:
        """Classify (path, pairing name, display) triples of one folder; pair captions by stem
        (exact first, then case-insensitive). Everything not imported is reported."""
        images, captions = [], []
        for path, name, shown in files:
            ext = os.path.splitext(name)[1].lower()
            if name.lower() in _JUNK_FILES:
                report.skipped.append(FileProblem(shown, "System file; ignored.", "Nothing to do: "
                                                  "system files are never imported.", "ignored",
                                                  "note"))
            elif name.startswith("."):
                report.skipped.append(FileProblem(shown, "Hidden file (e.g. macOS '._' metadata); "
                                                  "not imported.", "Rename it without the leading "
                                                  "dot if it is a real image.", "hidden", "note"))
            elif ext in _CANDIDATE_EXTENSIONS:
                images.append((path, name, shown))
            elif ext in _CAPTION_EXTENSIONS:
                captions.append((path, name, shown))
            else:
                report.skipped.append(FileProblem(
                    shown, f"Not an image ({ext or 'no extension'}); not imported.",
                    "Only images (PNG, JPEG, WebP, BMP, GIF, TIFF, AVIF, ...) and their .txt / "
                    ".caption files are imported.", "not_image", "note"))
        exact: dict[str, list] = {}
        for cap in captions:
            exact.setdefault(os.path.splitext(cap[1])[0], []).append(cap)
        image_stems = {os.path.splitext(n)[0] for _, n, _ in images}
        used: set[str] = set()
        items = []
        for path, name, shown in images:
            stem = os.path.splitext(name)[0]
            found = list(exact.get(stem, []))
            if not found:
                found = [c for s, caps in exact.items() for c in caps
                         if s.lower() == stem.lower() and s not in image_stems]
            used.update(c[2] for c in found)
            items.append(_Item(path, shown, [(c[0], c[2]) for c in found]))
        for _path, name, shown in captions:
            if shown not in used:
                report.skipped.append(FileProblem(
                    shown, "Caption file with no image of the same name next to it; not imported.",
                    f"Rename it to match its image (e.g. {os.path.splitext(name)[0]}.png), or delete it.",
                    "caption_without_image", "warning"))
        return items

    # -- import: writing

    def _import_items(self, items, op: Operation, report: ImportReport, frames, max_frames,
                      progress, should_stop) -> None:
        names = _NameAllocator(os.listdir(self.images_dir))
        known = {(e.get("source"), e.get("source_sha256")): n
                 for n, e in self.manifest["images"].items() if isinstance(e, dict)}
        total = len(items)
        try:
            for index, item in enumerate(items):
                if should_stop is not None and should_stop():
                    report.stopped = True
                    break
                if progress is not None:
                    progress(index, total, item.display)
                try:
                    self._import_one(item, op, report, names, known, frames, max_frames)
                except OSError as exc:  # writing into the project failed
                    report.skipped.append(FileProblem(item.display, f"Could not be written into the "
                                                      f"project ({exc.strerror or exc}).",
                                                      "Free some disk space or check the permissions "
                                                      "of the project folder.", "write_failed"))
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        report.stopped = True
                        break
                if index % 200 == 199:
                    self._save_manifest()
            else:
                if progress is not None:
                    progress(total, total, "")
        finally:
            self._save_manifest()

    def _import_one(self, item: _Item, op, report, names, known, frames, max_frames) -> None:
        try:
            digest = _sha256_file(item.path)
        except OSError as exc:
            report.skipped.append(FileProblem(item.display, f"The file cannot be read "
                                              f"({exc.strerror or exc}).", "Check its permissions.",
                                              "unreadable"))
            return
        if (item.display, digest) in known:
            report.skipped.append(FileProblem(item.display, f"Already imported (as "
                                              f"{known[(item.display, digest)]}); not copied again.",
                                              "Nothing to do. To import it again, move that copy "
                                              "to the trash first.", "already_imported", "note"))
            return
        ext = os.path.splitext(item.path.name)[1].lower()
        try:
            first = open_image(item.path)
        except UserError as exc:
            report.skipped.append(FileProblem.from_user_error(
                exc, kind="bad_image", path=item.display, fix=_FORMAT_FIXES.get(ext)))
            return
        header = _header(item.path)
        captions = []
        for cap_path, cap_shown in item.captions:
            text, problem = _read_caption(cap_path, cap_shown)
            if problem is not None:
                report.warnings.append(problem)
            if text is not None:
                captions.append((os.path.splitext(cap_path.name)[1].lower(), text))
        stem = clean_stem(os.path.splitext(Path(item.display).name)[0])
        copy = (header.format in _COPYABLE_FORMATS and header.mode in _COPYABLE_MODES
                and not header.transparency and header.orientation == 1 and header.frames == 1)
        common = {"source": item.display, "source_sha256": digest, "operation": op.id,
                  "imported": _now(), "source_format": header.format}
        if copy:
            out_ext = _COPYABLE_FORMATS[header.format]
            if header.format != "PNG" and ext in (".jpg", ".jpeg"):
                out_ext = ext
            changes = [] if out_ext == ext else \
                [f"extension corrected to {out_ext} (the file is {header.format})"]
            name = names.claim(stem) + out_ext
            self._write_new(name, source=item.path)
            self._finish(name, first.size, True, header, changes, None, captions, item, op, report, common)
        else:
            every_frame = frames == FRAMES_ALL and header.frames > 1

            def frame_stem(index):
                return f"{stem}_f{index:03d}" if every_frame else stem

            name = names.claim(frame_stem(0)) + ".png"
            self._write_new(name, data=_png_bytes(first))
            self._finish(name, first.size, False, header, _changes(header, 0),
                         0 if every_frame else None, captions, item, op, report, common)
            if every_frame:
                self._write_later_frames(item, header, frame_stem, names, captions, op, report,
                                         common, max_frames)
        known[(item.display, digest)] = name

    def _write_later_frames(self, item, header, frame_stem, names, captions, op, report, common,
                            max_frames):
        written = 1
        frames = _later_frames(item.path, header, max_frames)
        while True:
            try:
                index, frame = next(frames)
            except StopIteration:
                break
            except (OSError, EOFError, ValueError, SyntaxError, Image.DecompressionBombError,
                    Image.DecompressionBombWarning) as exc:  # decoding, not writing
                self._frame_problem(item, written, header, exc, report)
                break
            name = names.claim(frame_stem(index)) + ".png"
            self._write_new(name, data=_png_bytes(frame))  # OSError here: a write failure
            self._finish(name, frame.size, False, header, _changes(header, index), index,
                         captions, item, op, report, common)
            written += 1
        frames.close()
        if header.frames > max_frames:
            report.warnings.append(FileProblem(item.display, f"The animation has {header.frames} "
                                               f"frames; only the first {max_frames} were imported.",
                                               "Raise the frame limit, or pick the frames you want "
                                               "in an editor.", "too_many_frames", "warning"))

    @staticmethod
    def _frame_problem(item, written, header, exc, report):
        report.warnings.append(FileProblem(item.display, f"Frame {written + 1} of {header.frames} "
                                           f"cannot be decoded ({exc}); only the first {written} "
                                           "frame(s) were imported.",
                                           "Re-export the animation if you need every frame.",
                                           "bad_frame", "warning"))

    def _finish(self, name, size, copied, header, changes, frame, captions, item, op, report, common):
        op.added(name)
        written = []
        stem = os.path.splitext(name)[0]
        for cap_ext, text in captions:
            cap_name = stem + cap_ext
            self._write_new(cap_name, data=text.encode("utf-8"))
            op.added(cap_name)
            written.append(cap_name)
        self.manifest["images"][name] = dict(common, copied=copied, frame=frame, changes=changes,
                                             captions=written, size=list(size))
        report.imported.append(ImportedImage(name, item.display, tuple(size), copied, header.format,
                                             list(changes), frame, written))

    def _write_new(self, name: str, data: bytes | None = None, source: Path | None = None) -> Path:
        """Create images/<name> (never overwriting, never outside images/) via a temp file."""
        if name != os.path.basename(name) or name.startswith(".") or name in ("", ".", ".."):
            raise ValueError(f"unsafe name {name!r}")  # clean_stem makes this impossible
        dest = self.images_dir / name
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "already exists", str(dest))
        tmp = self.images_dir / f".tmp-import-{secrets.token_hex(6)}"
        try:
            if source is not None:
                shutil.copyfile(source, tmp)
            else:
                with open(tmp, "xb") as fp:
                    fp.write(data)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return dest

    # -- import: zip

    def _import_zip_into(self, archive: Path, display: str, op, report, frames, max_frames,
                         progress, should_stop, limits: ZipLimits) -> None:
        staging = self.root / STAGING_DIR / secrets.token_hex(6)
        staging.mkdir(parents=True)
        try:
            shown_for = self._extract_zip(archive, display, staging, report, limits)
            staging_text = str(staging)

            def shown(path):
                text = str(path)
                if text in shown_for:
                    return shown_for[text]
                rel = os.path.relpath(text, staging_text).replace(os.sep, "/")
                return display if rel == "." else f"{display}/{rel}"

            items = self._collect(staging, True, report, skip_real=(), display=shown)
            self._import_items(items, op, report, frames, max_frames, progress, should_stop)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            parent = staging.parent
            with contextlib.suppress(OSError):
                parent.rmdir()

    def _extract_zip(self, archive: Path, display: str, staging: Path, report,
                     limits: ZipLimits) -> dict[str, str]:
        fix_archive = "Re-create the archive (zip the image folder itself), or import the folder."
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            raise UserError(f"This is not a readable zip archive ({exc}).", path=display,
                            fix=fix_archive) from None
        shown_for: dict[str, str] = {}
        real_staging = os.path.realpath(staging)
        with zf:
            infos = zf.infolist()
            if len(infos) > limits.max_members:
                raise UserError(f"The archive has {len(infos)} entries (limit {limits.max_members}).",
                                path=display, fix="Split it into smaller archives.")
            declared = sum(i.file_size for i in infos if not i.is_dir())
            if declared > limits.max_total_bytes:
                raise UserError(f"The archive unpacks to {declared / 2**30:.1f} GiB (limit "
                                f"{limits.max_total_bytes / 2**30:.1f} GiB).", path=display,
                                fix="Split it into smaller archives, or unpack it and import the folder.")
            free = shutil.disk_usage(self.root).free
            if declared > free:
                raise UserError(f"Not enough disk space to unpack the archive ({declared >> 20} MiB "
                                f"needed, {free >> 20} MiB free).", path=display,
                                fix="Free some disk space.")
            total = 0
            for info in infos:
                if info.is_dir():
                    continue
                shown = f"{display}/{info.filename}"
                problem = _zip_entry_problem(info, limits)
                parts = _zip_parts(info.filename)
                if parts is None:
                    problem = ("The entry's path points outside the archive folder (an absolute "
                               "path or '..'); not extracted.",
                               "Nothing to do: this entry is skipped for safety. If you made the "
                               "archive, zip the image folder itself.", "zip_unsafe_path")
                elif parts[0].lower() in _JUNK_FOLDERS:
                    continue  # macOS resource forks
                if problem is not None:
                    report.skipped.append(FileProblem(shown, problem[0], problem[1], problem[2]))
                    continue
                dest = staging.joinpath(*[_clean_component(p) for p in parts])
                if not _within(os.path.realpath(dest.parent), real_staging):
                    report.skipped.append(FileProblem(shown, "The entry's path leaves the archive "
                                                      "folder; not extracted.",
                                                      "Nothing to do: this entry is skipped for safety.",
                                                      "zip_unsafe_path"))
                    continue
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    total += self._extract_member(zf, info, dest, limits, limits.max_total_bytes - total)
                except FileExistsError:
                    report.skipped.append(FileProblem(shown, "Another entry of the archive has the "
                                                      "same name; this one was not extracted.",
                                                      "Rename one of them.", "zip_duplicate", "warning"))
                    continue
                except _TooLarge as exc:
                    report.skipped.append(FileProblem(shown, str(exc), "Unpack the archive yourself "
                                                      "and import the folder.", "zip_too_large"))
                    continue
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
                        ValueError, OSError) as exc:
                    with contextlib.suppress(OSError):
                        dest.unlink()
                    report.skipped.append(FileProblem(shown, f"The entry cannot be extracted ({exc}).",
                                                      fix_archive, "zip_bad_entry"))
                    continue
                shown_for[str(dest)] = shown
        return shown_for

    @staticmethod
    def _extract_member(zf, info, dest: Path, limits: ZipLimits, budget: int) -> int:
        written = 0
        try:
            with zf.open(info) as src, open(dest, "xb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > info.file_size or written > limits.max_member_bytes:
                        raise _TooLarge("The entry unpacks to more than it declares or than the "
                                        "per-file limit; not extracted (possible zip bomb).")
                    if written > budget:
                        raise _TooLarge("The archive unpacks to more than the size limit; "
                                        "this entry was not extracted.")
                    out.write(chunk)
        except _TooLarge:
            with contextlib.suppress(OSError):
                dest.unlink()
            raise
        return written


class _TooLarge(Exception):
    pass


def _check_frames(frames: str) -> str:
    if frames not in (FRAMES_FIRST, FRAMES_ALL):
        raise UserError(f"frames must be 'first' or 'all', not {frames!r}.", key="frames",
                        fix="Choose 'first' (one image per animation) or 'all' (every frame).")
    return frames


def _zip_parts(name: str) -> list[str] | None:
    """Path components of a zip entry; None when it is absolute or climbs out ('..')."""
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":" and text[0].isalpha()):
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return parts


def _clean_component(part: str) -> str:
    """A zip path component as a safe folder/file name (keeps the extension)."""
    stem, ext = os.path.splitext(part)
    ext = "".join("_" if (c in _INVALID_NAME_CHARS or ord(c) < 32) else c for c in ext)
    if part.startswith("."):
        # keep hidden entries hidden: _collect reports and skips them
        return "." + clean_stem(part[1:]) if len(part) > 1 else "_"
    return clean_stem(stem) + ext


def _zip_entry_problem(info: zipfile.ZipInfo, limits: ZipLimits):
    """(message, fix, kind) when an entry must not be extracted, else None."""
    mode = info.external_attr >> 16
    if mode and stat.S_ISLNK(mode):
        return ("The entry is a link, not a file; not extracted.",
                "Nothing to do: links inside archives are never followed (they could point "
                "anywhere). Zip the real files instead.", "zip_link")
    if info.flag_bits & 0x1:
        return ("The entry is encrypted (password-protected); not extracted.",
                "Unpack the archive with its password and import the folder.", "zip_encrypted")
    if info.file_size > limits.max_member_bytes:
        return (f"The entry unpacks to {info.file_size >> 20} MiB (limit "
                f"{limits.max_member_bytes >> 20} MiB); not extracted.",
                "Unpack it yourself and import the folder.", "zip_too_large")
    if (info.file_size > limits.ratio_floor and info.compress_size
            and info.file_size / info.compress_size > limits.max_ratio):
        return (f"The entry is compressed {info.file_size / info.compress_size:.0f}:1, like a "
                "zip bomb; not extracted.", "Unpack it yourself if you trust the archive.",
                "zip_bomb")
    return None


# ---------------------------------------------------------------- projects under a root

def create_project(projects_root, name) -> Project:
    """Create `<projects_root>/<name>`; UserError if the name is bad or already taken."""
    name = validate_project_name(name)
    root = Path(os.path.abspath(os.path.expanduser(str(projects_root))))
    folder = root / name
    if (folder / MANIFEST_NAME).is_file():
        raise UserError(f"A project named {name!r} already exists.", path=folder,
                        fix="Open it, or choose another name.", key="project name")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"A folder named {name!r} already exists there and is not a project.",
                        path=folder, fix="Choose another name.", key="project name")
    root.mkdir(parents=True, exist_ok=True)
    return Project(folder, create=True)


def open_project(projects_root, name) -> Project:
    name = validate_project_name(name)
    return Project(Path(os.path.abspath(os.path.expanduser(str(projects_root)))) / name, create=False)


def list_projects(projects_root) -> list[str]:
    """Names of the project folders directly under `projects_root` (sorted)."""
    root = Path(os.path.abspath(os.path.expanduser(str(projects_root))))
    if not root.is_dir():
        return []
    with os.scandir(root) as it:
        names = [e.name for e in it if e.is_dir() and not e.name.startswith(".")
                 and os.path.isfile(os.path.join(e.path, MANIFEST_NAME))]
    return sorted(names, key=str.lower)
