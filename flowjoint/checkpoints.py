"""Checkpoint files that detect their own corruption, and the training state they hold.

A checkpoint file is::

    b"FLOWJOINT-CHECKPOINT 1\\n"   # magic and format version
    sha256(payload)               # 32 bytes
    payload                       # torch.save(state), tensors and plain containers

`save_checkpoint` writes it atomically (a temporary file in the same folder,
flushed to disk, then renamed over the target, and the folder flushed), so a crash
while writing leaves the previous file intact; it first reads the payload back with
``weights_only=True``, so a state that could not be loaded is never written.
`load_checkpoint` verifies the digest before anything is unpickled, then reads
the payload with ``torch.load(..., weights_only=True)``: no pickled code, and a
changed, truncated or foreign file raises ``ValueError`` naming it. ``torch.load``
alone does not check the stored tensor data (a flipped byte inside a tensor loads
silently), which is why the digest covers the whole payload. The digest detects
accidental damage, not substitution: a file replaced by another valid checkpoint
loads (`check_resumable` then refuses one written by another run).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import torch

__all__ = [
    "MAGIC",
    "check_resumable",
    "data_digest",
    "fingerprint",
    "load_checkpoint",
    "save_checkpoint",
]

MAGIC = b"FLOWJOINT-CHECKPOINT 1\n"
_DIGEST_SIZE = 32


def _serialize(state: dict) -> bytes:
    """``torch.save(state)`` as bytes, refused unless ``weights_only`` can read it back."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    try:
        torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()
        raise TypeError(
            "state must hold only tensors, numbers, strings, None and lists, tuples and "
            "dicts of them (a checkpoint is read with weights_only=True); "
            f"{first[0] if first else type(error).__name__}"
        ) from error
    return payload


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the platform allows it."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` (tensors and plain containers) to ``path`` atomically, with its digest.

    Args:
        state: a dict of tensors, numbers, strings, lists and dicts.
        path: the file to write; its folder is created if needed.

    Raises:
        TypeError: ``state`` is not a dict or holds other objects; nothing is written.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    payload = _serialize(state)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    _sync_folder(path.parent)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by `save_checkpoint`, onto the CPU.

    Raises:
        FileNotFoundError: no file at ``path`` (``IsADirectoryError``: a folder).
        ValueError: the file is not a flowjoint checkpoint, is truncated, or its
            content differs from what was written (digest mismatch); the message
            names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder: pass a checkpoint file (last.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    raw = memoryview(path.read_bytes())
    header = len(MAGIC) + _DIGEST_SIZE
    if len(raw) < header and raw and MAGIC.startswith(bytes(raw[: len(MAGIC)])):
        raise ValueError(f"checkpoint {str(path)!r} is truncated ({len(raw)} bytes)")
    if bytes(raw[: len(MAGIC)]) != MAGIC:
        raise ValueError(
            f"{str(path)!r} is not a flowjoint checkpoint (it does not start with "
            f"{MAGIC[:-1].decode()!r}; a file from torch.save or of another format): "
            "write checkpoints with save_checkpoint"
        )
    digest, payload = bytes(raw[len(MAGIC) : header]), raw[header:]
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
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not hold a dict (got {type(state).__name__})")
    return state


def data_digest(data: torch.Tensor | None) -> str | None:
    """SHA-256 of a tensor's dtype, shape and values: identifies a data set in a checkpoint."""
    if data is None:
        return None
    values = data.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{values.dtype} {tuple(values.shape)}".encode())
    digest.update(values.view(torch.uint8).numpy().data if values.numel() else b"")
    return digest.hexdigest()


def fingerprint(
    model: torch.nn.Module, options: dict, train: torch.Tensor, val: torch.Tensor | None
) -> dict:
    """What `check_resumable` compares: the model's ``repr`` (layer types, sizes and
    settings not held in its state), the options (``FitOptions.resume_key()``) and the
    digests of the training and validation data."""
    return {
        "model": repr(model),
        "options": options,
        "train": data_digest(train),
        "val": data_digest(val),
    }


TRAINING_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "epoch",
    "history",
    "best_epoch",
    "best_val_loss",
    "best_model",
    "fingerprint",
)


def _first_difference(saved: str, current: str) -> str:
    for line_saved, line_current in zip(saved.splitlines(), current.splitlines()):
        if line_saved != line_current:
            return f"{line_saved.strip()!r} in the checkpoint, {line_current.strip()!r} here"
    return "the checkpoint's model has " + (
        "more layers" if len(saved) > len(current) else "fewer layers"
    )


def check_resumable(state: dict, path: str | os.PathLike, fingerprint: dict) -> None:
    """Refuse a checkpoint that ``fit`` cannot continue exactly, naming what differs.

    ``fingerprint`` (`fingerprint`) describes the run that wants to resume.

    Raises:
        ValueError: ``state`` is a ``best.pt`` (weights only), not a training state
            written by ``fit``, or of another model, options or data.
    """
    where = str(path)
    if state.get("kind") == "best":
        raise ValueError(
            f"{where!r} holds model weights only (a best.pt), not a training state: resume "
            "from last.pt in the same folder, or load the weights with "
            "model.load_state_dict(load_checkpoint(path)['model'])"
        )
    missing = [key for key in TRAINING_KEYS if key not in state]
    if state.get("kind") != "last" or missing:
        raise ValueError(
            f"{where!r} is not a training state written by fit (missing {missing or ['kind']})"
        )
    saved = state["fingerprint"]
    if saved.get("model") != fingerprint["model"]:
        raise ValueError(
            f"{where!r} was written for another model: "
            f"{_first_difference(str(saved.get('model')), fingerprint['model'])}"
        )
    problems = [
        f"{name}={saved['options'].get(name)!r} in the checkpoint, {value!r} here"
        for name, value in fingerprint["options"].items()
        if saved["options"].get(name) != value
    ]
    problems += [
        f"other {part} data than the checkpointed run's"
        for part in ("train", "val")
        if saved.get(part) != fingerprint[part]
    ]
    if problems:
        raise ValueError(
            f"{where!r} cannot be resumed exactly with these settings: "
            + "; ".join(problems)
            + " (a resumed run needs the same model, data and options; epochs may grow "
            "when schedule is None)"
        )
