"""flowjoint.compare module by module: registry, model stacks, evaluation, report, folder."""

import json
import math
import subprocess
from dataclasses import replace

import pytest
import torch

from flowjoint import Flow, Logit, Scale, UniformDequantization, VariationalDequantization
from flowjoint.compare import MODELS, ModelConfig, ModelSpec, compare, register_model
from flowjoint.compare.config import (
    DATA_GROUPS,
    DEFAULT_MODELS,
    QUICK,
    TOY_DATASETS,
    default_config,
)
from flowjoint.compare.datasets import load_data
from flowjoint.compare.evaluation import (
    continuous_part,
    evaluate_model,
    interval,
    student_t_quantile,
)
from flowjoint.compare.models import DataSpec, build_model
from flowjoint.compare.plots import image_grid
from flowjoint.compare.report import format_report
from flowjoint.compare.scoring import EvaluationConfig, default_evaluation
from flowjoint.compare.store import OutputFolder
from flowjoint.testing import randomize_parameters

# -- configuration ---------------------------------------------------------------------


def test_toy_names_match_the_toys_module():
    from flowjoint.toys import TOY_DATASETS as generated

    assert TOY_DATASETS == generated


def test_digits_defaults_are_the_tuned_ones():
    # docs/results.md's digits table was measured with these settings
    nice, realnvp = default_config("digits", "nice"), default_config("digits", "realnvp")
    vae, augmented = default_config("digits", "vae"), default_config("digits", "augmented")
    assert (nice.epochs, nice.num_layers, nice.num_hidden_layers, nice.weight_decay) == (
        80,
        8,
        3,
        1e-4,
    )
    assert (realnvp.epochs, realnvp.num_layers, realnvp.actnorm, realnvp.weight_decay) == (
        40,
        8,
        True,
        1e-4,
    )
    assert (vae.epochs, vae.hidden_features, vae.latent_features) == (400, 256, 16)
    assert (augmented.epochs, augmented.num_layers, augmented.latent_features) == (200, 2, 16)
    for config in (nice, realnvp, vae, augmented):
        assert (config.lr, config.batch_size, config.schedule) == (1e-3, 100, "onecycle")
        assert (config.alpha, config.mask_pattern, config.dequantization) == (
            0.01,
            "checkerboard",
            "uniform",
        )


def test_every_model_has_settings_for_every_data_group_it_fits():
    """Vector models run on every kind of data; image models on every kind but the toys."""
    for spec in MODELS.values():
        groups = set(DATA_GROUPS) - {"toy"} if spec.images else set(DATA_GROUPS)
        assert set(spec.defaults) == groups, spec.name
    for group, names in DEFAULT_MODELS.items():
        assert all(group in MODELS[name].defaults for name in names), group
    quick = default_config("digits", "vae", quick=True)
    assert all(getattr(quick, k) == v for k, v in QUICK.items())
    assert default_config("my_points.npy", "nice").epochs == 100  # a user's file
    assert default_evaluation("digits").discrete_samples == 100
    assert default_evaluation("mnist5k").discrete_samples == 100


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: default_config("digits", "glow"), "model must be one of"),
        (lambda: ModelConfig(epochs=0), "epochs must be >= 1"),
        (lambda: ModelConfig(mask_pattern="stripes"), "mask_pattern"),
        (lambda: ModelConfig(dequantization="none"), "dequantization"),
        (lambda: ModelConfig(alpha=0.5), "alpha"),
        (lambda: EvaluationConfig(iwae_samples=(0,)), "iwae_samples"),
        (lambda: ModelSpec("m", "", "no_colon"), "module:function"),
        (lambda: ModelSpec("m", "", "a:b", defaults={"cifar": ModelConfig()}), "data groups"),
    ],
)
def test_bad_configuration_is_refused(make, error):
    with pytest.raises(ValueError, match=error):
        make()


def build_tiny_gaussian(data, config):
    """A model registered from outside the package: a diagonal Gaussian after the preprocessing."""
    from flowjoint import ActNorm, Compose, StandardNormal
    from flowjoint.compare.models import preprocessing

    layers = [*preprocessing(data, config), ActNorm(data.features)]
    return Flow(Compose(layers), StandardNormal(data.features))


def test_a_registered_model_runs_in_a_comparison(tmp_path):
    spec = ModelSpec(
        "gaussian",
        "a diagonal Gaussian after the preprocessing",
        f"{__name__}:build_tiny_gaussian",
        defaults={group: ModelConfig(epochs=1) for group in DATA_GROUPS},
    )
    register_model(spec)
    try:
        result = compare("digits", ["gaussian"], out=tmp_path, quick=True, progress=False, log=None)
    finally:
        del MODELS["gaussian"]
    assert {r["metric"] for r in result.rows} == {"exact", "iwae_10"}
    assert result.rows[0]["num_parameters"] == 2 * 64  # ActNorm's shift and log-scale
    assert (tmp_path / "models" / "gaussian" / "best.pt").exists()


# -- model stacks ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_pixel_models_are_stacks_starting_with_the_preprocessing(name):
    config = replace(default_config("digits", name, quick=True), dequantization="uniform")
    flow = build_model(name, DataSpec(64, (1, 8, 8), levels=17), config)
    first = list(flow.transform)[:3]
    assert isinstance(first[0], UniformDequantization) and first[0].levels == 17
    assert isinstance(first[1], Scale) and first[1].divisor == 17
    assert isinstance(first[2], Logit) and first[2].alpha == config.alpha
    assert flow.stochastic
    variational = build_model(
        name, DataSpec(64, (1, 8, 8), levels=17), replace(config, dequantization="variational")
    )
    assert isinstance(variational.transform[0], VariationalDequantization)
    if MODELS[name].images:
        return  # image models need images: there is no 2-D toy for them
    continuous = build_model(name, DataSpec(2), default_config("moons", name, quick=True))
    assert not any(isinstance(t, (UniformDequantization, Scale)) for t in continuous.transform)


def test_an_image_model_on_vectors_is_refused():
    spec = ModelSpec(
        "images_only",
        "",
        f"{__name__}:build_tiny_gaussian",
        images=True,
        defaults={"digits": ModelConfig()},
    )
    register_model(spec)
    try:
        with pytest.raises(ValueError, match="takes images, but the data are vectors"):
            build_model("images_only", DataSpec(64, levels=17), ModelConfig())
    finally:
        del MODELS["images_only"]


def test_data_views_for_models_that_take_images():
    data = load_data("digits", quick=True)
    assert data.train.shape == (300, 64) and data.image_shape == (1, 8, 8)
    assert data.inputs("test", images=True).shape == (100, 1, 8, 8)
    assert data.inputs("test").shape == (100, 64)
    with pytest.raises(ValueError, match="apply to a data file"):
        from flowjoint.compare.datasets import SplitOptions

        load_data("digits", split=SplitOptions(levels=3))


# -- evaluation ------------------------------------------------------------------------


def test_student_t_quantiles():
    # t_{0.975, df}, from statistical tables
    for df, value in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)):
        assert student_t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (3, 5, 7, 12):
        assert student_t_quantile(0.95, df) == pytest.approx(scipy_stats.t.ppf(0.95, df))


def test_interval_needs_two_values():
    assert interval(torch.tensor([1.0]), over_draws=True) is None
    low, high = interval(torch.tensor([1.0, 3.0]), over_draws=True)
    assert (low + high) / 2 == pytest.approx(2.0)
    assert high - 2.0 == pytest.approx(12.7062 * math.sqrt(2.0) / math.sqrt(2), abs=1e-3)


def _logit_density(model, y, levels, alpha):
    """log p(y) on [0, levels)^D computed by hand: the flow's layers after the logit."""
    s = alpha + (1 - 2 * alpha) * y / levels
    h = torch.log(s) - torch.log1p(-s)
    logdet = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log1p(-s)).sum(1)
    logdet = logdet - y.shape[1] * math.log(levels)
    inner = Flow(model.transform[3:], model.base)
    return inner.log_prob(h) + logdet


def test_exact_rows_are_the_density_of_the_dequantized_draws(float64):
    from flowjoint.data import dequantize

    torch.manual_seed(0)
    config = replace(default_config("digits", "realnvp", quick=True))
    model = randomize_parameters(build_model("realnvp", DataSpec(6, levels=5), config), std=0.1)
    test = torch.randint(0, 5, (40, 6)).double()
    settings = EvaluationConfig(num_draws=3, discrete_samples=50)
    rows = evaluate_model(model, test, 5, settings, seed=7)
    exact, discrete = rows
    generator = torch.Generator().manual_seed(7)
    draws = [dequantize(test, 5, generator) for _ in range(3)]
    by_hand = torch.stack([-_logit_density(model, y, 5, config.alpha).mean() for y in draws])
    assert exact["nll_nats"] == pytest.approx(by_hand.mean().item(), rel=1e-10)
    assert exact["bits_per_dim"] == pytest.approx(exact["nll_nats"] / (6 * math.log(2)))
    assert (exact["density_of"], exact["kind"], exact["interval_over"]) == (
        "x + u",
        "exact",
        "3 dequantization draws",
    )
    # the discrete bound IWAE_50 over u lies above E_u[log p(x + u)]
    assert (discrete["density_of"], discrete["metric"], discrete["samples"]) == ("x", "iwae_50", 50)
    assert discrete["nll_nats"] < exact["nll_nats"]
    assert discrete["interval_over"] == "40 test images"


def test_bound_rows_of_a_vae_and_the_stack_without_dequantization():
    config = default_config("digits", "vae", quick=True)
    model = build_model("vae", DataSpec(6, levels=5), config)
    continuous = continuous_part(model)
    assert list(continuous.transform) == list(model.transform)[1:]
    assert continuous_part(continuous) is continuous
    rows = evaluate_model(
        model,
        torch.randint(0, 5, (20, 6)).float(),
        5,
        EvaluationConfig(num_draws=2, iwae_samples=(1, 10), discrete_samples=10),
    )
    names = [(r["density_of"], r["metric"], r["kind"], r["dims"]) for r in rows]
    assert names == [
        ("x + u", "elbo", "bound", 6),
        ("x + u", "iwae_1", "bound", 6),
        ("x + u", "iwae_10", "bound", 6),
        ("x + u", "joint", "joint", 6 + config.latent_features),
        ("x", "iwae_10", "bound", 6),
    ]


def test_a_pixel_model_without_dequantization_is_refused():
    flow = build_model("realnvp", DataSpec(4), default_config("moons", "realnvp", quick=True))
    with pytest.raises(ValueError, match="start with a dequantization layer"):
        evaluate_model(flow, torch.zeros(3, 4), 5, EvaluationConfig())


# -- report ----------------------------------------------------------------------------


def _row(model, metric, kind, dims, nll, ci, density_of="x + u"):
    bits = nll / (64 * math.log(2))
    return {
        "model": model,
        "density_of": density_of,
        "metric": metric,
        "kind": kind,
        "samples": None,
        "dims": dims,
        "nll_nats": nll,
        "bits_per_dim": bits,
        "ci95_nats": ci,
        "ci95_bits_per_dim": None if ci is None else [bits, bits],
        "interval_over": "1 dequantization draws",
        "num_parameters": 10,
        "best_epoch": 1,
        "epochs_run": 1,
        "stop_reason": "completed",
        "train_seconds": 1.0,
        "eval_seconds": 1.0,
    }


def test_report_states_dimensions_and_explains_the_joint_row():
    rows = [
        _row("vae", "elbo", "bound", 64, 96.5, None),
        _row("vae", "joint", "joint", 80, 119.2, None),
    ]
    text = format_report(rows, "digits", levels=17, quick=True)
    assert text.splitlines()[0].startswith("## digits (quick run")
    assert "| vae | x + u | joint | joint | 80 |" in text
    assert "−(ELBO − H[N(0, I_d)])" in text and "22.70 for d = 16" in text
    assert "nan" not in text and "– (one draw)" in text
    assert "[0, 17)^64" in text


# -- output folder ---------------------------------------------------------------------


def test_output_folder_refusals(tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        OutputFolder(file).prepare({})
    folder = OutputFolder(tmp_path / "a" / "b")  # parents are created
    folder.prepare({"dataset": "digits", "seed": 0})
    with pytest.raises(ValueError, match=r"another comparison \(seed: 0 -> 1\)"):
        folder.prepare({"dataset": "digits", "seed": 1})
    folder.write_settings("nice", {"config": {"epochs": 2}})
    folder.check_settings("nice", {"config": {"epochs": 2}})
    with pytest.raises(ValueError, match="config.epochs: 2 -> 3"):
        folder.check_settings("nice", {"config": {"epochs": 3}})
    (folder.path / "results.json").write_text("{broken")
    with pytest.raises(ValueError, match="cannot read"):
        folder.finished_rows()
    folder.write_results([{"model": "nice"}], "table\n")
    assert json.loads((folder.path / "results.json").read_text()) == [{"model": "nice"}]
    assert not [p for p in folder.path.iterdir() if p.name.endswith(".tmp")]
    assert oct((folder.path / "results.md").stat().st_mode & 0o777) != oct(0o600)


def test_unwritable_folder_is_named(tmp_path):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode:
            pytest.skip("root without chattr: cannot make a folder unwritable")
        undo = ["chattr", "-i", str(locked)]
    else:
        locked.chmod(0o555)
        undo = ["chmod", "755", str(locked)]
    try:
        with pytest.raises(ValueError, match=f"cannot write to the output folder '{locked}'"):
            OutputFolder(locked).prepare({})
    finally:
        subprocess.run(undo, check=True)


# -- plots -----------------------------------------------------------------------------


def test_image_grid_separates_tiles_with_gaps():
    images = torch.rand(4, 1, 3, 2)
    grid = image_grid(images, side=2, gap=1)
    assert grid.shape == (2 * 4 - 1, 2 * 3 - 1, 1)
    assert torch.isnan(grid[3]).all() and torch.isnan(grid[:, 2]).all()
    assert torch.equal(grid[4:7, 3:5, 0], images[3, 0])


# -- re-runs and refusals of compare ---------------------------------------------------


def test_a_finished_image_model_is_skipped_on_a_re_run(tmp_path, one_thread):
    # image models score in passes of image_chunk_size; their rows must still record the
    # settings asked for, or every re-run finds them "other" and scores the model again
    from dataclasses import asdict

    evaluation = {"num_draws": 1, "discrete_samples": 2, "iwae_samples": (1,)}
    logs = []
    kwargs = dict(
        models=["msrealnvp"],
        out=tmp_path,
        quick=True,
        progress=False,
        overrides={"epochs": 1},
        evaluation=evaluation,
        log=logs.append,
    )
    first = compare("digits", **kwargs)
    logs.clear()
    again = compare("digits", **kwargs)
    assert again.skipped == ["msrealnvp"]
    assert not any("evaluating" in line or "scoring it again" in line for line in logs), logs
    settings = replace(default_evaluation("digits", quick=True), **evaluation)
    asked = json.loads(json.dumps(asdict(settings)))  # chunk_size, not image_chunk_size
    assert all(row["evaluation"] == asked for row in again.rows)
    assert again.rows == json.loads(json.dumps(first.rows))  # kept as they were


@pytest.mark.parametrize(
    "rows",
    [[{}], [{"config": {}, "evaluation": {}, "metric": "exact", "nll_nats": 1.0}]],
    ids=["empty row", "row without model"],
)
def test_results_json_that_are_not_rows_are_refused(tmp_path, rows):
    (tmp_path / "results.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"results\.json' is not a list of result rows"):
        compare("digits", ["nice"], out=tmp_path, quick=True, progress=False, log=None)
    assert not (tmp_path / "models").exists()  # refused before any training


def test_a_model_that_cannot_take_the_images_is_refused_before_any_training(tmp_path):
    # msrealnvp's 3 scales halve H and W twice: 6 x 6 images cannot be; nice comes first
    import numpy as np

    from flowjoint.compare.datasets import SplitOptions

    images = np.random.default_rng(0).integers(0, 4, size=(120, 1, 6, 6))
    np.save(tmp_path / "img.npy", images)
    logs = []
    with pytest.raises(ValueError, match="cannot be halved"):
        compare(
            str(tmp_path / "img.npy"),
            ["nice", "msrealnvp"],
            out=tmp_path / "out",
            quick=True,
            overrides={"epochs": 1},
            split=SplitOptions(levels=4),
            progress=False,
            log=logs.append,
        )
    assert not any("training" in line for line in logs), logs
    assert not (tmp_path / "out" / "models").exists()
