"""Bench-only helper extension for the WebUI (NOT part of the LoRA trainer).

bench/train_step.py copies this file into a throw-away data dir as
  <data>/extensions/lora-trainer-bench/scripts/lora_trainer_bench.py
so it only ever exists in a benchmark's temporary WebUI. It adds, inside the WebUI process:

  GET  /lora-trainer-bench/v1/info   pid, torch threads, the applied cross-attention optimization, RSS,
                                     and the wall time of the trainer's ui_settings / ui_tabs / app_started
                                     callbacks (wrapped in on_before_ui, so they are timed one by one)
  POST /lora-trainer-bench/v1/bare   {"iters": 8, "warmup": 2, "latent": 32, "batch": 1, "timestep": 500,
                                      "mode": "bare" | "lora" | "lora_te"  (or "modes": [...], interleaved),
                                      "attention": null | "sdp-no-mem" ..., "layout": "webui" | "training",
                                      "torch_profile": false}
      bare     frozen UNet forward + MSE backward through shared.sd_model.apply_model, grad only on the
               input latent (the baseline of the training step)
      lora     the same with the trainer's own network (lora_trainer.networks.factory.build_network) attached
               and AdamW, each phase timed separately (cond / forward / backward / optimizer)
      lora_te  as lora, plus text-encoder adapters and the caption encoded with grad every step
    "layout": "training" runs a bare-only call with the trainer's contiguous SpatialTransformer outputs
    (lora_trainer.webui.session.contiguous_transformer_outputs); lora modes always run in it (they borrow
    the model like a training job). "torch_profile": one more iteration of each mode under torch.profiler
    (the ops with the most self CPU time, by input shapes).
    Runs under modules.call_queue.queue_lock, like generation and training.
  GET  /lora-trainer-bench/v1/cuda-memory         {"cuda": bool, "max_allocated", "allocated", "max_reserved",
                                                   "reserved", "device"} (torch.cuda, bytes; bench/gpu.py)
  POST /lora-trainer-bench/v1/cuda-memory/reset   torch.cuda.reset_peak_memory_stats() (after empty_cache),
                                                   then the same reading
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time

from modules import script_callbacks

TARGET_SCRIPT = os.environ.get("LT_BENCH_TARGET_SCRIPT", "lora_trainer.py")
CALLBACK_TIMES: dict[str, float] = {}
PREFIX = "/lora-trainer-bench/v1"


def _proc_status() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _wrap_target_callbacks():
    """Time the trainer's own callbacks one by one (A1111 times only app_started per script)."""
    for category in ("ui_settings", "ui_tabs", "app_started"):
        for c in script_callbacks.callback_map.get("callbacks_" + category, []):
            if os.path.basename(str(c.script)) != TARGET_SCRIPT or getattr(c.callback, "_lt_bench", False):
                continue
            original, key = c.callback, f"{category}:{c.name}"

            def timed(*args, _original=original, _key=key, **kwargs):
                t0 = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    CALLBACK_TIMES[_key] = CALLBACK_TIMES.get(_key, 0.0) + time.perf_counter() - t0

            timed._lt_bench = True
            c.callback = timed


def _median(xs):
    return statistics.median(xs) if xs else None


def _torch_profile(steps: dict, rows: int) -> dict:
    """One iteration of each variant under torch.profiler: the ops that cost the most self CPU time."""
    import torch
    out = {}
    for mode, step in steps.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
        table = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        out[mode] = [{"op": e.key, "shapes": str(e.input_shapes)[:160], "self_ms": round(e.self_cpu_time_total / 1000, 2),
                      "calls": e.count} for e in table[:rows]]
    return out


def _run_bare(body: dict) -> dict:
    """Times iterations of one or more variants. With several modes ("modes": ["bare", "lora", "lora_te"])
    they run interleaved, one iteration of each per round, so slow drifts of the machine's speed hit all
    variants alike; "ratios" then holds each round's variant/first-variant ratio."""
    import torch
    from modules import devices, sd_hijack, shared

    iters, warmup = int(body.get("iters", 8)), int(body.get("warmup", 2))
    size, batch, timestep = int(body.get("latent", 32)), int(body.get("batch", 1)), int(body.get("timestep", 500))
    modes = list(body.get("modes") or [body.get("mode", "bare")])
    attention = body.get("attention")
    m = shared.sd_model
    ctx_dim = int(body.get("context_dim", 768))
    def title_of(name):           # apply_optimizations() matches titles ("sdp-no-mem - scaled dot ..."), not names
        return next((o.title() for o in sd_hijack.optimizers if o.name == name), name)
    old_optimizer = getattr(sd_hijack.current_optimizer, "name", None)
    if attention:
        sd_hijack.apply_optimizations(title_of(attention))
    applied = getattr(sd_hijack.current_optimizer, "name", None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, 4, size, size), generator=gen).to(devices.device)
    target = torch.randn((batch, 4, size, size), generator=gen).to(devices.device)
    cond_fixed = torch.randn((batch, 77, ctx_dim), generator=gen).to(devices.device)
    t = torch.full((batch,), timestep, device=devices.device, dtype=torch.long)
    caption = body.get("caption", "sks shape, a red circle on a white background")
    sizes = [(size * 8, size * 8)] * batch
    results = {mode: {k: [] for k in ("total", "cond", "forward", "backward", "optimizer", "cpu", "spans")}
               for mode in modes}
    info = {"modes": modes, "iters": iters, "warmup": warmup, "latent": [batch, 4, size, size],
            "cond": [batch, 77, ctx_dim], "attention": applied, "threads": torch.get_num_threads()}

    def bare_step():
        xi = x.clone().requires_grad_(True)
        a = time.perf_counter()
        out = m.apply_model(xi, t, cond_fixed)
        b = time.perf_counter()
        torch.nn.functional.mse_loss(out.float(), target.float()).backward()
        return {"forward": b - a, "backward": time.perf_counter() - b}

    def make_lora_step(model, net, opt, te, cached):
        # the trainer's own pieces, timed phase by phase (bench-only; mirrors lora_trainer/training/loop.py)
        def step():
            with net.attached():
                a = time.perf_counter()
                cond = model.encode_captions([caption] * batch, sizes) if te else cached
                b = time.perf_counter()
                out = model.predict(x, t, cond)
                c = time.perf_counter()
                torch.nn.functional.mse_loss(out.float(), target.float()).backward()
                d = time.perf_counter()
                opt.step()
                opt.zero_grad(set_to_none=True)
                e = time.perf_counter()
            return {"cond": b - a, "forward": c - b, "backward": d - c, "optimizer": e - d}
        return step

    def run(steps):
        for i in range(warmup + iters):
            for mode in modes:
                c0, t0, w0 = time.process_time(), time.perf_counter(), time.time()
                parts = steps[mode]()
                total = time.perf_counter() - t0
                if i < warmup:
                    continue
                r = results[mode]
                r["total"].append(total)
                r["cpu"].append(time.process_time() - c0)      # process-wide CPU time (all threads)
                r["spans"].append((w0, time.time()))
                for k, v in parts.items():
                    r[k].append(v)

    needs_lora = any(mode != "bare" for mode in modes)
    try:
        if not needs_lora:
            from lora_trainer.webui.session import contiguous_transformer_outputs
            flags = [(p, p.requires_grad) for p in m.parameters()]
            for p, _ in flags:
                p.requires_grad_(False)
            layout = contiguous_transformer_outputs(m) if body.get("layout") == "training" else contextlib.nullcontext()
            info["layout"] = body.get("layout", "webui")
            try:
                with torch.enable_grad(), layout:
                    run({"bare": bare_step})
            finally:
                for p, flag in flags:
                    p.requires_grad_(flag)
                    p.grad = None
        else:
            from lora_trainer.config import TrainConfig
            from lora_trainer.networks.factory import build_network
            from lora_trainer.training.optimizers import make_optimizer
            from lora_trainer.webui.models import adapter_for
            from lora_trainer.webui.session import borrowed_model

            with borrowed_model("lora_te" in modes) as sd_model:      # freezes every base weight
                model = adapter_for(sd_model)
                with torch.no_grad():
                    cached = model.encode_captions([caption] * batch, sizes)
                steps = {"bare": bare_step}
                info["networks"] = {}
                for mode in modes:
                    if mode == "bare":
                        continue
                    te = mode == "lora_te"
                    cfg = TrainConfig.from_dict({"train_data_dir": "unused", "network_dim": int(body.get("dim", 32)),
                                                 "network_alpha": float(body.get("alpha", 16)),
                                                 "network_train_unet_only": not te, "learning_rate": 1e-4})
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(0)
                        net = build_network(cfg, model)
                    opt = make_optimizer(net, cfg)
                    info["networks"][mode] = {"adapters": len(net), "trainable_params": sum(
                        p.numel() for g in opt.param_groups for p in g["params"]), "optimizer": type(opt).__name__}
                    steps[mode] = make_lora_step(model, net, opt, te, cached)
                with torch.enable_grad():
                    run(steps)
                    if body.get("torch_profile"):
                        info["torch_profile"] = _torch_profile(steps, int(body.get("torch_profile_rows", 30)))
    finally:
        if attention and old_optimizer != applied:
            sd_hijack.apply_optimizations(title_of(old_optimizer) if old_optimizer else "None")
    for mode, r in results.items():
        r["median"] = {k: _median(v) for k, v in r.items() if v and k != "spans"}
    first = modes[0]
    info["results"] = results
    info["ratios"] = {mode: [a / b for a, b in zip(results[mode]["total"], results[first]["total"])]
                      for mode in modes[1:]}
    info["ratio_medians"] = {mode: _median(v) for mode, v in info["ratios"].items()}
    # the single-mode view train_step.py reads
    info["median"] = results[first]["median"]
    info["seconds"] = results[first]["total"]
    info["cpu_seconds"] = results[first]["cpu"]
    info["spans"] = results[first]["spans"]
    info["rss"] = _proc_status()
    return info


STATE_JOBS: list = []      # [job, begin time.time(), end time.time() | None] for every shared.state.begin/end


def _wrap_state():
    """Record when each WebUI job (txt2img, our training) really starts and ends: the hand-back figure
    splits into 'lock handed over' and 'the generation itself'."""
    from modules import shared
    state = shared.state
    if getattr(state.begin, "_lt_bench", False):
        return
    begin, end = state.begin, state.end

    def timed_begin(job: str = "(unknown)"):
        STATE_JOBS.append([job, time.time(), None])
        del STATE_JOBS[:-200]
        return begin(job)

    def timed_end():
        if STATE_JOBS and STATE_JOBS[-1][2] is None:
            STATE_JOBS[-1][2] = time.time()
        return end()
    timed_begin._lt_bench = True
    state.begin, state.end = timed_begin, timed_end


def _app_started(demo, app):
    _wrap_state()
    from fastapi import Body

    def info():
        import torch
        from modules import sd_hijack, shared, timer
        return {"pid": os.getpid(), "threads": torch.get_num_threads(),
                "attention": getattr(sd_hijack.current_optimizer, "name", None),
                "cross_attention_optimization": shared.opts.data.get("cross_attention_optimization"),
                "callbacks": dict(CALLBACK_TIMES), "helper_registration_s": REGISTRATION_S,
                "state_jobs": [list(x) for x in STATE_JOBS], "startup": timer.startup_record, "rss": _proc_status(),
                "torch": torch.__version__}

    def bare(body: dict = Body(default={})):
        from modules import call_queue
        with call_queue.queue_lock:
            return _run_bare(body or {})

    def cuda_memory():
        import torch
        if not torch.cuda.is_available():
            return {"cuda": False}
        return {"cuda": True, "device": torch.cuda.get_device_name(), "max_allocated": torch.cuda.max_memory_allocated(),
                "allocated": torch.cuda.memory_allocated(), "max_reserved": torch.cuda.max_memory_reserved(),
                "reserved": torch.cuda.memory_reserved()}

    def cuda_memory_reset():
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return cuda_memory()

    app.add_api_route(PREFIX + "/info", info, methods=["GET"])
    app.add_api_route(PREFIX + "/cuda-memory", cuda_memory, methods=["GET"])
    app.add_api_route(PREFIX + "/cuda-memory/reset", cuda_memory_reset, methods=["POST"])
    app.add_api_route(PREFIX + "/bare", bare, methods=["POST"])


# each on_*() call costs A1111 an inspect.stack() (to name the callback): time ours as a reference
_t0 = time.perf_counter()
script_callbacks.on_before_ui(_wrap_target_callbacks)
_t1 = time.perf_counter()
script_callbacks.on_app_started(_app_started)
REGISTRATION_S = [_t1 - _t0, time.perf_counter() - _t1]
