"""Smoke test of examples/vae_joint_view.py in its quick mode (a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vae_joint_view.py"


def load_example():
    spec = importlib.util.spec_from_file_location("vae_joint_view", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run(tmp_path, one_thread):
    results = load_example().main(["--quick", "--raw-reference", "--out", str(tmp_path)])
    assert {r["model"] for r in results} == {"flowjoint", "raw"}
    for r in results:
        for key in ("elbo", "iwae_1", "iwae_10", "ms_per_step"):
            assert math.isfinite(r[key]), (r["model"], key)
        assert r["elbo"] < 0
    flowjoint_run = next(r for r in results if r["model"] == "flowjoint")
    assert math.isfinite(flowjoint_run["joint_plus_entropy"])
    for name in ("iwae_vs_k.png", "samples.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["results"]) == 2


def test_one_seed_prints_no_nan(tmp_path, capsys, one_thread):
    load_example().main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "one seed" in out and "nan" not in out.lower()
