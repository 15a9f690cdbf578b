#!/usr/bin/env python3
"""GPU benchmark (CUDA only): LoRA training step time and peak VRAM with mixed_precision fp16 and bf16.

Boots the assembled WebUI like train_step.py, but with A1111's GPU defaults (no --use-cpu all, --no-half,
--precision full: the model in fp16 on the GPU), loads the full-size random SD1.5 (make_full_sd15.py) and runs,
for each precision, a job UNet-only and one with the text encoder: 512² images, batch 1, dim 32 / alpha 16,
AdamW. Per job: the median of the job's step_seconds after the warm-up, and torch.cuda.max_memory_allocated
over the job (peak stats reset right before it, through the bench helper extension).

Needs the harness venv's torch to be a CUDA build and a CUDA device; otherwise it exits 2 and says why.

usage: python3 bench/gpu.py [--steps 30] [--warmup 5] [--precisions fp16,bf16] [--out bench/out/gpu.json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step as ts  # noqa: E402  (bench/train_step.py: the WebUI, dataset, job and check helpers)

PROBE = ("import json, torch; ok = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
         "'cuda': torch.version.cuda, 'available': ok, 'devices': torch.cuda.device_count(), "
         "'name': torch.cuda.get_device_name() if ok else None, 'bf16': ok and torch.cuda.is_bf16_supported()}))")


class GpuWebUI(ts.BenchWebUI):
    """The bench's WebUI with A1111's GPU defaults (no --use-cpu all / --no-half / --precision full)."""

    def __init__(self, data_dir, **kw):
        super().__init__(data_dir, cpu=False, **kw)


def probe_cuda() -> tuple[dict | None, str | None]:
    python = ts.e2e.harness_dest() / "venv/bin/python"
    try:
        done = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=300)
        info = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError, OSError) as e:
        return None, f"could not ask the harness venv's torch ({python}) about CUDA: {e!r}"
    if not info["cuda"]:
        return info, (f"no CUDA: the harness venv's torch {info['torch']} is a CPU-only build ({python}); "
                      "bench/gpu.py needs a CUDA build of torch there and an NVIDIA GPU")
    if not info["available"]:
        return info, (f"no CUDA device: torch {info['torch']} (CUDA {info['cuda']}) sees no usable GPU "
                      "(torch.cuda.is_available() is False); bench/gpu.py needs one")
    return info, None


def run_job(server, name, data, precision, te, args) -> dict:
    reset = server.post("/lora-trainer-bench/v1/cuda-memory/reset")
    config = ts.job_config(name, data, size=args.size, steps=args.steps, te=te, mixed_precision=precision)
    config["network_dim"], config["network_alpha"] = args.dim, args.dim / 2
    t0 = time.time()
    job = server.train(config, timeout=1800)
    wall = time.time() - t0
    mem = server.get("/lora-trainer-bench/v1/cuda-memory")
    if job["state"] != "finished":
        return {"name": name, "precision": precision, "te": te, "state": job["state"], "error": job.get("error")}
    ts.check_job(job, name)
    counted = job["step_seconds"][args.warmup:]
    return {"name": name, "precision": precision, "te": te, "state": job["state"],
            "mixed_precision": job["mixed_precision"], "skipped_steps": job["skipped_steps"],
            "step_s": statistics.median(counted), "step_min_s": min(counted), "steps_counted": len(counted),
            "peak_bytes": mem["max_allocated"], "allocated_before": reset["allocated"],
            "peak_reserved": mem["max_reserved"], "wall_s": wall, "step_seconds": job["step_seconds"],
            "eval_loss_start": job.get("eval_loss_start"), "eval_loss_end": job.get("eval_loss_end")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="LoRA training on CUDA: step time and peak VRAM, fp16 and bf16")
    ap.add_argument("--steps", type=int, default=30, help="max_train_steps per job (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the median (default 5)")
    ap.add_argument("--precisions", default="fp16,bf16", help="mixed_precision values to run (default fp16,bf16)")
    ap.add_argument("--size", type=int, default=512, help="image size (default 512)")
    ap.add_argument("--dim", type=int, default=32, help="network_dim; alpha = dim / 2 (default 32)")
    ap.add_argument("--model-dir", default=ts.make_full.default_out())
    ap.add_argument("--out", default=str(ts.BENCH / "out" / "gpu.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary data dir (webui.log)")
    args = ap.parse_args(argv)
    if args.steps <= args.warmup:
        ap.error("--steps must be larger than --warmup")

    reason = ts.e2e.missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    cuda, reason = probe_cuda()
    if reason:
        print(f"bench/gpu.py: {reason}. Nothing was run.", file=sys.stderr)
        return 2
    ts.log(f"CUDA {cuda['cuda']}, torch {cuda['torch']}, {cuda['name']}, bf16 {'yes' if cuda['bf16'] else 'no'}")
    ts.ensure_full_model(Path(args.model_dir))
    tmp = Path(tempfile.mkdtemp(prefix="lt-bench-gpu-"))
    data = ts.make_dataset(tmp / "dataset", size=args.size)
    server = GpuWebUI(tmp / "webui-gpu", ckpt_dir=args.model_dir, model=ts.MODEL_NAME)
    ts.log("booting the WebUI (GPU defaults: fp16 weights) with the full-size checkpoint")
    results = []
    try:
        server.start(timeout=900)
        for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
            for te in (False, True):
                name = f"gpu_{precision}_{'te' if te else 'unet'}"
                if precision == "bf16" and not cuda["bf16"]:
                    results.append({"name": name, "precision": precision, "te": te, "state": "skipped",
                                    "error": f"{cuda['name']} has no bf16"})
                    continue
                ts.log(f"{name}: {args.steps} steps at {args.size}²")
                results.append(run_job(server, name, data, precision, te, args))
                r = results[-1]
                ts.log(f"   {r['state']}" + (f": step {r['step_s']:.3f} s, peak {ts.gb(r['peak_bytes'])}"
                                             if r["state"] == "finished" else f": {r.get('error')}"))
    except BaseException:
        ts.log(f"failed; kept {tmp} (webui.log)")
        raise
    finally:
        server.stop()
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args), "cuda": cuda,
                               "jobs": results}, indent=2, default=str))
    print(f"\n{'job':<18} {'ran as':<8} {'step (median)':>14} {'min':>9} {'peak VRAM':>10} {'model+':>9} "
          f"{'skipped':>8}")
    for r in results:
        if r["state"] != "finished":
            print(f"{r['name']:<18} {r['state']}: {r.get('error')}")
            continue
        print(f"{r['name']:<18} {str(r['mixed_precision']):<8} {r['step_s']:>12.3f} s {r['step_min_s']:>7.3f} s "
              f"{ts.gb(r['peak_bytes']):>10} {ts.gb(r['peak_bytes'] - r['allocated_before']):>9} "
              f"{r['skipped_steps']:>8}")
    print(f"\nmedian of step_seconds[{args.warmup}:]; peak = torch.cuda.max_memory_allocated over the job (reset "
          "before it); model+ = peak minus what was allocated at the reset (the loaded model)")
    ts.log(f"wrote {out}")
    return 0 if all(r["state"] in ("finished", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
