"""Dataset scan: read a kohya folder layout, check every file, count buckets and steps.

Read-only: nothing on disk is created, renamed or modified. Nothing raises for a bad
dataset either; every finding is a Problem naming the file and the fix.
Severity "error" blocks training (no data, bad settings); "warning" is everything else,
including per-file problems (that file is skipped, or its caption replaced by the folder's).

Layout (kohya DreamBooth/folder mode): train_data_dir is the parent; each immediate
subfolder `N_name` is a subset repeated N times whose `name` is the fallback caption.
Only Pillow is needed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserError
from .buckets import BucketManager, bucket_manager_for, parse_resolution
from .captions import caption_path, normalise_extension, read_caption, tag_frequency
from .images import check_image, is_image_file, is_unsupported_image_file

KOHYA_DEFAULT_MAX_TRAIN_STEPS = 1600  # --max_train_steps default when no epochs are given
_LIST_AT_MOST = 5  # file names quoted in one aggregated message


@dataclass(frozen=True)
class ImageItem:
    """One usable training image (hashable: used as a key by caches)."""

    path: str            # the image file
    subset_dir: str      # its N_name folder (full path)
    repeats: int         # N
    caption: str         # raw caption text: the caption file's first line, or the folder caption
    caption_source: str  # "file" | "folder"
    size: tuple[int, int]     # (w, h) as displayed, EXIF orientation applied
    bucket: tuple[int, int]   # (w, h) trained at
    resized: tuple[int, int]  # (w, h) before the centre crop to `bucket`
    is_reg: bool = False      # a regularization (class) image from reg_data_dir


@dataclass
class Subset:
    """One N_name folder."""

    dir: str               # full path of the folder
    name: str              # the part after "N_": class tokens, the fallback caption
    repeats: int
    image_count: int       # usable images
    captions_found: int
    captions_missing: int  # images trained with the folder caption

    @property
    def folder(self) -> str:
        return Path(self.dir).name


@dataclass
class Problem:
    path: str | None
    message: str
    fix: str | None
    severity: str = "warning"  # "error" | "warning"
    key: str | None = None     # the config key, for settings problems

    def as_dict(self) -> dict:
        return {"path": self.path, "message": self.message, "fix": self.fix,
                "severity": self.severity, "key": self.key}


@dataclass
class DatasetScan:
    items: list[ImageItem]
    subsets: list[Subset]
    problems: list[Problem]
    buckets: dict[tuple[int, int], int]  # bucket -> images x repeats
    steps_per_epoch: int
    total_steps: int
    epochs: int
    num_train_images: int                # sum of images x repeats
    # folder name ("10_sks dog") -> {tag: count}, train and reg folders (kohya's ss_tag_frequency)
    tag_frequency: dict[str, dict[str, int]]
    mean_ar_error: float                 # mean |AR error| of the images trained (train + reg used), no repeats
    train_data_dir: str | None = None
    batches_per_epoch: int = 0
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    reg_data_dir: str | None = None
    reg_subsets: list = field(default_factory=list)

    @property
    def num_reg_images(self) -> int:
        """kohya's num_reg_images (ss_num_reg_images): reg images x repeats of the reg folders, counted
        before balancing (DreamBoothDataset adds num_repeats * len(img_paths) per reg subset)."""
        return sum(s.repeats * s.image_count for s in self.reg_subsets)

    @property
    def reg_samples_per_epoch(self) -> int:
        """Reg samples trained per epoch after balancing (kohya: as many as the train samples)."""
        return sum(item.repeats for item in self.items if item.is_reg)

    @property
    def ok(self) -> bool:
        """At least one usable image and no blocking ("error") problem."""
        return bool(self.items) and not any(p.severity == "error" for p in self.problems)

    @property
    def images_without_caption(self) -> list[str]:
        return [item.path for item in self.items if item.caption_source == "folder"]

    def summary(self) -> dict:
        """JSON-serialisable report for the UI/API."""
        return {
            "ok": self.ok,
            "train_data_dir": self.train_data_dir,
            "folders": [
                {"dir": s.dir, "folder": s.folder, "name": s.name, "repeats": s.repeats,
                 "images": s.image_count, "captions_found": s.captions_found,
                 "captions_missing": s.captions_missing}
                for s in self.subsets
            ],
            "num_images": len(self.items),
            "num_train_images": self.num_train_images,
            "buckets": [
                {"resolution": [w, h], "count": count,
                 "batches": math.ceil(count / self.batch_size)}
                for (w, h), count in sorted(self.buckets.items())
            ],
            "mean_ar_error": self.mean_ar_error,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "batches_per_epoch": self.batches_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "total_steps": self.total_steps,
            "errors": sum(p.severity == "error" for p in self.problems),
            "warnings": sum(p.severity != "error" for p in self.problems),
            "problems": [p.as_dict() for p in self.problems],
            "images_without_caption": self.images_without_caption,
            "reg_data_dir": self.reg_data_dir,
            "reg_folders": [{"dir": s.dir, "folder": s.folder, "name": s.name, "repeats": s.repeats,
                             "images": s.image_count} for s in self.reg_subsets],
            "num_reg_images": self.num_reg_images,
            "reg_samples_per_epoch": self.reg_samples_per_epoch,
        }


# ---------------------------------------------------------------- step counting

def count_steps(buckets: dict, batch_size: int, gradient_accumulation_steps: int = 1,
                max_train_epochs: int | None = None, max_train_steps: int | None = None):
    """(batches/epoch, steps/epoch, epochs, total steps), counted as kohya does.

    Each bucket rounds up on its own; an optimizer step takes grad_accum batches.
    max_train_steps wins when set (epochs = enough to reach it); otherwise
    epochs x steps/epoch; with neither, kohya's default of 1600 steps.
    """
    batch_size = max(1, int(batch_size or 1))
    grad_accum = max(1, int(gradient_accumulation_steps or 1))
    batches = sum(math.ceil(count / batch_size) for count in buckets.values())
    steps_per_epoch = math.ceil(batches / grad_accum)
    if not steps_per_epoch:
        return 0, 0, 0, 0
    if max_train_steps:
        total = int(max_train_steps)
        epochs = math.ceil(total / steps_per_epoch)
    elif max_train_epochs:
        epochs = int(max_train_epochs)
        total = epochs * steps_per_epoch
    else:
        total = KOHYA_DEFAULT_MAX_TRAIN_STEPS
        epochs = math.ceil(total / steps_per_epoch)
    return batches, steps_per_epoch, epochs, total


# ---------------------------------------------------------------- folder layout

def parse_subset_name(folder_name: str) -> tuple[int | None, str]:
    """('10_sks dog') -> (10, 'sks dog'); (None, '') when the first field is not a number."""
    first, _, rest = folder_name.partition("_")
    try:
        return int(first), rest
    except ValueError:
        return None, ""


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _list_dir(path: Path, problems: list[Problem]) -> list[Path] | None:
    try:
        return sorted((p for p in path.iterdir() if not _is_hidden(p.name)), key=lambda p: p.name)
    except OSError as exc:
        problems.append(Problem(str(path), f"The folder cannot be listed ({exc.strerror or exc}).",
                                "Check the folder permissions.", "warning"))
        return None


def _names(paths, limit=_LIST_AT_MOST) -> str:
    names = [p.name for p in paths]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _has_images(path: Path) -> bool:
    try:
        return any(is_image_file(p) and p.is_file() for p in path.iterdir())
    except OSError:
        return False


def _subset_folders(entries: list[Path], problems: list[Problem]):
    """[(folder, repeats, name)] for valid N_name folders; reports the others."""
    subsets = []
    for entry in entries:
        if not entry.is_dir():
            continue
        repeats, name = parse_subset_name(entry.name)
        if repeats is None:
            looks_like_parent = any(d.is_dir() and parse_subset_name(d.name)[0]
                                    for d in (_list_dir(entry, []) or []))
            fix = (f"It contains N_name folders itself: point train_data_dir at {entry}."
                   if looks_like_parent else
                   f"Rename it to e.g. 10_{entry.name} (the number is how often each image repeats).")
            problems.append(Problem(str(entry), f"Folder {entry.name} is ignored: its name does not "
                                    "start with a repeat count (N_name).", fix, "warning"))
            continue
        if repeats < 1:
            problems.append(Problem(str(entry), f"Folder {entry.name} is ignored: the repeat count "
                                    f"{repeats} must be at least 1.",
                                    f"Rename it to e.g. 1_{name or 'name'}.", "warning"))
            continue
        subsets.append((entry, repeats, name))
    return subsets


def _check_loose_files(entries: list[Path], problems: list[Problem]) -> list[Path]:
    """Files directly in train_data_dir are not used; returns the images among them."""
    files = [e for e in entries if e.is_file()]
    images = [f for f in files if is_image_file(f) or is_unsupported_image_file(f)]
    others = [f for f in files if f not in images]
    if images:
        problems.append(Problem(str(images[0]), f"{len(images)} image(s) directly in train_data_dir "
                                f"are ignored: {_names(images)}.",
                                "Move them into a subfolder named like 10_name.", "warning"))
    if others:
        problems.append(Problem(str(others[0]), f"{len(others)} file(s) directly in train_data_dir "
                                f"are ignored: {_names(others)}.",
                                "Nothing to do unless they are captions: those belong next to their "
                                "images inside the N_name folders.", "warning"))
    return images


# ---------------------------------------------------------------- one subset

class _SubsetScanner:
    """Checks the files of one N_name folder and turns the good images into ImageItems."""

    def __init__(self, folder: Path, repeats: int, name: str, manager: BucketManager,
                 caption_extension: str, problems: list[Problem]):
        self.folder, self.repeats, self.name = folder, repeats, name
        self.manager = manager
        self.caption_extension = caption_extension
        self.problems = problems
        self.items: list[ImageItem] = []
        self.ar_errors: list[float] = []
        self.skipped = 0
        self.notes: dict[str, list] = {}  # note kind -> CaptionProblems, reported once per folder
        self.uncaptioned: list[Path] = []

    def scan(self) -> Subset:
        entries = _list_dir(self.folder, self.problems) or []
        for entry in entries:
            if entry.is_dir():
                if _has_images(entry):
                    self.problems.append(Problem(str(entry), f"Images in the nested folder {entry.name} "
                                                 "are not used (only the N_name folder itself is read).",
                                                 f"Move them up into {self.folder.name}, or make it a "
                                                 "separate N_name folder directly in train_data_dir.",
                                                 "warning"))
                continue
            if is_image_file(entry):
                self._add_image(entry)
            elif is_unsupported_image_file(entry):
                self.skipped += 1
                self.problems.append(Problem(str(entry), f"{entry.name}: {entry.suffix} images are not "
                                             "read by the trainer (PNG, JPEG, WebP, BMP only).",
                                             "Convert it to png (or jpg).", "warning"))
        self._report_uncaptioned()
        self._report_notes()
        self._report_empty()
        found = sum(item.caption_source == "file" for item in self.items)
        return Subset(str(self.folder), self.name, self.repeats, len(self.items), found,
                      len(self.items) - found)

    def _add_image(self, path: Path):
        try:
            size = check_image(path)
        except UserError as exc:
            self.skipped += 1
            self.problems.append(Problem(str(path), f"{path.name}: {exc.message} It is skipped.",
                                         exc.fix, "warning"))
            return
        bucket, resized, ar_error = self.manager.select_bucket(*size)
        if bucket[0] <= 0 or bucket[1] <= 0:
            self.skipped += 1
            steps = self.manager.reso_steps
            self.problems.append(Problem(str(path), f"{path.name} ({size[0]}x{size[1]}) is too small for "
                                         f"bucket_no_upscale: each side must be at least "
                                         f"bucket_reso_steps ({steps}) px. It is skipped.",
                                         "Upscale the image, or turn bucket_no_upscale off.", "warning"))
            return
        caption, source = self._caption(path)
        self.items.append(ImageItem(str(path), str(self.folder), self.repeats, caption, source,
                                    tuple(size), tuple(bucket), tuple(resized)))
        self.ar_errors.append(abs(ar_error))

    def _caption(self, path: Path) -> tuple[str, str]:
        text, problem = read_caption(path, self.caption_extension)
        if problem is not None and problem.severity == "note":
            self.notes.setdefault(problem.kind, []).append(problem)
        elif problem is not None:
            self.problems.append(Problem(problem.path, problem.message, problem.fix, "warning"))
            return self.name, "folder"
        if text is not None:
            return text, "file"
        self.uncaptioned.append(path)  # reported once for the folder, see _report_uncaptioned
        return self.name, "folder"

    def _report_uncaptioned(self):
        if not self.uncaptioned:
            return
        first = self.uncaptioned[0]
        expected = caption_path(first, self.caption_extension).name
        used = f"the folder caption '{self.name}'" if self.name else "an empty caption"
        count = len(self.uncaptioned)
        self.problems.append(Problem(
            str(first),
            f"{count} image(s) in {self.folder.name} have no {self.caption_extension} caption file "
            f"and are trained with {used}: {_names(self.uncaptioned)}.",
            f"Write a caption file next to each image (e.g. {expected}), or check caption_extension.",
            "warning"))

    def _report_notes(self):
        fallback = self.notes.get("fallback_extension", [])
        if fallback:
            other = Path(fallback[0].path).suffix
            self.problems.append(Problem(
                str(self.folder),
                f"{len(fallback)} caption(s) in {self.folder.name} were read from {other} files because "
                f"no {self.caption_extension} file exists: {_names([Path(n.path) for n in fallback])}.",
                fallback[0].fix, "warning"))
        multiline = self.notes.get("multiline", [])
        if multiline:
            self.problems.append(Problem(
                str(self.folder),
                f"{len(multiline)} caption file(s) in {self.folder.name} have several lines; only the "
                f"first non-empty line is used: {_names([Path(n.path) for n in multiline])}.",
                multiline[0].fix, "warning"))

    def _report_empty(self):
        if self.items:
            return
        if self.skipped:
            message = (f"Folder {self.folder.name} has no usable image ({self.skipped} file(s) "
                       "skipped, see the other problems).")
            fix = "Fix or replace the skipped files."
        else:
            message = f"Folder {self.folder.name} contains no images."
            fix = "Add PNG/JPEG/WebP/BMP images to it, or remove the folder."
        self.problems.append(Problem(str(self.folder), message, fix, "warning"))


# ---------------------------------------------------------------- the scan

def _resolution(cfg) -> tuple[int, int]:
    value = getattr(cfg, "resolution_wh", None)
    if value is None:
        value = getattr(cfg, "resolution", 512)
    return parse_resolution(value)


def _bucket_manager(cfg, problems: list[Problem]) -> BucketManager:
    try:
        resolution = _resolution(cfg)
    except (TypeError, ValueError):
        problems.append(Problem(None, f"resolution {getattr(cfg, 'resolution', None)!r} is not a size.",
                                "Use e.g. 512 or 512,768 (width,height).", "error", "resolution"))
        resolution = (512, 512)
    try:
        return bucket_manager_for(resolution, bool(getattr(cfg, "enable_bucket", False)),
                                  getattr(cfg, "min_bucket_reso", 256), getattr(cfg, "max_bucket_reso", 1024),
                                  getattr(cfg, "bucket_reso_steps", 64),
                                  bool(getattr(cfg, "bucket_no_upscale", False)))
    except UserError as exc:
        problems.append(Problem(None, exc.message, exc.fix, "error", exc.key))
        # Keep scanning so file problems are reported too; the error blocks training anyway.
        return BucketManager.fixed(resolution)


def _root(cfg, problems: list[Problem], key: str = "train_data_dir") -> Path | None:
    value = getattr(cfg, key, None)
    if not value or not str(value).strip():
        problems.append(Problem(None, f"{key} is not set.",
                                "Set it to the folder that contains your N_name image folders.",
                                "error", key))
        return None
    root = Path(str(value).strip())
    if not root.exists():
        problems.append(Problem(str(root), f"{key} does not exist.",
                                "Check the path: it must be the parent of folders named like 10_name.",
                                "error", key))
        return None
    if not root.is_dir():
        problems.append(Problem(str(root), f"{key} is a file, not a folder.",
                                "Point it at the folder that contains your N_name image folders.",
                                "error", key))
        return None
    return root


def balance_reg_items(reg_items: list[ImageItem], num_train_images: int) -> list[ImageItem]:
    """kohya's rule: reg samples per epoch = train samples. First every reg image with its own
    repeats (stopping once enough), then one more repeat each, round-robin, until equal."""
    repeats: list[int] = []
    n = 0
    while reg_items and n < num_train_images:
        for i, item in enumerate(reg_items):
            if len(repeats) < len(reg_items):
                repeats.append(item.repeats)
                n += item.repeats
            else:
                repeats[i] += 1
                n += 1
            if n >= num_train_images:
                break
    return [replace(item, repeats=r, is_reg=True) for item, r in zip(reg_items, repeats)]


def _no_images_problem(root: Path, loose_images: list[Path]) -> Problem:
    repeats, _ = parse_subset_name(root.name)
    if loose_images and repeats:
        return Problem(str(root), f"No training images found in {root}: it is itself an N_name training "
                       "folder, so its images are not read.",
                       f"Point train_data_dir at its parent: {root.parent}", "error", "train_data_dir")
    if loose_images:
        return Problem(str(root), f"No training images found in {root}: images directly in train_data_dir "
                       "are not read.",
                       f"Move them into a subfolder named like 10_{root.name} "
                       "(repeat count, underscore, name).", "error", "train_data_dir")
    return Problem(str(root), f"No training images found in {root}.",
                   "train_data_dir must be the parent of folders named like 10_name that contain "
                   "PNG/JPEG/WebP/BMP images.", "error", "train_data_dir")


def scan_dataset(cfg) -> DatasetScan:
    """Scan cfg.train_data_dir; see the module docstring. Never raises for dataset problems."""
    problems: list[Problem] = []
    manager = _bucket_manager(cfg, problems)
    caption_extension = normalise_extension(getattr(cfg, "caption_extension", ".caption"))
    batch_size = max(1, int(getattr(cfg, "train_batch_size", 1) or 1))
    grad_accum = max(1, int(getattr(cfg, "gradient_accumulation_steps", 1) or 1))
    separator = getattr(cfg, "keep_tokens_separator", "|||")

    root = _root(cfg, problems)
    items, subsets, ar_errors, frequencies, loose = _scan_folders(root, manager, caption_extension, separator,
                                                                  problems)
    if root is not None and not items:
        problems.append(_no_images_problem(root, loose))
    num_train = sum(item.repeats for item in items)

    reg_root, reg_items, reg_subsets = None, [], []
    if str(getattr(cfg, "reg_data_dir", "") or "").strip():
        reg_root = _root(cfg, problems, "reg_data_dir")
        found, reg_subsets, reg_ar_errors, reg_frequencies, _ = _scan_folders(
            reg_root, manager, caption_extension, separator, problems)
        for folder, counts in reg_frequencies.items():  # kohya keys by folder name: same names add up
            merged = frequencies.setdefault(folder, {})
            for tag, count in counts.items():
                merged[tag] = merged.get(tag, 0) + count
        if reg_root is not None and not found:
            problems.append(Problem(str(reg_root), "reg_data_dir has no usable images in N_name folders; "
                                    "training goes on without regularization images.",
                                    "Point it at the parent of folders like 1_person, or clear it.", "warning",
                                    "reg_data_dir"))
        reg_items = balance_reg_items(found, num_train)
        ar_errors = ar_errors + reg_ar_errors[:len(reg_items)]  # kohya buckets the reg images it registered
        if len(reg_items) < len(found):
            problems.append(Problem(str(reg_root), f"Only {len(reg_items)} of {len(found)} regularization images "
                                    f"are used: kohya uses as many reg samples as training samples ({num_train}).",
                                    "Nothing to do; add training images or repeats to use more.", "warning",
                                    "reg_data_dir"))
        items = items + reg_items

    buckets: dict[tuple[int, int], int] = {}
    for item in items:  # every image counts `repeats` times, as kohya adds it repeats times
        buckets[item.bucket] = buckets.get(item.bucket, 0) + item.repeats
    buckets = dict(sorted(buckets.items()))
    batches, steps_per_epoch, epochs, total = count_steps(
        buckets, batch_size, grad_accum, getattr(cfg, "max_train_epochs", None),
        getattr(cfg, "max_train_steps", None))
    return DatasetScan(
        items=items, subsets=subsets, problems=problems, buckets=buckets,
        steps_per_epoch=steps_per_epoch, total_steps=total, epochs=epochs,
        num_train_images=num_train, tag_frequency=frequencies,
        mean_ar_error=(sum(ar_errors) / len(ar_errors)) if ar_errors else 0.0,
        train_data_dir=str(root) if root is not None else getattr(cfg, "train_data_dir", None),
        batches_per_epoch=batches, batch_size=batch_size, gradient_accumulation_steps=grad_accum,
        reg_data_dir=str(reg_root) if reg_root is not None else None, reg_subsets=reg_subsets,
    )


def _scan_folders(root, manager, caption_extension, separator, problems):
    """Items, subsets, aspect errors, tag frequencies of the N_name folders under root, and loose images."""
    items: list[ImageItem] = []
    subsets: list[Subset] = []
    ar_errors: list[float] = []
    frequencies: dict[str, dict[str, int]] = {}
    if root is None:
        return items, subsets, ar_errors, frequencies, []
    entries = _list_dir(root, problems) or []
    loose = _check_loose_files(entries, problems)
    for folder, repeats, name in _subset_folders(entries, problems):
        scanner = _SubsetScanner(folder, repeats, name, manager, caption_extension, problems)
        subsets.append(scanner.scan())
        items.extend(scanner.items)
        ar_errors.extend(scanner.ar_errors)
        frequencies[folder.name] = tag_frequency([i.caption for i in scanner.items], separator)
    return items, subsets, ar_errors, frequencies, loose
