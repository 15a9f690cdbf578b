"""Image hygiene: exact / near duplicates with known answers, small images, bucket report."""

import io
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFile, ImageOps, PngImagePlugin

from lora_trainer.config import TrainConfig
from lora_trainer.errors import ConfigError, UserError
from lora_trainer.prep import duplicates, hygiene
from lora_trainer.prep.hygiene import (
    BucketParams, bucket_report, check_images, exact_duplicates, near_duplicates, small_images,
)

pytest.importorskip("imagehash")


# ---------------------------------------------------------------- fixtures

def smooth(seed: int, size=(256, 192)) -> Image.Image:
    """A photo-like smooth image: random coloured blobs on a gradient (asymmetric)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    x, y = x / w, y / h
    img = np.zeros((h, w, 3))
    img += rng.uniform(-1, 1, 3) * x[..., None] + rng.uniform(-1, 1, 3) * y[..., None]
    for _ in range(7):
        cx, cy = rng.random(2)
        s = rng.uniform(0.05, 0.25)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
        img += rng.uniform(-1.5, 1.5, 3) * blob[..., None]
    img = (img - img.min()) / (img.max() - img.min())
    return Image.fromarray((30 + img * 195).astype(np.uint8), "RGB")


def jpeg(img, quality):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


VARIANTS = {
    "resized50": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "jpeg60": lambda im: jpeg(im, 60),
    "small_jpeg60": lambda im: jpeg(im.resize((im.width // 4, im.height // 4),
                                              Image.Resampling.LANCZOS), 60),
    "bright110": lambda im: ImageEnhance.Brightness(im).enhance(1.10),
    "dark90": lambda im: ImageEnhance.Brightness(im).enhance(0.90),
}


@pytest.fixture(scope="module")
def near_set(tmp_path_factory):
    """4 originals with 5 known-duplicate variants each, their mirror images, 6 unrelated."""
    folder = tmp_path_factory.mktemp("near")
    expected, flipped, unrelated = [], [], []
    for seed in range(4):
        base = smooth(seed)
        group = [folder / f"o{seed}.png"]
        base.save(group[0])
        for name, make in VARIANTS.items():
            path = folder / f"o{seed}_{name}.png"
            make(base).save(path)
            group.append(path)
        expected.append(group)
        mirror = folder / f"o{seed}_flipped.png"
        ImageOps.mirror(base).save(mirror)
        flipped.append(mirror)
    for seed in range(100, 106):
        path = folder / f"u{seed}.png"
        smooth(seed).save(path)
        unrelated.append(path)
    return SimpleNamespace(folder=folder, expected=expected, flipped=flipped, unrelated=unrelated,
                           all=[p for g in expected for p in g] + flipped + unrelated)


# ---------------------------------------------------------------- near duplicates

def test_thresholds_are_the_documented_ones():
    assert hygiene.SAME_IMAGE_DISTANCE == 4          # dataset-prep.md §6.1
    assert hygiene.NEAR_DUPLICATE_THRESHOLD == 10
    assert hygiene.HASH_SIZE == 8


def test_near_duplicates_known_answers(near_set):
    groups = near_duplicates(near_set.all)
    as_sets = sorted((frozenset(g) for g in groups), key=lambda s: sorted(map(str, s)))
    want = sorted((frozenset(g) for g in near_set.expected), key=lambda s: sorted(map(str, s)))
    assert as_sets == want   # every variant grouped with its original; flips, unrelated alone
    for group in groups:     # best copy (most pixels) first; the original is full size
        assert group[0].name.startswith("o") and Image.open(group[0]).size == (256, 192)
        assert all(isinstance(p, Path) for p in group)


def test_flipped_and_unrelated_are_far_apart(near_set):
    facts = {f.path: f for f in hygiene.analyse_images(near_set.all, pixels=False)}
    for original, flip in zip((g[0] for g in near_set.expected), near_set.flipped):
        assert bin(facts[original].phash ^ facts[flip].phash).count("1") > 10
    originals = [g[0] for g in near_set.expected] + near_set.unrelated
    for i, a in enumerate(originals):
        for b in originals[i + 1:]:
            d = bin(facts[a].phash ^ facts[b].phash).count("1")
            assert d > hygiene.NEAR_DUPLICATE_THRESHOLD, (a.name, b.name, d)


def test_mirrored_copies_only_on_request(near_set):
    subset = [near_set.expected[0][0], near_set.flipped[0], near_set.unrelated[0]]
    assert near_duplicates(subset) == []
    groups = near_duplicates(subset, mirrored=True)
    assert [set(g) for g in groups] == [{near_set.expected[0][0], near_set.flipped[0]}]


def test_solid_colours_are_not_grouped(tmp_path):
    paths = []
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220)), ("red2", (215, 22, 22))):
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    groups = near_duplicates(paths)   # strings in, strings out
    assert groups == [[paths[0], paths[2]]]


def test_stricter_threshold_splits_brightness_edits(near_set):
    group = near_set.expected[0]
    loose = near_duplicates(group)
    assert len(loose) == 1 and len(loose[0]) == len(group)
    strict = near_duplicates(group, threshold=0, dhash_threshold=0)
    assert sum(len(g) for g in strict) < len(group)


# ---------------------------------------------------------------- exact duplicates

def test_exact_duplicates_by_bytes_and_pixels(tmp_path):
    base = smooth(7)
    base.save(tmp_path / "a.png")
    (tmp_path / "a_copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "re-saved with metadata")
    base.save(tmp_path / "a_meta.png", pnginfo=info)            # same pixels, other bytes
    base.convert("RGBA").save(tmp_path / "a_rgba.png")           # opaque alpha: same pixels
    smooth(8).save(tmp_path / "b.png")
    jpeg(base, 60).save(tmp_path / "a_jpeg.png")                 # near, not exact
    paths = sorted(tmp_path.iterdir())
    names = lambda groups: [sorted(p.name for p in g) for g in groups]  # noqa: E731
    assert names(exact_duplicates(paths)) == [["a.png", "a_copy.png", "a_meta.png", "a_rgba.png"]]
    assert names(exact_duplicates(paths, by="bytes")) == [["a.png", "a_copy.png"]]
    report = check_images(paths)
    assert len(report.exact) == 1 and report.exact[0].reason == "file bytes and pixels"
    # the near group (exact copies + the JPEG) is kept: it holds something the exact group lacks
    assert len(report.near) == 1 and "a_jpeg.png" in {Path(p).name for p in report.near[0].paths}


def test_unreadable_files_are_reported_not_raised(tmp_path):
    good = tmp_path / "good.png"
    smooth(1, (32, 32)).save(good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    missing = tmp_path / "missing.png"
    paths = [good, tmp_path / "empty.png", tmp_path / "text.png", tmp_path / "cut.png", missing]
    flags = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
    filters = list(warnings.filters)
    problems = []
    assert near_duplicates(paths, problems=problems) == []
    assert sorted(Path(p.path).name for p in problems) == ["cut.png", "empty.png", "missing.png",
                                                           "text.png"]
    assert all(p.fix and Path(p.path).name in p.text() for p in problems)
    problems = []
    assert exact_duplicates(paths, problems=problems) == []
    assert len(problems) == 4
    report = check_images(paths, resolution=512)
    assert len(report.problems) == 4 and report.checked == 5
    assert [e.path for e in report.buckets.entries] == [str(good)]
    json.dumps(report.as_dict())
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS) == flags
    assert list(warnings.filters) == filters


def test_facts_are_json_and_missing_imagehash_degrades(tmp_path, monkeypatch):
    smooth(1, (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    facts = hygiene.analyse_images([tmp_path / "a.png", tmp_path / "b.png"], mirrored=True)
    data = json.loads(json.dumps([f.as_dict() for f in facts]))
    assert len(data[0]["phash"]) == 16 and data[1]["problem"]["path"].endswith("b.png")

    def missing():
        raise UserError("The 'imagehash' package is not installed.", fix="pip install imagehash")
    monkeypatch.setattr(duplicates, "_imagehash", missing)  # where analyse_images looks it up
    report = check_images([tmp_path / "a.png", tmp_path / "a.png"])
    assert report.problems[0].kind == "imagehash_missing" and report.near == []
    assert len(report.exact) == 1          # exact duplicates and buckets still work
    with pytest.raises(UserError):
        near_duplicates([tmp_path / "a.png"])


def test_progress_and_stop(tmp_path):
    paths = []
    for i in range(4):
        smooth(i, (32, 32)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    seen = []
    report = check_images(paths, progress=lambda d, t, p: seen.append(d),
                          should_stop=lambda: len(seen) >= 2)
    assert report.stopped and report.checked == 2 and seen == [0, 1]


# ---------------------------------------------------------------- small images and buckets

def _sized(tmp_path, sizes):
    paths = []
    for w, h in sizes:
        path = tmp_path / f"{w}x{h}.png"
        Image.new("RGB", (w, h), (90, 90, 90)).save(path)
        paths.append(path)
    return paths


def test_small_images_against_the_bucket_area(tmp_path):
    paths = _sized(tmp_path, [(1, 1), (100, 100), (512, 512), (1024, 1024), (200, 600),
                              (300, 900)])
    small = {Path(s.path).name: s for s in small_images(paths, 512)}
    assert set(small) == {"1x1.png", "100x100.png", "200x600.png"}   # 300x900 lands in 256x832
    assert small["100x100.png"].bucket == (512, 512) and small["100x100.png"].upscale == 5.12
    assert small["100x100.png"].area_ratio == round(100 * 100 / (512 * 512), 4)
    assert [Path(s.path).name for s in small_images(paths, 64)] == ["1x1.png"]
    # bucket_no_upscale never upscales: the target is the resolution's area
    no_up = {Path(s.path).name for s in small_images(paths, 512, bucket_no_upscale=True)}
    assert no_up == {"1x1.png", "100x100.png", "200x600.png"}


def test_bucket_report(tmp_path):
    paths = _sized(tmp_path, [(1024, 1024), (512, 512), (2048, 2048), (768, 512), (100, 100)])
    report = bucket_report(paths, resolution=512, batch_size=2)
    entries = {Path(e.path).name: e for e in report.entries}
    assert entries["1024x1024.png"].bucket == (512, 512) and entries["1024x1024.png"].downscale == 2.0
    assert entries["2048x2048.png"].downscale == 4.0 and not entries["2048x2048.png"].upscaled
    assert entries["100x100.png"].upscaled and entries["100x100.png"].small
    wide = entries["768x512.png"]
    assert wide.bucket[0] > wide.bucket[1] and wide.bucket[0] * wide.bucket[1] <= 512 * 512
    counts = {b.bucket: b.count for b in report.buckets}
    assert counts[(512, 512)] == 4 and counts[wide.bucket] == 1
    assert [b.bucket for b in report.short_buckets] == [wide.bucket]
    data = report.as_dict()
    json.dumps(data)
    assert data["short_buckets"] == [f"{wide.bucket[0]}x{wide.bucket[1]}"]
    # without bucketing everything trains at the resolution
    fixed = bucket_report(paths, resolution="512,768", enable_bucket=False)
    assert {e.bucket for e in fixed.entries} == {(512, 768)}


def test_bucket_params_from_configs():
    cfg = TrainConfig()
    cfg.resolution = "768,512"
    cfg.train_batch_size = 3
    params = BucketParams.from_cfg(cfg)
    assert params.resolution == (768, 512) and params.batch_size == 3 and params.enable_bucket
    ns = SimpleNamespace(resolution=640, enable_bucket=True, min_bucket_reso=320,
                         max_bucket_reso=1280, bucket_reso_steps=64, bucket_no_upscale=False,
                         train_batch_size=2)
    params = BucketParams.from_cfg(ns, batch_size=5)
    assert params.resolution == (640, 640) and params.batch_size == 5 and params.min_bucket_reso == 320
    assert BucketParams.from_cfg({"resolution": "512x768"}).resolution == (512, 768)
    with pytest.raises(UserError):
        BucketParams.from_cfg(resolution="big")
    with pytest.raises(ConfigError):
        BucketParams.from_cfg(min_bucket_reso=300).manager()   # not divisible by 64
    with pytest.raises(TypeError):
        BucketParams.from_cfg(nonsense=1)


def test_report_for_unreadable_headers(tmp_path):
    (tmp_path / "bad.png").write_text("nope")
    smooth(0, (64, 64)).save(tmp_path / "ok.png")
    report = bucket_report([tmp_path / "bad.png", tmp_path / "ok.png"], resolution=512)
    assert [Path(p.path).name for p in report.problems] == ["bad.png"]
    assert len(report.entries) == 1
