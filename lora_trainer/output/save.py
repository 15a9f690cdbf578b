"""Where a LoRA file goes and how it is written.

- Names follow kohya: `<output_name>-000004.safetensors` per epoch, `<output_name>.safetensors` final.
- The output name is validated so the file can only land directly in the Lora folder and is
  a legal file name on Windows too (A1111 users share folders across systems).
- Writes are atomic (`<file>.tmp`, fsync, os.replace): A1111 reloads a LoRA when its mtime
  changes, so it must never see a half-written file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UserError
from . import hashes

MAX_NAME_LENGTH = 200
SAFETENSORS_EXT = ".safetensors"
_NAME_FIX = "use a plain file name such as my_lora (letters, digits, - and _), without folders or extension"
_WINDOWS_INVALID = set('<>:"/\\|?*')
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³])$", re.IGNORECASE)
_SAVE_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "float": "float32",
                "fp32": "float32", "float32": "float32"}


def _bad_name(output_name, why: str) -> UserError:
    return UserError(f"invalid output name {output_name!r}: {why}", fix=_NAME_FIX, key="output_name")


def resolve_output_name(output_name) -> str:
    """The validated output name (unchanged), or UserError(key="output_name") saying what is wrong."""
    if not isinstance(output_name, str) or output_name == "":
        raise _bad_name(output_name, "it is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in output_name):
        raise _bad_name(output_name, "it contains control characters")
    if "/" in output_name or "\\" in output_name:
        raise _bad_name(output_name, "it contains a path separator")
    if ".." in output_name:
        raise _bad_name(output_name, 'it contains ".."')
    if re.match(r"^[A-Za-z]:", output_name):
        raise _bad_name(output_name, "it starts with a drive letter")
    bad = sorted(set(output_name) & _WINDOWS_INVALID)
    if bad:
        raise _bad_name(output_name, f"it contains {' '.join(bad)}, not allowed in Windows file names")
    if output_name.endswith((".", " ")):
        raise _bad_name(output_name, "it ends with a dot or a space")
    if output_name != output_name.strip():
        raise _bad_name(output_name, "it starts with a space")
    if _WINDOWS_RESERVED.match(output_name.split(".")[0]):
        raise _bad_name(output_name, "it is a reserved device name on Windows")
    if output_name.lower().endswith(SAFETENSORS_EXT):
        raise _bad_name(output_name, "the .safetensors extension is added automatically")
    if len(output_name) > MAX_NAME_LENGTH:
        raise _bad_name(output_name, f"it is longer than {MAX_NAME_LENGTH} characters")
    return output_name


def output_file_name(output_name: str, epoch=None) -> str:
    """kohya's file name: per epoch `name-000004.safetensors`, final `name.safetensors`."""
    name = resolve_output_name(output_name)
    if epoch is None:
        return f"{name}{SAFETENSORS_EXT}"
    return f"{name}-{int(epoch):06d}{SAFETENSORS_EXT}"


def output_paths(lora_dir, output_name: str, epoch=None) -> Path:
    """The file to write for `output_name` (and `epoch`, None = final) inside `lora_dir`.

    Refuses a path whose real location (symlinks resolved) is outside `lora_dir`.
    """
    lora_dir = Path(lora_dir)
    path = lora_dir / output_file_name(output_name, epoch)
    real_dir = os.path.normcase(os.path.realpath(lora_dir))
    real_path = os.path.normcase(os.path.realpath(path))
    if os.path.dirname(real_path) != real_dir:
        raise UserError(f"the output file would be written outside the Lora folder ({real_path})",
                        path=path, key="output_name",
                        fix="choose another output_name, or remove the link at that path")
    return path


def check_overwrite(path, overwrite: bool) -> None:
    """UserError if `path` exists and overwriting was not asked for (or it is not a file)."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_file():
        raise UserError(f"{path.name} exists and is not a file", path=path, key="output_name",
                        fix="choose another output_name")
    if not overwrite:
        raise UserError(f"{path.name} already exists", path=path, key="output_name",
                        fix="choose another output_name or set overwrite")


def _save_dtype(save_precision):
    import torch

    name = _SAVE_DTYPES.get(str(save_precision).lower())
    if name is None:
        raise ValueError(f"unknown save_precision {save_precision!r}; expected fp16, bf16 or float")
    return getattr(torch, name)


def save_lora_file(path, tensors: dict, metadata: dict, save_precision: str = "fp16") -> dict[str, str]:
    """Write `tensors` and `metadata` to `path` atomically; returns the metadata written.

    Every tensor (alpha included) is cast to the save dtype, as kohya does, and the
    sshs_model_hash / sshs_legacy_hash of exactly those tensors are added to the metadata.
    """
    from safetensors.torch import save_file

    dtype = _save_dtype(save_precision)
    to_save = {k: t.detach().to(device="cpu", dtype=dtype).contiguous() for k, t in tensors.items()}
    final = {k: v for k, v in metadata.items() if not k.startswith("sshs_")}
    not_str = [k for k, v in final.items() if not isinstance(v, str)]
    if not_str:
        raise TypeError(f"metadata values must be strings: {not_str}")
    final["sshs_model_hash"], final["sshs_legacy_hash"] = hashes.model_hashes(to_save, hashes.ss_only(final))

    def write(tmp):
        save_file(to_save, str(tmp), metadata=final)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    _atomic_write(path, write)
    return final


def _atomic_write(path, write) -> None:
    """write(tmp) fills `<path>.tmp`; then one rename: readers (the Lora list reloads by mtime)
    never see a partial file, and on failure the old file is untouched and the tmp removed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory) -> None:
    # Makes the rename durable on POSIX; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path, text: str) -> None:
    """Write a small text file atomically (tmp + fsync + replace), for sidecars."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    _atomic_write(path, write)
