"""Every example's main() runs in its quick mode (a few seconds each)."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compose_flows_mixes_flowjoint_and_nflows(one_thread):
    from nflows.transforms import MaskedAffineAutoregressiveTransform

    module = _load("compose_flows")
    flow = module.build()
    assert any(isinstance(t, MaskedAffineAutoregressiveTransform) for t in flow.transform)
    out = module.main(["--quick"])
    assert math.isfinite(out["test_nll"])


def test_conditional_toy(tmp_path, one_thread):
    out = _load("conditional_toy").main(["--quick", "--out", str(tmp_path / "c.png")])
    assert math.isfinite(out["test_nll"]) and (tmp_path / "c.png").exists()


@pytest.mark.parametrize("name", ["digits_comparison", "mnist5k_comparison"])
def test_comparisons_quick(name, tmp_path, one_thread):
    rows = _load(name).main(["--quick", "--models", "realnvp", "--out", str(tmp_path)])
    assert rows and all(math.isfinite(r["bits_per_dim"]) for r in rows)
    assert {r["density_of"] for r in rows} == {"x + u", "x"}
    assert "quick run" in (tmp_path / "results.md").read_text()


def test_quick_digits_example_writes_under_runs_quick(tmp_path, monkeypatch, one_thread):
    # a smoke run must not overwrite the real results in runs/digits
    monkeypatch.chdir(tmp_path)
    _load("digits_comparison").main(["--quick", "--models", "nice"])
    assert (tmp_path / "runs" / "quick" / "digits" / "results.md").exists()
    assert not (tmp_path / "runs" / "digits").exists()


def test_jacobian_patterns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    errors = _load("jacobian_patterns").main([])
    assert (tmp_path / "runs" / "jacobian_patterns.png").stat().st_size > 0
    assert set(errors) == {"NICE coupling", "Real NVP coupling", "VAE encoder (x, eps) -> (x, z)"}
    assert max(errors.values()) < 1e-9
