"""The comparison's report: Markdown tables for people and JSON rows for programs.

`format_report` turns the rows of `evaluate_model`
(with the model's name and training record added) into two tables: the test
negative log-likelihoods, each row saying what it is the density of, whether it is
exact or a bound, over how many dimensions, and what its 95% interval is over; then
the training record. `ordered_row` puts the most useful keys of a JSON row first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["format_report", "format_scores", "format_training", "ordered_row"]

_FIRST = (
    "dataset",
    "model",
    "density_of",
    "metric",
    "kind",
    "samples",
    "dims",
    "nll_nats",
    "bits_per_dim",
    "ci95_nats",
    "ci95_bits_per_dim",
    "interval_over",
)


def ordered_row(row: dict[str, object]) -> dict[str, object]:
    """``row`` with the keys of the table first (for a readable ``results.json``)."""
    first = {k: row[k] for k in _FIRST if k in row}
    return {**first, **{k: v for k, v in row.items() if k not in first}}


def _metric(row: dict) -> str:
    name = str(row["metric"])
    if name.startswith("iwae_"):
        return f"IWAE, K = {row['samples']}"
    return {"elbo": "ELBO", "joint": "joint"}.get(name, name)


def _interval(bounds: Sequence[float] | None, digits: int) -> str:
    if bounds is None:
        return "– (one draw)"
    low, high = bounds
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def format_scores(rows: Sequence[dict], title: str, levels: int | None) -> list[str]:
    """The score table's lines: one line per row of ``rows``."""
    unit = "image" if levels is not None else "example"
    if levels is not None:
        header = (
            f"| model | density of | metric | exact/bound | dims | NLL (nats/{unit}) "
            "| bits/dim | 95% interval (bits/dim) | interval over |"
        )
        rule = "|---|---|---|---|---:|---:|---:|---|---|"
    else:
        header = (
            f"| model | density of | metric | exact/bound | dims | NLL (nats/{unit}) "
            "| 95% interval (nats) | interval over |"
        )
        rule = "|---|---|---|---|---:|---:|---|---|"
    lines = [title, "", header, rule]
    for r in rows:
        cells = [r["model"], r["density_of"], _metric(r), r["kind"], r["dims"]]
        cells.append(f"{r['nll_nats']:.2f}")
        if levels is not None:
            cells += [f"{r['bits_per_dim']:.4f}", _interval(r["ci95_bits_per_dim"], 4)]
        else:
            cells.append(_interval(r["ci95_nats"], 3))
        cells.append(r["interval_over"])
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _notes(rows: Sequence[dict], levels: int | None, entropy: float | None) -> list[str]:
    """The lines under the score table: what the rows mean."""
    notes = []
    features = min(int(r["dims"]) for r in rows)  # D: joint rows have D + d
    if levels is not None:
        notes.append(
            f"- `x + u`: the density of the dequantized test data on [0, {levels})^{features} "
            "at fixed uniform draws of u (the same draws for every model); 95% interval: "
            "Student t over the draws."
        )
        notes.append(
            "- `x`: the bound on the discrete data, log P(x) ≥ IWAE_K over the "
            "dequantization noise (and ε), on the integer test data; 95% interval: normal "
            "approximation over the test images."
        )
    latents = sorted({int(r["dims"]) - features for r in rows if r["kind"] == "joint"})
    if latents:
        point = "x + u" if levels is not None else "x"
        entropies = ", ".join(
            f"{0.5 * d * (1 + math.log(2 * math.pi)):.2f} for d = {d}" for d in latents
        )
        notes.append(
            f"- joint = −log p({point}, ε) over D + d dimensions, ε ~ N(0, I_d): its mean is "
            f"−(ELBO − H[N(0, I_d)]), with H = d/2 (1 + log 2π) nats ({entropies})."
        )
    if entropy is not None:
        notes.append(f"- True-density entropy (the best achievable NLL): {entropy:.3f} nats.")
    return notes


def format_training(rows: Sequence[dict]) -> list[str]:
    """The training table: one line per model (parameters, epochs, seconds)."""
    lines = [
        "| model | parameters | best epoch / epochs run | stopped | train (s) | evaluation (s) |",
        "|---|---:|---:|---|---:|---:|",
    ]
    seen = set()
    for r in rows:
        if r["model"] in seen:
            continue
        seen.add(r["model"])
        lines.append(
            f"| {r['model']} | {r['num_parameters']:,} | {r['best_epoch']} / {r['epochs_run']} "
            f"| {r['stop_reason']} | {r['train_seconds']:.1f} | {r['eval_seconds']:.1f} |"
        )
    return lines


def format_report(
    rows: Sequence[dict],
    dataset: str,
    levels: int | None,
    entropy: float | None = None,
    quick: bool = False,
) -> str:
    """The Markdown report: the scores, what they mean, the training record.

    Args:
        rows: evaluation rows with ``model`` and the training record
            (``num_parameters``, ``best_epoch``, ``epochs_run``, ``stop_reason``,
            ``train_seconds``, ``eval_seconds``).
        dataset: the data set's name, in the title.
        levels: the number of levels of pixel data (bits/dim columns), or None.
        entropy: the true entropy of a toy density, or None.
        quick: a ``--quick`` run (said in the title: its numbers are not results).
    """
    kind = " (quick run: tiny models, few epochs; not results)" if quick else ""
    title = f"## {dataset}{kind}: test negative log-likelihood, lower is better"
    if not rows:
        return title + "\n\nNo model has finished yet.\n"
    lines = format_scores(rows, title, levels)
    lines += ["", *_notes(rows, levels, entropy), "", "### Training", ""]
    lines += format_training(rows)
    return "\n".join(lines) + "\n"
