"""TrainConfig: the single source of truth for a training run.

Keys are kohya sd-scripts' argument names wherever kohya has one, so users and presets
already speak them. The config round-trips to TOML (kohya's `--config_file` format is a
flat TOML of the same names).
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields

from .errors import ConfigError

OPTIMIZERS = ("AdamW", "Prodigy")
SCHEDULERS = ("constant", "constant_with_warmup", "cosine")
NETWORK_TYPES = ("lora", "locon")
SAVE_PRECISIONS = ("fp16", "bf16", "float")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")


@dataclass
class TrainConfig:
    # dataset (kohya folder layout: train_data_dir/N_name/*.png)
    train_data_dir: str = ""
    reg_data_dir: str = ""              # regularization (class) images, N_class folders; "" = none
    prior_loss_weight: float = 1.0      # loss weight of the reg images (kohya)
    caption_extension: str = ".txt"
    resolution: str = "512"
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    flip_aug: bool = False
    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = "|||"
    # network
    network_type: str = "lora"          # "locon" adds kohya's conv_dim/conv_alpha 3x3 convs
    network_dim: int = 32
    network_alpha: float = 16.0
    conv_dim: int = 16
    conv_alpha: float = 8.0
    network_train_unet_only: bool = False
    # optimisation
    optimizer_type: str = "AdamW"
    optimizer_args: list = field(default_factory=list)   # kohya style: ["weight_decay=0.01", ...]
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    lr_scheduler: str = "cosine"
    lr_warmup_steps: float = 0            # an int, or a ratio of the total steps when < 1 (kohya)
    max_train_epochs: int = 10
    max_train_steps: int | None = None   # overrides epochs when set
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    min_snr_gamma: float | None = None
    noise_offset: float | None = None
    mixed_precision: str = "auto"         # auto: the WebUI's own (fp16/bf16 when it holds the UNet in half, else no)
    full_bf16: bool = False               # the network itself in bf16 too (kohya; needs mixed_precision bf16)
    full_fp16: bool = False               # kohya's option; refused with the reason (training/precision.py)
    gradient_checkpointing: bool = False
    clip_skip: int | None = None          # None: the WebUI's current "Clip skip" setting
    seed: int = 42
    # output
    output_name: str = ""
    save_every_n_epochs: int = 0
    save_precision: str = "fp16"
    overwrite: bool = False
    trigger_words: str = ""
    training_comment: str = ""

    # ---- derived views (not stored) ----
    @property
    def resolution_wh(self) -> tuple[int, int]:
        parts = [p.strip() for p in str(self.resolution).split(",") if p.strip()]
        w = int(parts[0])
        h = int(parts[1]) if len(parts) > 1 else w
        return w, h

    @property
    def is_locon(self) -> bool:
        return self.network_type == "locon"

    @property
    def train_text_encoder(self) -> bool:
        return not self.network_train_unet_only

    @property
    def effective_unet_lr(self) -> float:
        return self.learning_rate if self.unet_lr is None else self.unet_lr

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.learning_rate if self.text_encoder_lr is None else self.text_encoder_lr

    def optimizer_kwargs(self) -> dict:
        return parse_optimizer_args(self.optimizer_args)

    def network_args(self) -> dict | None:
        if not self.is_locon:
            return None
        return {"conv_dim": str(self.conv_dim), "conv_alpha": str(self.conv_alpha)}

    # ---- io ----
    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build from JSON/TOML values; unknown keys and bad types raise ConfigError."""
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in (data or {}).items():
            if key not in known:
                close = [k for k in known if key.lower().replace("-", "_") == k]
                hint = f"did you mean '{close[0]}'?" if close else "remove it; the known keys are kohya's argument names (see README)"
                raise ConfigError(key, "unknown config key.", hint)
            kwargs[key] = _coerce(key, value, known[key].type, known[key].default)
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        lines = []
        for key, value in self.to_dict().items():
            if value is None:
                continue              # TOML has no null: an absent key means "unset"
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> "TrainConfig":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("toml", f"not valid TOML: {e}", "fix the syntax of the config file") from None
        return cls.from_dict(data)

    # ---- validation: every message names the key and the fix ----
    def validate(self) -> None:
        def need(cond, key, msg, fix):
            if not cond:
                raise ConfigError(key, msg, fix)

        need(str(self.train_data_dir).strip() != "", "train_data_dir", "is empty.",
             "set it to the folder that holds your N_name image folders")
        try:
            w, h = self.resolution_wh
        except ValueError:
            raise ConfigError("resolution", f"'{self.resolution}' is not a size.", 'use "512" or "512,768"') from None
        need(64 <= w <= 4096 and 64 <= h <= 4096 and w % 8 == 0 and h % 8 == 0, "resolution",
             f"{w}x{h} is out of range.", "use sides between 64 and 4096 that are multiples of 8")
        need(self.network_type in NETWORK_TYPES, "network_type", f"'{self.network_type}' is unknown.",
             f"use one of {', '.join(NETWORK_TYPES)}")
        need(1 <= self.network_dim <= 1024, "network_dim", f"{self.network_dim} is out of range.", "use 1..1024 (32 is a good start)")
        need(self.network_alpha > 0, "network_alpha", f"{self.network_alpha} must be > 0.", "use about half of network_dim")
        if self.is_locon:
            need(1 <= self.conv_dim <= 1024, "conv_dim", f"{self.conv_dim} is out of range.", "use 1..1024 (8-16 is typical)")
            need(self.conv_alpha > 0, "conv_alpha", f"{self.conv_alpha} must be > 0.", "use about half of conv_dim")
        need(self.optimizer_type in OPTIMIZERS, "optimizer_type", f"'{self.optimizer_type}' is not supported.",
             f"use one of {', '.join(OPTIMIZERS)}")
        need(self.lr_scheduler in SCHEDULERS, "lr_scheduler", f"'{self.lr_scheduler}' is not supported.",
             f"use one of {', '.join(SCHEDULERS)}")
        for key in ("learning_rate", "unet_lr", "text_encoder_lr"):
            v = getattr(self, key)
            need(v is None or (math.isfinite(v) and v >= 0), key, f"{v} is not a valid learning rate.", "use a number >= 0, e.g. 1e-4")
        need(self.effective_unet_lr > 0, "unet_lr", "the UNet learning rate is 0.", "set learning_rate or unet_lr > 0")
        if self.optimizer_type == "Prodigy" and self.train_text_encoder:
            lrs = {self.effective_unet_lr, self.effective_text_encoder_lr} - {0.0}
            need(len(lrs) <= 1, "text_encoder_lr",
                 f"Prodigy needs one learning rate for all groups (unet {self.effective_unet_lr}, text encoder {self.effective_text_encoder_lr}).",
                 "set text_encoder_lr equal to unet_lr (Prodigy adapts it; use d_coef in optimizer_args to damp), or 0 to freeze it")
        self.optimizer_kwargs()  # raises ConfigError on a bad entry
        need(self.lr_warmup_steps >= 0, "lr_warmup_steps", "must be >= 0.", "use a step count, or a ratio < 1")
        need(self.max_train_epochs >= 1 or self.max_train_steps, "max_train_epochs", "must be >= 1.", "use e.g. 10")
        need(self.max_train_steps is None or self.max_train_steps >= 1, "max_train_steps", "must be >= 1.", "leave it unset to use epochs")
        need(1 <= self.train_batch_size <= 256, "train_batch_size", f"{self.train_batch_size} is out of range.", "use 1..256")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1.", "use 1")
        need(self.bucket_reso_steps >= 8 and self.bucket_reso_steps % 8 == 0, "bucket_reso_steps",
             f"{self.bucket_reso_steps} must be a multiple of 8.", "use 64 (SD1.5) or 32")
        if self.enable_bucket:
            for key in ("min_bucket_reso", "max_bucket_reso"):
                need(getattr(self, key) % self.bucket_reso_steps == 0, key,
                     f"{getattr(self, key)} is not divisible by bucket_reso_steps {self.bucket_reso_steps}.",
                     "round it to a multiple of bucket_reso_steps")
            need(self.max_bucket_reso >= self.min_bucket_reso, "max_bucket_reso", "is smaller than min_bucket_reso.", "swap them")
            need(self.max_bucket_reso >= max(w, h), "max_bucket_reso",
                 f"{self.max_bucket_reso} is smaller than the resolution {w}x{h}.", f"use at least {max(w, h)}")
        need(self.save_precision in SAVE_PRECISIONS, "save_precision", f"'{self.save_precision}' is unknown.",
             f"use one of {', '.join(SAVE_PRECISIONS)}")
        need(self.mixed_precision in MIXED_PRECISIONS, "mixed_precision", f"'{self.mixed_precision}' is unknown.",
             f"use one of {', '.join(MIXED_PRECISIONS)}")
        need(not self.full_fp16, "full_fp16", "is not supported: fp16 master weights lose most LoRA updates (a 1e-4 "
             "step underflows fp16's 10-bit mantissa) and torch's GradScaler refuses to unscale fp16 gradients.",
             "use mixed_precision 'fp16' (fp32 master weights, same speed) or full_bf16")
        need(not self.full_bf16 or self.mixed_precision in ("bf16", "auto"), "full_bf16",
             f"needs mixed_precision 'bf16', not '{self.mixed_precision}' (as in kohya).", "set mixed_precision to 'bf16'")
        need(self.save_every_n_epochs >= 0, "save_every_n_epochs", "must be >= 0.", "use 0 to save only at the end")
        need(self.min_snr_gamma is None or self.min_snr_gamma >= 0, "min_snr_gamma", "must be >= 0.", "use 5, or leave unset")
        need(self.prior_loss_weight >= 0, "prior_loss_weight", "must be >= 0.", "use 1.0 (kohya's default)")
        need(self.noise_offset is None or 0 <= self.noise_offset <= 1, "noise_offset", "must be in 0..1.", "use e.g. 0.05, or leave unset")
        need(self.clip_skip is None or 1 <= self.clip_skip <= 12, "clip_skip", "must be 1..12.", "use 1 or 2, or leave unset")
        need(self.keep_tokens >= 0, "keep_tokens", "must be >= 0.", "use 0")
        need(self.caption_extension.startswith("."), "caption_extension", f"'{self.caption_extension}' must start with a dot.", 'use ".txt"')
        if self.output_name:
            from .errors import UserError
            from .output.save import resolve_output_name
            try:
                resolve_output_name(self.output_name)
            except ConfigError:
                raise
            except UserError as e:
                raise ConfigError("output_name", e.message, e.fix) from None


def parse_optimizer_args(items) -> dict:
    """kohya's optimizer_args: ["weight_decay=0.01", "betas=0.9,0.999", "decouple=True"]."""
    if isinstance(items, dict):
        items = [f"{k}={v}" for k, v in items.items()]
    out = {}
    for item in items or []:
        if "=" not in str(item):
            raise ConfigError("optimizer_args", f"'{item}' is not key=value.", 'write it like "weight_decay=0.01"')
        key, raw = (s.strip() for s in str(item).split("=", 1))
        out[key] = _parse_arg_value(raw)
    return out


def _parse_arg_value(raw: str):
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if "," in raw:
        return tuple(_parse_arg_value(p.strip()) for p in raw.strip("()[]").split(",") if p.strip())
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _coerce(key, value, type_hint, default):
    """Coerce a JSON/TOML value to the field's type, with a message naming the key."""
    hint = str(type_hint)
    optional = "None" in hint
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise ConfigError(key, "must not be empty.", f"give a value like {default!r}")
    try:
        if hint.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if hint.startswith("int"):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if hint.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint.startswith("list"):
            if isinstance(value, str):
                return [v for v in value.split() if v]
            if isinstance(value, dict):
                return [f"{k}={v}" for k, v in value.items()]
            return [str(v) for v in value]
        if hint.startswith("str"):
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(key, f"{value!r} is not a valid {hint.split(' ')[0]}.", f"give a value like {default!r}")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    s = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'
