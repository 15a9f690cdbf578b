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

This module is the folder and its manifest; the work is done in importing (+ sources,
conversion, zip_import), operations (trash / undo) and names. Their public names are
re-exported here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import time
from pathlib import Path

from ..dataset.images import IMAGE_EXTENSIONS
from ..errors import UserError
from ..output.save import write_text_atomic
from . import importing, operations
from .conversion import DEFAULT_MAX_FRAMES, FRAMES_ALL, FRAMES_FIRST  # noqa: F401 - re-exported
from .files import utc_now
from .importing import ImportedImage, ImportReport  # noqa: F401 - re-exported
from .names import clean_stem, validate_project_name  # noqa: F401 - re-exported
from .operations import Operation, OperationReport  # noqa: F401 - re-exported
from .problems import FileProblem
from .sources import MAX_CAPTION_BYTES, MAX_FOLDER_DEPTH  # noqa: F401 - re-exported
from .zip_import import ZipLimits

MANIFEST_NAME = "project.json"
IMAGES_DIR = "images"
TRASH_DIR = ".trash"
STAGING_DIR = ".staging"
FORMAT_VERSION = 1
_TMP_PREFIX = ".tmp-import-"   # images/ temp files of _write_new


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

    @property
    def staging_dir(self) -> Path:
        return self.root / STAGING_DIR

    def _new_manifest(self) -> dict:
        return {"format": FORMAT_VERSION, "name": self.root.name, "created": utc_now(),
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
                if entry.name.startswith(_TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
        staging = self.staging_dir
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
                data = operations.read_operation(self, op_id)
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

    def _write_new(self, name: str, data: bytes | None = None, source: Path | None = None) -> Path:
        """Create images/<name> (never overwriting, never outside images/) via a temp file.

        Not files.write_*_atomic: this must refuse an existing name (or link), and its temp
        names are the ones _remove_leftovers deletes after a crash.
        """
        if name != os.path.basename(name) or name.startswith(".") or name in ("", ".", ".."):
            raise ValueError(f"unsafe name {name!r}")  # clean_stem makes this impossible
        dest = self.images_dir / name
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "already exists", str(dest))
        tmp = self.images_dir / f"{_TMP_PREFIX}{secrets.token_hex(6)}"
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

    # -- operations (see operations.py)

    @contextlib.contextmanager
    def operation(self, kind: str, description: str = ""):
        """Record a batch change (see Operation). Only operations that changed something are kept."""
        op = Operation(self, kind, description)
        try:
            yield op
        finally:
            op.prune()
            if op.entries:
                op._write()
                self.manifest["history"].append(op.id)
            elif op.dir.exists():
                shutil.rmtree(op.dir, ignore_errors=True)
            self._save_manifest()

    def trash(self, names) -> OperationReport:
        """Move images (and their caption/sidecar files) to .trash/; undo_last() restores them."""
        return operations.trash(self, names)

    def undo_last(self) -> OperationReport:
        """Reverse the most recent batch operation (import, trash, or any Operation)."""
        return operations.undo_last(self)

    def empty_trash(self) -> int:
        """Delete .trash/ for good (the undo history goes with it). Returns bytes freed."""
        return operations.empty_trash(self)

    # -- import (see importing.py)

    def import_folder(self, src, recursive: bool = True, progress=None, should_stop=None, *,
                      frames: str = FRAMES_FIRST, max_frames: int = DEFAULT_MAX_FRAMES) -> ImportReport:
        """Copy every image under `src` into images/ (converted where needed).

        progress(done, total, source_name) is called before each file; should_stop() is
        polled between files. frames: "first" or "all" for animated GIF/WebP/PNG.
        Raises UserError only for a bad `src`; per-file trouble lands in the report.
        """
        return importing.import_folder(self, src, recursive, progress, should_stop,
                                       frames=frames, max_frames=max_frames)

    def import_files(self, paths, names=None, progress=None, should_stop=None, *,
                     frames: str = FRAMES_FIRST, max_frames: int = DEFAULT_MAX_FRAMES,
                     zip_limits: ZipLimits | None = None) -> ImportReport:
        """Import uploaded files: images, their .txt captions (paired by name) and zips.

        `names` (optional, same length) are the names the user uploaded, when the paths
        are temp files with other names.
        """
        return importing.import_files(self, paths, names, progress, should_stop, frames=frames,
                                      max_frames=max_frames, zip_limits=zip_limits)

    def import_zip(self, path, progress=None, should_stop=None, *, frames: str = FRAMES_FIRST,
                   max_frames: int = DEFAULT_MAX_FRAMES, limits: ZipLimits | None = None) -> ImportReport:
        """Import the images (and captions) inside a zip archive, safely.

        Entries with absolute paths or '..' (zip-slip), links, encrypted entries and entries
        beyond `limits` are skipped and reported; an archive beyond the limits as a whole,
        or one that is not a zip, raises UserError.
        """
        return importing.import_zip(self, path, progress, should_stop, frames=frames,
                                    max_frames=max_frames, limits=limits)


# ---------------------------------------------------------------- projects under a root

def _projects_root(projects_root) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(projects_root))))


def create_project(projects_root, name) -> Project:
    """Create `<projects_root>/<name>`; UserError if the name is bad or already taken."""
    name = validate_project_name(name)
    root = _projects_root(projects_root)
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
    return Project(_projects_root(projects_root) / name, create=False)


def list_projects(projects_root) -> list[str]:
    """Names of the project folders directly under `projects_root` (sorted)."""
    root = _projects_root(projects_root)
    if not root.is_dir():
        return []
    with os.scandir(root) as it:
        names = [e.name for e in it if e.is_dir() and not e.name.startswith(".")
                 and os.path.isfile(os.path.join(e.path, MANIFEST_NAME))]
    return sorted(names, key=str.lower)
