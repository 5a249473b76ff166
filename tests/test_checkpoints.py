"""Checkpoints: exact resume, clear errors on damaged files, no unpickling, atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import flowjoint as fj
from flowjoint.train import fit, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def levels_data(n, features, seed):
    """Integer levels 0..16 with some structure, float32 (n, features)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, generator=generator) * 12
    noise = torch.rand(n, features, generator=generator) * 4
    return (base + noise).floor().clamp(0, 16)


def binary_data(n, features, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, features), 0.3), generator=generator)


# name -> (model factory, train, val, fit options). Each exercises a different piece of
# state: the global torch RNG (VAE noise), the shuffling/dequantization generator,
# ActNorm's data-dependent initialisation, BatchNorm's running statistics, a schedule.
CASES = {
    "realnvp_dequantized_cosine": (
        lambda: fj.realnvp(8, num_layers=4, hidden_features=16),
        lambda: (levels_data(96, 8, 0), levels_data(32, 8, 1)),
        dict(levels=17, schedule="cosine"),
    ),
    "nice_actnorm_onecycle": (
        lambda: fj.nice(8, num_layers=4, hidden_features=16),
        lambda: (torch.randn(96, 8), torch.randn(32, 8)),
        dict(schedule="onecycle"),
    ),
    "batchnorm_flow": (
        lambda: fj.Flow(
            fj.Compose(
                [
                    fj.AffineCoupling(torch.arange(4) < 2, 16),
                    fj.BatchNorm(4),
                    fj.AffineCoupling(torch.arange(4) >= 2, 16),
                ]
            ),
            fj.StandardNormal(4),
        ),
        lambda: (torch.randn(96, 4), torch.randn(32, 4)),
        dict(),
    ),
    "joint_vae": (
        lambda: fj.JointVAE(12, 3, hidden_features=16),
        lambda: (binary_data(96, 12, 0), binary_data(32, 12, 1)),
        dict(),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_continues_with_the_uninterrupted_losses(tmp_path, name):
    build, data, options = CASES[name]
    train, val = data()
    kw = dict(epochs=5, batch_size=32, lr=3e-3, progress=False, seed=3, **options)

    torch.manual_seed(0)
    full_model = build()
    full = fit(full_model, train, val, checkpoint_dir=tmp_path / "full", **kw)

    # The same run, interrupted after epoch 2 (a callback stops it, as a crash would
    # after last.pt was written), then resumed in a fresh model from last.pt.
    torch.manual_seed(0)
    cut = fit(
        build(),
        train,
        val,
        checkpoint_dir=tmp_path / "cut",
        callback=lambda row: row["epoch"] >= 2,
        **kw,
    )
    assert cut.stop_reason == "callback" and len(cut.history) == 2
    torch.manual_seed(12345)  # a different global RNG state and different initial weights
    resumed_model = build()
    resumed = fit(resumed_model, train, val, resume=tmp_path / "cut" / "last.pt", **kw)

    full_losses = [(r["train_loss"], r["val_loss"]) for r in full.history]
    resumed_losses = [(r["train_loss"], r["val_loss"]) for r in resumed.history]
    assert resumed_losses == full_losses  # exactly, epochs 3 to 5 included
    assert resumed.best_epoch == full.best_epoch
    for (key, a), (_, b) in zip(
        full_model.state_dict().items(), resumed_model.state_dict().items()
    ):
        assert torch.equal(a, b), f"{key} differs after resume"


def test_checkpoint_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = fj.realnvp(6, num_layers=3, hidden_features=8)
    state = {"model": model.state_dict(), "epoch": 3, "history": [{"loss": 1.5}]}
    save_checkpoint(state, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["epoch"] == 3 and loaded["history"] == [{"loss": 1.5}]
    clone = fj.realnvp(6, num_layers=3, hidden_features=8)
    clone.load_state_dict(loaded["model"])
    x = torch.randn(5, 6)
    assert torch.equal(clone.log_prob(x), model.log_prob(x))


# ---------------------------------------------------------------------------
# Damaged files.
# ---------------------------------------------------------------------------


def good_checkpoint(path):
    torch.manual_seed(0)
    model = fj.realnvp(6, num_layers=3, hidden_features=8)
    save_checkpoint({"model": model.state_dict(), "epoch": 1}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "damage",
    ["truncated_half", "truncated_to_10_bytes", "empty", "random_bytes", "flipped_bytes"],
)
def test_damaged_checkpoint_gives_a_clear_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "damaged.pt"
    data = good_checkpoint(path)
    if damage == "truncated_half":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "truncated_to_10_bytes":
        path.write_bytes(data[:10])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "random_bytes":
        path.write_bytes(os.urandom(len(data)))
    else:  # corrupt the zip directory at the end of the file
        tail = bytes(b ^ 0xFF for b in data[-200:])
        path.write_bytes(data[:-200] + tail)
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        load_checkpoint(path)
    # fit's resume goes through the same loader
    with pytest.raises(ValueError, match="damaged.pt"):
        fit(
            fj.realnvp(6, num_layers=3, hidden_features=8),
            torch.randn(8, 6),
            resume=path,
            epochs=2,
            progress=False,
        )


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here.pt"):
        load_checkpoint(tmp_path / "nothing-here.pt")


class Payload:
    """Unpickling this object would create a file: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_loading_never_unpickles_arbitrary_objects(tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": Payload(marker)}, path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)
    assert not marker.exists(), "loading a checkpoint ran code from the file"
    assert calls and all(flag is True for flag in calls), f"torch.load weights_only={calls}"
    # The payload is real: unpickling without weights_only would have run it.
    real_load(path, weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------------
# Interrupted writes.
# ---------------------------------------------------------------------------


def test_failed_write_keeps_the_good_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    good = good_checkpoint(path)

    def crash_midway(state, file, *args, **kwargs):
        file.write(b"PK\x03\x04 partial data")  # some bytes reach the disk, then a crash
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    assert path.read_bytes() == good
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


CHILD = textwrap.dedent(
    """
    import io, sys, time, torch
    from flowjoint.train import save_checkpoint

    real_save = torch.save

    def slow_save(state, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(state, buffer)
        data = buffer.getvalue()
        file.write(data[: len(data) // 2])
        file.flush()
        print("half written", flush=True)
        time.sleep(60)  # killed here
        file.write(data[len(data) // 2 :])

    torch.save = slow_save
    save_checkpoint({"model": {"w": torch.randn(100_000)}, "epoch": 2}, sys.argv[1])
    """
)


def test_process_killed_mid_write_never_replaces_a_good_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    good = good_checkpoint(path)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "half written"
        child.kill()  # SIGKILL: no cleanup handlers run
    finally:
        child.wait(timeout=30)
    assert path.read_bytes() == good
    assert load_checkpoint(path)["epoch"] == 1
    # The half-written temporary file is a hidden sibling, never the checkpoint itself.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(name.startswith(".last.pt.") and name.endswith(".tmp") for name in leftovers)
