"""Undoable batch changes to a project's images/: Operation, trash, undo, empty trash.

Every destructive change goes through an Operation, which first moves (or copies) the old
file into .trash/<op>/ and records it in .trash/<op>/operation.json; undo_last() reads that
record back and reverses it. The Project methods trash / undo_last / empty_trash call here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..output.save import write_text_atomic
from .files import utc_now, within
from .names import NameAllocator
from .problems import FileProblem
from .sources import CANDIDATE_EXTENSIONS

OPERATION_FILE = "operation.json"


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


class Operation:
    """One batch change to images/. Use through Project.operation(kind):

        with project.operation("reencode") as op:
            op.before_change("a.png")   # copy kept in .trash/<op>/ ; then overwrite a.png
            op.remove("b.png")          # moved into .trash/<op>/
            op.added("c.png")           # a new file: undo deletes it

    undo_last() reverses the entries in reverse order.
    """

    def __init__(self, project, kind: str, description: str = ""):
        self.project = project
        self.kind = kind
        self.description = description
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.id = f"{stamp}-{kind}-{secrets.token_hex(3)}"
        self.dir = project.trash_dir / self.id
        self.created = utc_now()
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

    def prune(self) -> None:
        """Forget what did not happen: an 'added' file that was never written, a 'changed' file
        whose bytes are what was kept. Undo then reverses the last real change."""
        kept = []
        for entry in self.entries:
            current = self.project.images_dir / entry["name"]
            if entry["action"] == "added" and not current.is_file():
                continue
            if entry["action"] == "changed":
                copy = self.dir / entry["kept"]
                if current.is_file() and copy.is_file() and current.read_bytes() == copy.read_bytes():
                    copy.unlink()
                    continue
            kept.append(entry)
        self.entries = kept

    def _write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.dir / OPERATION_FILE, json.dumps(
            {"id": self.id, "kind": self.kind, "description": self.description,
             "created": self.created, "entries": self.entries}, ensure_ascii=False, indent=1))


def read_operation(project, op_id: str) -> dict:
    """The saved record of one operation (OSError / ValueError when it is missing or broken)."""
    return json.loads((project.trash_dir / op_id / OPERATION_FILE).read_text("utf-8"))


def trash(project, names) -> OperationReport:
    report = OperationReport("trash", None, "")
    if isinstance(names, (str, os.PathLike)):
        names = [names]
    wanted: list[str] = []
    for name in names:
        try:
            path = project._member(name)
        except UserError as exc:
            report.problems.append(FileProblem.from_user_error(exc, kind="not_in_project"))
            continue
        if path.name not in wanted:
            wanted.append(path.name)
    with os.scandir(project.images_dir) as it:
        present = sorted(e.name for e in it if not e.name.startswith("."))
    keep_stems = {os.path.splitext(n)[0] for n in present
                  if n not in wanted and os.path.splitext(n)[1].lower() in CANDIDATE_EXTENSIONS}
    with project.operation("trash", f"Moved {len(wanted)} image(s) to the trash") as op:
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


def undo_last(project) -> OperationReport:
    report = OperationReport("undo", None, "")
    history = project.manifest["history"]
    data = None
    while history:
        op_id = history[-1]
        try:
            data = read_operation(project, op_id)
            break
        except (OSError, ValueError):
            history.pop()
            report.problems.append(FileProblem(str(project.trash_dir / op_id),
                                               "The saved state of this operation is missing; "
                                               "it cannot be undone.", None,
                                               "undo_missing", "warning"))
    if data is None:
        project._save_manifest()
        report.message = "Nothing to undo."
        return report
    op_dir = project.trash_dir / data["id"]
    real_op = os.path.realpath(op_dir)
    for entry in reversed(data.get("entries", [])):
        _undo_entry(project, entry, op_dir, real_op, report)
    history.pop()
    project._save_manifest()
    shutil.rmtree(op_dir, ignore_errors=True)
    report.operation = data["id"]
    what = data.get("description") or data.get("kind")
    report.message = f"Undid: {what}."
    return report


def _undo_entry(project, entry: dict, op_dir: Path, real_op: str, report: OperationReport) -> None:
    images = project.manifest["images"]
    action, name = entry.get("action"), entry.get("name", "")
    try:
        name = project._plain_name(name)
    except UserError as exc:
        report.problems.append(FileProblem.from_user_error(exc, kind="undo_bad_entry"))
        return
    target = project.images_dir / name
    if action == "added":
        if target.is_file() and not target.is_symlink():
            target.unlink()
            report.removed.append(name)
        images.pop(name, None)
        return
    kept = op_dir / str(entry.get("kept", ""))
    if not within(os.path.realpath(kept), real_op) or not kept.is_file():
        report.problems.append(FileProblem(name, "Its saved copy is missing from the "
                                           "trash; it was not restored.", None,
                                           "undo_missing", "warning"))
        return
    if action == "removed" and target.exists():
        stem, ext = os.path.splitext(name)
        free = NameAllocator(os.listdir(project.images_dir)).claim(f"{stem}_restored")
        report.problems.append(FileProblem(name, f"A file with this name exists again; "
                                           f"it was restored as {free}{ext}.", None,
                                           "undo_renamed", "note"))
        name, target = free + ext, project.images_dir / (free + ext)
    os.replace(kept, target)
    if entry.get("manifest") is not None:
        images[name] = entry["manifest"]
    report.names.append(name)


def empty_trash(project) -> int:
    freed = 0
    if project.trash_dir.is_dir() and not project.trash_dir.is_symlink():
        for folder, _dirs, files in os.walk(project.trash_dir):
            for name in files:
                with contextlib.suppress(OSError):
                    freed += os.lstat(os.path.join(folder, name)).st_size
        shutil.rmtree(project.trash_dir, ignore_errors=True)
    project.manifest["history"] = []
    project._save_manifest()
    return freed
