"""The safetensors header metadata of a LoRA file: kohya's ss_* keys plus modelspec.*.

We write every key kohya sd-scripts writes (train_network.py, legacy train_data_dir layout),
stringified the way kohya does it (Python str() of the value, JSON for dicts), so A1111's
Lora cards, civitai and other tools read our files exactly like kohya's. Values come from
the run config (`cfg`, kohya attribute names) and from `RunInfo` (what only the run knows).
The sshs_* hashes are added by save.save_lora_file, because they depend on the saved tensors.
"""

from __future__ import annotations

import datetime
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional

TRAINER_NAME = "lora_trainer"
DEFAULT_VERSION = "0.1.0"
NETWORK_MODULE = "networks.lora"  # what kohya writes for LoRA and LoCon (conv_dim) alike
SAI_MODEL_SPEC_VERSION = "1.0.1"
SGM_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"

_BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}

# kohya's ss_optimizer is "<module>.<class>"; used when the run did not give the real object.
_OPTIMIZER_CLASS_NAMES = {
    "adamw": "torch.optim.adamw.AdamW",
    "adam": "torch.optim.adam.Adam",
    "sgd": "torch.optim.sgd.SGD",
    "sgdnesterov": "torch.optim.sgd.SGD",
    "adamw8bit": "bitsandbytes.optim.adamw.AdamW8bit",
    "lion": "lion_pytorch.lion_pytorch.Lion",
    "prodigy": "prodigyopt.prodigy.Prodigy",
    "adafactor": "transformers.optimization.Adafactor",
}


def new_session_id() -> int:
    """A random session id, as kohya draws it (0 .. 2**32)."""
    return random.randint(0, 2 ** 32)


@dataclass
class RunInfo:
    """Everything the metadata needs that is not in the run config."""

    session_id: int = field(default_factory=new_session_id)
    training_started_at: float = field(default_factory=time.time)  # unix time
    training_finished_at: Optional[float] = None  # unix time of this save; None = now
    epoch: int = 0
    steps: int = 0
    max_train_steps: int = 0
    num_train_images: int = 0          # images × repeats, as kohya counts them
    num_batches_per_epoch: int = 0      # kohya: len(train_dataloader) = sum over buckets of ceil(samples / batch)
    num_epochs: int = 0
    tag_frequency: dict = field(default_factory=dict)   # {dir: {tag: count}}, train AND reg folders (kohya)
    dataset_dirs: dict = field(default_factory=dict)    # {dir: {"n_repeats": n, "img_count": m}}
    reg_dataset_dirs: dict = field(default_factory=dict)
    num_reg_images: int = 0             # reg images × repeats BEFORE balancing (kohya's DreamBoothDataset)
    prior_loss_weight: float = 1.0
    bucket_info: Optional[dict] = None  # {"buckets": {i: {"resolution": [w, h], "count": n}}, "mean_img_ar_error": x}
    family: str = "sd1"                 # "sd1" | "sd2" | "sdxl"
    v_parameterization: bool = False
    sd_model_name: str = ""
    sd_model_hash: Optional[str] = None       # A1111's old 8-hex model hash
    new_sd_model_hash: Optional[str] = None   # full-file sha256
    vae_name: Optional[str] = None            # None: no separate VAE (no ss_vae_* keys)
    vae_hash: Optional[str] = None
    new_vae_hash: Optional[str] = None
    clip_skip: Optional[int] = None
    optimizer: str = ""                 # e.g. "torch.optim.adamw.AdamW(weight_decay=0.1)"; see optimizer_description
    mixed_precision: str = "no"         # what was actually used: "no" | "fp16" | "bf16"
    network_args: Optional[dict] = None  # kohya network_args dict; None = derive (LoCon) or omit
    resolution: tuple = (512, 512)      # (width, height)
    trigger_words: str = ""
    gradient_checkpointing: bool = False
    cache_latents: bool = True


def trainer_version() -> str:
    import lora_trainer

    return f"{TRAINER_NAME}/{getattr(lora_trainer, '__version__', DEFAULT_VERSION)}"


def optimizer_description(optimizer, optimizer_args=None) -> str:
    """kohya's ss_optimizer: "<module>.<class>" plus "(k=v,k=v)" when args were given.

    `optimizer` is an optimizer instance or class (preferred: exact), or a kohya
    optimizer_type name such as "AdamW".
    """
    if isinstance(optimizer, str):
        name = _OPTIMIZER_CLASS_NAMES.get(optimizer.lower(), optimizer)
    else:
        cls = optimizer if isinstance(optimizer, type) else type(optimizer)
        name = f"{cls.__module__}.{cls.__name__}"
    args = [str(a) for a in (optimizer_args or [])]
    return f"{name}({','.join(args)})" if args else name


def _s(value: Any) -> str:
    """kohya's stringification: str() of the value, so None -> "None", True -> "True"."""
    return str(value)


def _cli_number(value: Any) -> str:
    # network_args values are the strings a user would type on kohya's CLI ("2", "0.5").
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _effective_alpha(alpha, dim) -> float:
    # kohya falls back to alpha = dim when alpha is None or 0; the metadata states the alpha used.
    return float(alpha) if alpha not in (None, 0) else float(dim)


def _network_args(cfg, run: RunInfo) -> Optional[dict]:
    if run.network_args is not None:
        return run.network_args
    if getattr(cfg, "network_type", "lora") == "locon":
        conv_dim = getattr(cfg, "conv_dim", None)
        conv_alpha = getattr(cfg, "conv_alpha", None)
        return {"conv_dim": _cli_number(conv_dim),
                "conv_alpha": _cli_number(conv_alpha if conv_alpha is not None else 1.0),
                "dropout": None}
    return None


def _trigger_words(cfg, run: RunInfo) -> str:
    words = run.trigger_words or getattr(cfg, "trigger_words", "") or ""
    if isinstance(words, (list, tuple)):
        words = ", ".join(str(w) for w in words if str(w).strip())
    return str(words).strip()


def build_metadata(cfg, run: RunInfo, *, file_stem: Optional[str] = None) -> dict[str, str]:
    """All ss_* and modelspec.* metadata for one saved file (no sshs_* hashes yet).

    `file_stem` (optional) becomes ss_output_name, which A1111 uses as the card alias;
    by default it is cfg.output_name, as kohya writes it.
    """
    g = lambda name, default=None: getattr(cfg, name, default)  # noqa: E731 - SimpleNamespace-friendly
    family = run.family
    if family not in _BASE_MODEL_VERSION:
        raise ValueError(f"unknown model family {family!r}")
    output_name = str(g("output_name", "last"))
    finished_at = run.training_finished_at if run.training_finished_at is not None else time.time()
    network_dim = g("network_dim", 4)
    enable_bucket = bool(g("enable_bucket", False))
    batch_size = g("train_batch_size", 1)
    grad_accum = g("gradient_accumulation_steps", 1)
    width, height = (int(x) for x in run.resolution)
    base_version = _BASE_MODEL_VERSION[family]
    if family != "sdxl" and run.v_parameterization:
        base_version += "_v"
    optimizer = run.optimizer or optimizer_description(g("optimizer_type", "AdamW"), g("optimizer_args"))

    md: dict[str, Any] = {
        # kohya train_network.py base dictionary, in kohya's order
        "ss_session_id": run.session_id,
        "ss_training_started_at": float(run.training_started_at),
        "ss_output_name": file_stem if file_stem is not None else output_name,
        "ss_learning_rate": g("learning_rate", 1e-4),
        "ss_text_encoder_lr": g("text_encoder_lr"),
        "ss_unet_lr": g("unet_lr"),
        "ss_num_train_images": run.num_train_images,
        "ss_num_validation_images": 0,
        "ss_num_reg_images": run.num_reg_images,
        "ss_num_batches_per_epoch": run.num_batches_per_epoch,
        "ss_num_epochs": run.num_epochs,
        "ss_gradient_checkpointing": bool(run.gradient_checkpointing),
        "ss_gradient_accumulation_steps": grad_accum,
        "ss_max_train_steps": run.max_train_steps,
        "ss_lr_warmup_steps": g("lr_warmup_steps", 0),
        "ss_lr_scheduler": g("lr_scheduler", "constant"),
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": network_dim,
        "ss_network_alpha": _effective_alpha(g("network_alpha", 1.0), network_dim),
        "ss_network_dropout": None,
        "ss_mixed_precision": run.mixed_precision or g("mixed_precision", "no"),
        "ss_full_fp16": False,
        "ss_v2": family == "sd2",
        "ss_base_model_version": base_version,
        "ss_clip_skip": run.clip_skip,
        "ss_max_token_length": None,
        "ss_cache_latents": bool(run.cache_latents),
        "ss_seed": g("seed"),
        "ss_lowram": False,
        "ss_noise_offset": g("noise_offset"),
        "ss_multires_noise_iterations": None,
        "ss_multires_noise_discount": 0.3,
        "ss_adaptive_noise_scale": None,
        "ss_zero_terminal_snr": False,
        "ss_training_comment": g("training_comment"),
        "ss_sd_scripts_commit_hash": trainer_version(),
        "ss_optimizer": optimizer,
        "ss_max_grad_norm": g("max_grad_norm", 1.0),
        "ss_caption_dropout_rate": 0.0,
        "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": 0.0,
        "ss_face_crop_aug_range": None,
        "ss_prior_loss_weight": run.prior_loss_weight,
        "ss_min_snr_gamma": g("min_snr_gamma"),
        "ss_scale_weight_norms": None,
        "ss_ip_noise_gamma": None,
        "ss_debiased_estimation": False,
        "ss_noise_offset_random_strength": False,
        "ss_ip_noise_gamma_random_strength": False,
        "ss_loss_type": "l2",
        "ss_huber_schedule": "snr",
        "ss_huber_scale": 1.0,
        "ss_huber_c": 0.1,
        "ss_fp8_base": False,
        "ss_fp8_base_unet": False,
        "ss_validation_seed": None,
        "ss_validation_split": 0.0,
        "ss_max_validation_steps": None,
        "ss_validate_every_n_epochs": None,
        "ss_validate_every_n_steps": None,
        "ss_resize_interpolation": None,
        # dataset keys (kohya's train_data_dir layout)
        "ss_batch_size_per_device": batch_size,
        "ss_total_batch_size": batch_size * grad_accum,
        "ss_resolution": (width, height),
        "ss_color_aug": False,
        "ss_flip_aug": bool(g("flip_aug", False)),
        "ss_random_crop": False,
        "ss_shuffle_caption": bool(g("shuffle_caption", False)),
        "ss_enable_bucket": enable_bucket,
        "ss_bucket_no_upscale": bool(g("bucket_no_upscale", False)),
        # kohya's dataset reports no bucket limits when bucketing is off
        "ss_min_bucket_reso": g("min_bucket_reso", 256) if enable_bucket else None,
        "ss_max_bucket_reso": g("max_bucket_reso", 1024) if enable_bucket else None,
        "ss_keep_tokens": g("keep_tokens", 0),
        "ss_dataset_dirs": json.dumps(run.dataset_dirs),
        "ss_reg_dataset_dirs": json.dumps(run.reg_dataset_dirs),
        "ss_tag_frequency": json.dumps(run.tag_frequency),
        "ss_bucket_info": json.dumps(run.bucket_info),
    }
    network_args = _network_args(cfg, run)
    if network_args is not None:
        md["ss_network_args"] = json.dumps(network_args)
    md["ss_sd_model_name"] = run.sd_model_name
    md["ss_sd_model_hash"] = run.sd_model_hash
    md["ss_new_sd_model_hash"] = run.new_sd_model_hash
    if run.vae_name is not None:
        md["ss_vae_name"] = run.vae_name
        md["ss_vae_hash"] = run.vae_hash
        md["ss_new_vae_hash"] = run.new_vae_hash
    # written at each save
    md["ss_training_finished_at"] = float(finished_at)
    md["ss_steps"] = run.steps
    md["ss_epoch"] = run.epoch

    md.update(_modelspec(family, run, output_name, (width, height), finished_at, _trigger_words(cfg, run)))
    return {k: _s(v) for k, v in md.items()}


def _modelspec(family, run: RunInfo, title, resolution, finished_at, trigger_words) -> dict[str, str]:
    if family == "sdxl":
        arch, impl = "stable-diffusion-xl-v1-base", SGM_IMPLEMENTATION
    elif family == "sd2":
        arch = "stable-diffusion-v2-768-v" if run.v_parameterization else "stable-diffusion-v2-512"
        impl = "diffusers"
    else:
        arch, impl = "stable-diffusion-v1", "diffusers"
    spec = {
        "modelspec.sai_model_spec": SAI_MODEL_SPEC_VERSION,
        "modelspec.architecture": f"{arch}/lora",  # kohya uses /lora for LoCon too
        "modelspec.implementation": impl,
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(finished_at)).isoformat(),
        "modelspec.prediction_type": "v" if run.v_parameterization else "epsilon",
        "modelspec.implementation_version": trainer_version(),
    }
    if run.clip_skip is not None:
        spec["modelspec.encoder_layer"] = str(run.clip_skip)
    if trigger_words:
        spec["modelspec.trigger_phrase"] = trigger_words
    return spec
