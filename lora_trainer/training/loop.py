"""The training loop. Reads top to bottom: setup, the step, saving.

Everything model-specific goes through `model` (a TrainModel); everything about the
WebUI (progress bar, stop buttons, files) comes in as callbacks.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch

from ..dataset.batches import epoch_batches
from ..dataset.captions import process_caption
from ..dataset.latents import LatentCache
from ..errors import TrainingStopped, UserError
from ..networks.factory import build_network
from .conditioning import CaptionConditioning
from .loss import diffusion_loss
from .noise import add_noise, sample_noise, sample_timesteps, training_target
from .optimizers import describe_optimizer, make_optimizer
from .precision import Precision, resolve_precision
from .schedulers import make_scheduler


@dataclass
class Callbacks:
    progress: callable = lambda **kw: None        # step, total_steps, epoch, loss, phase
    stop_requested: callable = lambda: None       # None | "save" (Stop & Save) | "abort" (Interrupt)
    save: callable = lambda network, epoch, step, final, state: None   # -> file name
    fail_at_step: int | None = None                # test hook: raise inside the loop at this step


MAX_SKIPPED_IN_A_ROW = 20                          # fp16 overflows: the loss scale is then 2^-4 of its start


@dataclass
class TrainResult:
    state: str = "finished"                        # finished | stopped
    steps: int = 0
    epoch: int = 0
    files: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    optimizer: str = ""
    seconds: float = 0.0
    eval_loss_start: float | None = None
    eval_loss_end: float | None = None
    step_seconds: list = field(default_factory=list)
    network: object = None
    mixed_precision: str = "no"                    # what ran (ss_mixed_precision)
    skipped_steps: int = 0                         # fp16 steps GradScaler skipped (inf/NaN gradients)


def train(cfg, model, scan, cb: Callbacks, precision: Precision | None = None) -> TrainResult:
    t0 = time.time()
    device = model.device
    precision = precision or resolve_precision(cfg, device, model.weight_dtype)   # refuse before any work
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    total_steps = scan.total_steps
    steps_per_epoch = max(1, scan.steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)

    # 1. latents: each image (and its mirror) encoded once with the WebUI's own VAE
    cb.progress(step=0, total_steps=total_steps, epoch=0, loss=None, phase="caching latents")
    latents = LatentCache.build(
        scan.items, model.encode_images, cfg.flip_aug, should_stop=lambda: cb.stop_requested() is not None,
        progress=lambda done, total: cb.progress(step=0, total_steps=total_steps, epoch=0, loss=None,
                                                 phase=f"caching latents {done}/{total}"))

    # 2. the network: new adapters hooked onto the model's layers (never merged into weights)
    with torch.random.fork_rng(devices=[]):        # deterministic init, WebUI's RNG untouched
        torch.manual_seed(cfg.seed)
        network = build_network(cfg, model).to(precision.param_dtype)   # fp32 masters unless full_bf16
    optimizer = make_optimizer(network, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    scaler = precision.make_scaler()               # fp16 only: loss scaling, skips inf/NaN steps
    trainable = [p for g in optimizer.param_groups for p in g["params"]]

    # 3. captions: each encoded once when the text encoder is frozen and captions are fixed
    fixed = CaptionConditioning(model, cache=not cfg.train_text_encoder)
    varying = CaptionConditioning(model, cache=False)

    def conditioning(batch, shuffle=cfg.shuffle_caption):
        texts = [process_caption(item.caption, shuffle_caption=shuffle, keep_tokens=cfg.keep_tokens,
                                 keep_tokens_separator=cfg.keep_tokens_separator, rng=rng) for item, _ in batch]
        sizes = [item.bucket for item, _ in batch]
        with precision.autocast():
            return (varying if shuffle else fixed)(texts, sizes)

    # a fixed-noise loss on a few images, before and after: a learning signal free of step noise
    distinct = _distinct(scan.items)
    eval_batch = [(item, False) for item in distinct if item.bucket == distinct[0].bucket][:4]
    eval_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    eval_t = torch.tensor([100, 300, 500, 700, 900], device=device)
    eval_z = torch.stack([latents.get(item, flip) for item, flip in eval_batch]).to(device)
    eval_noise = torch.randn((len(eval_t),) + tuple(eval_z.shape), generator=eval_gen, device=device)

    @torch.no_grad()
    def fixed_noise_loss() -> float:
        cond = conditioning(eval_batch, shuffle=False)
        losses = []
        for t_i, noise in zip(eval_t, eval_noise):
            t = t_i.repeat(eval_z.shape[0])
            with precision.autocast():
                pred = model.predict(add_noise(eval_z, noise, t, model.alphas_cumprod), t, model.cond_to(cond, device))
            target = training_target(eval_z, noise, t, model.alphas_cumprod, model.prediction_type)
            losses.append(float(diffusion_loss(pred, target, t, model.alphas_cumprod)))
        return sum(losses) / len(losses)

    result = TrainResult(optimizer=describe_optimizer(optimizer, cfg), network=network,
                         mixed_precision=precision.name)
    step, epoch, running, skipped_in_a_row = 0, 0, None, 0
    with network.attached(), model.gradient_checkpointing(cfg.gradient_checkpointing):
        result.eval_loss_start = fixed_noise_loss()
        for epoch in range(1, epochs + 1):
            batches = epoch_batches(scan.items, cfg.train_batch_size, cfg.seed, epoch, flip_aug=cfg.flip_aug)
            for i, batch in enumerate(batches):
                if step >= total_steps:
                    break
                stop = cb.stop_requested()
                if stop:
                    result.state = "stopped"
                    if stop == "abort":
                        raise TrainingStopped("interrupted")
                    break
                if cb.fail_at_step is not None and step == cb.fail_at_step:
                    raise RuntimeError(f"injected failure at step {step}")

                # the step: noise the cached latents, predict, fp32 loss, backward
                step_t0 = time.perf_counter()
                z0 = torch.stack([latents.get(item, flip) for item, flip in batch]).to(device)
                cond = conditioning(batch)
                noise = sample_noise(z0, generator, cfg.noise_offset)
                t = sample_timesteps(z0.shape[0], generator, device)
                x_t = add_noise(z0, noise, t, model.alphas_cumprod)
                with precision.autocast():
                    pred = model.predict(x_t, t, cond)
                target = training_target(z0, noise, t, model.alphas_cumprod, model.prediction_type)
                weights = None
                if any(item.is_reg for item, _ in batch):
                    weights = torch.tensor([cfg.prior_loss_weight if item.is_reg else 1.0 for item, _ in batch],
                                           device=device)
                loss = diffusion_loss(pred, target, t, model.alphas_cumprod, min_snr_gamma=cfg.min_snr_gamma,
                                      prediction_type=model.prediction_type, weights=weights)
                if scaler is None and not torch.isfinite(loss):
                    raise UserError(non_finite_message(loss, step, precision, batch), fix=non_finite_fix(precision, cfg))
                loss_for_backward = loss / cfg.gradient_accumulation_steps
                (scaler.scale(loss_for_backward) if scaler else loss_for_backward).backward()

                if (i + 1) % cfg.gradient_accumulation_steps == 0 or i + 1 == len(batches):
                    applied = True
                    if scaler:
                        scaler.unscale_(optimizer)
                    if cfg.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                    if scaler:
                        scale = scaler.get_scale()
                        scaler.step(optimizer)     # skipped when a gradient is inf/NaN ...
                        scaler.update()
                        applied = scaler.get_scale() >= scale    # ... which lowers the scale
                    else:
                        optimizer.step()
                    if applied:
                        scheduler.step()           # as accelerate: a skipped step does not advance the LR
                        skipped_in_a_row = 0
                    else:
                        result.skipped_steps += 1
                        skipped_in_a_row += 1
                        if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                            raise UserError(f"fp16 overflowed on {skipped_in_a_row} steps in a row (last at step "
                                            f"{step + 1}); the loss scaler skipped them all.",
                                            fix=non_finite_fix(precision, cfg))
                    optimizer.zero_grad(set_to_none=True)
                    step += 1

                value = float(loss.detach())
                result.step_seconds.append(time.perf_counter() - step_t0)
                running = value if running is None else 0.9 * running + 0.1 * value
                result.losses.append(value)
                cb.progress(step=step, total_steps=total_steps, epoch=epoch, loss=running, phase="training")
            else:
                if cfg.save_every_n_epochs and epoch % cfg.save_every_n_epochs == 0 and epoch < epochs:
                    result.files.append(cb.save(network, epoch, step, final=False, state=result))
                continue
            break            # stopped, or all steps done mid-epoch
        cb.progress(step=step, total_steps=total_steps, epoch=epoch, loss=running, phase="evaluating")
        result.eval_loss_end = fixed_noise_loss()

    result.steps, result.epoch = step, epoch
    result.seconds = time.time() - t0
    cb.progress(step=step, total_steps=total_steps, epoch=epoch, loss=running, phase="saving")
    result.files.append(cb.save(network, epoch, step, final=True, state=result))
    return result


def non_finite_message(loss, step, precision, batch) -> str:
    names = ", ".join(sorted({str(item.path) for item, _ in batch}))
    return (f"the loss became {loss.item()} at step {step + 1} (precision {precision.name}); nothing of this step "
            f"was applied. The batch held: {names}.")


def non_finite_fix(precision, cfg) -> str:
    tips = [f"lower learning_rate (now {cfg.learning_rate:g})"]
    if not cfg.max_grad_norm:
        tips.append("set max_grad_norm 1.0")
    if precision.name == "fp16":
        tips.append("use mixed_precision 'bf16' (no overflow) or 'no'")
    elif precision.name == "bf16":
        tips.append("use mixed_precision 'no'" + (" (or full_bf16 off)" if precision.full else ""))
    tips.append("check the images of that batch")
    return ", ".join(tips)


def _distinct(items):
    seen, out = set(), []
    for item in items:
        if item.path not in seen and not getattr(item, "is_reg", False):
            seen.add(item.path)
            out.append(item)
    return out
