"""Checkpoint files that detect their own corruption.

A checkpoint file is::

    b"FLOWJOINT-CHECKPOINT 1\\n"   # magic and format version
    sha256(payload)               # 32 bytes
    payload                       # torch.save(state), tensors and plain containers

:func:`save_checkpoint` writes it atomically (a temporary file in the same folder,
flushed to disk, then renamed over the target), so a crash while writing leaves the
previous file intact. :func:`load_checkpoint` verifies the digest before anything
is unpickled, then reads the payload with ``torch.load(..., weights_only=True)``: no
pickled code, and a changed, truncated or foreign file raises ``ValueError`` naming
it. ``torch.load`` alone does not check the stored tensor data (a flipped byte
inside a tensor loads silently), which is why the digest covers the whole payload.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["MAGIC", "load_checkpoint", "save_checkpoint"]

MAGIC = b"FLOWJOINT-CHECKPOINT 1\n"
_DIGEST_SIZE = 32


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` (tensors and plain containers) to ``path`` atomically, with its digest.

    Args:
        state: a dict of tensors, numbers, strings, lists and dicts.
        path: the file to write; its folder is created if needed.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(MAGIC)
            file.write(hashlib.sha256(payload).digest())
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, onto the CPU.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a flowjoint checkpoint, is truncated, or its
            content differs from what was written (digest mismatch); the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    raw = path.read_bytes()
    header = len(MAGIC) + _DIGEST_SIZE
    if not raw.startswith(MAGIC):
        raise ValueError(
            f"{str(path)!r} is not a flowjoint checkpoint (it does not start with "
            f"{MAGIC[:-1].decode()!r}); write checkpoints with save_checkpoint"
        )
    if len(raw) < header:
        raise ValueError(f"checkpoint {str(path)!r} is truncated ({len(raw)} bytes)")
    digest, payload = raw[len(MAGIC) : header], raw[header:]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError(
            f"checkpoint {str(path)!r} is corrupt: its content does not match the SHA-256 "
            "digest written with it (changed or truncated after saving)"
        )
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # a valid digest over bytes torch cannot read
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{str(path)!r} is not a flowjoint training checkpoint (no 'model' entry)")
    return state
