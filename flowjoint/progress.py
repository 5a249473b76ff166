"""Progress reports that suit where they go: a tqdm bar on a terminal, lines in a log.

A bar redrawn with carriage returns is unreadable in a file or a CI log, so when
standard error is not a terminal each epoch is one line instead.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress", "is_terminal"]


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: standard error) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _format(row: dict[str, float], has_val: bool) -> str:
    text = f"loss {row['train_loss']:.3f} nats"
    if has_val:
        text += f", val {row['val_bits_per_dim']:.4f} bits/dim"
    return text


class Progress:
    """Epoch progress of one training run.

    Args:
        total: the number of epochs.
        initial: epochs already done (a resumed run).
        description: the label.
        enabled: report at all.
        stream: where to write (default: standard error).
    """

    def __init__(
        self,
        total: int,
        initial: int,
        description: str,
        enabled: bool,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.description, self.enabled = total, description, enabled
        self.stream = sys.stderr if stream is None else stream
        self.bar = None
        if enabled and is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=description,
                leave=False,
                dynamic_ncols=True,
                file=self.stream,
            )

    def epoch(self, row: dict[str, float], has_val: bool) -> None:
        """Report a finished epoch (its history row)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(_format(row, has_val))
            return
        print(
            f"{self.description}: epoch {int(row['epoch'])}/{self.total}, "
            f"{_format(row, has_val)}, {row['seconds']:.1f} s",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
