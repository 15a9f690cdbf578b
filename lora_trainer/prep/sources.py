"""What to import from a source folder: walk it, classify files, pair images with captions.

Read-only. Everything that will not be imported is reported by name with a fix (FileProblem).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..dataset.captions import CAPTION_EXTENSIONS
from ..dataset.images import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS
from .files import within
from .problems import FileProblem

MAX_CAPTION_BYTES = 1 << 20       # a "caption" larger than this is not a caption
MAX_FOLDER_DEPTH = 64

# Everything we try to decode on import (the trainer's formats and the ones we convert).
CANDIDATE_EXTENSIONS = frozenset(IMAGE_EXTENSIONS) | frozenset(UNSUPPORTED_IMAGE_EXTENSIONS)
_CAPTION_EXTENSIONS = tuple(CAPTION_EXTENSIONS)
_JUNK_FILES = frozenset({"thumbs.db", "desktop.ini", ".ds_store", "ehthumbs.db"})
JUNK_FOLDERS = frozenset({"__macosx"})
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class Item:
    """One image to import, with the caption files found next to it."""

    path: Path
    display: str
    captions: list[tuple[Path, str]]  # (path, display)


def read_caption(path: Path, shown: str) -> tuple[str | None, FileProblem | None]:
    """(text, problem): UTF-8 with the BOM stripped; UTF-16 with BOM decoded; anything else
    that is not UTF-8 is decoded as cp1252 with a warning (text is kept, the user checks it).

    Unlike dataset.captions (which rejects a non-UTF-8 caption at training time), import
    rescues the text: it is written back as UTF-8 and training reads it from then on.
    """
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


def collect(top: Path, recursive: bool, report, skip_real=(), display=str) -> list[Item]:
    """Breadth-first walk (top-level files get the plain names), following folder links
    but never the same real folder twice (link loops), skipping hidden folders.
    Problems go to `report.skipped`."""
    items: list[Item] = []
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
                _queue_folder(path, shown, entry.name, depth, recursive, visited, skip_real, queue,
                              report)
            elif is_file:
                real = os.path.realpath(path) if is_link else None
                if real and any(within(real, s) for s in skip_real):
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
        items.extend(group(files, report))
    return items


def _queue_folder(path, shown, name, depth, recursive, visited, skip_real, queue, report):
    if name.startswith(".") or name.lower() in JUNK_FOLDERS:
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
    if any(within(real, s) for s in skip_real):
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


def group(files, report) -> list[Item]:
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
        elif ext in CANDIDATE_EXTENSIONS:
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
        items.append(Item(path, shown, [(c[0], c[2]) for c in found]))
    for _path, name, shown in captions:
        if shown not in used:
            report.skipped.append(FileProblem(
                shown, "Caption file with no image of the same name next to it; not imported.",
                f"Rename it to match its image (e.g. {os.path.splitext(name)[0]}.png), or delete it.",
                "caption_without_image", "warning"))
    return items
