"""File and folder names: safe on Windows, macOS and Linux, and unique by stem.

The Windows rules (forbidden characters, reserved device names) are the ones the LoRA output
name is checked against (output.save), so every name this extension writes obeys the same list.
"""

from __future__ import annotations

import os
import unicodedata

from ..errors import UserError
from ..output.save import _WINDOWS_INVALID, _WINDOWS_RESERVED

MAX_STEM_BYTES = 150    # leaves room for "_123_f000.caption" under the usual 255-byte limit
MAX_PROJECT_NAME = 80


def is_bad_char(c: str) -> bool:
    """A character no Windows file or folder name may contain (control characters included)."""
    return c in _WINDOWS_INVALID or ord(c) < 32


def bad_chars(text: str) -> list[str]:
    """The distinct characters of `text` a folder name cannot have, sorted."""
    return sorted({c for c in text if is_bad_char(c)})


def is_reserved(name: str) -> bool:
    """True for CON, NUL, COM1, LPT1, ... with or without an extension (any case)."""
    return bool(_WINDOWS_RESERVED.match(name.split(".")[0]))


def replace_bad_chars(text: str) -> str:
    return "".join("_" if is_bad_char(c) else c for c in text)


def clean_stem(stem: str) -> str:
    """A file-name stem that is safe on Windows, macOS and Linux (never empty, never hidden)."""
    stem = unicodedata.normalize("NFC", stem)  # macOS hands out decomposed (NFD) names
    stem = replace_bad_chars(stem)
    stem = stem.strip().lstrip(".").strip().rstrip(". ")
    if is_reserved(stem):
        stem += "_"
    encoded = stem.encode("utf-8")
    if len(encoded) > MAX_STEM_BYTES:
        stem = encoded[:MAX_STEM_BYTES].decode("utf-8", "ignore").rstrip(". ")
    return stem or "image"


class NameAllocator:
    """Hands out stems unique case-insensitively among everything already in images/.

    Uniqueness is by *stem*, not by file name, so that `a.png` and `a.jpg` never share
    `a.txt` (kohya pairs captions by stem).
    """

    def __init__(self, existing_names):
        self.taken = {os.path.splitext(n)[0].lower() for n in existing_names}

    def claim(self, stem: str) -> str:
        candidate, counter = stem, 1
        while candidate.lower() in self.taken:
            candidate = f"{stem}_{counter}"
            counter += 1
        self.taken.add(candidate.lower())
        return candidate


def validate_project_name(name) -> str:
    """The project name, stripped; UserError (key "project name") when unusable as a folder."""
    text = unicodedata.normalize("NFC", str(name or "")).strip()
    fix = "Use letters, digits, spaces, '-' or '_' (e.g. my_character)."
    if not text:
        raise UserError("The project name is empty.", fix=fix, key="project name")
    bad = bad_chars(text)
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise UserError(f"The project name {text!r} contains characters a folder name cannot "
                        f"have: {shown}.", fix=fix, key="project name")
    if text.startswith(".") or text.endswith("."):
        raise UserError(f"The project name {text!r} starts or ends with a dot.", fix=fix,
                        key="project name")
    if is_reserved(text):
        raise UserError(f"{text!r} is a reserved name on Windows.", fix=fix, key="project name")
    if len(text) > MAX_PROJECT_NAME:
        raise UserError(f"The project name is {len(text)} characters long.",
                        fix=f"Use at most {MAX_PROJECT_NAME} characters.", key="project name")
    return text
