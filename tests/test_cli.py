"""The command line: the quick comparison end to end, every error path, --help and --version."""

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flowjoint.cli import main
from flowjoint.compare.config import DEFAULT_MODELS

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "run"
    code = main(
        ["compare", "--quick", "--no-progress", "--threads", "1", "--out", str(out), "--draws", "3"]
    )
    return code, out


def test_quick_compare_writes_table_json_and_plots(quick_run):
    code, out = quick_run
    assert code == 0
    for name in ("results.json", "results.md", "samples.png", "curves.png", "jacobians.png"):
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "results.json").read_text())
    order = list(DEFAULT_MODELS["digits"])
    assert [r["model"] for r in rows] == sorted((r["model"] for r in rows), key=order.index)
    assert {row["model"] for row in rows} == set(order)
    for row in rows:
        assert row["dataset"] == "digits" and row["quick"] is True
        assert math.isfinite(row["nll_nats"])
        # bits/dim is the per-image NLL over D ln 2 (D + d for the joint density)
        assert row["bits_per_dim"] == pytest.approx(row["nll_nats"] / (row["dims"] * math.log(2)))
        low, high = row["ci95_nats"]
        assert low <= row["nll_nats"] <= high
        if row["density_of"] == "x + u":
            assert row["interval_over"] == "3 dequantization draws"
        else:  # the bound on the discrete data, K stated in the row
            assert row["density_of"] == "x" and row["kind"] == "bound"
            assert row["metric"] == f"iwae_{row['samples']}"
            assert row["interval_over"] == f"{row['test_size']} test images"
    by_model = {m: {r["metric"]: r for r in rows if r["model"] == m} for m in order}
    for flow in ("nice", "realnvp", "msrealnvp"):
        assert by_model[flow]["exact"]["kind"] == "exact"
    for bound in ("vae", "augmented"):
        assert {"elbo", "joint", "iwae_1", "iwae_10"} <= set(by_model[bound])
        assert by_model[bound]["elbo"]["kind"] == "bound"
        assert by_model[bound]["joint"]["dims"] == 64 + 2  # D + d (quick: d = 2)
    table = (out / "results.md").read_text()
    assert "quick run" in table.splitlines()[0]
    assert "| realnvp | x + u | exact | exact | 64 |" in table
    assert "joint = −log p(x + u, ε) over D + d dimensions" in table
    assert "nan" not in table


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


def test_toy_quick_run_reports_entropy_in_nats(tmp_path):
    out = tmp_path / "moons"
    argv = ["compare", "--dataset", "moons", "--models", "realnvp", "nice", "--quick"]
    assert main([*argv, "--no-progress", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in rows] == ["realnvp", "nice"]
    assert rows[0]["entropy_nats"] == pytest.approx(2.388)
    assert rows[0]["interval_over"] == "2000 test points" and "bits_per_dim" not in rows[0]
    table = (out / "results.md").read_text()
    assert "entropy" in table and "bits/dim" not in table


def test_one_draw_prints_no_nan(tmp_path):
    out = tmp_path / "one"
    argv = ["compare", "--quick", "--models", "realnvp", "--draws", "1", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    assert "nan" not in table.lower() and "– (one draw)" in table


def test_quick_runs_default_to_their_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--quick", "--models", "nice", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "quick" / "digits" / "results.md").exists()
    assert not (tmp_path / "runs" / "digits").exists()


def test_no_progress_still_reports_each_phase(tmp_path, capsys):
    out = tmp_path / "phases"
    assert main(["compare", "--quick", "--models", "nice", "--no-progress", "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any("digits/nice: training" in line for line in err)
    assert any("digits/nice: evaluating" in line for line in err)
    assert not any("epoch 1/2" in line for line in err)


def test_progress_off_a_terminal_is_one_line_per_epoch(tmp_path, capsys):
    out = tmp_path / "lines"
    assert main(["compare", "--quick", "--models", "nice", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.count("digits/nice: epoch ") == 2


# -- your own data ------------------------------------------------------------------------


def test_own_npy_csv_and_image_npz(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(400, 2)) @ np.array([[1.0, 0.5], [0.0, 0.5]])
    np.save(tmp_path / "points.npy", points)
    np.savetxt(tmp_path / "points.csv", points, delimiter=",", header="a,b", comments="")
    images = rng.integers(0, 4, size=(300, 6, 6))
    np.savez(tmp_path / "images.npz", x=images)
    base = ["compare", "--quick", "--no-progress", "--models", "realnvp"]
    for name, extra in (("points.npy", []), ("points.csv", []), ("images.npz", ["--levels", "4"])):
        out = tmp_path / f"out-{name}"
        dataset = str(tmp_path / name)
        assert main([*base, "--dataset", dataset, "--out", str(out), *extra]) == 0
        rows = json.loads((out / "results.json").read_text())
        assert rows[0]["dataset"] == Path(name).stem
        if name == "images.npz":
            assert {r["density_of"] for r in rows} == {"x + u", "x"} and rows[0]["dims"] == 36
            assert "[0, 4)^36" in (out / "results.md").read_text()
        else:
            assert [r["density_of"] for r in rows] == ["x"] and rows[0]["dims"] == 2
            # 400 rows, test fraction 0.2 (quick keeps at most 100)
            assert rows[0]["interval_over"] == "80 test points"


# -- interruption and resumption ----------------------------------------------------------


def _scores(out):
    table = (out / "results.md").read_text()
    return table.split("### Training")[0]


def test_interrupted_compare_resumes_and_ends_with_the_same_table(tmp_path, capsys):
    from flowjoint.compare import compare

    kwargs = dict(models=["realnvp", "vae"], quick=True, progress=False, overrides={"epochs": 3})
    compare(out=tmp_path / "whole", **kwargs)

    def interrupt(model, row):
        if model == "vae" and row["epoch"] == 2:
            raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        compare(out=interrupted, callback=interrupt, **kwargs)
    # the finished model's rows and plots are already written
    rows = json.loads((interrupted / "results.json").read_text())
    assert {r["model"] for r in rows} == {"realnvp"}
    assert (interrupted / "samples.png").exists() and "realnvp" in _scores(interrupted)
    assert (interrupted / "models" / "vae" / "last.pt").exists()
    assert not (interrupted / "models" / "vae" / "fit.json").exists()
    capsys.readouterr()

    argv = ["compare", "--quick", "--models", "realnvp", "vae", "--epochs", "3", "--no-progress"]
    assert main([*argv, "--out", str(interrupted)]) == 0
    err = capsys.readouterr().err
    assert "realnvp already finished; skipping" in err
    assert "digits/vae: resuming training from" in err and "last.pt" in err
    assert _scores(interrupted) == _scores(tmp_path / "whole")
    record = json.loads((interrupted / "models" / "vae" / "fit.json").read_text())
    assert [row["epoch"] for row in record["history"]] == [1.0, 2.0, 3.0]

    # a third run finds everything finished and trains nothing
    assert main([*argv, "--out", str(interrupted)]) == 0
    err = capsys.readouterr().err
    assert "realnvp, vae already finished" in err and "training" not in err


def test_interrupt_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    import flowjoint.compare.run as run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "compare", interrupted)
    assert main(["compare", "--quick", "--out", str(tmp_path / "x")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("flowjoint: interrupted") and len(err.strip().splitlines()) == 1
    assert "run the same command again" in err


def test_other_evaluation_settings_score_the_best_weights_again(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compare", "--quick", "--models", "nice", "realnvp", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--draws", "3"]) == 0
    err = capsys.readouterr().err
    assert "nice: scored with other evaluation settings" in err
    assert "training had finished; evaluating its best weights" in err
    assert "epochs" not in err  # nothing is trained
    rows = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in rows] == ["nice", "nice", "realnvp", "realnvp"]
    assert {r["interval_over"] for r in rows if r["density_of"] == "x + u"} == {
        "3 dequantization draws"
    }


def test_changed_settings_are_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compare", "--quick", "--models", "nice", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowjoint: error: nice in") and "config.epochs: 2 -> 3" in err
    assert main(["compare", "--quick", "--dataset", "moons", "--out", str(out)]) == 1
    assert "holds another comparison" in capsys.readouterr().err


# -- error paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["compare", "--dataset", "cifar"], "--dataset"),
        (["compare", "--models", "nice,glow"], "glow"),
        (["compare", "--models", ""], "--models"),
        (["compare", "--models", "nice", "nice"], "twice"),
        (["compare", "--epochs", "0"], "--epochs"),
        (["compare", "--lr", "-1"], "--lr"),
        (["compare", "--batch-size", "abc"], "--batch-size"),
        (["compare", "--alpha", "0.7"], "--alpha"),
        (["compare", "--levels", "3"], "--levels"),
        (["compare", "--split-seed", "3"], "--split-seed"),
        (["compare", "--dataset", "a.npy", "--val-fraction", "1.5"], "--val-fraction"),
        (["compare", "--dataset", "a.npy", "--test-fraction", "0"], "--test-fraction"),
        (
            ["compare", "--dataset", "a.npy", "--val-fraction", "0.5", "--test-fraction", "0.5"],
            "must be below 1",
        ),
        (["compare", "--levels", "1"], "--levels"),
        (["frobnicate"], "invalid choice"),
        (["compare", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("flowjoint: error: ") and fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def _bad_files(directory):
    np.save(directory / "cube.npy", np.zeros((4, 2, 2, 2, 2)))
    (directory / "text.npy").write_text("not numbers")
    (directory / "ragged.csv").write_text("1,2\n3,4,5\n")
    np.save(directory / "nan.npy", np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 3.0]]))
    np.save(directory / "levels.npy", np.full((20, 3), 7.0))
    np.save(directory / "tiny.npy", np.zeros((2, 3)))
    np.savez(directory / "two.npz", a=np.zeros((5, 2)), b=np.zeros((5, 2)))
    return {
        "cube.npy": "expected shape (n, features)",
        "text.npy": "not a .npy file",
        "ragged.csv": "cannot read it as an array of numbers",
        "nan.npy": "NaN or infinite",
        "levels.npy": "integer from 0 to 4",
        "tiny.npy": "too few",
        "two.npz": "holds 2 arrays",
        "missing.npy": "no such file",
    }


def test_bad_data_files_give_one_line_naming_the_file(tmp_path, capsys):
    for name, fragment in _bad_files(tmp_path).items():
        argv = ["compare", "--quick", "--dataset", str(tmp_path / name), "--out"]
        extra = ["--levels", "5"] if name == "levels.npy" else []
        assert main([*argv, str(tmp_path / "out"), *extra]) == 1, name
        err = capsys.readouterr().err
        assert err.startswith(f"flowjoint: error: {tmp_path / name}: "), err
        assert fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # refused before the output folder is made


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--quick", "--out", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "file.txt" in err and len(err.strip().splitlines()) == 1


def _make_unwritable(folder):
    """Make ``folder`` unwritable, even for root (chattr +i); None if impossible here."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if done.returncode != 0:
        return None
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_unwritable_out_is_refused_before_training(tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    undo = _make_unwritable(folder)
    if undo is None:
        pytest.skip("cannot make a folder unwritable here (root without chattr)")
    try:
        code = main(["compare", "--quick", "--models", "nice", "--out", str(folder)])
    finally:
        undo()
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("flowjoint: error: cannot write to the output folder")
    assert str(folder) in err and len(err.strip().splitlines()) == 1
    assert "training" not in err and list(folder.iterdir()) == []


# -- --help, --version, bare command ------------------------------------------------------


def test_version_and_bare_command(capsys):
    import flowjoint

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"flowjoint {flowjoint.__version__}"
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "commands:" in out and "compare" in out


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for fragment in ("(default: digits)", "(default: 0.1)", "(default: 2)", "runs/quick"):
        assert fragment in out, fragment
    assert "(default: None)" not in out


def test_help_imports_neither_torch_nor_numpy():
    code = (
        "import sys, contextlib, io\n"
        "from flowjoint.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    for argv in (['--help'], ['compare', '--help']):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_python_dash_m_entry_point(monkeypatch, capsys):
    # what `python -m flowjoint compare --dataset nope` runs, in process
    monkeypatch.setattr(sys, "argv", ["flowjoint", "compare", "--dataset", "nope"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("flowjoint", run_name="__main__")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("flowjoint: error: argument --dataset")


def test_package_names_resolve_on_first_use():
    # flowjoint/__init__.py imports its names lazily (so that --help needs no torch)
    import flowjoint

    assert set(flowjoint._MODULE_OF) == set(flowjoint.__all__)
    for name in flowjoint.__all__:
        assert getattr(flowjoint, name) is getattr(
            __import__(f"flowjoint.{flowjoint._MODULE_OF[name]}", fromlist=[name]), name
        )
    assert flowjoint.vae.LOG_SCALE_BOUND > 0  # submodules too
    assert "Flow" in dir(flowjoint)
    # The imports for type checkers and the API reference name the same modules.
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(flowjoint))
    block = next(
        n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
    )
    typed = {
        alias.name: node.module.removeprefix("flowjoint.")
        for node in block.body
        for alias in node.names
    }
    assert typed == flowjoint._MODULE_OF
    with pytest.raises(AttributeError, match="no attribute 'Flows'"):
        flowjoint.Flows  # noqa: B018


# -- refusals at parse time and before training -------------------------------------------


@pytest.mark.parametrize("lr", ["inf", "nan", "0"])
def test_a_non_finite_or_zero_lr_is_refused_before_out_is_written(lr, tmp_path, capsys):
    # --lr inf used to pass the parser, fail inside fit and leave a settings.json in --out
    # that refused the same command without --lr
    out = tmp_path / "out"
    argv = ["compare", "--quick", "--models", "realnvp", "--no-progress", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--lr", lr])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("flowjoint: error: argument --lr: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--seed", "-5"], "--seed"),
        (["--dataset", "points.npy", "--split-seed", "-1"], "--split-seed"),
    ],
)
def test_negative_seeds_are_refused_naming_the_option(argv, option, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--quick", "--no-progress", "--out", str(out), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flowjoint: error: argument {option}: ")
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_threads_beyond_the_cpu_count_are_refused(capsys):
    # parse only: the parser used to hand any positive count to torch.set_num_threads
    from flowjoint.cli import build_parser

    cpus = os.cpu_count() or 1
    assert build_parser().parse_args(["compare", "--threads", str(cpus)]).threads == cpus
    for threads in (cpus + 1, 100000):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(["compare", "--threads", str(threads)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("flowjoint: error: argument --threads: ") and str(threads) in err


@pytest.mark.parametrize(
    "rows",
    [[{}], [{"config": {}, "evaluation": {}, "metric": "exact", "nll_nats": 1.0}]],
    ids=["empty row", "row without model"],
)
def test_results_json_that_are_not_rows_exit_1_with_one_line(rows, tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(rows))
    argv = ["compare", "--quick", "--models", "realnvp", "--no-progress", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowjoint: error: ") and "results.json" in err
    assert "delete it" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()  # nothing trained


def test_a_model_that_cannot_take_the_images_exits_1_before_any_training(tmp_path, capsys):
    # msrealnvp (3 scales) needs H and W divisible by 4; nice, before it, used to train first
    images = np.random.default_rng(0).integers(0, 4, size=(120, 1, 6, 6))
    np.save(tmp_path / "img.npy", images)
    out = tmp_path / "out"
    argv = ["compare", "--dataset", str(tmp_path / "img.npy"), "--levels", "4", "--quick"]
    argv += ["--models", "nice", "msrealnvp", "--epochs", "1", "--no-progress", "--threads", "1"]
    assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowjoint: error: ") and "cannot be halved" in err
    assert len(err.strip().splitlines()) == 1 and "training" not in err
    assert not (out / "models").exists()  # no checkpoints of nice
