#!/usr/bin/env python3
"""Benchmark: dataset preparation throughput on generated images (no WebUI needed).

One run, on N generated images (default 1,000: 512-1024 px JPEG / PNG / WebP / RGBA PNG with
random shapes and noise, a few of them planted copies so the duplicate finder has work):
  1) create_project + import_folder                                   images/s
  2) check_images: file + pixel SHA-256, phash/dhash, exact + near duplicate groups   images/s
  3) WD14 tagging with a stub ONNX model of the real signature, through
     captioning.caption_images (batched, decode/resize overlapped with inference) and
     captioning.caption_images_sequential (one image at a time) on fresh copies of the project's
     images; the caption files must be byte-identical.       goal: pipelined >= 2x sequential

Uses the real package code (lora_trainer imported from the repo root) and the test venv's
numpy, Pillow, onnx, onnxruntime and imagehash. See bench/README.md.

usage: .venv/bin/python bench/prep_throughput.py [--images 1000] [--out bench/out/prep] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from lora_trainer.dataset.images import open_image  # noqa: E402
from lora_trainer.prep.captioning import caption_images, caption_images_sequential  # noqa: E402
from lora_trainer.prep.hygiene import check_images  # noqa: E402
from lora_trainer.prep.project import create_project  # noqa: E402
from lora_trainer.prep.tagger import WD14Tagger, prepare_image  # noqa: E402
from lora_trainer.output.save import write_text_atomic  # noqa: E402

GOAL = 2.0
SIZE = 448                       # the WD14 input side
N_LABELS = 5000                  # 4 ratings, then general tags, the last 10 % characters
TAGS_PER_IMAGE = 25              # the stub's biases are calibrated to keep about this many
PROFILE_SAMPLE = 60              # images timed piece by piece for the profile line
QUIET_CORES, QUIET_WAIT_S = 0.3, 60  # before each timed stage: wait until others use <= 0.3 cores
RUN_TRIES = 3                    # a captioning run during which others used more is run again
# Planted copies, as shares of N (the rest are originals): same bytes, same pixels in another
# file, and resized + re-encoded (near duplicates).
SHARE_EXACT, SHARE_PIXELS, SHARE_NEAR = 0.02, 0.01, 0.03


# ---------------------------------------------------------------- machine load

def _busy_jiffies() -> int:
    """All CPUs' busy time so far (/proc/stat), to see how much other processes used."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # minus idle and iowait


class Timer:
    """Wall time of a block, and how many cores *other* processes used meanwhile."""

    def __enter__(self):
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self.j0 = _busy_jiffies() if os.path.exists("/proc/stat") else None
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        own = time.process_time() - self.cpu0
        self.own_cores = own / self.seconds
        self.others = None
        if self.j0 is not None:
            machine = (_busy_jiffies() - self.j0) / os.sysconf("SC_CLK_TCK")
            self.others = max(0.0, machine - own) / self.seconds

    def load(self) -> str:
        return load_text(self.own_cores, self.others)


def load_text(own_cores: float, others: float | None) -> str:
    text = f"this process {own_cores:.2f} cores"
    return text + (f", others {others:.2f}" if others is not None else "")


def line(stage: str, count: int, timer: Timer, detail: str = "") -> dict:
    rate = count / timer.seconds
    print(f"{stage:<22} {count:5d} images {timer.seconds:7.1f} s {rate:8.1f} images/s   "
          f"{detail}{'; ' if detail else ''}{timer.load()}", flush=True)
    return {"images": count, "seconds": round(timer.seconds, 3), "images_per_s": round(rate, 2),
            "own_cores": round(timer.own_cores, 2),
            "other_cores": None if timer.others is None else round(timer.others, 2)}


# ---------------------------------------------------------------- generated images

def _picture(rng) -> Image.Image:
    """A 512-1024 px picture: background, 4-12 filled shapes, smooth and fine noise."""
    w, h = (int(v) for v in rng.integers(512, 1025, 2))
    im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 13))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=fill)
    # Smooth noise (upsampled) gives texture; fine noise keeps the encoders honest.
    smooth = Image.fromarray(rng.integers(0, 48, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8))
    smooth = np.asarray(smooth.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    fine = rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
    pixels = np.asarray(im, dtype=np.int16) + smooth - 24 + fine
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _save_original(i: int, seed: int, folder: Path) -> Path:
    rng = np.random.default_rng([seed, i])  # per image: the set is the same with any thread count
    im = _picture(rng)
    kind = i % 30
    if kind < 19:
        path = folder / f"photo_{i:05d}.jpg"
        im.save(path, quality=int(rng.integers(82, 96)))
    elif kind < 27:
        path = folder / f"art_{i:05d}.png"
        im.save(path, compress_level=3)
    elif kind < 29:  # converted on import (to PNG)
        path = folder / f"web_{i:05d}.webp"
        im.save(path, quality=85, method=0)
    else:  # transparency: flattened on white on import
        alpha = Image.new("L", im.size, 255)
        ImageDraw.Draw(alpha).ellipse((0, 0, im.width // 3, im.height // 3), fill=0)
        im.putalpha(alpha)
        path = folder / f"cut_{i:05d}.png"
        im.save(path, compress_level=3)
    return path


def _save_copy(kind: str, j: int, original: Path, seed: int, folder: Path) -> Path:
    if kind == "exact":  # the same bytes under another name
        path = folder / f"copy_{j:05d}{original.suffix}"
        shutil.copyfile(original, path)
        return path
    im = open_image(original)  # as the project will hold it (alpha flattened on white)
    if kind == "pixels":  # same pixels, other bytes: PNG at another compression level
        path = folder / f"resave_{j:05d}.png"
        im.save(path, compress_level=9 if original.suffix != ".png" else 1)
        return path
    rng = np.random.default_rng([seed, 10**6 + j])  # near: resized 60-90 % and re-encoded
    f = float(rng.uniform(0.6, 0.9))
    small = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.Resampling.LANCZOS)
    path = folder / f"smaller_{j:05d}.jpg"
    small.save(path, quality=int(rng.integers(70, 90)))
    return path


def generate(folder: Path, n: int, seed: int) -> dict:
    """N images into `folder` (reused when a complete set with the same N and seed is there)."""
    marker = folder.with_name(folder.name + ".json")  # beside it: inside, import would report it
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("n") == n and info.get("seed") == seed:
            info["reused"] = True
            return info
    marker.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    copies = {k: max(1, round(n * share)) for k, share in
              (("exact", SHARE_EXACT), ("pixels", SHARE_PIXELS), ("near", SHARE_NEAR))}
    n_orig = n - sum(copies.values())
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:  # Pillow/numpy release the GIL
        originals = list(pool.map(lambda i: _save_original(i, seed, folder), range(n_orig)))
        rng = np.random.default_rng([seed, 7])
        jobs = [(kind, originals[int(rng.integers(0, n_orig))]) for kind, c in copies.items()
                for _ in range(c)]
        made = list(pool.map(lambda a: _save_copy(a[1][0], a[0], a[1][1], seed, folder), enumerate(jobs)))
    planted = [[m.name, o.name, kind] for m, (kind, o) in zip(made, jobs)]
    info = {"n": n, "seed": seed, "originals": n_orig, "copies": copies, "planted": planted,
            "bytes": sum(p.stat().st_size for p in folder.iterdir())}
    marker.write_text(json.dumps(info))
    info["reused"] = False
    return info


# ---------------------------------------------------------------- stub WD14 model

def _labels(n: int) -> list[tuple[str, int]]:
    ratings = [("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9)]
    n_char = n // 10
    general = [(f"tag_{i:04d}", 0) for i in range(n - len(ratings) - n_char)]
    return ratings + general + [(f"character_{i:03d}", 4) for i in range(n_char)]


def _stub_graph(w4, b4, seed: int):
    """WD14 signature: NHWC float32 [batch, 448, 448, 3] BGR 0-255 -> sigmoid [batch, T].

    Inside: /255, to NCHW, conv 3->96 k4 s4, ReLU, conv 96->384 k4 s4, ReLU, global mean,
    FC 384->1024, ReLU, FC 1024->T (+ bias), sigmoid: ~0.53 GMAC and 6 M weights per image.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng([seed, 99])
    t = w4.shape[1]

    def f32(name, a):
        return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)

    inits = [f32("c255", [255.0]),
             f32("k1", rng.normal(0, 1 / np.sqrt(48), (96, 3, 4, 4))), f32("b1", np.zeros(96)),
             f32("k2", rng.normal(0, 1 / np.sqrt(1536), (384, 96, 4, 4))), f32("b2", np.zeros(384)),
             f32("w3", rng.normal(0, 1 / np.sqrt(384), (384, 1024))), f32("w4", w4), f32("b4", b4)]
    node = helper.make_node
    nodes = [node("Div", ["input_1", "c255"], ["x01"]),
             node("Transpose", ["x01"], ["nchw"], perm=[0, 3, 1, 2]),
             node("Conv", ["nchw", "k1", "b1"], ["h1"], strides=[4, 4], kernel_shape=[4, 4]),
             node("Relu", ["h1"], ["r1"]),
             node("Conv", ["r1", "k2", "b2"], ["h2"], strides=[4, 4], kernel_shape=[4, 4]),
             node("Relu", ["h2"], ["r2"]),
             node("GlobalAveragePool", ["r2"], ["g"]),
             node("Flatten", ["g"], ["v"]),
             node("MatMul", ["v", "w3"], ["h3"]),
             node("Relu", ["h3"], ["r3"]),
             node("MatMul", ["r3", "w4"], ["h4"]),
             node("Add", ["h4", "b4"], ["logits"]),
             node("Sigmoid", ["logits"], ["predictions_sigmoid"])]
    x = helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])
    y = helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", t])
    model = helper.make_model(helper.make_graph(nodes, "stub_wd14", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_stub_model(folder: Path, calibration: list[Path], seed: int) -> Path:
    """model.onnx + selected_tags.csv; the last layer is calibrated on real inputs so that each
    image keeps about TAGS_PER_IMAGE tags (a random net alone keeps hundreds or none)."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    labels = _labels(N_LABELS)
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as fp:
        out = csv.writer(fp)
        out.writerow(["tag_id", "name", "category", "count"])
        for i, (name, cat) in enumerate(labels):
            out.writerow([i, name, cat, 10 * (N_LABELS - i)])
    rng = np.random.default_rng([seed, 98])
    w4 = rng.normal(0, 1 / np.sqrt(1024), (1024, N_LABELS))
    onnx.save(_stub_graph(w4, np.zeros(N_LABELS), seed), str(folder / "model.onnx"))
    tagger = WD14Tagger(folder, providers=["CPUExecutionProvider"])
    probs = tagger.predict([prepare_image(open_image(p), SIZE) for p in calibration]).astype(np.float64)
    logits = np.log(np.clip(probs, 1e-12, 1)) - np.log(np.clip(1 - probs, 1e-12, 1))
    mean, std = logits.mean(axis=0), logits.std(axis=0) + 1e-6
    # Standardise each label over the calibration images, then shift so that a label passes the
    # 0.35 threshold on TAGS_PER_IMAGE / N_LABELS of the images (z above the normal quantile).
    z_keep = statistics.NormalDist().inv_cdf(1 - TAGS_PER_IMAGE / N_LABELS)
    shift = np.log(0.35 / 0.65) - z_keep
    onnx.save(_stub_graph(w4 / std, shift - mean / std, seed), str(folder / "model.onnx"))
    return folder


def spinning_tagger(model_dir: Path) -> WD14Tagger:
    """The same model with onnxruntime's default session (idle threads spin): the fastest
    setting for one image at a time, so the sequential baseline gets it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return WD14Tagger(model_dir, providers=["CPUExecutionProvider"], session_options=options)


def model_cost(tagger: WD14Tagger, batch_size: int) -> dict:
    """ms per image of the stub on random inputs, batch 1 and the run's batch size."""
    x = np.random.default_rng(0).uniform(0, 255, (max(batch_size, 8), SIZE, SIZE, 3)).astype(np.float32)
    tagger.predict(x[:batch_size])  # warm-up (allocations, thread pool)
    out = {}
    for b in sorted({1, batch_size}):
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 1.5:
            tagger.predict(x[:b])
            n += b
        out[b] = 1000 * (time.perf_counter() - t0) / n
    return out


# ---------------------------------------------------------------- profile (one thread)

def profile(tagger: WD14Tagger, paths: list[Path], scratch: Path) -> dict:
    """ms per image of each piece of the sequential loop, timed on its own, one image at a time."""
    scratch.mkdir(parents=True, exist_ok=True)
    parts = dict.fromkeys(("decode", "prepare", "model (batch 1)", "tags", "write"), 0.0)
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        img = open_image(path)
        t1 = time.perf_counter()
        array = prepare_image(img, tagger.input_size)
        t2 = time.perf_counter()
        row = tagger.predict([array])[0]
        t3 = time.perf_counter()
        caption = tagger.postprocess(row).caption
        t4 = time.perf_counter()
        write_text_atomic(scratch / f"{i}.txt", caption + "\n")
        t5 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            parts[key] += dt
    return {k: 1000 * v / len(paths) for k, v in parts.items()}


# ---------------------------------------------------------------- stages

def link_copy(images: list[Path], folder: Path) -> list[Path]:
    """The images (no captions) in a fresh folder: hard links where the file system allows."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = []
    for p in images:
        dest = folder / p.name
        try:
            os.link(p, dest)
        except OSError:
            shutil.copyfile(p, dest)
        out.append(dest)
    return out


def planted_found(info: dict, names_by_source: dict, groups: list) -> int:
    """How many planted copies ended up in one duplicate group with their original."""
    group_of = {}
    for k, g in enumerate(groups):
        for p in g.paths:
            group_of[Path(p).name] = k
    found = 0
    for copy, original, _kind in info["planted"]:
        a, b = names_by_source.get(copy), names_by_source.get(original)
        found += a is not None and a in group_of and group_of[a] == group_of.get(b)
    return found


def wait_quiet() -> float:
    """Wait (up to QUIET_WAIT_S) until other processes use <= QUIET_CORES; returns their last load."""
    deadline = time.monotonic() + QUIET_WAIT_S
    while True:
        with Timer() as t:
            time.sleep(1.0)
        if t.others is None or t.others <= QUIET_CORES or time.monotonic() > deadline:
            return t.others or 0.0


class Sum:
    """Timers of several runs added up (seconds, own and other processes' CPU)."""

    def __init__(self):
        self.seconds = self.own = self.other = 0.0
        self.others = None

    def add(self, t: Timer) -> None:
        self.seconds += t.seconds
        self.own += t.own_cores * t.seconds
        if t.others is not None:
            self.other += t.others * t.seconds
            self.others = self.other / self.seconds

    @property
    def own_cores(self) -> float:
        return self.own / self.seconds

    def load(self) -> str:
        return load_text(self.own_cores, self.others)


def caption_runs(seq_tagger, tagger, seq_paths, pipe_paths, args) -> dict:
    """Both loops on every image, in halves and ABBA order (seq, pipe | pipe, seq): load that
    other processes put on the shared cores, or a drift, falls on both sides alike."""
    half = len(seq_paths) // 2
    order = [("sequential", slice(0, half)), ("pipelined", slice(0, half)),
             ("pipelined", slice(half, None)), ("sequential", slice(half, None))]
    runs = {k: {"timer": Sum(), "written": [], "failed": [], "tags": [], "repeated": 0}
            for k in ("sequential", "pipelined")}
    for t in (seq_tagger, tagger):  # warm-up: first-run allocations are no loop's cost
        t.predict(np.zeros((args.batch_size, SIZE, SIZE, 3), np.float32))
    for kind, part in order:
        paths = (seq_paths if kind == "sequential" else pipe_paths)[part]
        for attempt in range(RUN_TRIES):
            wait_quiet()
            for p in paths:  # a repeated run must write every caption again
                p.with_suffix(".txt").unlink(missing_ok=True)
            with Timer() as t:
                if kind == "sequential":
                    rep = caption_images_sequential(paths, seq_tagger, "overwrite", backup=False)
                else:
                    rep = caption_images(paths, tagger, "overwrite", backup=False,
                                         batch_size=args.batch_size, workers=args.workers)
            if t.others is None or t.others <= QUIET_CORES:
                break
        run = runs[kind]
        run["repeated"] += attempt
        run["timer"].add(t)
        run["written"] += rep.written
        run["failed"] += rep.failed
        run["tags"] += [len(r.tags) for r in rep.results.values()]
    return runs


def repeated(run: dict) -> str:
    n = run["repeated"]
    return f" ({n} run(s) repeated: other processes were busy)" if n else ""


def compare_captions(a: list[Path], b: list[Path]) -> list[str]:
    """Names whose caption files differ (or are missing on either side)."""
    bad = []
    for pa, pb in zip(a, b):
        ca, cb = pa.with_suffix(".txt"), pb.with_suffix(".txt")
        if not (ca.is_file() and cb.is_file() and ca.read_bytes() == cb.read_bytes()):
            bad.append(pa.name)
    return bad


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000, help="images to generate (default 1000)")
    ap.add_argument("--out", type=Path, default=BENCH / "out" / "prep",
                    help="work folder (default bench/out/prep; the generated set is reused)")
    ap.add_argument("--batch-size", type=int, default=8, help="caption_images batch size (default 8)")
    ap.add_argument("--workers", type=int, default=None, help="caption_images loader threads (default: its own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the project and caption copies")
    args = ap.parse_args(argv)
    if args.images < 20:
        ap.error("--images must be at least 20")
    return args


def stage_generate(out: Path, args) -> dict:
    with Timer() as t:
        info = generate(out / "source", args.images, args.seed)
    c = info["copies"]
    print(f"{'generate':<22} {args.images:5d} images {t.seconds:7.1f} s   "
          f"{'reused: ' if info['reused'] else ''}{info['originals']} originals (JPEG, PNG, WebP, RGBA PNG; "
          f"512-1024 px) + {c['exact']} byte copies, {c['pixels']} pixel copies, {c['near']} resized "
          f"re-encodes; {info['bytes'] / 2**20:.0f} MiB", flush=True)
    return info


def stage_import(out: Path, args, results: dict):
    """create_project + import_folder; the project, or None when an image was not imported."""
    projects = out / "projects"
    shutil.rmtree(projects, ignore_errors=True)
    wait_quiet()
    with Timer() as t:
        project = create_project(projects, "bench")
        report = project.import_folder(out / "source")
    results["import"] = line("import", len(report.imported), t,
                             f"{sum(not i.copied for i in report.imported)} converted, "
                             f"{len(report.skipped)} skipped")
    if report.skipped or len(report.imported) != args.images:
        print(f"import did not take every image: {report.summary()}", file=sys.stderr)
        return None, {}
    return project, {Path(i.source).name: i.name for i in report.imported}


def stage_hygiene(images, info, names_by_source, results: dict) -> None:
    wait_quiet()
    with Timer() as t:
        hygiene = check_images(images)
    found = planted_found(info, names_by_source, hygiene.exact + hygiene.near)
    results["hygiene"] = line("hash + dedupe", hygiene.checked, t,
                              f"{len(hygiene.exact)} exact / {len(hygiene.near)} near groups, "
                              f"{found}/{len(info['planted'])} planted copies found")


def stage_model(out: Path, images, args, results: dict):
    """The stub model, its cost, and the sequential loop's profile: (tagger, sequential tagger)."""
    model_dir = build_stub_model(out / "stub-model", images[:32], args.seed)
    tagger = WD14Tagger(model_dir, providers=["CPUExecutionProvider"])  # the product's session
    wait_quiet()
    cost = model_cost(tagger, args.batch_size)
    results["model_ms_per_image"] = {str(k): round(v, 2) for k, v in cost.items()}
    print(f"{'stub model':<22} {N_LABELS} labels, ~0.53 GMAC/image: "
          + ", ".join(f"{v:.1f} ms/image at batch {k}" for k, v in cost.items()), flush=True)
    seq_tagger = spinning_tagger(model_dir)
    sample = images[::max(1, len(images) // PROFILE_SAMPLE)][:PROFILE_SAMPLE]  # every kind, not the first names
    wait_quiet()
    prof = profile(seq_tagger, sample, out / "profile")
    results["profile_ms"] = {k: round(v, 2) for k, v in prof.items()}
    print(f"{'profile (one loop)':<22} per image: " + ", ".join(f"{k} {v:.1f}" for k, v in prof.items())
          + f" ms = {sum(prof.values()):.1f} ms", flush=True)
    return tagger, seq_tagger


def stage_captions(out: Path, images, tagger, seq_tagger, args, results: dict) -> list:
    """Both loops, the caption comparison, the bound and the ratio; returns what went wrong."""
    seq_paths = link_copy(images, out / "caption-sequential")
    pipe_paths = link_copy(images, out / "caption-pipelined")
    runs = caption_runs(seq_tagger, tagger, seq_paths, pipe_paths, args)
    seq, pipe = runs["sequential"], runs["pipelined"]
    results["sequential"] = line("caption sequential", len(seq["written"]), seq["timer"],
                                 "one image at a time" + repeated(seq))
    results["pipelined"] = line("caption pipelined", len(pipe["written"]), pipe["timer"],
                                f"batch {args.batch_size}" + repeated(pipe))
    differ = compare_captions(seq_paths, pipe_paths)
    failed = seq["failed"] + pipe["failed"]
    print(f"{'captions':<22} {len(seq_paths) - len(differ)}/{len(seq_paths)} files byte-identical, "
          f"{np.mean(seq['tags']):.1f} tags per image, {len(failed)} failed", flush=True)
    # The pipeline's CPU work spread evenly over every core is the fastest it could ever be.
    cores = usable_cores()
    cpu_ms = 1000 * pipe["timer"].own_cores * pipe["timer"].seconds / len(images)
    seq_ms = 1000 * seq["timer"].seconds / len(images)
    bound = seq_ms / (cpu_ms / cores)
    speedup = seq["timer"].seconds / pipe["timer"].seconds
    results.update(speedup=round(speedup, 3), goal=GOAL, bound=round(bound, 3), cores=cores,
                   pipeline_cpu_ms=round(cpu_ms, 2), differing=differ[:20], failed=len(failed))
    print(f"{'bound':<22} the pipeline does {cpu_ms:.1f} CPU-ms per image; on {cores} cores that is ≥ "
          f"{cpu_ms / cores:.1f} ms/image vs {seq_ms:.1f} sequential: speed-up ≤ {bound:.2f}× here", flush=True)
    print(f"pipelined / sequential speed-up = {speedup:.2f}× (goal ≥ {GOAL:g}×)", flush=True)
    problems = [f"{len(differ)} caption file(s) differ (first: {differ[:3]})"] if differ else []
    return problems + ([f"{len(failed)} image(s) failed: {failed[:3]}"] if failed else [])


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = {"cores": usable_cores(), "images": args.images, "batch_size": args.batch_size}
    info = stage_generate(out, args)
    project, names_by_source = stage_import(out, args, results)
    if project is None:
        return 1
    images = project.image_paths()
    stage_hygiene(images, info, names_by_source, results)
    tagger, seq_tagger = stage_model(out, images, args, results)
    problems = stage_captions(out, images, tagger, seq_tagger, args, results)
    (out / "last.json").write_text(json.dumps(results, indent=1))
    if not args.keep:
        for name in ("projects", "caption-sequential", "caption-pipelined", "profile"):
            shutil.rmtree(out / name, ignore_errors=True)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
