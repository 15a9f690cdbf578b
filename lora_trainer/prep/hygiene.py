"""Image hygiene: images too small for their bucket, the bucket report, and check_images(),
which also finds exact and near duplicates (see duplicates) in the same decoding pass.

Read-only: nothing on disk changes. Unreadable files never raise; they are reported.
The duplicate finders are re-exported here, where callers have always found them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ..dataset.buckets import bucket_manager_for, parse_resolution
from ..dataset.images import image_size
from ..errors import UserError
from .duplicates import (HASH_SIZE, MAX_MEAN_COLOUR_DIFFERENCE, NEAR_DUPLICATE_THRESHOLD,  # noqa: F401
                         SAME_IMAGE_DISTANCE, DuplicateGroup, ImageFacts, _imagehash, analyse_images,
                         exact_duplicates, exact_groups, imagehash_problem, near_duplicates, near_groups)
from .problems import FileProblem


# ---------------------------------------------------------------- buckets

@dataclass(frozen=True)
class BucketParams:
    """The training settings the bucket report depends on (kohya names)."""

    resolution: tuple[int, int] = (512, 512)
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    batch_size: int = 1

    @classmethod
    def from_cfg(cls, cfg=None, **overrides) -> "BucketParams":
        """From a TrainConfig-like object or a dict (missing keys: defaults), then overrides.

        Accepts resolution as 512, "512", "512,768", (w, h); batch size as batch_size or
        train_batch_size.
        """
        if isinstance(cfg, BucketParams):
            values = {f.name: getattr(cfg, f.name) for f in fields(cls)}
        else:
            get = (cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))) \
                if cfg is not None else (lambda k, d=None: d)
            values = {}
            resolution = get("resolution_wh", None)
            if resolution is None or (isinstance(cfg, dict) and "resolution" in cfg):
                resolution = get("resolution", None)
            if resolution is not None:
                values["resolution"] = resolution
            for f in fields(cls):
                if f.name not in ("resolution", "batch_size") and get(f.name, None) is not None:
                    values[f.name] = get(f.name)
            batch = get("batch_size", None) or get("train_batch_size", None)
            if batch is not None:
                values["batch_size"] = batch
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown bucket settings: {sorted(unknown)}")
        try:
            values["resolution"] = parse_resolution(values.get("resolution", (512, 512)))
        except (TypeError, ValueError):
            raise UserError(f"{values.get('resolution')!r} is not a size.", key="resolution",
                            fix='Use e.g. 512 or "512,768" (width,height).') from None
        params = cls(**values)
        if not isinstance(params.batch_size, int) or params.batch_size < 1:
            raise UserError(f"{params.batch_size!r} is not a batch size.", key="train_batch_size",
                            fix="Use a whole number >= 1.")
        return params

    def manager(self):
        """The kohya BucketManager these settings describe (ConfigError when invalid)."""
        return bucket_manager_for(self.resolution, self.enable_bucket, self.min_bucket_reso,
                                  self.max_bucket_reso, self.bucket_reso_steps, self.bucket_no_upscale)

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["resolution"] = list(self.resolution)
        return out


@dataclass
class BucketEntry:
    path: str
    size: tuple[int, int]        # (w, h) as displayed
    bucket: tuple[int, int]      # (w, h) trained at
    resized: tuple[int, int]     # (w, h) after the resize, before the centre crop
    downscale: float             # size / resized: 2.0 = halved; below 1.0 = upscaled
    upscaled: bool
    cropped: tuple[int, int]     # pixels trimmed (w, h) from the resized image
    aspect_error: float          # bucket AR - image AR (kohya's ar_error)
    small: bool                  # image area below the target area (see SmallImage)

    def as_dict(self) -> dict:
        return {"path": self.path, "size": list(self.size), "bucket": list(self.bucket),
                "resized": list(self.resized), "downscale": self.downscale,
                "upscaled": self.upscaled, "cropped": list(self.cropped),
                "aspect_error": self.aspect_error, "small": self.small}


@dataclass
class BucketCount:
    bucket: tuple[int, int]
    count: int
    short: bool                  # fewer images than the batch size: short batches every epoch
    paths: list[str]

    def as_dict(self) -> dict:
        return {"bucket": list(self.bucket), "name": f"{self.bucket[0]}x{self.bucket[1]}",
                "count": self.count, "short": self.short, "paths": list(self.paths)}


@dataclass
class SmallImage:
    """An image whose area is below the area it trains at (it gets upscaled: blur).

    Target area = its bucket's area; with bucket_no_upscale (buckets never exceed the
    image) it is the resolution's area instead.
    """

    path: str
    size: tuple[int, int]
    bucket: tuple[int, int]
    target_area: int
    area_ratio: float            # image area / target area (< 1)
    upscale: float               # linear factor the trainer would scale it by (resized / size)

    def as_dict(self) -> dict:
        return {"path": self.path, "size": list(self.size), "bucket": list(self.bucket),
                "target_area": self.target_area, "area_ratio": self.area_ratio,
                "upscale": self.upscale}


@dataclass
class BucketReport:
    params: BucketParams
    entries: list[BucketEntry] = field(default_factory=list)
    buckets: list[BucketCount] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)

    @property
    def short_buckets(self) -> list[BucketCount]:
        return [b for b in self.buckets if b.short]

    @property
    def small(self) -> list[SmallImage]:
        return [_small_of(e, self.params) for e in self.entries if e.small]

    def as_dict(self) -> dict:
        return {"params": self.params.as_dict(), "entries": [e.as_dict() for e in self.entries],
                "buckets": [b.as_dict() for b in self.buckets],
                "short_buckets": [f"{b.bucket[0]}x{b.bucket[1]}" for b in self.short_buckets],
                "small": [s.as_dict() for s in self.small],
                "problems": [p.as_dict() for p in self.problems]}


def _target_area(bucket, params: BucketParams) -> int:
    if params.enable_bucket and params.bucket_no_upscale:
        return params.resolution[0] * params.resolution[1]
    return bucket[0] * bucket[1]


def _small_of(entry: BucketEntry, params: BucketParams) -> SmallImage:
    target = _target_area(entry.bucket, params)
    area = entry.size[0] * entry.size[1]
    return SmallImage(entry.path, entry.size, entry.bucket, target, round(area / target, 4),
                      round(entry.resized[0] / entry.size[0], 4))


def _build_bucket_report(sized, params: BucketParams, problems) -> BucketReport:
    """sized: (path, (w, h)) pairs of readable images."""
    manager = params.manager()
    report = BucketReport(params, problems=list(problems))
    counts: dict[tuple[int, int], list[str]] = {}
    for path, (w, h) in sized:
        bucket, resized, ar_error = manager.select_bucket(w, h)
        bucket, resized = tuple(bucket), tuple(resized)
        entry = BucketEntry(str(path), (w, h), bucket, resized, round(w / resized[0], 4),
                            resized[0] > w or resized[1] > h,
                            (max(0, resized[0] - bucket[0]), max(0, resized[1] - bucket[1])),
                            round(float(ar_error), 4), w * h < _target_area(bucket, params))
        report.entries.append(entry)
        counts.setdefault(bucket, []).append(str(path))
    for bucket in sorted(counts, key=lambda b: (b[0] * b[1], b)):
        members = counts[bucket]
        report.buckets.append(BucketCount(bucket, len(members), len(members) < params.batch_size,
                                          members))
    return report


def _sizes_from_headers(paths, problems) -> list:
    sized = []
    for path in paths:
        try:
            sized.append((path, image_size(path)))
        except UserError as exc:
            problems.append(FileProblem.from_user_error(exc, kind="bad_image", path=str(path)))
    return sized


def bucket_report(paths, cfg=None, **settings) -> BucketReport:
    """Which bucket each image lands in, its downscale factor, and the buckets with fewer
    images than the batch size. `cfg`: a TrainConfig-like object, dict or BucketParams;
    keyword settings (resolution=..., batch_size=..., enable_bucket=...) override it.
    Sizes come from the file headers (fast: nothing is decoded)."""
    params = BucketParams.from_cfg(cfg, **settings)
    problems: list[FileProblem] = []
    sized = _sizes_from_headers(paths, problems)
    return _build_bucket_report(sized, params, problems)


def small_images(paths, resolution=None, cfg=None, **settings) -> list[SmallImage]:
    """Images whose area is below the bucket area they train at (see SmallImage)."""
    if resolution is not None:
        settings["resolution"] = resolution
    return bucket_report(paths, cfg, **settings).small


# ---------------------------------------------------------------- everything at once

@dataclass
class HygieneReport:
    checked: int
    exact: list[DuplicateGroup] = field(default_factory=list)
    near: list[DuplicateGroup] = field(default_factory=list)
    small: list[SmallImage] = field(default_factory=list)
    buckets: BucketReport | None = None
    problems: list[FileProblem] = field(default_factory=list)   # unreadable files, by name
    stopped: bool = False

    def summary(self) -> str:
        parts = [f"{self.checked} image(s) checked"]
        if self.problems:
            parts.append(f"{len(self.problems)} unreadable")
        parts.append(f"{len(self.exact)} exact-duplicate group(s)")
        parts.append(f"{len(self.near)} near-duplicate group(s)")
        parts.append(f"{len(self.small)} small image(s)")
        if self.buckets is not None and self.buckets.short_buckets:
            parts.append(f"{len(self.buckets.short_buckets)} bucket(s) smaller than the batch")
        return ", ".join(parts) + ("; stopped before the end." if self.stopped else ".")

    def as_dict(self) -> dict:
        return {"checked": self.checked, "exact": [g.as_dict() for g in self.exact],
                "near": [g.as_dict() for g in self.near], "small": [s.as_dict() for s in self.small],
                "buckets": self.buckets.as_dict() if self.buckets is not None else None,
                "problems": [p.as_dict() for p in self.problems], "stopped": self.stopped,
                "summary": self.summary()}


def check_images(paths, cfg=None, *, threshold: int = NEAR_DUPLICATE_THRESHOLD,
                 dhash_threshold: int | None = None, mirrored: bool = False,
                 progress=None, should_stop=None, **settings) -> HygieneReport:
    """Decode each image once; report unreadable files, exact and near duplicate groups,
    small images and the bucket report (cfg / settings as for bucket_report)."""
    paths = list(paths)
    params = BucketParams.from_cfg(cfg, **settings)  # bad settings raise before the long pass
    missing = imagehash_problem()  # without imagehash, still report everything else
    facts = analyse_images(paths, pixels=True, perceptual=missing is None, mirrored=mirrored,
                           progress=progress, should_stop=should_stop)
    report = HygieneReport(checked=len(facts), stopped=len(facts) < len(paths))
    report.problems = [f.problem for f in facts if f.problem is not None]
    if missing is not None:
        report.problems.insert(0, missing)
    report.exact = exact_groups(facts, "both")
    exact_sets = [set(g.paths) for g in report.exact]
    near = near_groups(facts, threshold, threshold if dhash_threshold is None else dhash_threshold,
                       MAX_MEAN_COLOUR_DIFFERENCE, mirrored)
    # A near group that is only copies of one exact group adds nothing.
    report.near = [g for g in near if not any(set(g.paths) <= s for s in exact_sets)]
    sized = [(f.path, f.size) for f in facts if f.size is not None]
    report.buckets = _build_bucket_report(sized, params, [])
    report.small = report.buckets.small
    return report


def project_paths(project) -> list[Path]:
    """The image paths of a prep Project (or of a plain folder), for the functions above."""
    if hasattr(project, "image_paths"):
        return project.image_paths()
    from ..dataset.images import is_image_file

    folder = Path(project)
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p)
                  and not p.name.startswith("."))
