"""Unpacking an uploaded zip safely: zip-slip, links, encryption, zip bombs and size limits.

`extract_zip` writes the entries it accepts into a staging folder and reports every entry it
refuses; the import then treats the staging folder like any source folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .files import within
from .names import clean_stem, replace_bad_chars
from .problems import FileProblem
from .sources import JUNK_FOLDERS

_FIX_ARCHIVE = "Re-create the archive (zip the image folder itself), or import the folder."


@dataclass(frozen=True)
class ZipLimits:
    """Refuse archives (or entries) beyond these: zip bombs, accidental huge uploads."""

    max_members: int = 50_000
    max_total_bytes: int = 16 << 30      # uncompressed, whole archive
    max_member_bytes: int = 1 << 30      # uncompressed, one entry
    max_ratio: float = 200.0             # uncompressed / compressed, for entries over ratio_floor
    ratio_floor: int = 32 << 20


class _TooLarge(Exception):
    pass


def extract_zip(archive: Path, display: str, staging: Path, report, limits: ZipLimits,
                disk: Path) -> dict[str, str]:
    """Extract the acceptable entries of `archive` into `staging`; {extracted path: shown name}.

    Refused entries go to `report.skipped`; an unreadable archive, or one beyond the limits
    as a whole (or than the free space on `disk`), raises UserError.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise UserError(f"This is not a readable zip archive ({exc}).", path=display,
                        fix=_FIX_ARCHIVE) from None
    shown_for: dict[str, str] = {}
    real_staging = os.path.realpath(staging)
    with zf:
        infos = zf.infolist()
        _check_archive(infos, display, limits, disk)
        total = 0
        for info in infos:
            if info.is_dir():
                continue
            shown = f"{display}/{info.filename}"
            problem = _entry_problem(info, limits)
            parts = _zip_parts(info.filename)
            if parts is None:
                problem = ("The entry's path points outside the archive folder (an absolute "
                           "path or '..'); not extracted.",
                           "Nothing to do: this entry is skipped for safety. If you made the "
                           "archive, zip the image folder itself.", "zip_unsafe_path")
            elif parts[0].lower() in JUNK_FOLDERS:
                continue  # macOS resource forks
            if problem is not None:
                report.skipped.append(FileProblem(shown, problem[0], problem[1], problem[2]))
                continue
            dest = staging.joinpath(*[_clean_component(p) for p in parts])
            if not within(os.path.realpath(dest.parent), real_staging):
                report.skipped.append(FileProblem(shown, "The entry's path leaves the archive "
                                                  "folder; not extracted.",
                                                  "Nothing to do: this entry is skipped for safety.",
                                                  "zip_unsafe_path"))
                continue
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                total += _extract_member(zf, info, dest, limits, limits.max_total_bytes - total)
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
                                                  _FIX_ARCHIVE, "zip_bad_entry"))
                continue
            shown_for[str(dest)] = shown
    return shown_for


def _check_archive(infos, display: str, limits: ZipLimits, disk: Path) -> None:
    """UserError when the archive as a whole is beyond the limits or the free space."""
    if len(infos) > limits.max_members:
        raise UserError(f"The archive has {len(infos)} entries (limit {limits.max_members}).",
                        path=display, fix="Split it into smaller archives.")
    declared = sum(i.file_size for i in infos if not i.is_dir())
    if declared > limits.max_total_bytes:
        raise UserError(f"The archive unpacks to {declared / 2**30:.1f} GiB (limit "
                        f"{limits.max_total_bytes / 2**30:.1f} GiB).", path=display,
                        fix="Split it into smaller archives, or unpack it and import the folder.")
    free = shutil.disk_usage(disk).free
    if declared > free:
        raise UserError(f"Not enough disk space to unpack the archive ({declared >> 20} MiB "
                        f"needed, {free >> 20} MiB free).", path=display,
                        fix="Free some disk space.")


def _extract_member(zf, info, dest: Path, limits: ZipLimits, budget: int) -> int:
    """Stream one entry to `dest`, counting what it really unpacks to (not what it declares)."""
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
    ext = replace_bad_chars(ext)
    if part.startswith("."):
        # keep hidden entries hidden: sources.collect reports and skips them
        return "." + clean_stem(part[1:]) if len(part) > 1 else "_"
    return clean_stem(stem) + ext


def _entry_problem(info: zipfile.ZipInfo, limits: ZipLimits):
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
