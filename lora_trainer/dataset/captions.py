"""Caption files: reading them safely, and kohya's caption processing (shuffle / keep tokens).

Deliberate differences from kohya sd-scripts, all in the user's favour:
- a missing `<stem><caption_extension>` falls back to the other of .txt/.caption (reported),
  because taggers write .txt while kohya's default is .caption (the most common pitfall);
- a non-UTF-8 or empty caption file is reported and the folder caption is used (kohya raises);
- the first *non-empty* line is used (kohya takes line 1 even when it is blank);
- the keep_tokens separator (e.g. "|||") never reaches the text encoder, even with shuffle off
  (kohya leaves it in the text unless shuffle/tag dropout/token warmup is on);
- empty tokens (from ", ," or a trailing comma) are dropped when the caption is re-joined.
"""

from __future__ import annotations

import os
import random as _random
from dataclasses import dataclass
from pathlib import Path

CAPTION_EXTENSIONS = (".txt", ".caption")
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class CaptionProblem:
    """Something about one caption file worth telling the user.

    severity "warning": the file could not be used (the folder caption is used instead);
    severity "note": the caption was used, but not the way the user may expect
    (read from the fallback extension, or more than one line).
    """

    path: str
    message: str
    fix: str | None
    severity: str  # "warning" | "note"
    kind: str      # "fallback_extension" | "multiline" | "blank" | "not_utf8" | "empty" | "unreadable"


def normalise_extension(caption_extension: str | None) -> str:
    """'.txt' for 'txt' / '.txt' / '' (kohya concatenates; a missing dot is a typo)."""
    ext = (caption_extension or ".txt").strip()
    return ext if ext.startswith(".") else "." + ext


def caption_path(image_path, caption_extension: str) -> Path:
    """`<image path without its extension><caption_extension>`, as kohya builds it."""
    return Path(os.path.splitext(str(image_path))[0] + normalise_extension(caption_extension))


def _fallback_extensions(ext: str) -> list[str]:
    return [e for e in CAPTION_EXTENSIONS if e != ext.lower()]


def read_caption(image_path, caption_extension: str) -> tuple[str | None, CaptionProblem | None]:
    """Caption text for `image_path`, or None when there is no usable caption file.

    Returns (text, problem). text is the first non-empty line, stripped. problem is None,
    a "note" (caption used, e.g. from the fallback extension) or a "warning" (caption file
    unusable: not UTF-8, zero bytes, unreadable; text is None so the folder caption applies).
    A file of only blank lines is a deliberate empty caption, as in kohya: ("", note "blank").
    A simply missing caption file gives (None, None): the caller decides how to report it.
    """
    ext = normalise_extension(caption_extension)
    path = caption_path(image_path, ext)
    note = None
    if not path.is_file():
        for other in _fallback_extensions(ext):
            candidate = caption_path(image_path, other)
            if candidate.is_file():
                note = CaptionProblem(
                    str(candidate),
                    f"No {ext} caption for {Path(image_path).name}; used {candidate.name} instead.",
                    f"Set caption_extension to {other} (or rename the caption files to {ext}).",
                    "note", "fallback_extension",
                )
                path = candidate
                break
        else:
            return None, None
    return _read_caption_file(path, note)


def _read_caption_file(path: Path, note: CaptionProblem | None):
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, CaptionProblem(str(path), f"Caption file {path.name} cannot be read "
                                    f"({exc.strerror or exc}); the folder name is used as caption.",
                                    "Check the file permissions.", "warning", "unreadable")
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, CaptionProblem(
            str(path),
            f"Caption file {path.name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
            f"position {exc.start}); the folder name is used as its caption.",
            "Re-save it as UTF-8 (e.g. in Notepad: Save As, Encoding: UTF-8).",
            "warning", "not_utf8",
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not data:
        # kohya stops on a zero-byte caption file; we train with the folder caption and say so.
        return None, CaptionProblem(str(path), f"Caption file {path.name} is empty (0 bytes); the "
                                    "folder name is used as its caption.",
                                    "Write the caption into it, or delete the empty file. (A file "
                                    "holding just a newline means: train with an empty caption.)",
                                    "warning", "empty")
    if not lines:
        # kohya reads lines[0].strip(): a blank line is a deliberate empty caption (N_empty folders).
        return "", CaptionProblem(str(path), f"Caption file {path.name} is blank: the image is "
                                  "trained with an empty caption.", None, "note", "blank")
    if note is None and len(lines) > 1:
        note = CaptionProblem(str(path), f"Caption file {path.name} has {len(lines)} lines; only "
                              "the first is used.", "Put the whole caption on one line.", "note",
                              "multiline")
    return lines[0], note


def _tokens(text: str, separator: str) -> list[str]:
    return [t.strip() for t in text.split(separator) if t.strip()]


def process_caption(text: str, *, shuffle_caption: bool = False, keep_tokens: int = 0,
                    keep_tokens_separator: str = "|||", caption_separator: str = ",",
                    rng=None) -> str:
    """The caption fed to the text encoder for one sample (kohya `process_caption` semantics).

    With `keep_tokens_separator` in the text: the part before its first occurrence stays first,
    the part after a second occurrence stays last, the middle is shuffled when `shuffle_caption`
    (keep_tokens is then ignored, as in kohya). Without it: the first `keep_tokens` tokens stay.
    Tokens are split on `caption_separator`, stripped and re-joined with ", ".
    The separator itself never appears in the result (see the module docstring).
    `rng` is a random.Random (the module-level generator when None).
    """
    lines = [line for line in (text or "").splitlines() if line.strip()]
    text = lines[0].strip() if lines else ""
    sep = keep_tokens_separator or ""
    caption_separator = caption_separator or ","
    has_sep = bool(sep) and sep in text
    if not shuffle_caption and not has_sep:
        return text  # kohya feeds the text unchanged

    suffix: list[str] = []
    if has_sep:
        fixed_part, flex_part = text.split(sep, 1)
        if sep in flex_part:
            flex_part, suffix_part = flex_part.split(sep, 1)
            # kohya splits only twice; any further separator would leak into a token.
            suffix = _tokens(suffix_part.replace(sep, caption_separator), caption_separator)
        fixed = _tokens(fixed_part, caption_separator)
        flex = _tokens(flex_part, caption_separator)
    else:
        tokens = _tokens(text, caption_separator)
        keep = max(0, int(keep_tokens or 0))
        fixed, flex = tokens[:keep], tokens[keep:]

    if shuffle_caption:
        (rng or _random).shuffle(flex)
    return ", ".join(fixed + flex + suffix)


def tag_frequency(captions, keep_tokens_separator: str = "|||") -> dict[str, int]:
    """{tag: count} over `captions` as kohya records ss_tag_frequency for one folder.

    Tags are comma-separated, stripped and lower-cased (kohya's set_tag_frequency); the
    keep_tokens separator is treated as a comma so it is never counted as part of a tag.
    """
    counts: dict[str, int] = {}
    for caption in captions:
        caption = caption or ""
        if keep_tokens_separator:
            caption = caption.replace(keep_tokens_separator, ",")
        for tag in caption.split(","):
            tag = tag.strip().lower()
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return counts
