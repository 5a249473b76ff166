import math

import pytest
import torch
from torch import nn

from flowjoint import realnvp
from flowjoint.data import make_toy
from flowjoint.preprocess import Preprocessed, pixel_preprocessing
from flowjoint.train import (
    Objective,
    TrainingDiverged,
    evaluate,
    fit,
    load_checkpoint,
    save_checkpoint,
)


def _data(n=96, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * torch.tensor([1.0, 2.0, 0.5, 1.0]) + 1.0


def _model(seed=0):
    torch.manual_seed(seed)
    return realnvp(4, num_layers=2, hidden_features=16, actnorm=True)


KW = dict(epochs=6, batch_size=32, lr=3e-3, progress=False)


def test_fit_lowers_validation_loss_and_restores_best():
    train, val = make_toy("moons", 512, seed=0), make_toy("moons", 256, seed=1)
    torch.manual_seed(0)
    model = realnvp(2, num_layers=4, hidden_features=32, actnorm=True)
    model.log_prob(train)  # initialise ActNorm: `before` is the fitted Gaussian's loss
    before = -evaluate(model.log_prob, val).mean().item()
    result = fit(model, train, val, **{**KW, "epochs": 15, "lr": 1e-2})
    after = -evaluate(model.log_prob, val).mean().item()
    assert after < before - 0.3
    losses = [row["val_loss"] for row in result.history]
    assert result.best_val_loss == min(losses)
    assert after == pytest.approx(result.best_val_loss, abs=1e-5)  # best weights restored
    row = result.history[0]
    assert row["val_bits_per_dim"] == pytest.approx(row["val_loss"] / (2 * math.log(2)))


def test_fit_is_seeded():
    a = fit(_model(), _data(), _data(seed=1), seed=3, **KW)
    b = fit(_model(), _data(), _data(seed=1), seed=3, **KW)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    c = fit(_model(), _data(), _data(seed=1), seed=4, **KW)
    assert [r["train_loss"] for r in a.history] != [r["train_loss"] for r in c.history]


@pytest.mark.parametrize("schedule", [None, "cosine", "onecycle"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, schedule):
    levels = 17
    train = torch.randint(0, levels, (96, 4)).float()
    val = torch.randint(0, levels, (40, 4)).float()

    def build():
        torch.manual_seed(0)
        return Preprocessed(realnvp(4, 2, 16, actnorm=True), pixel_preprocessing(levels))

    kw = dict(KW, schedule=schedule, levels=levels, seed=5)
    full = fit(build(), train, val, checkpoint_dir=tmp_path / "full", **kw)
    first = fit(
        build(),
        train,
        val,
        checkpoint_dir=tmp_path / "cut",
        callback=lambda row: row["epoch"] == 3,
        **kw,
    )
    assert first.stop_reason == "callback" and len(first.history) == 3
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    resumed_model = build()
    resumed = fit(resumed_model, train, val, resume=tmp_path / "cut" / "last.pt", **kw)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in full.history]


def test_elbo_is_the_objective_when_present():
    class Bound(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))
            self.calls = []

        def elbo(self, x):
            self.calls.append("elbo")
            return -(x - self.w).square().sum(-1)

        def log_prob(self, x):
            raise AssertionError("log_prob must not be used when elbo exists")

    model = Bound()
    fit(model, _data() + 2, None, **{**KW, "lr": 0.1})
    assert model.calls and model.w.item() > 0.5
    assert Objective(model).uses_bound


def test_early_stopping(tmp_path):
    train, val = _data(64), _data(64, seed=1) + 30.0  # validation gets worse as train fits
    result = fit(_model(), train, val, patience=2, **{**KW, "epochs": 50})
    assert result.stop_reason == "early_stopping"
    assert len(result.history) == result.best_epoch + 2


class Exploding(nn.Module):
    def __init__(self, blow_up_at):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.steps = 0
        self.blow_up_at = blow_up_at

    def log_prob(self, x):
        self.steps += 1
        out = -(x - self.w).square().sum(-1)
        return out * math.nan if self.steps >= self.blow_up_at else out


def test_nan_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    model = Exploding(blow_up_at=10)  # 3 steps per epoch on 96 examples
    with pytest.raises(TrainingDiverged, match="non-finite training loss.*epoch 4.*last.pt"):
        fit(model, _data(), None, checkpoint_dir=tmp_path, **KW)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 3
    assert math.isfinite(state["model"]["w"].item())


def test_checkpoint_atomic_and_corrupt_file_named(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="ck.pt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "obj": Exploding(1)}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"schedule": "linear"}, "schedule"),
        ({"patience": 0}, "patience"),
        ({"clip_grad_norm": -1.0}, "clip_grad_norm"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fit(_model(), _data(), None, **{**KW, **kwargs})


def test_fit_rejects_bad_data():
    with pytest.raises(TypeError, match="train"):
        fit(_model(), torch.ones(10, dtype=torch.long), None, **KW)
    with pytest.raises(ValueError, match="val"):
        fit(_model(), _data(), torch.ones(4, 3), **KW)


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
    plain_losses = [r["train_loss"] for r in plain.history]
    wrapped_losses = [r["train_loss"] for r in wrapped.history]
    assert wrapped_losses == pytest.approx(plain_losses, rel=1e-6)
    assert (tmp_path / "ck" / "last.pt").exists()
