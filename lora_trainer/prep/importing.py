"""Importing into a Project's images/: from a folder, uploaded files, or a zip archive.

Sources are only read. Each file becomes one image in images/ (or one per frame with
frames="all"), copied or converted (see conversion), under a stem unique in the project
(see names), with its captions written next to it as UTF-8. Every file written is recorded
in the import's Operation, so undo_last() removes the import again. Per-file trouble lands
in the ImportReport; only a bad *source* (missing folder, not a zip) raises UserError.

The Project methods import_folder / import_files / import_zip call the functions here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from ..dataset.images import open_image
from ..errors import UserError
from .conversion import (COPYABLE_FORMATS, DEFAULT_MAX_FRAMES, FORMAT_FIXES, FRAMES_ALL, FRAMES_FIRST,
                         Header, changes, later_frames, png_bytes, read_header)
from .files import file_sha256, utc_now, within
from .names import NameAllocator, clean_stem
from .problems import FileProblem
from .sources import Item, collect, group, read_caption
from .zip_import import ZipLimits, extract_zip


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


def check_frames(frames: str) -> str:
    if frames not in (FRAMES_FIRST, FRAMES_ALL):
        raise UserError(f"frames must be 'first' or 'all', not {frames!r}.", key="frames",
                        fix="Choose 'first' (one image per animation) or 'all' (every frame).")
    return frames


# ---------------------------------------------------------------- entry points

def import_folder(project, src, recursive=True, progress=None, should_stop=None, *,
                  frames=FRAMES_FIRST, max_frames=DEFAULT_MAX_FRAMES) -> ImportReport:
    """Project.import_folder: every image under `src`."""
    frames = check_frames(frames)
    source = Path(os.path.abspath(os.path.expanduser(str(src))))
    if not source.is_dir():
        raise UserError("The folder to import from does not exist (or is not a folder).",
                        path=source, fix="Check the path; paste the folder that holds your images.")
    real_source, real_root = os.path.realpath(source), os.path.realpath(project.root)
    if within(real_source, real_root):
        raise UserError("The folder to import from is inside this project.", path=source,
                        fix="Import from the folder that holds your original images.")
    report = ImportReport(source=str(source))
    items = collect(source, recursive, report, skip_real=(real_root,))
    with project.operation("import", f"Import from {source}") as op:
        import_items(project, items, op, report, frames, max_frames, progress, should_stop)
        report.operation = op.id if op.entries else None
    return report


def import_files(project, paths, names=None, progress=None, should_stop=None, *,
                 frames=FRAMES_FIRST, max_frames=DEFAULT_MAX_FRAMES, zip_limits=None) -> ImportReport:
    """Project.import_files: uploaded images, captions and zips."""
    frames = check_frames(frames)
    paths = [Path(p) for p in paths]
    shown = [str(n) for n in names] if names is not None else [str(p) for p in paths]
    if len(shown) != len(paths):
        raise ValueError("names must match paths one to one")
    report = ImportReport(source="uploaded files")
    with project.operation("import", "Import of uploaded files") as op:
        plain = []
        for path, display in zip(paths, shown):
            if os.path.splitext(display)[1].lower() == ".zip":
                try:
                    _import_zip_into(project, path, display, op, report, frames, max_frames,
                                     None, should_stop, zip_limits or ZipLimits())
                except UserError as exc:
                    report.skipped.append(FileProblem.from_user_error(exc, kind="zip_unreadable",
                                                                      path=display))
            elif not path.is_file():
                report.skipped.append(FileProblem(display, "The uploaded file is missing.",
                                                  "Upload it again.", "missing"))
            else:
                plain.append((path, Path(display).name, display))
        items = group(plain, report)
        import_items(project, items, op, report, frames, max_frames, progress, should_stop)
        report.operation = op.id if op.entries else None
    return report


def import_zip(project, path, progress=None, should_stop=None, *, frames=FRAMES_FIRST,
               max_frames=DEFAULT_MAX_FRAMES, limits=None) -> ImportReport:
    """Project.import_zip: the images and captions inside one archive."""
    frames = check_frames(frames)
    archive = Path(os.path.abspath(os.path.expanduser(str(path))))
    report = ImportReport(source=str(archive))
    with project.operation("import", f"Import from {archive.name}") as op:
        _import_zip_into(project, archive, str(archive), op, report, frames, max_frames, progress,
                         should_stop, limits or ZipLimits())
        report.operation = op.id if op.entries else None
    return report


def _import_zip_into(project, archive: Path, display: str, op, report, frames, max_frames,
                     progress, should_stop, limits: ZipLimits) -> None:
    staging = project.staging_dir / secrets.token_hex(6)
    staging.mkdir(parents=True)
    try:
        shown_for = extract_zip(archive, display, staging, report, limits, project.root)
        staging_text = str(staging)

        def shown(path):
            text = str(path)
            if text in shown_for:
                return shown_for[text]
            rel = os.path.relpath(text, staging_text).replace(os.sep, "/")
            return display if rel == "." else f"{display}/{rel}"

        items = collect(staging, True, report, skip_real=(), display=shown)
        import_items(project, items, op, report, frames, max_frames, progress, should_stop)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        parent = staging.parent
        with contextlib.suppress(OSError):
            parent.rmdir()


# ---------------------------------------------------------------- writing

def import_items(project, items, op, report: ImportReport, frames, max_frames, progress,
                 should_stop) -> None:
    names = NameAllocator(os.listdir(project.images_dir))
    known = {(e.get("source"), e.get("source_sha256")): n
             for n, e in project.manifest["images"].items() if isinstance(e, dict)}
    total = len(items)
    try:
        for index, item in enumerate(items):
            if should_stop is not None and should_stop():
                report.stopped = True
                break
            if progress is not None:
                progress(index, total, item.display)
            try:
                _import_one(project, item, op, report, names, known, frames, max_frames)
            except OSError as exc:  # writing into the project failed
                report.skipped.append(FileProblem(item.display, f"Could not be written into the "
                                                  f"project ({exc.strerror or exc}).",
                                                  "Free some disk space or check the permissions "
                                                  "of the project folder.", "write_failed"))
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    report.stopped = True
                    break
            if index % 200 == 199:
                project._save_manifest()
        else:
            if progress is not None:
                progress(total, total, "")
    finally:
        project._save_manifest()


def _import_one(project, item: Item, op, report, names, known, frames, max_frames) -> None:
    try:
        digest = file_sha256(item.path)[1]
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
            exc, kind="bad_image", path=item.display, fix=FORMAT_FIXES.get(ext)))
        return
    header = read_header(item.path)
    captions = []
    for cap_path, cap_shown in item.captions:
        text, problem = read_caption(cap_path, cap_shown)
        if problem is not None:
            report.warnings.append(problem)
        if text is not None:
            captions.append((os.path.splitext(cap_path.name)[1].lower(), text))
    stem = clean_stem(os.path.splitext(Path(item.display).name)[0])
    common = {"source": item.display, "source_sha256": digest, "operation": op.id,
              "imported": utc_now(), "source_format": header.format}
    finish = _Finisher(project, item, header, captions, op, report, common)
    if header.copyable:
        out_ext = COPYABLE_FORMATS[header.format]
        if header.format != "PNG" and ext in (".jpg", ".jpeg"):
            out_ext = ext
        notes = [] if out_ext == ext else \
            [f"extension corrected to {out_ext} (the file is {header.format})"]
        name = names.claim(stem) + out_ext
        project._write_new(name, source=item.path)
        finish(name, first.size, True, notes, None)
    else:
        every_frame = frames == FRAMES_ALL and header.frames > 1

        def frame_stem(index):
            return f"{stem}_f{index:03d}" if every_frame else stem

        name = names.claim(frame_stem(0)) + ".png"
        project._write_new(name, data=png_bytes(first))
        finish(name, first.size, False, changes(header, 0), 0 if every_frame else None)
        if every_frame:
            _write_later_frames(project, item, header, frame_stem, names, finish, report, max_frames)
    known[(item.display, digest)] = name


def _write_later_frames(project, item, header, frame_stem, names, finish, report, max_frames):
    written = 1
    frames = later_frames(item.path, header, max_frames)
    while True:
        try:
            index, frame = next(frames)
        except StopIteration:
            break
        except (OSError, EOFError, ValueError, SyntaxError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as exc:  # decoding, not writing
            report.warnings.append(FileProblem(item.display, f"Frame {written + 1} of {header.frames} "
                                               f"cannot be decoded ({exc}); only the first {written} "
                                               "frame(s) were imported.",
                                               "Re-export the animation if you need every frame.",
                                               "bad_frame", "warning"))
            break
        name = names.claim(frame_stem(index)) + ".png"
        project._write_new(name, data=png_bytes(frame))  # OSError here: a write failure
        finish(name, frame.size, False, changes(header, index), index)
        written += 1
    frames.close()
    if header.frames > max_frames:
        report.warnings.append(FileProblem(item.display, f"The animation has {header.frames} "
                                           f"frames; only the first {max_frames} were imported.",
                                           "Raise the frame limit, or pick the frames you want "
                                           "in an editor.", "too_many_frames", "warning"))


@dataclass
class _Finisher:
    """Records one written image (of one source item): captions, manifest, undo, report."""

    project: object         # the Project (not imported here: project.py imports this module)
    item: Item
    header: Header
    captions: list          # (caption extension, text)
    op: object              # its Operation
    report: ImportReport
    common: dict            # the manifest fields every image of this source shares

    def __call__(self, name, size, copied, notes, frame) -> None:
        self.op.added(name)
        written = []
        stem = os.path.splitext(name)[0]
        for cap_ext, text in self.captions:
            cap_name = stem + cap_ext
            self.project._write_new(cap_name, data=text.encode("utf-8"))
            self.op.added(cap_name)
            written.append(cap_name)
        self.project.manifest["images"][name] = dict(self.common, copied=copied, frame=frame,
                                                     changes=notes, captions=written, size=list(size))
        self.report.imported.append(ImportedImage(name, self.item.display, tuple(size), copied,
                                                  self.header.format, list(notes), frame, written))

