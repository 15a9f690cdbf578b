#!/usr/bin/env python3
"""Benchmark: the LoRA trainer's training step, memory, hand-back and start-up cost inside the WebUI.

Runs with any Python 3.10+ (stdlib only): it launches the assembled WebUI through tests/e2e/webui.py
and talks HTTP. See bench/README.md for what each figure means and the goals.

  a) bare frozen-UNet forward+backward, measured INSIDE the WebUI (a bench-only helper extension in the
     throw-away data dir) on shared.sd_model via apply_model: 1x4x32x32 latent, cond 1x77x768, fp32
  b) our step, UNet only (step_seconds of a real job through /lora-trainer/v1/jobs)   ratio b/a, goal <= 1.05
  c) our step with the text encoder trained                                          ratio c/a, goal <= 1.20
  d) memory training adds to the WebUI process (VmRSS sampled every 0.2 s), and RSS a few seconds after
     each job / before it                                                         goal <= 1.02
  e) hand-back: job finished_at -> next txt2img done, minus that txt2img's own latency  goal <= 1 s
  f) start-up time the extension adds (UI mode, tiny model, booted with and without it) goal <= 0.3 s
  g) memory over a long run: batch 4, 200 steps, UNet only, 64² images with a distinct caption each;
     VmRSS at the job's early steps vs its last steps                              growth goal <= 1 %

usage: python bench/train_step.py [--only steps,memory,startup] [--steps 10] [--out bench/out/last.json] [--profile]
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

GOALS = {"ratio_unet": 1.05, "ratio_te": 1.20, "handback_s": 1.0, "startup_s": 0.3,
         "rss_after_ratio": 1.02, "rss_growth_pct": 1.0}
PARTS = ("steps", "memory", "startup")      # --only: steps = a-e, memory = g, startup = f
JOB_FIELDS = ("state", "step", "total_steps", "step_seconds", "mixed_precision", "skipped_steps", "finished_at")
SETTLE_S = 5.0             # 'after' RSS: this long after the job's finished state (and its hand-back txt2img)
ANCHORS = {"kohya_ratio_unet": 1.15, "kohya_ratio_te": 1.33, "kohya_s_per_step_unet": 4.49,
           "kohya_s_per_step_te": 5.19, "kohya_bare_s": 3.90}
MODEL_NAME = "sd15-random"
QUIET_WAIT_S = 240.0       # --quiet-wait: how long to wait for other processes to go idle before each phase
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


def cpu_seconds(pid) -> float | None:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def loadavg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def system_busy_s() -> float | None:
    """CPU seconds all processes spent busy (user+nice+system+irq+softirq+steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


QUIET_CORES = 0.25     # a sample counts as "quiet" when other processes used at most this many cores during it


def all_process_cpu() -> dict:
    """{pid: (name, own + waited-for children's CPU seconds)} for every process."""
    out, tck = {}, os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                raw = f.read()
            name, rest = raw[raw.index("(") + 1:raw.rindex(")")], raw.rsplit(")", 1)[1].split()
            out[int(d)] = (name, sum(int(x) for x in rest[11:15]) / tck)
        except (OSError, ValueError, IndexError):
            pass
    return out


class RssSampler:
    """Every 0.2 s: the server's VmRSS, its CPU seconds and the machine's busy CPU seconds, so that any
    time span can be checked for other processes' CPU use (this machine's cores are shared); every 5 s
    which other processes used CPU (top_others)."""

    def __init__(self, pid, interval=0.2):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.cpu: list[tuple[float, float, float]] = []      # (time, machine busy s, server CPU s)
        self._others: dict = {}                              # pid -> [name, CPU s used while sampling]
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _account(self, prev, now):
        for p, (name, cpu) in now.items():
            if p in (self.pid, os.getpid()):
                continue
            used = cpu - prev[p][1] if p in prev else cpu      # a new process: all of it is new
            if used > 0:
                entry = self._others.setdefault(p, [name, 0.0])
                entry[1] += used

    def _run(self):
        prev, last = all_process_cpu(), time.time()
        while not self._stop.is_set():
            t, v, busy, srv = time.time(), rss_bytes(self.pid), system_busy_s(), cpu_seconds(self.pid)
            if v is not None:
                self.samples.append((t, v))
            if busy is not None and srv is not None:
                self.cpu.append((t, busy, srv))
            if t - last >= 5.0:
                now = all_process_cpu()
                self._account(prev, now)
                prev, last = now, t
            self._stop.wait(self.interval)
        self._account(prev, all_process_cpu())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def top_others(self) -> list:
        """The 3 other processes that used the most CPU while sampling: [pid, name, CPU seconds]."""
        top = sorted(self._others.items(), key=lambda kv: -kv[1][1])[:3]
        return [[p, name, round(cpu, 1)] for p, (name, cpu) in top if cpu >= 0.5]

    @property
    def peak(self) -> int | None:
        return max((v for _, v in self.samples), default=None)

    def others_cores(self, t0, t1) -> float | None:
        """Cores other processes used between t0 and t1 (machine busy minus the server's CPU)."""
        inside = [c for c in self.cpu if t0 - 0.1 <= c[0] <= t1 + 0.1]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 0.8:
            return None
        a, b = inside[0], inside[-1]
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / (b[0] - a[0]))


def others_cores_now(pid, seconds=3.0) -> float | None:
    b0, s0, t0 = system_busy_s(), cpu_seconds(pid), time.time()
    time.sleep(seconds)
    b1, s1, t1 = system_busy_s(), cpu_seconds(pid), time.time()
    if None in (b0, s0, b1, s1):
        return None
    return max(0.0, ((b1 - b0) - (s1 - s0)) / (t1 - t0))


def wait_quiet(pid, max_wait: float, what: str) -> float | None:
    """Wait (up to max_wait s) until other processes use <= QUIET_CORES cores; returns the last reading."""
    deadline, told = time.time() + max_wait, False
    while True:
        busy = others_cores_now(pid)
        if busy is None or busy <= QUIET_CORES or time.time() >= deadline:
            if told or (busy is not None and busy > QUIET_CORES):
                log(f"   other processes use {busy:.2f} cores before {what}" + ("" if busy <= QUIET_CORES else
                                                                                 " (gave up waiting)"))
            return busy
        if not told:
            log(f"   waiting for other processes to go quiet before {what} (they use {busy:.2f} cores)")
            told = True


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


def shape_rows(shape, rgb, size, r):
    c, rows = size / 2, []
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
    return rows


def make_dataset(root: Path, size=256) -> Path:
    folder = root / "10_sks shape"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (shape, colour, rgb) in enumerate(SHAPES):
        write_png(folder / f"{i:02d}_{shape}.png", size, size, shape_rows(shape, rgb, size, size * (0.25 + 0.02 * i)))
        (folder / f"{i:02d}_{shape}.txt").write_text(f"sks shape, a {colour} {shape} on a white background")
    return root


def make_caption_dataset(root: Path, n=16, size=64) -> Path:
    """g): n images, each with its OWN caption ("sks shape, variant N"), so that nearly every batch of 4
    is a new combination: a per-batch conditioning cache would grow by a batch's conditioning every step."""
    folder = root / "10_sks shape"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shape, _, rgb = SHAPES[i % len(SHAPES)]
        write_png(folder / f"{i:02d}.png", size, size, shape_rows(shape, rgb, size, size * (0.2 + 0.015 * i)))
        (folder / f"{i:02d}.txt").write_text(f"sks shape, variant {i}")
    return root


def job_config(name, data_dir, *, size=256, steps=10, batch=1, te=False, **extra) -> dict:
    """A training job's body for POST /lora-trainer/v1/jobs: one fixed bucket of size², dim 32 / alpha 16, AdamW."""
    return {"train_data_dir": str(data_dir), "output_name": name, "resolution": str(size),
            "min_bucket_reso": size, "max_bucket_reso": size, "network_dim": 32, "network_alpha": 16,
            "learning_rate": 1e-4, "optimizer_type": "AdamW", "max_train_steps": steps, "train_batch_size": batch,
            "network_train_unet_only": not te, "save_precision": "float", "overwrite": True, "seed": 1, **extra}


def check_job(job: dict, name: str) -> None:
    """What the engine reports is what the bench reads: every field it uses is there, and a finished job
    ran all its steps and timed each one (step_seconds keeps the last 500)."""
    missing = [k for k in JOB_FIELDS if k not in job]
    if missing:
        raise RuntimeError(f"job {name}: the job JSON lacks {missing} (has {sorted(job)})")
    if job["state"] == "finished":
        n = len(job["step_seconds"] or [])
        if job["step"] != job["total_steps"] or n != min(job["total_steps"], 500) or not job["finished_at"]:
            raise RuntimeError(f"job {name}: finished at step {job['step']}/{job['total_steps']} with {n} "
                               f"step_seconds, finished_at {job['finished_at']}")


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
    out_quiet = wait_quiet(pid, QUIET_WAIT_S, f"bare {extra.get('mode', 'bare')}") if QUIET_WAIT_S else None
    before, load0 = rss_bytes(pid), loadavg()
    with RssSampler(pid) as s:
        out = server.post("/lora-trainer-bench/v1/bare", body, timeout=1800)
    out["rss_before"], out["rss_peak"], out["loadavg"] = before, s.peak, [load0, loadavg()]
    out["others_before"] = out_quiet
    out["others_cores"] = [s.others_cores(a, b) for a, b in out.get("spans", [])]
    out["top_other_processes"] = s.top_others
    return out


def train_job(server, pid, name, data_dir, steps, te: bool, handback_prompt: str) -> dict:
    config = job_config(name, data_dir, size=256, steps=steps, te=te)
    others_before = wait_quiet(pid, QUIET_WAIT_S, f"job {name}") if QUIET_WAIT_S else None
    rss_before, load0 = rss_bytes(pid), loadavg()
    marks = []                                   # (step, wall, process CPU) when a new step is first seen
    phases = []                                  # (wall, phase, step) of every poll
    with RssSampler(pid) as sampler:
        job_id = server.post("/lora-trainer/v1/jobs", config)["id"]
        last_step = -1
        while True:
            job = server.get(f"/lora-trainer/v1/jobs/{job_id}")
            phases.append((time.time(), job.get("phase"), job.get("step", 0)))
            if job.get("step", 0) != last_step and job.get("phase") == "training":
                marks.append((job.get("step", 0), time.time(), cpu_seconds(pid)))
            # state turns terminal a moment before finished_at / step_seconds are filled in: wait for both
            if job["state"] in ("finished", "stopped", "failed") and job.get("finished_at"):
                break
            if job.get("step", 0) != last_step:
                last_step = job.get("step", 0)
                if last_step:
                    log(f"  {name}: step {last_step}/{job.get('total_steps')} ({job.get('phase')})")
            near_end = job.get("total_steps") and job.get("step", 0) >= job["total_steps"]
            time.sleep(0.1 if near_end else 0.2)     # faster polls would slow the job's eval/save
        t_seen = time.time()
        rss_finished = rss_bytes(pid)        # the engine released its memory before it set the end state
        if job["state"] != "finished":
            raise RuntimeError(f"training job {name} ended {job['state']}: {job.get('error')}")
        check_job(job, name)
        # e) hand-back: the next generation, sent as soon as the job reports finished
        t_req = time.time()
        server.txt2img(prompt=handback_prompt, seed=7, steps=1, size=256)
        t_done = time.time()
        peak = sampler.peak
        handback_others = sampler.others_cores(t_req, t_done)
        top_others = sampler.top_others
        peak_t = next((t for t, v in sampler.samples if v == peak), None)
    rss_after_handback = rss_bytes(pid)
    time.sleep(SETTLE_S)
    rss_after = rss_bytes(pid)
    peak_phase = "hand-back txt2img" if peak_t and peak_t >= t_req else None
    if peak_phase is None and peak_t:
        seen = [(p, st) for t, p, st in phases if t <= peak_t]
        peak_phase = f"{seen[-1][0]} (step {seen[-1][1]})" if seen else "starting"
    # when the WebUI really began/ended the hand-back txt2img (helper's shared.state wrapper)
    state_jobs = server.get("/lora-trainer-bench/v1/info").get("state_jobs", [])
    gen = next((j for j in reversed(state_jobs) if j[0] == "scripts_txt2img" and j[1] >= job["finished_at"]), None)
    steps_s = list(job.get("step_seconds") or [])
    counted = steps_s[2:] if len(steps_s) > 2 else steps_s
    lora = None
    files = job.get("files") or []
    if files:
        path = server.lora_dir / files[-1]
        if path.exists():
            lora = safetensors_numel(path)
    # cross-checks from the polls: wall and process-CPU seconds per step over steps 3..N
    by_step = {m[0]: m for m in marks}
    # other processes' CPU use during each step (step k = between the polls that first saw k-1 and k)
    step_others = [sampler.others_cores(by_step[k - 1][1], by_step[k][1]) if k - 1 in by_step and k in by_step
                   else None for k in range(1, len(steps_s) + 1)]
    poll = {}
    first, last = 2, max(by_step) if by_step else 0
    if first in by_step and last > first and by_step[first][2] is not None and by_step[last][2] is not None:
        n = last - first
        poll = {"steps": n, "wall_per_step": (by_step[last][1] - by_step[first][1]) / n,
                "cpu_per_step": (by_step[last][2] - by_step[first][2]) / n}
    return {"job": job_id, "state": job["state"], "step_seconds": steps_s, "step_median": med(counted),
            "step_min": min(counted) if counted else None, "poll": poll, "loadavg": [load0, loadavg()],
            "others_before": others_before, "step_others_cores": step_others,
            "steps_counted": len(counted), "started_at": job.get("started_at"), "finished_at": job.get("finished_at"),
            "created_at": job.get("created_at"), "eval_loss_start": job.get("eval_loss_start"),
            "eval_loss_end": job.get("eval_loss_end"), "files": files, "lora": lora,
            "rss_before": rss_before, "rss_peak": peak, "rss_after": rss_after, "rss_peak_phase": peak_phase,
            "rss_finished": rss_finished, "rss_after_handback": rss_after_handback, "settle_s": SETTLE_S,
            "mixed_precision": job.get("mixed_precision"), "skipped_steps": job.get("skipped_steps"),
            "txt2img_began_after_finish_s": gen[1] - job["finished_at"] if gen else None,
            "txt2img_generation_s": gen[2] - gen[1] if gen and gen[2] else None,
            "txt2img_others_cores": handback_others, "top_other_processes": top_others,
            "seen_after_finish_s": t_seen - job["finished_at"], "txt2img_sent_after_finish_s": t_req - job["finished_at"],
            "txt2img_done_after_finish_s": t_done - job["finished_at"], "txt2img_latency_s": t_done - t_req,
            "wall_s": job["finished_at"] - job["started_at"]}


def window(samples, lo, hi) -> dict | None:
    """RSS samples (step, bytes) with lo <= step <= hi: median, min, max, how many."""
    v = [r for st, r in samples if lo <= st <= hi]
    return {"steps": [lo, hi], "median": med(v), "min": min(v), "max": max(v), "n": len(v)} if v else None


def slope_per_step(samples) -> float | None:
    """Least-squares slope of RSS (bytes) over the job's step."""
    if len(samples) < 3 or len({st for st, _ in samples}) < 2:
        return None
    mx, my = statistics.fmean(st for st, _ in samples), statistics.fmean(r for _, r in samples)
    sxx = sum((st - mx) ** 2 for st, _ in samples)
    return sum((st - mx) * (r - my) for st, r in samples) / sxx


def memory_job(server, pid, data_dir, steps, batch, size, early_step, span=10) -> dict:
    """g) one long UNet-only job at batch `batch`: the server's VmRSS (every 0.2 s), each sample tagged with the
    step in progress (the step the job last reported, polled every 0.5 s, + 1). early = steps
    early_step..early_step+span-1 (after the warm-up: latents cached, AdamW state allocated), end = the last
    span steps. Samples after the last step (eval, save, release) are left out."""
    name = "bench_memory"
    config = job_config(name, data_dir, size=size, steps=steps, batch=batch)
    time.sleep(2)
    rss_before = rss_bytes(pid)
    polls = []                                # (wall, step, phase)
    t0 = time.time()
    with RssSampler(pid) as sampler:
        job_id = server.post("/lora-trainer/v1/jobs", config)["id"]
        last_logged = 0
        while True:
            job = server.get(f"/lora-trainer/v1/jobs/{job_id}")
            polls.append((time.time(), job.get("step", 0), job.get("phase")))
            if job["state"] in ("finished", "stopped", "failed") and job.get("finished_at"):
                break
            if job.get("step", 0) >= last_logged + 20:
                last_logged = job["step"]
                log(f"  {name}: step {last_logged}/{job.get('total_steps')}, RSS {gb(rss_bytes(pid))}")
            time.sleep(0.5)
        rss_finished = rss_bytes(pid)
    if job["state"] != "finished":
        raise RuntimeError(f"training job {name} ended {job['state']}: {job.get('error')}")
    check_job(job, name)
    time.sleep(SETTLE_S)
    rss_after = rss_bytes(pid)
    # each RSS sample: the step in progress = the step of the latest poll before it + 1 (phase "training")
    total = job["total_steps"]
    tagged, i = [], -1
    for t, v in sampler.samples:
        while i + 1 < len(polls) and polls[i + 1][0] <= t:
            i += 1
        if i >= 0 and polls[i][2] == "training" and 1 <= polls[i][1] < total:
            tagged.append((polls[i][1] + 1, v))
    early = window(tagged, early_step, early_step + span - 1)
    end = window(tagged, total - span + 1, total)
    growth = (end["median"] - early["median"]) / early["median"] * 100 if early and end else None
    slope = slope_per_step([x for x in tagged if x[0] >= early_step])
    steps_s = job.get("step_seconds") or []
    return {"job": job_id, "config": config, "state": job["state"], "total_steps": total,
            "step_seconds_median": med(steps_s[2:]), "wall_s": job["finished_at"] - job["started_at"],
            "part_s": time.time() - t0, "rss_before": rss_before, "rss_peak": sampler.peak,
            "rss_finished": rss_finished, "rss_after": rss_after, "settle_s": SETTLE_S,
            "early": early, "end": end, "growth_pct": growth,
            "growth_pct_max": (end["max"] - early["max"]) / early["max"] * 100 if early and end else None,
            "slope_bytes_per_step": slope, "samples": tagged, "mixed_precision": job.get("mixed_precision"),
            "skipped_steps": job.get("skipped_steps"), "eval_loss_start": job.get("eval_loss_start"),
            "eval_loss_end": job.get("eval_loss_end")}


def ensure_full_model(model_dir: Path) -> None:
    if not make_full.is_built(str(model_dir), MODEL_NAME):
        log(f"building the full-size SD1.5 checkpoint into {model_dir} (~45-60 s, ~7 GB RAM, once)")
        subprocess.run([str(e2e.harness_dest() / "venv/bin/python"), str(BENCH / "make_full_sd15.py"),
                        "--out", str(model_dir), "--name", MODEL_NAME], check=True)


def run_full(args, tmp: Path, parts=("steps", "memory")) -> dict:
    model_dir = Path(args.model_dir)
    ensure_full_model(model_dir)
    data = make_dataset(tmp / "dataset") if "steps" in parts else None
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
        if "steps" in parts:
            run_steps(args, server, pid, data, out)
        if "memory" in parts:
            size, batch = args.memory_size, args.memory_batch
            mem_data = make_caption_dataset(tmp / "dataset-captions", n=args.memory_images, size=size)
            log(f"g) memory: {args.memory_steps} steps at batch {batch}, UNet only, {args.memory_images} images "
                f"{size}² with distinct captions")
            out["memory"] = memory_job(server, pid, mem_data, args.memory_steps, batch, size, args.memory_early_step)
            m = out["memory"]
            log(f"   RSS early {gb(m['early']['median'])}, end {gb(m['end']['median'])}: growth {m['growth_pct']:+.2f} %; "
                f"before {gb(m['rss_before'])}, after {gb(m['rss_after'])}; {m['part_s']:.0f} s")
        out["rss_end"] = rss_bytes(pid)
    finally:
        server.stop()
    return out


def run_steps(args, server, pid, data, out) -> None:
    """a-e on the booted full-size WebUI."""
    # e) baseline: txt2img 256², 1 step; a new prompt each call so the conditioning is never cached
    #    (training resets A1111's cond cache, so the call after it always encodes its prompt)
    if QUIET_WAIT_S:
        wait_quiet(pid, QUIET_WAIT_S, "the txt2img baseline")
    log("txt2img baseline (256², 1 step)")
    txt2img_latency(server, "bench warm-up prompt")
    with RssSampler(pid) as sampler:
        base, base_others = [], []
        for i in range(3):
            t_a = time.time()
            base.append(txt2img_latency(server, f"a photo of a cat, baseline {i}"))
            base_others.append(sampler.others_cores(t_a, time.time()))
    out["txt2img_baseline_s"], out["txt2img_baseline_others_cores"] = base, base_others
    jobs = server.get("/lora-trainer-bench/v1/info").get("state_jobs", [])
    out["txt2img_baseline_generation_s"] = [j[2] - j[1] for j in jobs if j[0] == "scripts_txt2img" and j[2]][-3:]

    # a) is measured before, between and after the jobs: each job is compared with the bare runs
    #    on either side of it, so a slow drift of the machine's speed cancels out
    bares = []
    log(f"a) bare frozen-UNet fwd+bwd, {args.bare_iters} iterations after {args.warmup} warm-ups")
    bares.append(bare(server, pid, args.bare_iters, args.warmup))
    log(f"   median {bares[-1]['median']['total']:.3f} s")
    # a*) the same pass with the trainer's layout fix: what is left of b/a* is the LoRA's own cost
    layouts = [bare(server, pid, args.bare_iters, args.warmup, layout="training")]
    log(f"a*) bare in the trainer's layout: median {layouts[-1]['median']['total']:.3f} s")
    jobs = {}
    for key, label, te in (("unet", "b) training, UNet only", False), ("te", "c) training, UNet + text encoder", True)):
        for attempt in range(1, args.job_tries + 1):
            log(f"{label}, {args.steps} steps" + (f" (try {attempt}: too few quiet steps before)" if attempt > 1 else ""))
            r = train_job(server, pid, f"bench_{key}", data, args.steps, te=te,
                          handback_prompt=f"a photo of a cat, after {key} {attempt}")
            n_quiet = len(quiet(zip(r["step_seconds"][2:], (r.get("step_others_cores") or [])[2:])))
            log(f"   median step {r['step_median']:.3f} s ({n_quiet}/{len(r['step_seconds'][2:])} quiet steps)")
            r["attempt"] = attempt
            jobs.setdefault(f"{key}_tries", []).append(r)
            if n_quiet >= 3:
                break
        jobs[key] = max(jobs[f"{key}_tries"], key=lambda r: len(quiet(zip(r["step_seconds"][2:], (r.get("step_others_cores") or [])[2:]))))
        log("a) bare again")
        bares.append(bare(server, pid, args.bare_iters, args.warmup))
        log(f"   median {bares[-1]['median']['total']:.3f} s")
        layouts.append(bare(server, pid, args.bare_iters, args.warmup, layout="training"))
        log(f"a*) bare in the trainer's layout: median {layouts[-1]['median']['total']:.3f} s")
    out.update(bare=bares, bare_layout=layouts, unet=jobs["unet"], te=jobs["te"],
               unet_tries=jobs["unet_tries"], te_tries=jobs["te_tries"])

    if args.profile:
        log(f"profile: bare / lora / lora_te interleaved, {args.bare_iters} rounds")
        prof = {"interleaved": bare(server, pid, args.bare_iters, args.warmup, modes=["bare", "lora", "lora_te"])}
        for mode, r in prof["interleaved"]["results"].items():
            log(f"   {mode}: {json.dumps({k: round(v, 3) for k, v in r['median'].items()})}")
        log(f"   ratios to bare, per round: {json.dumps({k: round(v, 3) for k, v in prof['interleaved']['ratio_medians'].items()})}")
        log("profile: bare with sdp-no-mem attention")
        prof["bare_sdp"] = bare(server, pid, args.bare_iters, args.warmup, mode="bare", attention="sdp-no-mem")
        log(f"   {json.dumps({k: round(v, 3) for k, v in prof['bare_sdp']['median'].items()})}")
        out["profile"] = prof


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
def quiet(pairs) -> list:
    """The values whose span had at most QUIET_CORES cores of other processes' CPU use."""
    return [x for x, o in pairs if o is not None and o <= QUIET_CORES]


def summarise(full: dict | None, startup: dict | None) -> dict:
    s: dict = {}
    if full and full.get("memory"):
        m = full["memory"]
        s["mem_long"] = {k: m[k] for k in ("rss_before", "rss_peak", "rss_finished", "rss_after", "growth_pct",
                                           "growth_pct_max", "slope_bytes_per_step", "total_steps", "wall_s", "part_s",
                                           "step_seconds_median", "settle_s")}
        s["mem_long"].update(early=m["early"], end=m["end"], batch=m["config"]["train_batch_size"],
                             size=m["config"]["resolution"], after_ratio=m["rss_after"] / m["rss_before"])
    if full and full.get("bare"):
        bares = full["bare"]

        def bare_samples(runs):
            every = [x for b in runs for x in b["seconds"]]
            calm = quiet([(x, o) for b in runs for x, o in zip(b["seconds"], b.get("others_cores", []))])
            return every, calm
        bare_all, bare_quiet = bare_samples(bares)
        bare_cpu = [x for b in bares for x in b.get("cpu_seconds", [])]
        s["bare_all_s"], s["bare_min_s"], s["bare_cpu_s"] = med(bare_all), min(bare_all), med(bare_cpu)
        s["bare_quiet_s"], s["bare_quiet_n"], s["bare_n"] = med(bare_quiet), len(bare_quiet), len(bare_all)
        s["bare_runs_s"] = [b["median"]["total"] for b in bares]
        s["bare_s"] = med(bare_quiet) if len(bare_quiet) >= 3 else med(bare_all)
        for i, key in enumerate(("unet", "te")):
            r = full[key]
            # this job's bare reference: the bare runs right before and right after it
            near_all, near_quiet = bare_samples(bares[i:i + 2])
            counted = r["step_seconds"][2:]
            step_quiet = quiet(list(zip(counted, (r.get("step_others_cores") or [])[2:])))
            s[f"step_{key}_all_s"], s[f"step_{key}_min_s"] = r["step_median"], r["step_min"]
            s[f"step_{key}_quiet_s"], s[f"step_{key}_quiet_n"], s[f"step_{key}_n"] = \
                med(step_quiet), len(step_quiet), len(counted)
            use_quiet = len(near_quiet) >= 3 and len(step_quiet) >= 3
            s[f"ratio_{key}_basis"] = (f"quiet samples: {len(step_quiet)}/{len(counted)} steps vs "
                                       f"{len(near_quiet)}/{len(near_all)} bare before+after" if use_quiet else
                                       "all samples vs the bare runs before+after (too few quiet ones)")
            s[f"step_{key}_s"] = med(step_quiet) if use_quiet else r["step_median"]
            s[f"bare_near_{key}_s"] = med(near_quiet) if use_quiet else med(near_all)
            s[f"ratio_{key}"] = s[f"step_{key}_s"] / s[f"bare_near_{key}_s"]
            if full.get("bare_layout"):
                lay_all, lay_quiet = bare_samples(full["bare_layout"][i:i + 2])
                s[f"bare_layout_near_{key}_s"] = med(lay_quiet) if use_quiet and len(lay_quiet) >= 3 else med(lay_all)
                s[f"ratio_{key}_layout"] = s[f"step_{key}_s"] / s[f"bare_layout_near_{key}_s"]
            s[f"ratio_{key}_all"] = r["step_median"] / med(bare_all)
            s[f"ratio_{key}_min"] = r["step_min"] / s["bare_min_s"]
            cpu = (r.get("poll") or {}).get("cpu_per_step")
            s[f"ratio_{key}_cpu"] = cpu / s["bare_cpu_s"] if cpu and s["bare_cpu_s"] else None
            s[f"step_{key}_cpu_s"] = cpu
            s[f"top_others_{key}"] = r.get("top_other_processes")
        base = med(full["txt2img_baseline_s"])
        base_gen = med(full.get("txt2img_baseline_generation_s") or [])
        s["txt2img_baseline_s"], s["txt2img_baseline_generation_s"] = base, base_gen
        s["txt2img_baseline_others_max"] = max((o for o in full.get("txt2img_baseline_others_cores") or []
                                                if o is not None), default=None)
        for key in ("unet", "te"):
            r = full[key]
            s[f"handback_{key}_s"] = r["txt2img_done_after_finish_s"] - base
            s[f"handback_{key}_detect_s"] = r["txt2img_sent_after_finish_s"]
            s[f"handback_{key}_lock_s"] = r.get("txt2img_began_after_finish_s")
            s[f"handback_{key}_others"] = r.get("txt2img_others_cores")
            gen = r.get("txt2img_generation_s")
            s[f"handback_{key}_generation_extra_s"] = gen - base_gen if gen is not None and base_gen else None
            added = r["rss_peak"] - r["rss_before"]
            s[f"mem_{key}"] = {"rss_before": r["rss_before"], "rss_peak": r["rss_peak"], "rss_after": r["rss_after"],
                               "added_peak": added, "added_after": r["rss_after"] - r["rss_before"],
                               "after_ratio": r["rss_after"] / r["rss_before"], "rss_finished": r.get("rss_finished"),
                               "peak_phase": r.get("rss_peak_phase")}
            if r.get("lora"):
                p = r["lora"]["params"]
                s[f"mem_{key}"].update(lora_params=p, lora_modules=r["lora"]["modules"],
                                       params_plus_adamw=p * 4 * 3, params_grads_adamw=p * 4 * 4)
        b = full["bare"][0]
        s["mem_bare_added_peak"] = b["rss_peak"] - b["rss_before"] if b.get("rss_peak") else None
        s["model_fp32_bytes"] = MODEL_FP32_BYTES
        s["rss_idle"] = full.get("rss_idle")
        s["attention"] = full["server"]["attention"]
        s["threads"] = full["server"]["threads"]
        loads = [x for b in full["bare"] for pair in b.get("loadavg", []) for x in pair[:1]]
        loads += [x for k in ("unet", "te") for pair in full[k].get("loadavg", []) for x in pair[:1]]
        s["loadavg_1min_max"] = max(loads) if loads else None
        others = [o for b in full["bare"] for o in b.get("others_cores", []) if o is not None]
        others += [o for k in ("unet", "te") for o in (full[k].get("step_others_cores") or []) if o is not None]
        s["others_cores_max"] = max(others) if others else None
        if full.get("profile"):
            prof = full["profile"]
            inter = prof["interleaved"]
            s["profile"] = {mode: r["median"] for mode, r in inter["results"].items()}
            s["profile"]["bare_sdp"] = prof["bare_sdp"]["median"]
            s["profile_ratios"] = inter["ratio_medians"]
            s["profile_others_max"] = max((o for o in inter.get("others_cores", []) if o is not None), default=None)
    if startup:
        s["startup_attributable_s"] = startup["attributable_s"]
        s["startup_parts_s"] = startup["ours_median"]
        s["startup_total_with_s"] = startup["total_with"]
        s["startup_total_without_s"] = startup["total_without"]
        s["startup_total_diff_s"] = startup["total_diff"]
        s["create_ui_with_s"], s["create_ui_without_s"] = startup["create_ui_with"], startup["create_ui_without"]
    return s


MODEL_FP32_BYTES = 1_066_300_000 * 4      # UNet 859.5 M + VAE 83.7 M + CLIP-L text 123.1 M params, fp32


def gb(v):
    return "-" if v is None else f"{v / 1e9:.2f} GB"


def sec(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f} s"


def num(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def ok(value, goal):
    return "-" if value is None else ("OK" if value <= goal else "OVER")


def print_table(s: dict) -> None:
    rows = []
    if "bare_s" in s:
        rows += [
            (f"a) bare frozen-UNet fwd+bwd (in WebUI, {s['attention']} attention, {s['threads']} threads)",
             sec(s["bare_s"]), "", f"quiet median {sec(s['bare_quiet_s'])} (n={s['bare_quiet_n']}/{s['bare_n']}), "
             f"all {sec(s['bare_all_s'])}, runs {', '.join(f'{x:.3f}' for x in s['bare_runs_s'])}, min "
             f"{sec(s['bare_min_s'])}, CPU {sec(s['bare_cpu_s'])}; kohya's bare 3.90 s (diffusers, SDPA)"),
        ]
        for key, label, goal, anchor, anchor_s in (("unet", "b", "ratio_unet", "1.15", "4.49"),
                                                   ("te", "c", "ratio_te", "1.33", "5.19")):
            what = "UNet only" if key == "unet" else "UNet + text encoder"
            rows.append((f"   bare before+after {label}", sec(s[f"bare_near_{key}_s"]), "", "the reference of this ratio"))
            rows.append((f"{label}) our step, {what} (median of step_seconds[2:])", sec(s[f"step_{key}_s"]), "",
                         f"quiet median {sec(s[f'step_{key}_quiet_s'])} (n={s[f'step_{key}_quiet_n']}/{s[f'step_{key}_n']}), "
                         f"all {sec(s[f'step_{key}_all_s'])}, min {sec(s[f'step_{key}_min_s'])}, "
                         f"CPU {sec(s[f'step_{key}_cpu_s'])}; kohya {anchor_s} s"))
            rows.append((f"   ratio {label}/a", num(s[goal]), f"<= {GOALS[goal]:.2f} {ok(s[goal], GOALS[goal])}",
                         f"{s[f'{goal}_basis']}; all/all {num(s[f'{goal}_all'])}, min/min {num(s[f'{goal}_min'])}, "
                         f"CPU/CPU {num(s[f'{goal}_cpu'])}; kohya {anchor}"))
            if s.get(f"ratio_{key}_layout") is not None:
                rows.append((f"   ratio {label}/a* (a* = bare in the trainer's layout, "
                             f"{sec(s[f'bare_layout_near_{key}_s'])})", num(s[f"ratio_{key}_layout"]),
                             f"<= {GOALS[goal]:.2f} {ok(s[f'ratio_{key}_layout'], GOALS[goal])}",
                             "the LoRA's own cost: a* runs the same frozen pass with the trainer's contiguous "
                             "SpatialTransformer outputs (see bench/README.md)"))
        for key, label in (("unet", "b"), ("te", "c")):
            m = s[f"mem_{key}"]
            rows.append((f"d) RSS during {label}: before / peak / after", f"{gb(m['rss_before'])} / {gb(m['rss_peak'])} / "
                         f"{gb(m['rss_after'])}", "", f"peak in: {m.get('peak_phase')}"))
            extra = ""
            if m.get("lora_params"):
                extra = (f"LoRA {m['lora_params'] / 1e6:.2f} M params, {m['lora_modules']} modules: params+AdamW "
                         f"{gb(m['params_plus_adamw'])}, +grads {gb(m['params_grads_adamw'])}")
            frac = m["added_peak"] / s["model_fp32_bytes"]
            rows.append((f"   added peak during {label}", f"{gb(m['added_peak'])} ({frac:.2f} x model fp32)",
                         "<< 4.27 GB " + ("OK" if frac < 0.5 else "OVER"), extra))
            rows.append((f"   RSS after {label} / before ({SETTLE_S:.0f} s after the hand-back txt2img)",
                         num(m["after_ratio"]), f"<= {GOALS['rss_after_ratio']:.2f} "
                         f"{ok(m['after_ratio'], GOALS['rss_after_ratio'])}",
                         f"at the finished state {gb(m.get('rss_finished'))}"))
        if s.get("mem_bare_added_peak") is not None:
            rows.append(("   added peak during bare fwd+bwd (activations)", gb(s["mem_bare_added_peak"]), "", "reference"))
        rows.append(("e) txt2img 256², 1 step, baseline latency", sec(s["txt2img_baseline_s"]), "",
                     f"generation itself {sec(s['txt2img_baseline_generation_s'])}; others up to "
                     f"{num(s.get('txt2img_baseline_others_max'), 2)} cores"))
        for key, label in (("unet", "b"), ("te", "c")):
            rows.append((f"   hand-back after {label} (finished_at -> txt2img done - baseline)",
                         sec(s[f"handback_{key}_s"]), f"<= 1 s {ok(s[f'handback_{key}_s'], GOALS['handback_s'])}",
                         f"others {num(s.get(f'handback_{key}_others'), 2)} cores; "
                         f"sent +{sec(s[f'handback_{key}_detect_s'])}, began +{sec(s[f'handback_{key}_lock_s'])}, "
                         f"generation vs baseline {'+' if (s[f'handback_{key}_generation_extra_s'] or 0) >= 0 else ''}"
                         f"{sec(s[f'handback_{key}_generation_extra_s'])}"))
        if s.get("profile"):
            for mode, medians in s["profile"].items():
                note = ""
                if mode in s.get("profile_ratios", {}):
                    note = f"x{s['profile_ratios'][mode]:.3f} bare (median of per-round ratios, interleaved)"
                elif mode == "bare_sdp":
                    note = "A1111's sdp-no-mem attention instead of InvokeAI (separate run)"
                rows.append((f"   profile {mode} (medians, s)", ", ".join(f"{k} {v:.3f}" for k, v in medians.items()), "", note))
        for key, label in (("unet", "b"), ("te", "c")):
            if s.get(f"top_others_{key}"):
                rows.append((f"   other processes using CPU during {label}",
                             "; ".join(f"{n} (pid {p}) {c} s" for p, n, c in s[f"top_others_{key}"]), "", ""))
    if s.get("mem_long"):
        m = s["mem_long"]
        e, n = m["early"], m["end"]
        slope = m["slope_bytes_per_step"]
        rows.append((f"g) RSS over {m['total_steps']} steps, batch {m['batch']}, {m['size']}²: "
                     f"steps {e['steps'][0]}-{e['steps'][1]} / {n['steps'][0]}-{n['steps'][1]}",
                     f"{gb(e['median'])} / {gb(n['median'])}", "", f"medians of {e['n']} / {n['n']} samples "
                     f"(every 0.2 s); max {gb(e['max'])} / {gb(n['max'])}"))
        rows.append(("   growth, end vs early", f"{m['growth_pct']:+.2f} %",
                     f"<= {GOALS['rss_growth_pct']:.0f} % {ok(m['growth_pct'], GOALS['rss_growth_pct'])}",
                     f"of the maxima {m['growth_pct_max']:+.2f} %; fitted slope "
                     + ("-" if slope is None else f"{slope * 1000 / 1e6:+.0f} MB per 1000 steps")
                     + " (the old per-batch cache: +1270 MB)"))
        rows.append((f"   RSS after g / before ({m['settle_s']:.0f} s after the finished state)", num(m["after_ratio"]),
                     f"<= {GOALS['rss_after_ratio']:.2f} {ok(m['after_ratio'], GOALS['rss_after_ratio'])}",
                     f"before {gb(m['rss_before'])}, peak {gb(m['rss_peak'])}, at finished {gb(m['rss_finished'])}, "
                     f"after {gb(m['rss_after'])}; step {sec(m['step_seconds_median'])}, job {m['wall_s']:.0f} s, "
                     f"part {m['part_s']:.0f} s"))
    if "startup_attributable_s" in s:
        p = s["startup_parts_s"]
        parts = ", ".join(f"{k} {v:.3f}" for k, v in p.items() if v is not None)
        rows.append(("f) start-up attributable to the extension", sec(s["startup_attributable_s"]),
                     f"<= 0.3 s {ok(s['startup_attributable_s'], GOALS['startup_s'])}", parts))
        rows.append(("   A1111 startup total with / without (diff)",
                     f"{num(s['startup_total_with_s'], 2)} / {num(s['startup_total_without_s'], 2)} s", "",
                     f"diff {s['startup_total_diff_s']:+.2f} s (noise); create ui {num(s['create_ui_with_s'], 2)} / "
                     f"{num(s['create_ui_without_s'], 2)} s"))
    if not rows:
        return
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    print()
    print(f"{'figure'.ljust(w0)}  {'value'.ljust(w1)}  {'goal'.ljust(w2)}  notes")
    print("-" * (w0 + w1 + w2 + 30))
    for r in rows:
        print(f"{r[0].ljust(w0)}  {r[1].ljust(w1)}  {r[2].ljust(w2)}  {r[3]}")
    busy = s.get("others_cores_max")
    if busy is not None and busy > QUIET_CORES:
        print(f"\nNOTE: other processes used up to {busy:.2f} of {os.cpu_count()} cores during some samples (1-min load "
              f"average up to {s.get('loadavg_1min_max')}). The ratios use only the samples where they used <= "
              f"{QUIET_CORES} cores when there are >= 3 such samples on both sides; 'all/all' uses every sample.")
    print()


def main(argv=None) -> int:
    global QUIET_WAIT_S
    ap = argparse.ArgumentParser(description="LoRA trainer step / memory / hand-back / start-up benchmark")
    ap.add_argument("--only", default=",".join(PARTS),
                    help="comma-separated parts to run: steps (a-e), memory (g), startup (f); default all")
    ap.add_argument("--skip-full", action="store_true", help="only the start-up part (f)")
    ap.add_argument("--skip-startup", action="store_true", help="only the full-size parts (a-e, g)")
    ap.add_argument("--memory-steps", type=int, default=200, help="g) steps of the long job (default 200)")
    ap.add_argument("--memory-batch", type=int, default=4, help="g) train_batch_size (default 4)")
    ap.add_argument("--memory-size", type=int, default=64, help="g) image size, px (default 64: 8x8 latents)")
    ap.add_argument("--memory-images", type=int, default=16, help="g) images, each with its own caption (default 16)")
    ap.add_argument("--memory-early-step", type=int, default=20,
                    help="g) first step of the early window (after the warm-up; default 20)")
    ap.add_argument("--steps", type=int, default=10, help="max_train_steps of each training job (default 10)")
    ap.add_argument("--bare-iters", type=int, default=8, help="timed bare iterations per bare run (default 8)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--job-tries", type=int, default=2,
                    help="run a training job again (up to this many times) when fewer than 3 of its steps were quiet")
    ap.add_argument("--startup-runs", type=int, default=2, help="UI boots per variant for (f) (default 2)")
    ap.add_argument("--profile", action="store_true",
                    help="also time the trainer's pieces phase by phase in the WebUI (lora, lora_te, bare with SDPA)")
    ap.add_argument("--model-dir", default=make_full.default_out(), help="full-size checkpoint cache (default %(default)s)")
    ap.add_argument("--out", default=str(BENCH / "out" / "last.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary data dirs (logs)")
    ap.add_argument("--quiet-wait", type=float, default=QUIET_WAIT_S,
                    help="before each full-size phase, wait up to this many seconds for other processes to use "
                         f"<= {QUIET_CORES} cores (0: don't wait; default %(default)s)")
    args = ap.parse_args(argv)
    QUIET_WAIT_S = args.quiet_wait
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--only takes a comma-separated list of {', '.join(PARTS)}")
    if args.skip_full:
        parts = [x for x in parts if x == "startup"]
    if args.skip_startup:
        parts = [x for x in parts if x != "startup"]
    if args.memory_steps < args.memory_early_step + 20:
        ap.error("--memory-steps must be at least --memory-early-step + 20")

    reason = e2e.missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="lt-bench-"))
    log(f"work dir {tmp}")
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args), "parts": parts, "goals": GOALS,
              "anchors": ANCHORS, "cpu_count": os.cpu_count()}
    try:
        full_parts = [x for x in parts if x != "startup"]
        full = run_full(args, tmp, full_parts) if full_parts else None
        startup = run_startup(args, tmp) if "startup" in parts else None
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
