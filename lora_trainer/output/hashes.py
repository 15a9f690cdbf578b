"""LoRA file hashes as kohya writes them and A1111 reads them.

- addnet / `sshs_model_hash`: sha256 of everything after the 8-byte header length and the
  JSON header, i.e. of the tensor data only. A1111 (`hashes.addnet_hash_safetensors`)
  computes the same on the final file, because the data does not depend on the metadata.
- `sshs_legacy_hash`: first 8 hex digits of sha256 of bytes [0x100000, 0x110000) of the
  file serialised with only the ss_* metadata. It depends on the header's length, so it can
  only be reproduced from the tensors and the ss_* metadata, not from the final file.
"""

from __future__ import annotations

import hashlib

_CHUNK = 1024 * 1024
_LEGACY_START, _LEGACY_LEN = 0x100000, 0x10000


def _header_end(first8: bytes) -> int:
    if len(first8) < 8:
        raise ValueError("not a safetensors file: shorter than 8 bytes")
    return 8 + int.from_bytes(first8, "little")


def addnet_hash_file(path) -> str:
    """sha256 hex of a .safetensors file's tensor data (bytes after the header)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(_header_end(f.read(8)))
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def addnet_hash_bytes(data: bytes) -> str:
    """addnet hash of an in-memory safetensors serialisation."""
    return hashlib.sha256(memoryview(data)[_header_end(data[:8]):]).hexdigest()


def legacy_hash_bytes(data: bytes) -> str:
    """kohya's legacy hash of an in-memory safetensors serialisation (short files hash b"")."""
    return hashlib.sha256(memoryview(data)[_LEGACY_START:_LEGACY_START + _LEGACY_LEN]).hexdigest()[:8]


def ss_only(metadata: dict) -> dict:
    """The ss_* part of a metadata dict (what kohya hashes with; sshs_* and modelspec.* excluded)."""
    return {k: v for k, v in metadata.items() if k.startswith("ss_")}


def model_hashes(tensors: dict, ss_metadata: dict) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) for `tensors` as they will be saved (dtype included)."""
    from safetensors.torch import save

    data = save(tensors, ss_only(ss_metadata))
    return addnet_hash_bytes(data), legacy_hash_bytes(data)
