"""Running a comparison: train each model, score it, write its rows and plots at once.

`compare` trains the models one after the other with
`fit` (each on its ``elbo``, checkpoints in the output folder),
scores each on the test set (`evaluation`) and, as soon as a
model is done, rewrites ``results.json``, ``results.md`` and the pictures with every
finished model. A re-run with the same output folder skips the finished models,
scores again (from its best weights) a model interrupted during its evaluation or
scored with other evaluation settings, and resumes a model interrupted during
training from its last epoch (`store`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from flowjoint.checkpoints import load_checkpoint
from flowjoint.compare.config import (
    MODELS,
    ModelConfig,
    config_fields,
    default_config,
    default_models,
    model_spec,
)
from flowjoint.compare.datasets import (
    ComparisonData,
    SplitOptions,
    integer_hint,
    is_data_file,
    load_data,
)
from flowjoint.compare.evaluation import evaluate_model
from flowjoint.compare.models import build_model
from flowjoint.compare.report import format_report, ordered_row
from flowjoint.compare.scoring import EvaluationConfig, default_evaluation
from flowjoint.compare.store import OutputFolder
from flowjoint.fitting import FitOptions
from flowjoint.flows import Flow
from flowjoint.train import fit

__all__ = ["ComparisonResult", "compare", "default_out"]


def default_out(dataset: str, quick: bool = False) -> Path:
    """``runs/<name>``, or ``runs/quick/<name>`` for a quick run (a file's stem as name)."""
    name = Path(dataset).stem if is_data_file(dataset) else dataset
    return Path("runs", "quick", name) if quick else Path("runs", name)


@dataclass
class ComparisonResult:
    """What `compare` did.

    Attributes:
        rows: the table's rows (dicts, as in ``results.json``), finished models only.
        report: the Markdown report (``results.md``).
        histories: model -> its training history (one dict per epoch).
        models: model -> the trained model (best weights), for the models that ran or
            could be loaded from the output folder.
        skipped: models found finished in the output folder.
        seconds: wall time of the call.
    """

    rows: list[dict] = field(default_factory=list)
    report: str = ""
    histories: dict[str, list[dict]] = field(default_factory=dict)
    models: dict[str, Flow] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _json(value: object) -> object:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _check_arguments(
    dataset: str, models: Sequence[str] | None, overrides: dict | None
) -> list[str]:
    names = list(default_models(dataset)) if models is None else list(models)
    if not names:
        raise ValueError("models must name at least one model, got none")
    for name in names:
        model_spec(name)
    if len(set(names)) != len(names):
        raise ValueError(f"models names a model twice: {names}")
    unknown = set(overrides or {}) - set(config_fields())
    if unknown:
        raise ValueError(f"overrides has unknown fields {sorted(unknown)}")
    return names


class _Run:
    """One call of `compare`: the data, settings, output folder and finished rows."""

    def __init__(
        self,
        data: ComparisonData,
        configs: dict[str, ModelConfig],
        evaluation: EvaluationConfig,
        folder: OutputFolder | None,
        seed: int,
        quick: bool,
        log: Callable[[str], None],
    ) -> None:
        self.data, self.configs, self.evaluation = data, configs, evaluation
        self.folder, self.seed, self.quick, self.log = folder, seed, quick, log
        self.result = ComparisonResult()
        self.plots_available = True

    def settings(self, name: str) -> dict:
        """What must match for a re-run to reuse ``name``'s checkpoints."""
        return _json({"config": asdict(self.configs[name]), "seed": self.seed})

    def finished(self, names: Sequence[str]) -> dict[str, list[dict]]:
        """The rows of the finished models in the output folder, by model.

        A model of ``names`` scored with other evaluation settings is left out (its
        best weights are scored again); the others are kept as they are.
        """
        folder, finished = self.folder, {}
        if folder is None:
            return finished
        for row in folder.finished_rows():
            finished.setdefault(row["model"], []).append(row)
        evaluation = _json(asdict(self.evaluation))
        for name in names:
            rows = finished.get(name)
            if rows and rows[0].get("evaluation") != evaluation:
                del finished[name]
                self.log(
                    f"{self.tag(name)}: scored with other evaluation settings; scoring it again"
                )
        return finished

    def model_seed(self, name: str) -> int:
        # By registry position, so that a model's result does not depend on which
        # other models run with it.
        return self.seed + list(MODELS).index(name)

    def fresh_model(self, name: str, config: ModelConfig) -> Flow:
        torch.manual_seed(self.model_seed(name))
        return build_model(name, self.data.spec, config)

    def tag(self, name: str) -> str:
        return f"{self.data.name}/{name}"

    # -- training ---------------------------------------------------------------------

    def train(
        self,
        name: str,
        model: Flow,
        progress: bool,
        callback: Callable[[str, dict], bool | None] | None,
    ) -> dict:
        """Train ``model`` (or resume it) and return its training record."""
        folder, config = self.folder, self.configs[name]
        record = folder.fit_record(name) if folder else None
        if record is not None:
            best = folder.checkpoint(name, "best")
            if best is None:
                raise ValueError(f"{folder.model_dir(name)} has fit.json but no best.pt")
            model.load_state_dict(load_checkpoint(best)["model"])
            self.log(f"{self.tag(name)}: training had finished; evaluating its best weights")
            return record
        images = model_spec(name).images
        resume = folder.checkpoint(name, "last") if folder else None
        if resume is not None:
            self.log(f"{self.tag(name)}: resuming training from {resume}")
        else:
            self.log(f"{self.tag(name)}: training, {config.epochs} epochs")
        fitted = fit(
            model,
            self.data.inputs("train", images),
            self.data.inputs("val", images),
            checkpoint_dir=folder.model_dir(name) if folder else None,
            resume=resume,
            progress=progress,
            description=self.tag(name),
            callback=None if callback is None else (lambda row: callback(name, row)),
            seed=self.model_seed(name),
            **config.fit_options,
        )
        record = {
            "history": fitted.history,
            "best_epoch": fitted.best_epoch,
            "stop_reason": fitted.stop_reason,
            "train_seconds": sum(row["seconds"] for row in fitted.history),
        }
        if folder is not None:
            folder.write_fit_record(name, record)
        return record

    # -- evaluation -------------------------------------------------------------------

    def evaluate(self, name: str, model: Flow, record: dict) -> list[dict]:
        """Score ``model`` and return its rows, with the training record."""
        settings, data = self.evaluation, self.data
        if data.levels is not None:
            what = (
                f"{settings.num_draws} dequantization draws, IWAE K = "
                f"{settings.discrete_samples} on the discrete data"
            )
        else:
            what = f"{data.test.shape[0]} test points"
        self.log(f"{self.tag(name)}: evaluating ({what})")
        started = time.perf_counter()
        images = model_spec(name).images
        test = data.inputs("test", images)
        if images:  # conv activations: smaller passes
            settings = replace(settings, chunk_size=settings.image_chunk_size)
        rows = evaluate_model(model, test, data.levels, settings, seed=self.seed)
        history = record["history"]
        extra = {
            "dataset": data.name,
            "model": name,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "best_epoch": record["best_epoch"],
            "epochs_run": int(history[-1]["epoch"]) if history else 0,
            "stop_reason": record["stop_reason"],
            "train_seconds": record["train_seconds"],
            "eval_seconds": time.perf_counter() - started,
            "test_size": int(test.shape[0]),
            "levels": data.levels,
            "seed": self.seed,
            "quick": self.quick,
            "config": asdict(self.configs[name]),
            # the settings asked for (finished() compares them), whatever pass size
            # this model used
            "evaluation": _json(asdict(self.evaluation)),
        }
        if data.entropy is not None:
            extra["entropy_nats"] = data.entropy
        return [ordered_row({**row, **extra}) for row in rows]

    # -- output -----------------------------------------------------------------------

    def write(self, order: Sequence[str], seed: int) -> None:
        """Rewrite the results and pictures with every finished model."""
        result, data = self.result, self.data
        rank = {name: i for i, name in enumerate(order)}
        result.rows.sort(key=lambda r: rank.get(r["model"], len(rank)))
        result.report = format_report(result.rows, data.name, data.levels, data.entropy, self.quick)
        if self.folder is None:
            return
        self.folder.write_results(result.rows, result.report)
        self.plot(seed)

    def plot(self, seed: int) -> None:
        if not self.plots_available:
            return
        try:
            from flowjoint.compare import plots
        except ImportError:  # pragma: no cover - matplotlib is imported later
            return
        path = self.folder.path
        finished = dict.fromkeys(r["model"] for r in self.result.rows)
        models = {name: self.result.models[name] for name in finished if name in self.result.models}
        histories = {n: self.result.histories[n] for n in finished if n in self.result.histories}
        try:
            plots.plot_samples(models, self.data, path / "samples.png", seed=seed)
        except ImportError:
            self.plots_available = False
            self.log("plots skipped: matplotlib is not installed (pip install 'flowjoint[plot]')")
            return
        plots.plot_curves(histories, self.data.levels is not None, path / "curves.png")
        plots.plot_jacobians(models, self.data, path / "jacobians.png", seed=seed)

    def load_finished(self, name: str, rows: list[dict]) -> None:
        """Bring a model finished by an earlier run into the pictures (if its files remain)."""
        folder = self.folder
        record = folder.fit_record(name)
        best = folder.checkpoint(name, "best")
        if record is not None:
            self.result.histories[name] = record["history"]
        if best is None or name not in MODELS:
            return
        config = ModelConfig(**rows[0]["config"])
        model = self.fresh_model(name, config)
        model.load_state_dict(load_checkpoint(best)["model"])
        self.result.models[name] = model.eval()


def compare(
    dataset: str = "digits",
    models: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    quick: bool = False,
    overrides: dict[str, object] | None = None,
    evaluation: dict[str, object] | None = None,
    split: SplitOptions | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = _stderr,
    callback: Callable[[str, dict], bool | None] | None = None,
) -> ComparisonResult:
    """Train every model on ``dataset``, score it on the test set, write results as it goes.

    Args:
        dataset: a name of `DATASETS` or the path of a
            ``.npy``, ``.npz`` or ``.csv`` file (see `load_array`).
        models: names of `MODELS`, in table order (default: the data set's
            `default_models`).
        out: the output folder (``results.json``, ``results.md``, PNG pictures,
            checkpoints); None writes nothing. Its finished models are skipped and an
            interrupted one resumes.
        seed: seeds the toys' draws, each model's initialisation and training, and the
            evaluation's noise.
        quick: tiny models, few epochs, a few hundred examples: an end-to-end check.
        overrides: `ModelConfig` fields set for every
            model (``{"epochs": 10}``).
        evaluation: `EvaluationConfig` fields
            (``{"num_draws": 3}``).
        split: levels and split of a data file.
        progress: per-epoch progress of each fit (a bar on a terminal, lines otherwise).
        log: receives one line per model phase (training, evaluation, done); None: silent.
        callback: called as ``callback(model, history_row)`` after every epoch; returning
            True stops that model's training.

    Returns:
        A `ComparisonResult`.

    Raises:
        ValueError: a bad argument, data file or output folder (before any training).
    """
    started = time.perf_counter()
    names = _check_arguments(dataset, models, overrides)
    data = load_data(dataset, quick, seed, split)
    settings = replace(default_evaluation(dataset, quick), **(evaluation or {}))
    configs = {n: replace(default_config(dataset, n, quick), **(overrides or {})) for n in names}
    folder = OutputFolder(out) if out is not None else None
    run = _Run(data, configs, settings, folder, seed, quick, log or (lambda _: None))
    hint = integer_hint(data)
    if hint:
        run.log(f"note: {hint}")
    if folder is not None:
        folder.prepare(_json({"dataset": data.description, "seed": seed, "quick": quick}))
        for name in names:
            folder.check_settings(name, run.settings(name))
    finished = run.finished(names)
    skipped = [name for name in names if name in finished]
    if skipped:
        run.log(f"{folder}: {', '.join(skipped)} already finished; skipping (rows kept)")
    for name, rows in finished.items():
        run.result.rows.extend(rows)
        run.load_finished(name, rows)
    # Every model is built, and its training options checked, before any training.
    fresh = {}
    for name in (n for n in names if n not in finished):
        FitOptions(**configs[name].fit_options)
        fresh[name] = run.fresh_model(name, configs[name])
    for name, model in fresh.items():
        if folder is not None:
            folder.write_settings(name, run.settings(name))
        record = run.train(name, model, progress, callback)
        rows = run.evaluate(name, model, record)
        run.result.rows.extend(rows)
        run.result.histories[name] = record["history"]
        run.result.models[name] = model
        run.write(names, seed)
        run.log(
            f"{run.tag(name)}: done, {_summary(rows)}" + (f"; wrote {folder}" if folder else "")
        )
    run.result.skipped = skipped
    if not run.result.report:
        run.write(names, seed)
    run.result.seconds = time.perf_counter() - started
    return run.result


def _summary(rows: Sequence[dict]) -> str:
    """The best row of each kind of density, in one line."""
    parts = []
    for density_of in dict.fromkeys(r["density_of"] for r in rows):
        best = min(
            (r for r in rows if r["density_of"] == density_of and r["kind"] != "joint"),
            key=lambda r: r["nll_nats"],
        )
        value = (
            f"{best['bits_per_dim']:.4f} bits/dim"
            if "bits_per_dim" in best
            else f"{best['nll_nats']:.3f} nats"
        )
        parts.append(f"{best['metric']} of {density_of} {value}")
    return ", ".join(parts)
