#!/usr/bin/env python3
"""Benchmark: the LoRA trainer's training step, memory, hand-back and start-up cost inside the WebUI.

Runs with any Python 3.10+ (stdlib only): it launches the assembled WebUI through tests/e2e/webui.py
and talks HTTP. See bench/README.md for what each figure means and the goals.

  a) bare frozen-UNet forward+backward, measured INSIDE the WebUI (a bench-only helper extension in the
     throw-away data dir) on shared.sd_model via apply_model: 1x4x32x32 latent, cond 1x77x768, fp32
  b) our step, UNet only (step_seconds of a real job through /lora-trainer/v1/jobs)   ratio b/a, goal <= 1.05
  c) our step with the text encoder trained                                          ratio c/a, goal <= 1.20
  d) memory training adds to the WebUI process (VmRSS sampled every 0.2 s)
  e) hand-back: job finished_at -> next txt2img done, minus that txt2img's own latency  goal <= 1 s
  f) start-up time the extension adds (UI mode, tiny model, booted with and without it) goal <= 0.3 s

usage: python bench/train_step.py [--skip-full] [--steps 10] [--out bench/out/last.json] [--profile]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

GOALS = {"ratio_unet": 1.05, "ratio_te": 1.20, "handback_s": 1.0, "startup_s": 0.3}
ANCHORS = {"kohya_ratio_unet": 1.15, "kohya_ratio_te": 1.33, "kohya_s_per_step_unet": 4.49,
           "kohya_s_per_step_te": 5.19, "kohya_bare_s": 3.90}
MODEL_NAME = "sd15-random"
EXT_LINK = "sd-webui-lora-trainer"          # the name tests/e2e/webui.py links this checkout under
HELPER_DIR = "lora-trainer-bench"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


e2e = _load("lt_bench_e2e_webui", REPO / "tests" / "e2e" / "webui.py")
make_full = _load("lt_bench_make_full_sd15", BENCH / "make_full_sd15.py")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- the WebUI, with two bench additions
class BenchWebUI(e2e.WebUI):
    """tests/e2e/webui.py's WebUI plus: a checkpoint from another folder, the extension optional,
    and the bench helper extension copied into the throw-away data dir."""

    def __init__(self, data_dir, *, ckpt_dir=None, with_extension=True, helper=True, **kw):
        super().__init__(data_dir, **kw)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.with_extension = with_extension
        self.helper = helper

    def prepare(self):
        sd_dir = self.data_dir / "models" / "Stable-diffusion"
        sd_dir.mkdir(parents=True, exist_ok=True)
        if self.ckpt_dir is not None:            # the base prepare() skips links that exist
            for ext in (".safetensors", ".yaml"):
                target = sd_dir / f"{self.model}{ext}"
                if not target.exists():
                    target.symlink_to(self.ckpt_dir / f"{self.model}{ext}")
        super().prepare()
        if not self.with_extension:
            link = self.data_dir / "extensions" / EXT_LINK
            if link.is_symlink() or link.exists():
                link.unlink()
        if self.helper:
            scripts = self.data_dir / "extensions" / HELPER_DIR / "scripts"
            scripts.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(BENCH / "helper_extension.py", scripts / "lora_trainer_bench.py")


# ---------------------------------------------------------------- memory sampling
def rss_bytes(pid) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    def __init__(self, pid, interval=0.2):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            v = rss_bytes(self.pid)
            if v is not None:
                self.samples.append((time.time(), v))
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int | None:
        return max((v for _, v in self.samples), default=None)


# ---------------------------------------------------------------- a tiny dataset (stdlib PNG writer)
def write_png(path: Path, w: int, h: int, rgb_rows) -> None:
    raw = b"".join(b"\x00" + bytes(row) for row in rgb_rows)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path.write_bytes(png)


SHAPES = [("circle", "red", (220, 40, 40)), ("square", "blue", (40, 70, 220)), ("triangle", "green", (40, 170, 60)),
          ("circle", "yellow", (230, 200, 30)), ("square", "purple", (140, 50, 170)), ("triangle", "orange", (240, 130, 20)),
          ("circle", "black", (20, 20, 20)), ("square", "teal", (20, 150, 150))]


def make_dataset(root: Path, size=256) -> Path:
    folder = root / "10_sks shape"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (shape, colour, rgb) in enumerate(SHAPES):
        c, r = size / 2, size * (0.25 + 0.02 * i)
        rows = []
        for y in range(size):
            row = bytearray()
            for x in range(size):
                if shape == "circle":
                    inside = (x - c) ** 2 + (y - c) ** 2 <= r * r
                elif shape == "square":
                    inside = abs(x - c) <= r and abs(y - c) <= r
                else:
                    top, bottom = c - r, c + r
                    inside = top <= y <= bottom and abs(x - c) <= (y - top) / 2
                row += bytes(rgb) if inside else b"\xff\xff\xff"
            rows.append(row)
        write_png(folder / f"{i:02d}_{shape}.png", size, size, rows)
        (folder / f"{i:02d}_{shape}.txt").write_text(f"sks shape, a {colour} {shape} on a white background")
    return root


def safetensors_numel(path: Path) -> dict:
    """Counts from a safetensors header (stdlib): LoRA params (down/up) and adapter modules."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    params, modules = 0, set()
    for key, v in header.items():
        if key == "__metadata__":
            continue
        module, _, suffix = key.partition(".")
        if suffix in ("lora_down.weight", "lora_up.weight"):
            numel = 1
            for d in v["shape"]:
                numel *= d
            params += numel
            modules.add(module)
    return {"params": params, "modules": len(modules), "unet_modules": sum(m.startswith("lora_unet") for m in modules),
            "te_modules": sum(m.startswith("lora_te") for m in modules)}


def med(xs):
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- the full-size part (a-e)
def txt2img_latency(server, prompt, seed=7) -> float:
    t0 = time.time()
    server.txt2img(prompt=prompt, seed=seed, steps=1, size=256)
    return time.time() - t0


def bare(server, pid, iters, warmup, **extra) -> dict:
    body = {"iters": iters, "warmup": warmup, "latent": 32, "batch": 1, "timestep": 500, **extra}
    before = rss_bytes(pid)
    with RssSampler(pid) as s:
        out = server.post("/lora-trainer-bench/v1/bare", body, timeout=1800)
    out["rss_before"], out["rss_peak"] = before, s.peak
    return out


def train_job(server, pid, name, data_dir, steps, te: bool, handback_prompt: str) -> dict:
    config = {"train_data_dir": str(data_dir), "output_name": name, "resolution": "256",
              "min_bucket_reso": 256, "max_bucket_reso": 256, "network_dim": 32, "network_alpha": 16,
              "learning_rate": 1e-4, "optimizer_type": "AdamW", "max_train_steps": steps, "train_batch_size": 1,
              "network_train_unet_only": not te, "save_precision": "float", "overwrite": True, "seed": 1}
    rss_before = rss_bytes(pid)
    with RssSampler(pid) as sampler:
        job_id = server.post("/lora-trainer/v1/jobs", config)["id"]
        last_step = -1
        while True:
            job = server.get(f"/lora-trainer/v1/jobs/{job_id}")
            # state turns terminal a moment before finished_at / step_seconds are filled in: wait for both
            if job["state"] in ("finished", "stopped", "failed") and job.get("finished_at"):
                break
            if job.get("step", 0) != last_step:
                last_step = job.get("step", 0)
                if last_step:
                    log(f"  {name}: step {last_step}/{job.get('total_steps')} ({job.get('phase')})")
            near_end = job.get("total_steps") and job.get("step", 0) >= job["total_steps"]
            time.sleep(0.02 if near_end else 0.2)
        t_seen = time.time()
        if job["state"] != "finished":
            raise RuntimeError(f"training job {name} ended {job['state']}: {job.get('error')}")
        # e) hand-back: the next generation, sent as soon as the job reports finished
        t_req = time.time()
        server.txt2img(prompt=handback_prompt, seed=7, steps=1, size=256)
        t_done = time.time()
        peak = sampler.peak
    rss_after = rss_bytes(pid)
    steps_s = list(job.get("step_seconds") or [])
    counted = steps_s[2:] if len(steps_s) > 2 else steps_s
    lora = None
    files = job.get("files") or []
    if files:
        path = server.lora_dir / files[-1]
        if path.exists():
            lora = safetensors_numel(path)
    return {"job": job_id, "state": job["state"], "step_seconds": steps_s, "step_median": med(counted),
            "steps_counted": len(counted), "started_at": job.get("started_at"), "finished_at": job.get("finished_at"),
            "created_at": job.get("created_at"), "eval_loss_start": job.get("eval_loss_start"),
            "eval_loss_end": job.get("eval_loss_end"), "files": files, "lora": lora,
            "rss_before": rss_before, "rss_peak": peak, "rss_after": rss_after,
            "seen_after_finish_s": t_seen - job["finished_at"], "txt2img_sent_after_finish_s": t_req - job["finished_at"],
            "txt2img_done_after_finish_s": t_done - job["finished_at"], "txt2img_latency_s": t_done - t_req,
            "wall_s": job["finished_at"] - job["started_at"]}


def run_full(args, tmp: Path) -> dict:
    model_dir = Path(args.model_dir)
    if not make_full.is_built(str(model_dir), MODEL_NAME):
        log(f"building the full-size SD1.5 checkpoint into {model_dir} (~45 s, ~7 GB RAM, once)")
        subprocess.run([str(e2e.harness_dest() / "venv/bin/python"), str(BENCH / "make_full_sd15.py"),
                        "--out", str(model_dir), "--name", MODEL_NAME], check=True)
    data = make_dataset(tmp / "dataset")
    log("booting the WebUI (API-only) with the full-size checkpoint")
    server = BenchWebUI(tmp / "webui-full", ckpt_dir=model_dir, model=MODEL_NAME)
    t0 = time.time()
    server.start(timeout=900)
    out = {"boot_s": time.time() - t0}
    try:
        info = server.get("/lora-trainer-bench/v1/info")
        pid = info["pid"]
        out["server"] = {k: info[k] for k in ("pid", "threads", "attention", "cross_attention_optimization", "torch")}
        log(f"server pid {pid}, torch {info['torch']}, {info['threads']} threads, attention {info['attention']}")
        time.sleep(2)
        out["rss_idle"] = rss_bytes(pid)

        # e) baseline: txt2img 256², 1 step; a new prompt each call so the conditioning is never cached
        #    (training resets A1111's cond cache, so the call after it always encodes its prompt)
        log("txt2img baseline (256², 1 step)")
        txt2img_latency(server, "bench warm-up prompt")
        base = [txt2img_latency(server, f"a photo of a cat, baseline {i}") for i in range(3)]
        out["txt2img_baseline_s"] = base

        log(f"a) bare frozen-UNet fwd+bwd, {args.bare_iters} iterations after {args.warmup} warm-ups")
        bare1 = bare(server, pid, args.bare_iters, args.warmup)
        log(f"   median {bare1['median']['total']:.3f} s")

        log(f"b) training, UNet only, {args.steps} steps")
        unet = train_job(server, pid, "bench_unet", data, args.steps, te=False, handback_prompt="a photo of a cat, after unet")
        log(f"   median step {unet['step_median']:.3f} s")
        log(f"c) training, UNet + text encoder, {args.steps} steps")
        te = train_job(server, pid, "bench_te", data, args.steps, te=True, handback_prompt="a photo of a cat, after te")
        log(f"   median step {te['step_median']:.3f} s")

        log("a') bare again (drift check; the ratio uses both bare runs pooled)")
        bare2 = bare(server, pid, args.bare_iters, args.warmup)
        log(f"   median {bare2['median']['total']:.3f} s")
        out.update(bare=[bare1, bare2], unet=unet, te=te)

        if args.profile:
            prof = {}
            for mode, extra in (("lora", {"mode": "lora"}), ("lora_te", {"mode": "lora_te"}),
                                ("bare_sdp", {"mode": "bare", "attention": "sdp-no-mem"})):
                log(f"profile: {mode}")
                prof[mode] = bare(server, pid, args.bare_iters, args.warmup, **extra)
                log(f"   {json.dumps({k: round(v, 3) for k, v in prof[mode]['median'].items()})}")
            out["profile"] = prof
        out["rss_end"] = rss_bytes(pid)
    finally:
        server.stop()
    return out


# ---------------------------------------------------------------- f) start-up (UI mode, tiny model)
OUR_SCRIPT = "lora_trainer.py"


def boot_startup(tmp: Path, i: int, with_ext: bool) -> dict:
    server = BenchWebUI(tmp / f"webui-startup-{i}-{'with' if with_ext else 'without'}", with_extension=with_ext,
                        ui=True, extra_args=["--skip-load-model-at-start"])
    t0 = time.time()
    server.start(timeout=300)
    try:
        boot = time.time() - t0
        prof = server.get("/internal/profile-startup") or {}
        info = server.get("/lora-trainer-bench/v1/info")
    finally:
        server.stop()
    records = prof.get("records", {})
    line = next((l.strip() for l in server.log_text().splitlines() if "Startup time:" in l), None)
    ours = {"script_load": records.get(f"load scripts/{OUR_SCRIPT}"),
            "app_started": records.get(f"app_started_callback/{OUR_SCRIPT}")}
    cb = info.get("callbacks", {})
    ours["ui_settings"] = sum(v for k, v in cb.items() if k.startswith("ui_settings:")) if with_ext else None
    ours["ui_tabs"] = sum(v for k, v in cb.items() if k.startswith("ui_tabs:")) if with_ext else None
    ours["app_started_wrapped"] = sum(v for k, v in cb.items() if k.startswith("app_started:")) if with_ext else None
    return {"with_extension": with_ext, "boot_s": boot, "total": prof.get("total"), "startup_line": line,
            "load_scripts": records.get("load scripts"), "create_ui": records.get("create ui"),
            "app_started_all": records.get("app_started_callback"), "ours": ours, "callbacks": cb,
            "helper_registration_s": info.get("helper_registration_s"),
            "records": records}


def run_startup(args, tmp: Path) -> dict:
    runs = []
    for i in range(args.startup_runs):
        for with_ext in (True, False):
            log(f"f) UI-mode boot {i + 1}/{args.startup_runs} {'with' if with_ext else 'without'} the extension (tiny model)")
            r = boot_startup(tmp, i, with_ext)
            log(f"   {r['startup_line']}")
            runs.append(r)
    with_runs = [r for r in runs if r["with_extension"]]
    without = [r for r in runs if not r["with_extension"]]

    def m(rs, key):
        return med([r[key] for r in rs if r.get(key) is not None])

    def mo(key):
        return med([r["ours"][key] for r in with_runs if r["ours"].get(key) is not None])
    direct = {k: mo(k) for k in ("script_load", "ui_settings", "ui_tabs", "app_started")}
    attributable = sum(v for v in direct.values() if v is not None)
    return {"runs": runs, "ours_median": direct, "app_started_wrapped_median": mo("app_started_wrapped"),
            "attributable_s": attributable,
            "total_with": m(with_runs, "total"), "total_without": m(without, "total"),
            "total_diff": (m(with_runs, "total") or 0) - (m(without, "total") or 0),
            "create_ui_with": m(with_runs, "create_ui"), "create_ui_without": m(without, "create_ui"),
            "load_scripts_with": m(with_runs, "load_scripts"), "load_scripts_without": m(without, "load_scripts")}


# ---------------------------------------------------------------- report
def summarise(full: dict | None, startup: dict | None) -> dict:
    s: dict = {}
    if full:
        bare_all = [x for b in full["bare"] for x in b["seconds"]]
        s["bare_s"] = med(bare_all)
        s["bare_runs_s"] = [b["median"]["total"] for b in full["bare"]]
        s["step_unet_s"] = full["unet"]["step_median"]
        s["step_te_s"] = full["te"]["step_median"]
        s["ratio_unet"] = s["step_unet_s"] / s["bare_s"]
        s["ratio_te"] = s["step_te_s"] / s["bare_s"]
        base = med(full["txt2img_baseline_s"])
        s["txt2img_baseline_s"] = base
        for key in ("unet", "te"):
            r = full[key]
            s[f"handback_{key}_s"] = r["txt2img_done_after_finish_s"] - base
            s[f"handback_{key}_detect_s"] = r["txt2img_sent_after_finish_s"]
            added = r["rss_peak"] - r["rss_before"]
            s[f"mem_{key}"] = {"rss_before": r["rss_before"], "rss_peak": r["rss_peak"], "rss_after": r["rss_after"],
                               "added_peak": added, "added_after": r["rss_after"] - r["rss_before"]}
            if r.get("lora"):
                p = r["lora"]["params"]
                s[f"mem_{key}"].update(lora_params=p, lora_modules=r["lora"]["modules"],
                                       params_plus_adamw=p * 4 * 3, params_grads_adamw=p * 4 * 4)
        b = full["bare"][0]
        s["mem_bare_added_peak"] = b["rss_peak"] - b["rss_before"] if b.get("rss_peak") else None
        s["rss_idle"] = full.get("rss_idle")
        s["attention"] = full["server"]["attention"]
        s["threads"] = full["server"]["threads"]
        if full.get("profile"):
            s["profile"] = {k: v["median"] for k, v in full["profile"].items()}
    if startup:
        s["startup_attributable_s"] = startup["attributable_s"]
        s["startup_parts_s"] = startup["ours_median"]
        s["startup_total_with_s"] = startup["total_with"]
        s["startup_total_without_s"] = startup["total_without"]
        s["startup_total_diff_s"] = startup["total_diff"]
        s["create_ui_with_s"], s["create_ui_without_s"] = startup["create_ui_with"], startup["create_ui_without"]
    return s


def gb(v):
    return "-" if v is None else f"{v / 1e9:.2f} GB"


def ok(value, goal):
    return "-" if value is None else ("OK" if value <= goal else "OVER")


def print_table(s: dict) -> None:
    rows = []
    if "bare_s" in s:
        rows += [
            ("a) bare frozen-UNet fwd+bwd (in WebUI, %s attention, %s threads)" % (s["attention"], s["threads"]),
             f"{s['bare_s']:.3f} s", "", f"runs {', '.join(f'{x:.3f}' for x in s['bare_runs_s'])}; kohya's bare 3.90 s (SDPA)"),
            ("b) our step, UNet only", f"{s['step_unet_s']:.3f} s", "", "kohya 4.49 s"),
            ("   ratio b/a", f"{s['ratio_unet']:.3f}", f"<= 1.05 {ok(s['ratio_unet'], GOALS['ratio_unet'])}", "kohya 1.15"),
            ("c) our step, UNet + text encoder", f"{s['step_te_s']:.3f} s", "", "kohya 5.19 s"),
            ("   ratio c/a", f"{s['ratio_te']:.3f}", f"<= 1.20 {ok(s['ratio_te'], GOALS['ratio_te'])}", "kohya 1.33"),
        ]
        for key, label in (("unet", "b"), ("te", "c")):
            m = s[f"mem_{key}"]
            rows.append((f"d) RSS during {label}: before / peak / after", f"{gb(m['rss_before'])} / {gb(m['rss_peak'])} / "
                         f"{gb(m['rss_after'])}", "", ""))
            extra = ""
            if m.get("lora_params"):
                extra = (f"LoRA {m['lora_params'] / 1e6:.2f} M params in {m['lora_modules']} modules: params+AdamW "
                         f"{gb(m['params_plus_adamw'])}, +grads {gb(m['params_grads_adamw'])}")
            rows.append((f"   added peak during {label}", gb(m["added_peak"]), "<< 4.3 GB " +
                         ("OK" if m["added_peak"] < 1.0e9 else "CHECK"), extra))
        if s.get("mem_bare_added_peak") is not None:
            rows.append(("   added peak during bare fwd+bwd (activations)", gb(s["mem_bare_added_peak"]), "", "reference"))
        rows.append(("e) txt2img 256², 1 step, baseline latency", f"{s['txt2img_baseline_s']:.3f} s", "", ""))
        for key, label in (("unet", "b"), ("te", "c")):
            rows.append((f"   hand-back after {label} (finished_at -> txt2img done - baseline)",
                         f"{s[f'handback_{key}_s']:.3f} s", f"<= 1 s {ok(s[f'handback_{key}_s'], GOALS['handback_s'])}",
                         f"request sent {s[f'handback_{key}_detect_s']:.3f} s after finished_at"))
        if s.get("profile"):
            for mode, medians in s["profile"].items():
                rows.append((f"   profile {mode} (medians)", ", ".join(f"{k} {v:.3f}" for k, v in medians.items()), "", ""))
    if "startup_attributable_s" in s:
        p = s["startup_parts_s"]
        parts = ", ".join(f"{k} {v:.3f}" for k, v in p.items() if v is not None)
        rows.append(("f) start-up attributable to the extension", f"{s['startup_attributable_s']:.3f} s",
                     f"<= 0.3 s {ok(s['startup_attributable_s'], GOALS['startup_s'])}", parts))
        rows.append(("   A1111 startup total with / without (diff)",
                     f"{s['startup_total_with_s']:.2f} / {s['startup_total_without_s']:.2f} s",
                     "", f"diff {s['startup_total_diff_s']:+.2f} s (noisy); create ui {s['create_ui_with_s']:.2f} / "
                     f"{s['create_ui_without_s']:.2f} s"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    print()
    print(f"{'figure'.ljust(w0)}  {'value'.ljust(w1)}  {'goal'.ljust(w2)}  notes")
    print("-" * (w0 + w1 + w2 + 30))
    for r in rows:
        print(f"{r[0].ljust(w0)}  {r[1].ljust(w1)}  {r[2].ljust(w2)}  {r[3]}")
    print()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="LoRA trainer step / memory / hand-back / start-up benchmark")
    ap.add_argument("--skip-full", action="store_true", help="only the start-up part (f)")
    ap.add_argument("--skip-startup", action="store_true", help="only the full-size parts (a-e)")
    ap.add_argument("--steps", type=int, default=10, help="max_train_steps of each training job (default 10)")
    ap.add_argument("--bare-iters", type=int, default=8, help="timed bare iterations per bare run (default 8)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--startup-runs", type=int, default=2, help="UI boots per variant for (f) (default 2)")
    ap.add_argument("--profile", action="store_true",
                    help="also time the trainer's pieces phase by phase in the WebUI (lora, lora_te, bare with SDPA)")
    ap.add_argument("--model-dir", default=make_full.default_out(), help="full-size checkpoint cache (default %(default)s)")
    ap.add_argument("--out", default=str(BENCH / "out" / "last.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary data dirs (logs)")
    args = ap.parse_args(argv)

    reason = e2e.missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="lt-bench-"))
    log(f"work dir {tmp}")
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args), "goals": GOALS, "anchors": ANCHORS,
              "cpu_count": os.cpu_count()}
    try:
        full = None if args.skip_full else run_full(args, tmp)
        startup = None if args.skip_startup else run_startup(args, tmp)
        result.update(full=full, startup=startup, summary=summarise(full, startup))
    except BaseException:
        log(f"failed; kept {tmp} (WebUI logs: */webui.log)")
        raise
    if args.keep:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print_table(result["summary"])
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
