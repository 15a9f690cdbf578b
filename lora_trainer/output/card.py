"""The A1111 user-metadata sidecar `<stem>.json` next to a LoRA file.

A1111's Lora cards read it (extra_networks.get_user_metadata): "activation text" is inserted
into the prompt with the LoRA, "preferred weight" is its multiplier (0 = default), and
"sd version" overrides the version detected from the file's metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

from .save import write_text_atomic

SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")


def card_path(path_of_safetensors) -> Path:
    p = Path(path_of_safetensors)
    return p.with_name(p.stem + ".json")


def write_card(path_of_safetensors, trigger_words, preferred_weight, sd_version, notes,
               description="") -> Path:
    """Write the sidecar for `path_of_safetensors`; returns its path.

    Keys other than the six A1111 fields, if an older sidecar had any, are kept.
    """
    if sd_version not in SD_VERSIONS:
        raise ValueError(f"sd_version must be one of {SD_VERSIONS}, not {sd_version!r}")
    if isinstance(trigger_words, (list, tuple)):
        trigger_words = ", ".join(str(w).strip() for w in trigger_words if str(w).strip())
    path = card_path(path_of_safetensors)
    card = _existing(path)
    card.update({
        "description": description or "",
        "sd version": sd_version,
        "activation text": trigger_words or "",
        "preferred weight": float(preferred_weight or 0.0),
        "negative text": card.get("negative text", ""),
        "notes": notes or "",
    })
    # Same layout as A1111's own writer (indent 4, UTF-8 kept readable).
    write_text_atomic(path, json.dumps(card, indent=4, ensure_ascii=False))
    return path


def _existing(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
