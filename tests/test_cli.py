import json
import math
import runpy
import sys

import pytest

from flowjoint.cli import main
from flowjoint.compare import MODELS


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "run"
    code = main(["compare", "--quick", "--no-progress", "--out", str(out), "--draws", "3"])
    return code, out


def test_quick_compare_writes_table_json_and_plots(quick_run, capsys):
    code, out = quick_run
    assert code == 0
    for name in ("results.json", "results.md", "samples.png", "curves.png", "jacobians.png"):
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "results.json").read_text())
    models = {row["model"] for row in rows}
    assert models == set(MODELS)
    expected = {"exact"} | {"elbo", "joint", "iwae_1", "iwae_10", "iwae_100", "iwae_1000"}
    for row in rows:
        assert row["dataset"] == "digits"
        assert row["metric"] in expected
        assert math.isfinite(row["nll_nats"])
        # bits/dim is the per-example NLL over D ln 2 (D + d for the joint density)
        assert row["bits_per_dim"] == pytest.approx(row["nll_nats"] / (row["dims"] * math.log(2)))
        low, high = row["ci95_nats"]
        assert low <= row["nll_nats"] <= high
        assert row["num_draws"] == 3 and row["interval_over"] == "dequantization draws"
    bounds = {(r["model"], r["metric"]) for r in rows if r["model"] in ("vae", "augmented")}
    assert len(bounds) == 12
    table = (out / "results.md").read_text()
    assert "| realnvp | exact |" in table and "iwae_1000" in table


def test_joint_row_is_elbo_minus_noise_entropy(quick_run):
    # E_eps[log p(x, eps)] = ELBO - d/2 (1 + log 2 pi): both estimated independently,
    # so they agree only to Monte Carlo error.
    _, out = quick_run
    rows = json.loads((out / "results.json").read_text())
    for model in ("vae", "augmented"):
        by = {r["metric"]: r for r in rows if r["model"] == model}
        d = by["joint"]["dims"] - by["elbo"]["dims"]
        entropy = 0.5 * d * (1 + math.log(2 * math.pi))
        gap = by["joint"]["nll_nats"] - by["elbo"]["nll_nats"]
        assert gap == pytest.approx(entropy, abs=0.25 * abs(by["elbo"]["nll_nats"]) + 5)


def test_toy_quick_run_reports_entropy(tmp_path):
    out = tmp_path / "moons"
    assert (
        main(
            [
                "compare",
                "--dataset",
                "moons",
                "--models",
                "realnvp",
                "nice",
                "--quick",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in rows] == ["realnvp", "nice"]
    assert rows[0]["entropy_nats"] == pytest.approx(2.388)
    assert rows[0]["interval_over"] == "test points"
    assert "entropy" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["compare", "--dataset", "cifar"], "--dataset"),
        (["compare", "--models", "nice,glow"], "glow"),
        (["compare", "--models", ""], "--models"),
        (["compare", "--epochs", "0"], "--epochs"),
        (["compare", "--lr", "-1"], "--lr"),
        (["compare", "--batch-size", "abc"], "--batch-size"),
        (["compare", "--alpha", "0.7"], "--alpha"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_options_exit_nonzero_with_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--quick", "--out", str(path)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "file.txt" in err and len(err.strip().splitlines()) == 1


def test_python_dash_m_entry_point(monkeypatch, capsys):
    # what `python -m flowjoint compare --dataset nope` runs, in process
    monkeypatch.setattr(sys, "argv", ["flowjoint", "compare", "--dataset", "nope"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("flowjoint", run_name="__main__")
    assert exit_info.value.code == 2
    assert "--dataset" in capsys.readouterr().err
