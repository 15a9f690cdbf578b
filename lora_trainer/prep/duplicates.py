"""Exact and near duplicates: one decoding pass per image, then groups of copies.

Read-only: nothing on disk changes. Unreadable files never raise; they are reported
(pass a list as `problems=`, or use hygiene.check_images()).

Near duplicates (facts: docs dataset-prep.md §6.1, measured on imagehash 4.3.2):
64-bit phash distance <= 4 is the same picture resized / re-encoded; brightness edits
reach 10; different pictures were >= 12 apart. A pair is grouped when phash AND dhash
are both within the threshold (default 10), and their mean colours are close (solid or
near-uniform images all hash alike, whatever their colour). phash/dhash are not
flip-invariant (a mirrored copy is ~32 apart), which is what we want by default:
mirrored images are legitimate augmentation. mirrored=True also groups mirror copies.

numpy and imagehash are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields

from ..dataset.images import open_image
from ..errors import UserError
from .files import file_sha256
from .problems import FileProblem

SAME_IMAGE_DISTANCE = 4          # §6.1: phash <= 4 ~ the same image resized / re-encoded
NEAR_DUPLICATE_THRESHOLD = 10    # §6.1: brightness +-20 % reaches 10; different images >= 12
HASH_SIZE = 8                    # 64-bit hashes (16x16 hashes scale distances ~4x)
MAX_MEAN_COLOUR_DIFFERENCE = 48  # 0..255 per channel; brightness +-10 % moves it <= ~26
_HASH_SOURCE_SIDE = 512          # images are shrunk to this before hashing (phash works on 32x32)
_MAX_PAIRS_LISTED = 50


# ---------------------------------------------------------------- per-image facts

@dataclass
class ImageFacts:
    """What one decoding pass learns about a file."""

    path: object                       # as passed in
    file_bytes: int | None = None
    file_sha256: str | None = None
    size: tuple[int, int] | None = None  # (w, h) as displayed (EXIF orientation applied)
    pixel_sha256: str | None = None    # of the decoded RGB pixels (after EXIF + alpha flattening)
    phash: int | None = None
    dhash: int | None = None
    phash_mirrored: int | None = None
    dhash_mirrored: int | None = None
    mean_rgb: tuple[float, float, float] | None = None
    problem: FileProblem | None = None

    def as_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "path":
                value = str(value)
            elif f.name == "problem":
                value = value.as_dict() if value is not None else None
            elif f.name.startswith(("phash", "dhash")) and value is not None:
                value = f"{value:016x}"
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _imagehash():
    try:
        import imagehash
    except ImportError:  # pragma: no cover - depends on the install
        raise UserError("The 'imagehash' package is not installed, so near duplicates cannot be "
                        "found.", fix="Install it into the WebUI's Python: pip install imagehash "
                        "(the extension's installer normally does this).") from None
    return imagehash


def imagehash_problem() -> FileProblem | None:
    """None when imagehash can be imported; else the warning check_images reports."""
    try:
        _imagehash()
    except UserError as exc:
        return FileProblem(None, exc.message, exc.fix, "imagehash_missing", "warning")
    return None


def _hash_int(image_hash) -> int:
    return int(str(image_hash), 16)


def _pixel_sha256(img) -> str:
    """SHA-256 of mode, size and pixels, hashed in strips (no full-size copy in memory)."""
    digest = hashlib.sha256(f"{img.mode} {img.width}x{img.height}\n".encode())
    rows = max(1, (8 << 20) // max(1, img.width * len(img.getbands())))
    for top in range(0, img.height, rows):
        digest.update(img.crop((0, top, img.width, min(img.height, top + rows))).tobytes())
    return digest.hexdigest()


def analyse_images(paths, *, pixels: bool = True, perceptual: bool = True, mirrored: bool = False,
                   progress=None, should_stop=None) -> list[ImageFacts]:
    """One pass over `paths`: file hash always; decode for pixel hash / perceptual hashes.

    progress(done, total, path) before each file; should_stop() polled between files
    (the result then covers only the files done).
    """
    paths = list(paths)
    imagehash = _imagehash() if perceptual else None
    out: list[ImageFacts] = []
    for index, path in enumerate(paths):
        if should_stop is not None and should_stop():
            break
        if progress is not None:
            progress(index, len(paths), str(path))
        facts = ImageFacts(path)
        out.append(facts)
        try:
            facts.file_bytes, facts.file_sha256 = file_sha256(path)
        except OSError as exc:
            facts.problem = FileProblem(str(path), f"The file cannot be read ({exc.strerror or exc}).",
                                        "Check that it exists and its permissions.", "unreadable")
            continue
        if not (pixels or perceptual):
            continue
        try:
            img = open_image(path)
        except UserError as exc:
            facts.problem = FileProblem.from_user_error(exc, kind="bad_image", path=str(path))
            continue
        facts.size = img.size
        if pixels:
            facts.pixel_sha256 = _pixel_sha256(img)
        if perceptual:
            from PIL import Image, ImageOps, ImageStat

            small = img  # not needed at full size any more: shrink in place
            small.thumbnail((_HASH_SOURCE_SIDE, _HASH_SOURCE_SIDE), Image.Resampling.LANCZOS)
            facts.phash = _hash_int(imagehash.phash(small, hash_size=HASH_SIZE))
            facts.dhash = _hash_int(imagehash.dhash(small, hash_size=HASH_SIZE))
            facts.mean_rgb = tuple(round(v, 2) for v in ImageStat.Stat(small).mean[:3])
            if mirrored:
                flipped = ImageOps.mirror(small)
                facts.phash_mirrored = _hash_int(imagehash.phash(flipped, hash_size=HASH_SIZE))
                facts.dhash_mirrored = _hash_int(imagehash.dhash(flipped, hash_size=HASH_SIZE))
    if progress is not None and len(out) == len(paths):
        progress(len(paths), len(paths), "")
    return out


def _report_problems(facts, problems):
    if problems is not None:
        problems.extend(f.problem for f in facts if f.problem is not None)


# ---------------------------------------------------------------- grouping

class _UnionFind:
    def __init__(self, n):
        self.parent = list(range(n))

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        by_root: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            by_root.setdefault(self.find(i), []).append(i)
        return [g for g in by_root.values() if len(g) > 1]


def _keep_order(facts: list[ImageFacts], members: list[int]) -> list[int]:
    """Best copy first: most pixels, then largest file (less compressed), then input order."""
    def key(i):
        size = facts[i].size or (0, 0)
        return (-(size[0] * size[1]), -(facts[i].file_bytes or 0), i)
    return sorted(members, key=key)


def _popcount(values):
    import numpy as np

    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)  # numpy 1.26
    return table[values.view(np.uint8)].reshape(-1, 8).sum(axis=1)


def _near_pairs(facts: list[ImageFacts], indices: list[int], threshold: int, dhash_threshold: int,
                max_colour: float, mirrored: bool):
    """(i, j, phash distance, dhash distance, mirrored?) for every grouped pair."""
    import numpy as np

    if len(indices) < 2:
        return []
    ph = np.array([facts[i].phash for i in indices], dtype=np.uint64)
    dh = np.array([facts[i].dhash for i in indices], dtype=np.uint64)
    rgb = np.array([facts[i].mean_rgb for i in indices], dtype=np.float64)
    if mirrored:
        ph_m = np.array([facts[i].phash_mirrored for i in indices], dtype=np.uint64)
        dh_m = np.array([facts[i].dhash_mirrored for i in indices], dtype=np.uint64)
    pairs = []
    for a in range(len(indices) - 1):
        rest = slice(a + 1, None)
        colour_ok = np.abs(rgb[rest] - rgb[a]).max(axis=1) <= max_colour
        variants = [(ph, dh, False)] + ([(ph_m, dh_m, True)] if mirrored else [])
        for ph_b, dh_b, is_mirror in variants:
            pd = _popcount(ph_b[rest] ^ ph[a])
            dd = _popcount(dh_b[rest] ^ dh[a])
            hits = np.nonzero((pd <= threshold) & (dd <= dhash_threshold) & colour_ok)[0]
            for k in hits:
                pairs.append((indices[a], indices[a + 1 + int(k)], int(pd[k]), int(dd[k]), is_mirror))
    return pairs


# ---------------------------------------------------------------- reports

@dataclass
class DuplicateGroup:
    """Images that are the same picture. paths[0] is the suggested one to keep."""

    kind: str                       # "exact" | "near"
    paths: list[str]
    keep: str
    drop: list[str]
    level: str = "same"             # near: "same" (phash <= 4) or "similar" (review them)
    max_distance: int = 0           # near: largest phash distance among the pairs found
    pairs: list[dict] = field(default_factory=list)  # near: {a, b, phash, dhash, mirrored}
    reason: str = ""                # exact: "file bytes" | "pixels" | "file bytes and pixels"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "paths": list(self.paths), "keep": self.keep,
                "drop": list(self.drop), "level": self.level, "max_distance": self.max_distance,
                "pairs": [dict(p) for p in self.pairs], "reason": self.reason}


def exact_groups(facts: list[ImageFacts], by: str) -> list[DuplicateGroup]:
    if by not in ("both", "bytes", "pixels"):
        raise ValueError("by must be 'both', 'bytes' or 'pixels'")
    uf = _UnionFind(len(facts))
    reasons: dict[int, set] = {}
    for attr, reason in (("file_sha256", "file bytes"), ("pixel_sha256", "pixels")):
        if by not in ("both", reason.split()[-1]):
            continue
        first: dict[str, int] = {}
        for i, f in enumerate(facts):
            value = getattr(f, attr)
            if value is None:
                continue
            if value in first:
                uf.union(first[value], i)
                reasons.setdefault(i, set()).add(reason)
            else:
                first[value] = i
    out = []
    for members in sorted(uf.groups(), key=min):
        order = _keep_order(facts, members)
        found = set().union(*(reasons.get(i, set()) for i in members))
        paths = [str(facts[i].path) for i in order]
        out.append(DuplicateGroup("exact", paths, paths[0], paths[1:],
                                  reason=" and ".join(sorted(found))))
    return out


def near_groups(facts, threshold, dhash_threshold, max_colour, mirrored) -> list[DuplicateGroup]:
    usable = [i for i, f in enumerate(facts) if f.phash is not None and f.dhash is not None]
    pairs = _near_pairs(facts, usable, threshold, dhash_threshold, max_colour, mirrored)
    uf = _UnionFind(len(facts))
    for a, b, *_ in pairs:
        uf.union(a, b)
    by_root: dict[int, list] = {}
    for pair in pairs:
        by_root.setdefault(uf.find(pair[0]), []).append(pair)
    out = []
    for members in sorted(uf.groups(), key=min):
        order = _keep_order(facts, members)
        paths = [str(facts[i].path) for i in order]
        group_pairs = by_root.get(uf.find(members[0]), [])
        worst = max((p[2] for p in group_pairs), default=0)
        listed = [{"a": str(facts[a].path), "b": str(facts[b].path), "phash": pd, "dhash": dd,
                   "mirrored": m} for a, b, pd, dd, m in group_pairs[:_MAX_PAIRS_LISTED]]
        out.append(DuplicateGroup("near", paths, paths[0], paths[1:],
                                  "same" if worst <= SAME_IMAGE_DISTANCE else "similar", worst, listed))
    return out


def _as_given(groups: list[DuplicateGroup], facts: list[ImageFacts]) -> list[list]:
    """Groups of the caller's own path objects (str in, str out; Path in, Path out)."""
    lookup = {str(f.path): f.path for f in facts}
    return [[lookup[p] for p in g.paths] for g in groups]


def exact_duplicates(paths, by: str = "both", problems: list | None = None) -> list[list]:
    """Groups (>= 2) of identical images: same file bytes, or same decoded pixels (a re-save
    that only changed metadata, a PNG of a JPEG's pixels). Best copy first in each group."""
    facts = analyse_images(paths, pixels=by != "bytes", perceptual=False)
    _report_problems(facts, problems)
    return _as_given(exact_groups(facts, by), facts)


def near_duplicates(paths, threshold: int = NEAR_DUPLICATE_THRESHOLD, *,
                    dhash_threshold: int | None = None,
                    max_colour_difference: float = MAX_MEAN_COLOUR_DIFFERENCE,
                    mirrored: bool = False, problems: list | None = None) -> list[list]:
    """Groups (>= 2) of the same picture resized, re-encoded or brightness-shifted.

    A pair joins when phash distance <= threshold and dhash distance <= dhash_threshold
    (default: threshold); groups are the connected pairs. Best copy first in each group.
    """
    facts = analyse_images(paths, pixels=False, perceptual=True, mirrored=mirrored)
    _report_problems(facts, problems)
    groups = near_groups(facts, threshold, threshold if dhash_threshold is None else dhash_threshold,
                          max_colour_difference, mirrored)
    return _as_given(groups, facts)
