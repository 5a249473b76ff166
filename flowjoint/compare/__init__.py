"""Compare density models on one data set, in one unit: ``flowjoint compare``.

One concept per module:

* `config`: the model registry, each model's settings per
  data set (and the quick ones), the default models of each data set;
* `scoring`: how the test set is scored (draws, importance samples);
* `models`: building each model as a [`Flow`][flowjoint.Flow]
  stack (pixel data: the preprocessing layers first);
* `datasets`: named data sets and a user's array file;
* `evaluation`: exact densities and bounds with 95% intervals;
* `report`: the Markdown tables and JSON rows;
* `plots`: samples, training curves, Jacobian patterns;
* `store`: the output folder, which survives interruptions;
* `run`: `compare`, which runs it all.

The names below are importable from here; the configuration is imported at once
(it needs no torch), the rest when first used, so that the command line starts fast.

Example:
    >>> from flowjoint.compare import MODELS, default_config
    >>> list(MODELS)[:4]
    ['nice', 'realnvp', 'vae', 'augmented']
    >>> default_config("mnist5k", "msrealnvp").num_scales
    3
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from flowjoint.compare.config import (
    DATASETS,
    MODELS,
    ModelConfig,
    ModelSpec,
    default_config,
    register_model,
)
from flowjoint.compare.scoring import EvaluationConfig, default_evaluation

if TYPE_CHECKING:
    from flowjoint.compare.datasets import SplitOptions, load_data
    from flowjoint.compare.evaluation import evaluate_model
    from flowjoint.compare.models import DataSpec, build_model
    from flowjoint.compare.report import format_report
    from flowjoint.compare.run import ComparisonResult, compare, default_out

__all__ = [
    "DATASETS",
    "MODELS",
    "ComparisonResult",
    "DataSpec",
    "EvaluationConfig",
    "ModelConfig",
    "ModelSpec",
    "SplitOptions",
    "build_model",
    "compare",
    "default_config",
    "default_evaluation",
    "default_out",
    "evaluate_model",
    "format_report",
    "load_data",
    "register_model",
]

_LAZY = {
    "ComparisonResult": "run",
    "compare": "run",
    "default_out": "run",
    "DataSpec": "models",
    "build_model": "models",
    "SplitOptions": "datasets",
    "load_data": "datasets",
    "evaluate_model": "evaluation",
    "format_report": "report",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'flowjoint.compare' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"flowjoint.compare.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
