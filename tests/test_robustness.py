"""Numerical robustness: float32 round trips on real data, non-finite and extreme inputs.

The measured figures and the bounds asserted here are recorded in docs/robustness.md.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from nflows.transforms import LULinear, MaskedAffineAutoregressiveTransform

import flowjoint as fj
from flowjoint.data import dequantize, load_digits
from flowjoint.testing import randomize_parameters

# float32 round trip of a 16-layer Real NVP on digits in logit space (values in
# [-2.94, 2.94]), after 100 Adam steps; the figures measured over seeds are in
# docs/robustness.md.
ROUND_TRIP_BOUND = 1e-4
LOGABSDET_CANCEL_BOUND = 1e-3  # nats; log-dets are O(100) on 64 features
# Longer training sends held-out points far into the tails (|z| in the thousands);
# the error then scales with |z|: measured 1.1e-6 * max|z| (max|z| 4,632) and, in
# another run, 1.2e-5 * max|z| (max|z| 47,928) after 1000 steps.
ROUND_TRIP_RELATIVE_BOUND = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


STABILITY_SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "stability_runs.py"


def digits_in_logit_space():
    """Digits dequantized once (seed 0), through Scale(1/17) and Logit(0.05): float32.

    The preprocessing layers are those of a model's stack
    (``pixel_preprocessing(17, alpha=0.05, dequantization="none")``), applied here once
    so that the round trips below are of the flow alone.
    """
    data = load_digits()
    pre = fj.Compose(fj.pixel_preprocessing(data.levels, alpha=0.05, dequantization="none"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        train = pre(dequantize(data.train, data.levels, generator))[0]
        test = pre(dequantize(data.test, data.levels, generator))[0]
    return train, test


def train_realnvp16(train, steps, seed=0):
    torch.manual_seed(seed)
    flow = fj.realnvp(64, num_layers=16)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, train.shape[0], (100,), generator=generator)
        loss = -flow.log_prob(train[index]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return flow.eval()


@torch.no_grad()
def round_trip_errors(flow, x):
    """Worst errors of x -> z -> x (data), z -> x -> z (samples), log-det cancellation."""
    z, logabsdet = flow.transform(x)
    x_back, logabsdet_inv = flow.transform.inverse(z)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    samples, _ = flow.transform.inverse(noise)
    noise_back, _ = flow.transform(samples)
    return {
        "data": (x_back - x).abs().max().item(),
        "samples": (noise_back - noise).abs().max().item(),
        "cancel": (logabsdet + logabsdet_inv).abs().max().item(),
        "max_abs_z": z.abs().max().item(),
    }


def test_float32_round_trip_realnvp16_on_digits():
    train, test = digits_in_logit_space()
    flow = train_realnvp16(train, steps=100)
    assert next(flow.parameters()).dtype == torch.float32
    errors = round_trip_errors(flow, test)
    assert errors["data"] < ROUND_TRIP_BOUND, errors
    assert errors["samples"] < ROUND_TRIP_BOUND, errors
    assert errors["cancel"] < LOGABSDET_CANCEL_BOUND, errors


@pytest.mark.slow
def test_float32_round_trip_realnvp16_after_longer_training():
    train, test = digits_in_logit_space()
    flow = train_realnvp16(train, steps=1000)
    errors = round_trip_errors(flow, test)
    assert errors["data"] < ROUND_TRIP_RELATIVE_BOUND * max(1.0, errors["max_abs_z"]), errors
    assert errors["samples"] < ROUND_TRIP_BOUND, errors


# ---------------------------------------------------------------------------
# Non-finite inputs: NaN or +-inf in a row gives a non-finite result for that row
# only; with validate=True, Flow.log_prob raises.
# ---------------------------------------------------------------------------

FEATURES = 6
MASK = torch.tensor([False, True, False, True, True, False])

LAYERS = {
    "affine": lambda: fj.AffineCoupling(MASK, 16),
    "affine_unbounded": lambda: fj.AffineCoupling(MASK, 16, log_scale_bound=None),
    "additive": lambda: fj.AdditiveCoupling(MASK, 16),
    "affine_context": lambda: fj.AffineCoupling(MASK, 16, context_features=2),
    "conditional_affine": lambda: fj.ConditionalAffine(FEATURES, 2, 16),
    "actnorm": lambda: fj.ActNorm(FEATURES),
    "batchnorm": lambda: fj.BatchNorm(FEATURES),
    "permutation": lambda: fj.RandomPermutation(FEATURES, seed=1),
    "reverse": lambda: fj.ReversePermutation(FEATURES),
    "compose": lambda: fj.Compose(
        [
            fj.ActNorm(FEATURES),
            fj.AffineCoupling(MASK, 16),
            fj.ReversePermutation(FEATURES),
            fj.AdditiveCoupling(MASK, 16),
            fj.AffineCoupling(~MASK, 16),
        ]
    ),
}


def context_width(layer):
    return getattr(layer, "context_features", 0)


def prepared(factory):
    """A randomised layer with its data-dependent statistics set, in eval mode."""
    torch.manual_seed(0)
    layer = randomize_parameters(factory(), 0.3)
    width = context_width(layer)
    layer.train()
    with torch.no_grad():
        layer(torch.randn(64, FEATURES), context=torch.randn(64, width) if width else None)
    return layer.eval()


BAD_VALUES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def dirty(clean, value, column):
    """Row 1 gets `value` in `column`; rows 0, 2, 3 are left clean."""
    x = clean.clone()
    x[1, column] = value
    return x


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("value", sorted(BAD_VALUES))
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_non_finite_input_row_stays_in_its_row(name, value, direction):
    layer = prepared(LAYERS[name])
    width = context_width(layer)
    clean = torch.randn(4, FEATURES)
    context = torch.randn(4, width) if width else None
    fn = layer if direction == "forward" else layer.inverse
    with torch.no_grad():
        reference, reference_lad = fn(clean, context=context)
        for column in range(FEATURES):
            outputs, logabsdet = fn(dirty(clean, BAD_VALUES[value], column), context=context)
            assert not bool(torch.isfinite(outputs[1]).all()), (
                f"a {value} input (column {column}) gave finite outputs {outputs[1].tolist()}"
            )
            keep = [0, 2, 3]
            torch.testing.assert_close(outputs[keep], reference[keep], rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(logabsdet[keep], reference_lad[keep], rtol=1e-6, atol=1e-6)


FLOWS = {
    "realnvp": lambda: fj.realnvp(FEATURES, num_layers=4, hidden_features=16),
    "realnvp_unbounded": lambda: fj.realnvp(
        FEATURES, num_layers=4, hidden_features=16, log_scale_bound=None
    ),
    "nice": lambda: fj.nice(FEATURES, num_layers=4, hidden_features=16),
    "conditional_realnvp": lambda: fj.realnvp(
        FEATURES, num_layers=4, hidden_features=16, context_features=2
    ),
    "with_nflows_layers": lambda: fj.Flow(
        fj.Compose(
            [
                MaskedAffineAutoregressiveTransform(FEATURES, 16),
                fj.AffineCoupling(MASK, 16),
                LULinear(FEATURES),
            ]
        ),
        fj.StandardNormal(FEATURES),
    ),
}


def flow_context_width(flow):
    return getattr(
        flow.transform[1] if len(flow.transform) > 1 else flow.transform[0], "context_features", 0
    )


FLOW_CASES = [(name, "inputs") for name in sorted(FLOWS)] + [("conditional_realnvp", "context")]


@pytest.mark.parametrize("name,where", FLOW_CASES, ids=[f"{n}-{w}" for n, w in FLOW_CASES])
@pytest.mark.parametrize("value", sorted(BAD_VALUES))
def test_flow_log_prob_of_non_finite_inputs(name, where, value):
    torch.manual_seed(0)
    flow = randomize_parameters(FLOWS[name](), 0.3)
    width = flow_context_width(flow)
    flow.train()
    with torch.no_grad():
        flow.log_prob(torch.randn(64, FEATURES), context=torch.randn(64, width) if width else None)
    flow.eval()
    clean = torch.randn(4, FEATURES)
    context = torch.randn(4, width) if width else None
    with torch.no_grad():
        reference = flow.log_prob(clean, context=context)
        assert bool(torch.isfinite(reference).all())
        columns = range(width) if where == "context" else range(FEATURES)
        for column in columns:
            if where == "inputs":
                x, c = dirty(clean, BAD_VALUES[value], column), context
            else:
                x, c = clean, dirty(context, BAD_VALUES[value], column)
            log_prob = flow.log_prob(x, context=c)
            # The documented value: NaN, or -inf where an infinite coordinate reaches
            # the base density; never a finite number, never +inf.
            assert bool(log_prob[1].isnan()) or log_prob[1].item() == -math.inf, (
                f"{where} with {value} in column {column} gave log_prob {log_prob[1].item()}"
            )
            torch.testing.assert_close(log_prob[[0, 2, 3]], reference[[0, 2, 3]])
            flow.validate = True
            with pytest.raises(ValueError, match=rf"{where} must be finite.*rows \[1\]"):
                flow.log_prob(x, context=c)
            flow.validate = False


def test_validate_is_off_by_default_and_passes_finite_inputs():
    flow = fj.realnvp(FEATURES, num_layers=2, hidden_features=8)
    assert flow.validate is False
    flow.validate = True
    assert flow.log_prob(torch.randn(3, FEATURES)).shape == (3,)
    assert fj.Flow(flow.transform, flow.base, validate=True).validate


# ---------------------------------------------------------------------------
# Extreme inputs: |x| = 1e4 never gives NaN in the inverse (nor the forward).
# ---------------------------------------------------------------------------

EXTREME = 1e4


def extreme_inputs(features, rows=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (rows, features), generator=generator) * 2.0 - 1.0
    x = EXTREME * signs
    x[rows // 2 :, ::2] = torch.randn(rows - rows // 2, (features + 1) // 2, generator=generator)
    return x  # half the rows all +-1e4, half mixed with ordinary values


@pytest.mark.parametrize("name", sorted(n for n in LAYERS if n != "affine_unbounded"))
def test_extreme_inputs_give_no_nan_in_layers(name):
    layer = prepared(LAYERS[name])
    width = context_width(layer)
    x = extreme_inputs(FEATURES)
    context = torch.randn(x.shape[0], width) if width else None
    with torch.no_grad():
        for fn in (layer.inverse, layer):
            outputs, logabsdet = fn(x, context=context)
            assert not bool(outputs.isnan().any() or logabsdet.isnan().any())
            assert bool(torch.isfinite(outputs).all() and torch.isfinite(logabsdet).all())


def test_extreme_inputs_with_unbounded_scale_may_overflow():
    """Documented: with log_scale_bound=None a large conditioner output overflows exp."""
    layer = prepared(LAYERS["affine_unbounded"])
    with torch.no_grad():
        outputs, _ = layer.inverse(extreme_inputs(FEATURES))
    assert not bool(torch.isfinite(outputs).all())


@pytest.mark.parametrize("builder", ["realnvp", "nice"])
@pytest.mark.parametrize("state", ["fresh", "randomised", "trained"])
def test_extreme_inputs_give_no_nan_in_default_flows(builder, state):
    """Default 64-feature builders (Real NVP: 8 layers; NICE: 4 layers and a scaling)."""
    torch.manual_seed(0)
    flow = getattr(fj, builder)(64)
    if state == "randomised":
        randomize_parameters(flow, 0.05)
    train, _ = digits_in_logit_space()
    flow.train()
    with torch.no_grad():
        flow.log_prob(train[:100])  # ActNorm initialisation
    if state == "trained":
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
        for step in range(10):
            loss = -flow.log_prob(train[step * 50 : step * 50 + 50]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    flow.eval()
    x = extreme_inputs(64)
    with torch.no_grad():
        samples, logabsdet = flow.transform.inverse(x)
        assert not bool(samples.isnan().any() or logabsdet.isnan().any())
        log_prob = flow.log_prob(x)
        assert not bool(log_prob.isnan().any())


def test_extreme_inputs_give_no_nan_in_joint_vae():
    """The encoder coupling's inverse (x, z) -> (x, eps) at |x| = |z| = 1e4."""
    torch.manual_seed(0)
    vae = randomize_parameters(fj.JointVAE(16, 4, hidden_features=32), 0.05)
    xz = extreme_inputs(20)  # (x, z) with D = 16, d = 4
    state = fj.AugmentedState(xz[:, :16], xz[:, 16:])
    with torch.no_grad():
        (x, eps), logabsdet = vae.encoder_coupling.inverse(state)
    assert torch.equal(x, state.data)
    assert not bool(eps.isnan().any() or logabsdet.isnan().any())


# ---------------------------------------------------------------------------
# Training stability (the 10,000-step runs are a script; see docs/robustness.md).
# ---------------------------------------------------------------------------


def load_stability_script():
    spec = importlib.util.spec_from_file_location("stability_runs", STABILITY_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,dataset,steps",
    [
        ("realnvp", "digits", 1000),
        ("nice", "digits", 1000),
        ("vae", "digits", 1000),
        ("realnvp", "mnist5k", 300),
        ("nice", "mnist5k", 300),
        ("vae", "mnist5k", 300),
    ],
)
def test_default_models_train_without_non_finite_values(model, dataset, steps):
    summary = load_stability_script().run(model, dataset, steps)
    assert summary["non_finite_losses"] == 0
    assert math.isfinite(summary["test_loss_nats"])


def test_stability_script_runs_a_few_steps():
    summary = load_stability_script().run("realnvp", "digits", steps=3)
    assert summary["steps"] == 3 and math.isfinite(summary["test_loss_nats"])


@pytest.mark.parametrize("value", sorted(BAD_VALUES))
@pytest.mark.parametrize("where", ["x", "eps"])
def test_joint_vae_log_prob_of_non_finite_inputs(value, where):
    """JointVAE.log_prob(x, eps) goes through Flow.log_prob: the same documented values
    with validate=False; with validate=True (JointVAE's default) a non-finite x raises."""
    torch.manual_seed(0)
    vae = fj.JointVAE(FEATURES, 3, hidden_features=16, likelihood="gaussian", validate=False)
    randomize_parameters(vae.eval(), 0.1)
    x, eps = torch.randn(4, FEATURES), torch.randn(4, 3)
    bad_x = dirty(x, BAD_VALUES[value], 2) if where == "x" else x
    bad_eps = dirty(eps, BAD_VALUES[value], 1) if where == "eps" else eps
    with torch.no_grad():
        reference = vae.log_prob(x, eps)
        log_prob = vae.log_prob(bad_x, bad_eps)
    assert bool(log_prob[1].isnan()) or log_prob[1].item() == -math.inf, log_prob[1]
    torch.testing.assert_close(log_prob[[0, 2, 3]], reference[[0, 2, 3]])
    if where == "x":
        vae.validate = True
        with pytest.raises(ValueError, match=r"inputs must be finite.*rows \[1\]"):
            vae.log_prob(bad_x, bad_eps)
