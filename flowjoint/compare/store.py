"""The output folder of a comparison: results that survive an interruption.

Layout::

    <out>/comparison.json          the data set and seed this folder is for
    <out>/results.json, results.md the rows and tables of the finished models
    <out>/samples.png, curves.png, jacobians.png
    <out>/models/<name>/settings.json   its training settings (checked on a re-run)
    <out>/models/<name>/last.pt, best.pt  checkpoints written by fit every epoch
    <out>/models/<name>/fit.json   the training record, written when training ends

A model is *finished* when its rows are in ``results.json``; a re-run skips it,
unless it asks for other evaluation settings (each row records its own). A model
with ``fit.json`` but no rows was interrupted during evaluation: its best weights
are evaluated again. A model with only ``last.pt`` was interrupted during
training: fit resumes from it. Every file is written atomically (a temporary file
renamed over the target), so an interruption never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["OutputFolder", "write_atomically"]


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private (0600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    """Where two JSON values differ, as ``key: old -> new`` strings."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    if old == new:
        return []
    key = prefix.rstrip(".")
    if len(repr(old)) + len(repr(new)) > 80:  # a digest or a long path: the key says enough
        return [f"{key} differs"]
    return [f"{key}: {old!r} -> {new!r}"]


class OutputFolder:
    """The output folder ``path`` of one comparison (see the module docstring).

    Args:
        path: the folder; created if missing.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def prepare(self, comparison: dict) -> None:
        """Create the folder, check that it is writable and holds this comparison or none.

        Raises:
            ValueError: the path is a file, the folder cannot be created or written, or
                it holds results of another data set or seed; the message names it.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"output folder {str(self.path)!r} exists and is not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle, probe = tempfile.mkstemp(dir=self.path, prefix=".write-test.")
            os.close(handle)
            os.remove(probe)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise ValueError(
                f"cannot write to the output folder {str(self.path)!r}: {reason}; choose "
                "another with --out"
            ) from None
        existing = self.read_json(self.path / "comparison.json")
        if existing is not None and existing != comparison:
            changes = "; ".join(_differences(existing, comparison))
            raise ValueError(
                f"output folder {str(self.path)!r} holds another comparison ({changes}); "
                "choose another --out"
            )
        write_atomically(self.path / "comparison.json", json.dumps(comparison, indent=2) + "\n")

    def read_json(self, path: Path) -> object | None:
        """The JSON in ``path``, None if there is no such file; ValueError if unreadable."""
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(
                f"cannot read {str(path)!r} ({error}); delete it to start that part again"
            ) from None

    def model_dir(self, model: str) -> Path:
        """``<out>/models/<model>``, where its checkpoints and records live."""
        return self.path / "models" / model

    def check_settings(self, model: str, settings: dict) -> None:
        """Refuse a re-run whose settings differ from those ``model`` was trained with."""
        existing = self.read_json(self.model_dir(model) / "settings.json")
        if existing is not None and existing != settings:
            changes = "; ".join(_differences(existing, settings))
            raise ValueError(
                f"{model} in {str(self.path)!r} was trained with other settings ({changes}); "
                f"choose another --out, or delete {str(self.model_dir(model))!r} to train it "
                "again"
            )

    def write_settings(self, model: str, settings: dict) -> None:
        directory = self.model_dir(model)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(directory / "settings.json", json.dumps(settings, indent=2) + "\n")

    def finished_rows(self) -> list[dict]:
        """The rows of ``results.json`` (of the finished models), in their order."""
        rows = self.read_json(self.path / "results.json")
        if rows is None:
            return []
        required = ("model", "config", "evaluation", "metric")
        if not isinstance(rows, list) or not all(
            isinstance(r, dict) and all(key in r for key in required) for r in rows
        ):
            raise ValueError(
                f"{str(self.path / 'results.json')!r} is not a list of result rows (each with "
                f"{', '.join(required)}); delete it to evaluate the finished models again"
            )
        return rows

    def checkpoint(self, model: str, kind: str = "last") -> Path | None:
        """``last.pt`` or ``best.pt`` of ``model`` if it exists."""
        path = self.model_dir(model) / f"{kind}.pt"
        return path if path.is_file() else None

    def fit_record(self, model: str) -> dict | None:
        """The training record of ``model`` if its training ended."""
        record = self.read_json(self.model_dir(model) / "fit.json")
        return record if isinstance(record, dict) else None

    def write_fit_record(self, model: str, record: dict) -> None:
        write_atomically(self.model_dir(model) / "fit.json", json.dumps(record, indent=1) + "\n")

    def write_results(self, rows: list[dict], markdown: str) -> None:
        """Replace ``results.json`` and ``results.md``."""
        write_atomically(self.path / "results.json", json.dumps(rows, indent=2) + "\n")
        write_atomically(self.path / "results.md", markdown)
