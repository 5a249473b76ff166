"""fit: one objective for every Flow, seeding, early stopping, non-finite values, arguments."""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest
import torch

import flowjoint as fj
from flowjoint.checkpoints import load_checkpoint
from flowjoint.fitting import epoch_seed, split_batches
from flowjoint.progress import Progress
from flowjoint.toys import make_toy
from flowjoint.train import FitOptions, Objective, TrainingDiverged, evaluate, fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=96, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.tensor([1.0, 2.0, 0.5, 1.0]) + 1.0


def _model(seed=0):
    torch.manual_seed(seed)
    return fj.realnvp(4, num_layers=2, hidden_features=16, actnorm=True)


KW = dict(epochs=6, batch_size=32, lr=3e-3, progress=False)


def losses(result, key="train_loss"):
    return [row[key] for row in result.history]


class Counting(fj.Transform):
    """Identity with a parameter; at call ``at`` it does ``action`` (a stand-in for trouble)."""

    def __init__(self, features=4, at=None, action="nan"):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros(features))
        self.calls, self.at, self.action = 0, at, action

    def forward(self, inputs, context=None):
        self.calls += 1
        outputs = inputs + self.shift
        if self.calls == self.at:
            if self.action == "nan":
                outputs = outputs * math.nan
            elif self.action == "interrupt":
                raise KeyboardInterrupt
            elif self.action == "inf_gradient":
                outputs = inputs + InfiniteGradient.apply(self.shift)
        return outputs, inputs.new_zeros(inputs.shape[0])

    def inverse(self, inputs, context=None):
        return inputs - self.shift, inputs.new_zeros(inputs.shape[0])


class InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def counting_flow(at=None, action="nan"):
    torch.manual_seed(0)
    layers = [fj.AffineCoupling(torch.arange(4) < 2, 8), Counting(4, at, action)]
    return fj.Flow(fj.Compose(layers), fj.StandardNormal(4))


# ---------------------------------------------------------------------------
# The objective and the run.
# ---------------------------------------------------------------------------


def test_fit_lowers_validation_loss_and_restores_best():
    train, val = make_toy("moons", 512, seed=0), make_toy("moons", 256, seed=1)
    torch.manual_seed(0)
    model = fj.realnvp(2, num_layers=4, hidden_features=32, actnorm=True)
    model.log_prob(train)  # initialise ActNorm: `before` is the fitted Gaussian's loss
    before = -evaluate(model.log_prob, val).mean().item()
    result = fit(model, train, val, **{**KW, "epochs": 15, "lr": 1e-2})
    after = -evaluate(model.log_prob, val).mean().item()
    assert after < before - 0.3
    assert result.best_val_loss == min(losses(result, "val_loss"))
    assert after == pytest.approx(result.best_val_loss, abs=1e-5)  # best weights restored
    assert not model.training
    row = result.history[0]
    assert row["val_bits_per_dim"] == pytest.approx(row["val_loss"] / (2 * math.log(2)))


def test_fit_equals_a_hand_written_adam_loop():
    """The same run written out: seed each epoch, shuffle, near-equal batches,
    -mean(elbo), clip, Adam."""
    train = torch.randint(0, 17, (90, 4)).float()
    stack = lambda: fj.realnvp(  # noqa: E731
        4, 2, 16, preprocessing=fj.pixel_preprocessing(17, alpha=0.05)
    )
    torch.manual_seed(0)
    model = stack()
    result = fit(model, train, epochs=3, batch_size=32, lr=3e-3, seed=7, progress=False)

    torch.manual_seed(0)
    reference = stack()
    optimizer = torch.optim.Adam(reference.parameters(), lr=3e-3)
    expected = []
    for epoch in range(1, 4):
        seed = epoch_seed(7, epoch)
        torch.manual_seed(seed)  # the model's draws (dequantization)
        generator = torch.Generator().manual_seed(seed)  # the shuffling
        order, total = torch.randperm(90, generator=generator), 0.0
        for index in order.tensor_split(3):  # ceil(90 / 32) = 3 batches of 30
            loss = -reference.elbo(train[index]).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), 100.0)
            optimizer.step()
            total += loss.item() * len(index)
        expected.append(total / 90)
    assert losses(result) == pytest.approx(expected, rel=1e-6)
    for (key, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


def test_objective_is_elbo_for_every_flow():
    x = torch.randint(0, 2, (8, 6)).float()
    torch.manual_seed(0)
    vae = fj.JointVAE(6, 2, hidden_features=8)
    with torch.random.fork_rng():
        expected = vae.elbo(x)
    assert torch.equal(Objective(vae)(x), expected)
    flow = fj.realnvp(6, 2, 8)
    assert torch.equal(Objective(flow)(x), flow.log_prob(x))
    with pytest.raises(TypeError, match="Flow"):
        Objective(torch.nn.Linear(2, 2))


def test_fit_never_calls_log_prob():
    calls = []

    class Spy(fj.Flow):
        def elbo(self, inputs, context=None, num_samples=1):
            calls.append("elbo")
            return super().elbo(inputs, context, num_samples)

        def log_prob(self, inputs, context=None):
            raise AssertionError("fit must train on elbo")

    torch.manual_seed(0)
    base = fj.realnvp(4, 2, 8)
    fit(Spy(base.transform, base.base), _data(), _data(seed=1), **{**KW, "epochs": 2})
    assert calls


def test_fit_is_seeded():
    a = fit(_model(), _data(), _data(seed=1), seed=3, **KW)
    torch.manual_seed(123)  # the global random state before fit does not matter
    b = fit(_model(), _data(), _data(seed=1), seed=3, **KW)
    assert losses(a) == losses(b)
    c = fit(_model(), _data(), _data(seed=1), seed=4, **KW)
    assert losses(a) != losses(c)


def test_epoch_seeds_are_distinct_and_64_bit():
    seeds = {epoch_seed(seed, epoch) for seed in range(20) for epoch in range(50)}
    assert len(seeds) == 1000 and all(0 <= s < 2**64 for s in seeds)
    assert epoch_seed(2**70, 1) != epoch_seed(0, 1)  # any non-negative int seeds a run


def test_early_stopping():
    train, val = _data(64), _data(64, seed=1) + 30.0  # validation gets worse as train fits
    result = fit(_model(), train, val, patience=2, **{**KW, "epochs": 50})
    assert result.stop_reason == "early_stopping"
    assert len(result.history) == result.best_epoch + 2


# ---------------------------------------------------------------------------
# Validation draws.
# ---------------------------------------------------------------------------


class Frozen(fj.Transform):
    """A parameter with zero gradient: Adam leaves it, so the weights never change."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, inputs, context=None):
        return inputs + 0.0 * self.w, inputs.new_zeros(inputs.shape[0])

    def inverse(self, inputs, context=None):
        return inputs, inputs.new_zeros(inputs.shape[0])


def test_validation_uses_the_same_draws_every_epoch():
    levels = torch.randint(0, 17, (64, 5)).float()
    model = fj.Flow(
        fj.Compose([*fj.pixel_preprocessing(17, alpha=0.05), Frozen()]), fj.StandardNormal(5)
    )
    result = fit(model, levels, levels, epochs=4, batch_size=32, progress=False)
    val = losses(result, "val_loss")
    assert val[0] == val[1] == val[2] == val[3]
    # the bound is stochastic: other draws give another value
    assert -model.elbo(levels).mean().item() != val[0]
    train = losses(result)
    assert len(set(train)) == 4  # training draws afresh every epoch


def test_validation_leaves_the_training_draws_alone():
    levels = torch.randint(0, 17, (64, 4)).float()

    def run(val):
        torch.manual_seed(0)
        model = fj.realnvp(4, 2, 8, preprocessing=fj.pixel_preprocessing(17, alpha=0.05))
        return losses(fit(model, levels, val, epochs=3, batch_size=32, progress=False))

    assert run(levels[:20]) == run(None)


# ---------------------------------------------------------------------------
# Data: numpy, dtypes, batch sizes.
# ---------------------------------------------------------------------------


def test_numpy_float_and_uint8_images_train_like_tensors():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 17, (24, 1, 8, 8)).astype(np.uint8)
    mask = fj.checkerboard_mask((1, 8, 8))

    def run(train):
        torch.manual_seed(0)
        layers = [*fj.pixel_preprocessing(17, alpha=0.05), fj.AffineCoupling(mask, 4)]
        model = fj.Flow(fj.Compose(layers), fj.StandardNormal((1, 8, 8)))
        return losses(fit(model, train, epochs=2, batch_size=12, progress=False))

    from_uint8 = run(pixels)
    assert from_uint8 == run(torch.from_numpy(pixels).float())
    assert all(math.isfinite(v) for v in from_uint8)
    continuous = rng.normal(size=(40, 4))  # float64 numpy into a float32 model
    torch.manual_seed(0)
    a = fit(fj.realnvp(4, 2, 8), continuous, epochs=2, batch_size=20, progress=False)
    torch.manual_seed(0)
    as_float32 = torch.from_numpy(continuous).float()
    b = fit(fj.realnvp(4, 2, 8), as_float32, epochs=2, batch_size=20, progress=False)
    assert losses(a) == losses(b)


def test_float32_data_into_a_float64_model():
    torch.manual_seed(0)
    model = fj.realnvp(4, 2, 8).double()
    fit(model, _data(), _data(seed=1), epochs=2, batch_size=32, progress=False)
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_batches_are_near_equal_and_cover_every_example():
    for n, size in [(97, 32), (33, 32), (1, 100), (100, 100), (101, 10), (5, 2)]:
        order = torch.randperm(n)
        parts = split_batches(order, size)
        sizes = [len(p) for p in parts]
        assert len(parts) == math.ceil(n / size) and max(sizes) <= size
        assert max(sizes) - min(sizes) <= 1
        assert torch.equal(torch.cat(parts), order)
        if n >= size:
            assert min(sizes) >= size // 2


def test_no_one_row_batch_for_batch_statistics():
    """97 = 3 * 32 + 1 once left a batch of one row, which BatchNorm cannot normalise."""
    torch.manual_seed(0)
    layers = [
        fj.AffineCoupling(torch.arange(4) < 2, 16),
        fj.BatchNorm(4),
        fj.AffineCoupling(torch.arange(4) >= 2, 16),
    ]
    model = fj.Flow(fj.Compose(layers), fj.StandardNormal(4))
    result = fit(model, _data(97), _data(10, seed=1), epochs=2, batch_size=32, progress=False)
    assert all(math.isfinite(v) for v in losses(result))


def test_a_single_example_and_an_empty_validation_set():
    torch.manual_seed(0)
    result = fit(fj.realnvp(4, 2, 8), _data(1), _data(0), epochs=2, progress=False)
    assert len(result.history) == 2 and math.isnan(result.history[0]["val_loss"])
    assert result.best_epoch == 2  # no validation: best = last


# ---------------------------------------------------------------------------
# Failures keep the last good checkpoint.
# ---------------------------------------------------------------------------


def test_nan_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    model = counting_flow(at=10)  # 3 steps per epoch on 96 examples: step 1 of epoch 4
    with pytest.raises(TrainingDiverged, match="non-finite training loss.*epoch 4.*last.pt"):
        fit(model, _data(), None, checkpoint_dir=tmp_path, **KW)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 3
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if torch.is_tensor(v))


def test_infinite_gradient_in_the_last_step_never_reaches_the_checkpoint(tmp_path):
    """Without clipping nothing checks the gradient; the weights are checked before saving."""
    model = counting_flow(at=9, action="inf_gradient")  # the last step of epoch 3
    with pytest.raises(TrainingDiverged, match="non-finite weights.*epoch 3.*last.pt"):
        fit(model, _data(), None, checkpoint_dir=tmp_path, clip_grad_norm=None, **KW)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if torch.is_tensor(v))
    with pytest.raises(TrainingDiverged, match="gradient norm"):
        fit(counting_flow(at=2, action="inf_gradient"), _data(), None, **KW)


def test_keyboard_interrupt_mid_epoch_keeps_a_checkpoint_that_resumes_exactly(tmp_path):
    kw = dict(KW, epochs=5, seed=1)
    full = fit(counting_flow(), _data(), _data(seed=1), **kw)
    # 3 steps and one validation pass per epoch: call 10 is step 2 of epoch 3
    with pytest.raises(KeyboardInterrupt):
        fit(
            counting_flow(at=10, action="interrupt"),
            _data(),
            _data(seed=1),
            checkpoint_dir=tmp_path,
            **kw,
        )
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
    torch.manual_seed(99)
    resumed = fit(counting_flow(), _data(), _data(seed=1), resume=tmp_path / "last.pt", **kw)
    assert losses(resumed) == losses(full)
    assert losses(resumed, "val_loss") == losses(full, "val_loss")


def test_a_raising_callback_propagates_and_the_epoch_is_saved(tmp_path):
    def callback(row):
        assert isinstance(row, dict)
        row["train_loss"] = -1.0  # a copy: the history is not changed
        if row["epoch"] == 2:
            raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        fit(_model(), _data(), None, checkpoint_dir=tmp_path, callback=callback, **KW)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2 and all(row["train_loss"] > 0 for row in state["history"])


# ---------------------------------------------------------------------------
# Progress off a terminal.
# ---------------------------------------------------------------------------


def test_progress_with_stderr_in_a_file_is_one_line_per_epoch(tmp_path, monkeypatch):
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:  # a real file, as with `2> log`: not a terminal
        monkeypatch.setattr(sys, "stderr", stderr)
        fit(
            fj.realnvp(2, 2, 8),
            torch.randn(64, 2),
            torch.randn(16, 2),
            epochs=4,
            batch_size=16,
            description="moons",
        )
        fit(fj.realnvp(2, 2, 8), torch.randn(64, 2), epochs=2, progress=False)
    text = log.read_bytes()
    assert b"\r" not in text
    lines = text.decode().splitlines()
    assert len(lines) == 4, lines
    for epoch, line in enumerate(lines, 1):
        assert line.startswith(f"moons: epoch {epoch}/4, loss ") and "bits/dim" in line


def test_progress_on_a_terminal_is_a_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    report = Progress(3, 0, "bar", True, stream=stream)
    report.epoch({"epoch": 1.0, "train_loss": 1.0, "val_bits_per_dim": 0.5, "seconds": 0.1}, True)
    report.close()
    assert report.bar is not None and "\r" in stream.getvalue()


# ---------------------------------------------------------------------------
# Arguments.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"weight_decay": -1e-3}, "weight_decay"),
        ({"weight_decay": math.inf}, "weight_decay"),
        ({"schedule": "linear"}, "schedule"),
        ({"patience": 0}, "patience"),
        ({"clip_grad_norm": -1.0}, "clip_grad_norm"),
        ({"clip_grad_norm": math.inf}, "clip_grad_norm"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.0}, "seed"),
        ({"learning_rate": 1e-3}, "learning_rate"),
        ({"options": {"epochs": 2}}, "options must be a FitOptions"),
        ({"callback": 3}, "callback"),
        ({"checkpoint_dir": 3}, "checkpoint_dir"),
        ({"schedule": lambda optimizer, steps: None}, "scheduler"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fit(_model(), _data(), None, **{**KW, **kwargs})


def test_numpy_numbers_are_accepted_as_options():
    options = FitOptions(epochs=np.int64(2), batch_size=np.int32(32), lr=np.float32(1e-3))
    assert options.epochs == 2 and type(options.epochs) is int and type(options.lr) is float
    assert len(fit(_model(), _data(), options=options, progress=False).history) == 2


def test_fit_rejects_bad_data_and_models(tmp_path):
    with pytest.raises(ValueError, match="train"):
        fit(_model(), torch.ones(10), None, **KW)
    with pytest.raises(ValueError, match="val"):
        fit(_model(), _data(), torch.ones(4, 3), **KW)
    with pytest.raises(ValueError, match=r"train must be finite.*rows \[3\]"):
        bad = _data()
        bad[3, 1] = math.nan
        fit(_model(), bad, None, **KW)
    with pytest.raises(TypeError, match="real numbers"):
        fit(_model(), np.ones((8, 4), dtype=complex), None, **KW)
    with pytest.raises(TypeError, match="Flow"):
        fit(torch.nn.Linear(4, 4), _data(), None, **KW)
    fixed = fj.Flow(fj.Compose([fj.ReversePermutation(4)]), fj.StandardNormal(4))
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(fixed, _data(), None, **KW)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="a_file.*not a writable folder"):
        fit(_model(), _data(), None, checkpoint_dir=a_file, **KW)


def test_fit_under_an_initialised_process_group_matches_single_process(tmp_path):
    # world_size 1 exercises the DistributedDataParallel path; the losses must equal
    # the plain run's (DDP averages gradients over ranks, here just one).
    import torch.distributed as dist

    plain = fit(_model(), _data(), _data(seed=1), **KW)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        wrapped = fit(_model(), _data(), _data(seed=1), checkpoint_dir=tmp_path / "ck", **KW)
    finally:
        dist.destroy_process_group()
    assert losses(wrapped) == pytest.approx(losses(plain), rel=1e-6)
    assert (tmp_path / "ck" / "last.pt").exists()


@pytest.mark.parametrize("examples", [1, 20, 50, 100, 250])
def test_onecycle_works_for_every_number_of_steps(examples):
    """10 steps at a 10% warm-up made torch's OneCycleLR divide by zero."""
    flow = fj.realnvp(2, num_layers=2, hidden_features=8)
    result = fit(
        flow, torch.randn(examples, 2), epochs=2, batch_size=10, schedule="onecycle", progress=False
    )
    assert len(result.history) == 2
