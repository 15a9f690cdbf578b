"""Small file helpers the prep modules share: hashing, atomic text writes, backups, containment."""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

# The project's one tmp + fsync + os.replace routine (also behind the LoRA and card writes).
from ..output.save import _atomic_write


def utc_now() -> str:
    """The timestamp recorded in project manifests and operations."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def within(path: str, folder: str) -> bool:
    """True when real path `path` is `folder` or inside it (both already realpath'd)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def file_sha256(path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file, read in 1 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fp:
        while chunk := fp.read(1 << 20):
            size += len(chunk)
            digest.update(chunk)
    return size, digest.hexdigest()


def write_text_atomic(path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically (see output.save._atomic_write).

    A crash or a full disk leaves either the old file or the new one, never half a file.
    The file keeps the permissions of the file it replaces (0644 for a new one): a caption
    the user made private stays private.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o644

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="\n") as fp:
            fp.write(text)
            fp.flush()
            os.fsync(fp.fileno())
        os.chmod(tmp, mode)  # before the rename, so the file never has other permissions

    _atomic_write(path, write)


def write_bytes_atomic(path, data: bytes) -> None:
    """Replace `path` with `data` atomically (undo puts old caption bytes back this way)."""
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def copy_atomic(src, dst) -> None:
    """Copy `src` (with its metadata) to `dst` atomically."""
    _atomic_write(Path(dst), lambda tmp: shutil.copy2(src, tmp))


def backup_path(path) -> Path:
    """A free backup name beside `path`: 'a.txt.bak', then 'a.txt.bak.1', 'a.txt.bak.2', ..."""
    path = Path(path)
    candidate = path.with_name(path.name + ".bak")
    n = 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.bak.{n}")
    return candidate
