"""One training run: scan the dataset, train, write kohya files into the Lora folder.

Glue between the engine parts; knows nothing of A1111 (the model and the callbacks come in).
"""
from __future__ import annotations

import os
import time

from .dataset.scan import scan_dataset
from .errors import UserError
from .output.card import write_card
from .output.metadata import RunInfo, build_metadata, new_session_id
from .output.save import check_overwrite, output_paths, resolve_output_name, save_lora_file
from .training.loop import Callbacks, train

SD_VERSION_LABEL = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


def default_output_name(cfg) -> str:
    return cfg.output_name or os.path.basename(os.path.normpath(cfg.train_data_dir)) or "lora"


def run_training(cfg, model, lora_dir, on_progress, stop_requested, on_file=lambda name: None,
                 fail_at_step=None, on_problems=lambda problems: None):
    name = resolve_output_name(default_output_name(cfg))
    scan = scan_dataset(cfg)
    on_problems([p.as_dict() for p in scan.problems])
    if not scan.ok:
        raise UserError(first_error(scan))
    final_path = output_paths(lora_dir, name)
    check_overwrite(final_path, cfg.overwrite)       # fail before training, not after

    info = model.describe()
    session_id, started_at = new_session_id(), time.time()

    def save(network, epoch, step, final, state):
        path = output_paths(lora_dir, name, epoch=None if final else epoch)
        if not final:
            check_overwrite(path, cfg.overwrite)
        run = RunInfo(
            session_id=session_id, training_started_at=started_at, training_finished_at=time.time(),
            epoch=epoch, steps=step, max_train_steps=scan.total_steps, num_train_images=scan.num_train_images,
            # kohya: len(train_dataloader) (one batch per bucket chunk, reg samples included), and the reg
            # images x repeats before balancing; tag frequencies of the train and reg folders
            num_batches_per_epoch=scan.batches_per_epoch, num_epochs=scan.epochs,
            tag_frequency=scan.tag_frequency, dataset_dirs=dataset_dirs(scan),
            reg_dataset_dirs=dataset_dirs(scan, reg=True), num_reg_images=scan.num_reg_images,
            prior_loss_weight=cfg.prior_loss_weight, bucket_info=bucket_info(scan, cfg),
            family=model.family, v_parameterization=model.prediction_type == "v",
            sd_model_name=info.get("sd_model_name"), sd_model_hash=info.get("sd_model_hash"),
            new_sd_model_hash=info.get("new_sd_model_hash"), vae_name=info.get("vae_name"),
            vae_hash=info.get("vae_hash"), new_vae_hash=info.get("new_vae_hash"), clip_skip=info.get("clip_skip"),
            optimizer=state.optimizer,
            mixed_precision=state.mixed_precision,
            network_args=cfg.network_args(), resolution=cfg.resolution_wh, trigger_words=cfg.trigger_words,
            gradient_checkpointing=cfg.gradient_checkpointing, cache_latents=True)
        metadata = build_metadata(cfg, run, file_stem=path.stem)
        save_lora_file(path, network.kohya_state_dict(), metadata, cfg.save_precision)
        if final:
            write_card(path, trigger_words=cfg.trigger_words, preferred_weight=1.0,
                       sd_version=SD_VERSION_LABEL.get(model.family, "Unknown"),
                       notes=f"Trained with lora_trainer on {info.get('sd_model_name')}, {step} steps, {epoch} epochs.")
        rel = os.path.relpath(path, lora_dir)
        on_file(rel)
        return rel

    callbacks = Callbacks(progress=on_progress, stop_requested=stop_requested, save=save, fail_at_step=fail_at_step)
    try:
        return train(cfg, model, scan, callbacks)
    except MemoryError:
        raise UserError("out of memory.", fix="lower train_batch_size, resolution or network_dim, "
                        "or set gradient_checkpointing") from None
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            raise UserError(f"out of GPU memory ({e}).", fix="lower train_batch_size, resolution or network_dim, "
                            "or set gradient_checkpointing") from None
        raise


def first_error(scan) -> str:
    for p in scan.problems:
        if getattr(p, "severity", "error") == "error":
            return f"{p.path}: {p.message}" + (f" Fix: {p.fix}" if getattr(p, "fix", None) else "")
    return "no usable training images were found."


def dataset_dirs(scan, reg=False) -> dict:
    subsets = getattr(scan, "reg_subsets", []) if reg else scan.subsets
    return {s.folder: {"n_repeats": s.repeats, "img_count": s.image_count} for s in subsets}


def bucket_info(scan, cfg):
    if not cfg.enable_bucket:
        return None
    buckets = {str(i): {"resolution": list(reso), "count": count}
               for i, (reso, count) in enumerate(sorted(scan.buckets.items()))}
    return {"buckets": buckets, "mean_img_ar_error": scan.mean_ar_error}
