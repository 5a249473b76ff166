"""Checkpoints: exact resume, refusals, detected corruption, no unpickling, atomic writes."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import flowjoint as fj
from flowjoint.checkpoints import MAGIC, load_checkpoint, save_checkpoint
from flowjoint.train import fit

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


def normal_data(n, features, seed):
    return torch.randn(n, features, generator=torch.Generator().manual_seed(seed))


def batchnorm_flow():
    layers = [
        fj.AffineCoupling(torch.arange(4) < 2, 16),
        fj.BatchNorm(4),
        fj.AffineCoupling(torch.arange(4) >= 2, 16),
    ]
    return fj.Flow(fj.Compose(layers), fj.StandardNormal(4))


# name -> (model factory, data, fit options). Each exercises a different piece of state:
# the model's draws (dequantization, the VAE's eps), the shuffling, ActNorm's
# data-dependent initialisation, BatchNorm's running statistics, a schedule, a learned
# dequantization's parameters and its Adam moments.
CASES = {
    "realnvp_uniform_dequantization_cosine": (
        lambda: fj.realnvp(8, 4, 16, preprocessing=fj.pixel_preprocessing(17)),
        lambda: (levels_data(96, 8, 0), levels_data(32, 8, 1)),
        dict(schedule="cosine"),
    ),
    "realnvp_variational_dequantization": (
        lambda: fj.realnvp(
            8,
            2,
            16,
            preprocessing=fj.pixel_preprocessing(
                17, dequantization="variational", shape=8, hidden_features=8
            ),
        ),
        lambda: (levels_data(96, 8, 0), levels_data(32, 8, 1)),
        dict(),
    ),
    "nice_actnorm_onecycle": (
        lambda: fj.nice(8, num_layers=4, hidden_features=16),
        lambda: (normal_data(96, 8, 0), normal_data(32, 8, 1)),
        dict(schedule="onecycle"),
    ),
    "batchnorm_flow": (
        batchnorm_flow,
        lambda: (normal_data(96, 4, 0), normal_data(32, 4, 1)),
        dict(),
    ),
    "joint_vae": (
        lambda: fj.JointVAE(12, 3, hidden_features=16),
        lambda: (binary_data(96, 12, 0), binary_data(32, 12, 1)),
        dict(),
    ),
}


def options(extra):
    return dict(epochs=5, batch_size=32, lr=3e-3, progress=False, seed=3, **extra)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), f"{key} differs"
        else:  # a layer's saved settings (its extra state)
            assert a[key] == b[key], f"{key} differs"


def full_and_cut(tmp_path, build, train, val, kw, stop_after=2):
    """An uninterrupted run, and the same run stopped after ``stop_after`` epochs."""
    torch.manual_seed(0)
    full_model = build()
    full = fit(full_model, train, val, checkpoint_dir=tmp_path / "full", **kw)
    torch.manual_seed(0)
    cut = fit(
        build(),
        train,
        val,
        checkpoint_dir=tmp_path / "cut",
        callback=lambda row: row["epoch"] >= stop_after,
        **kw,
    )
    assert cut.stop_reason == "callback" and len(cut.history) == stop_after
    return full_model, full


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_continues_with_the_uninterrupted_losses_and_weights(tmp_path, name):
    build, data, extra = CASES[name]
    train, val = data()
    kw = options(extra)
    full_model, full = full_and_cut(tmp_path, build, train, val, kw)

    torch.manual_seed(12345)  # a different global RNG state and different initial weights
    resumed_model = build()
    resumed = fit(
        resumed_model,
        train,
        val,
        resume=tmp_path / "cut" / "last.pt",
        checkpoint_dir=tmp_path / "cut",
        **kw,
    )
    full_rows = [(r["train_loss"], r["val_loss"], r["lr"]) for r in full.history]
    resumed_rows = [(r["train_loss"], r["val_loss"], r["lr"]) for r in resumed.history]
    assert resumed_rows == full_rows  # exactly, epochs 3 to 5 included
    assert resumed.best_epoch == full.best_epoch
    assert_same_weights(full_model.state_dict(), resumed_model.state_dict())
    # the last checkpoints agree too: optimizer moments, schedule
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert_same_weights(a["model"], b["model"])
    assert a["scheduler"] == b["scheduler"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, moments in a["optimizer"]["state"].items():
        for part, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][key][part]), (key, part)


def test_epochs_may_grow_without_a_schedule(tmp_path):
    train, val = levels_data(64, 8, 0), levels_data(32, 8, 1)
    build = lambda: fj.realnvp(8, 2, 16, preprocessing=fj.pixel_preprocessing(17))  # noqa: E731
    torch.manual_seed(0)
    long_model = build()
    long = fit(long_model, train, val, **options({}))
    torch.manual_seed(0)
    fit(build(), train, val, checkpoint_dir=tmp_path, **{**options({}), "epochs": 3})
    resumed_model = build()
    resumed = fit(resumed_model, train, val, resume=tmp_path / "last.pt", **options({}))
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in long.history]
    assert_same_weights(long_model.state_dict(), resumed_model.state_dict())


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
    assert list(tmp_path.iterdir()) == [tmp_path / "c.pt"]  # no temporary file left
    assert (tmp_path / "c.pt").read_bytes().startswith(MAGIC)


# ---------------------------------------------------------------------------
# What resuming refuses.
# ---------------------------------------------------------------------------


@pytest.fixture
def trained(tmp_path):
    """A finished 2-epoch run: its folder (last.pt, best.pt), data and options."""
    train, val = levels_data(64, 8, 0), levels_data(32, 8, 1)
    kw = dict(epochs=2, batch_size=32, progress=False, schedule="cosine")
    torch.manual_seed(0)
    model = fj.realnvp(8, 2, 16, preprocessing=fj.pixel_preprocessing(17))
    fit(model, train, val, checkpoint_dir=tmp_path / "run", **kw)
    return tmp_path / "run", train, val, kw


def realnvp17(hidden=16, alpha=0.01, mask_pattern="halves"):
    torch.manual_seed(1)
    preprocessing = fj.pixel_preprocessing(17, alpha=alpha)
    return fj.realnvp(8, 2, hidden, mask_pattern=mask_pattern, preprocessing=preprocessing)


def test_resume_from_best_pt_says_it_holds_weights_only(trained):
    folder, train, val, kw = trained
    with pytest.raises(ValueError, match=r"best.pt.*weights only.*resume from last.pt"):
        fit(realnvp17(), train, val, resume=folder / "best.pt", **kw)
    best = load_checkpoint(folder / "best.pt")  # what the message suggests works
    realnvp17().load_state_dict(best["model"])


@pytest.mark.parametrize(
    "model, match",
    [
        (lambda: realnvp17(hidden=8), r"another model: .*out_features=16.*out_features=8"),
        (lambda: realnvp17(alpha=0.05), r"another model: .*Logit\(alpha=0.01\).*alpha=0.05"),
        (lambda: fj.nice(8, 2, 16, preprocessing=fj.pixel_preprocessing(17)), "another model"),
    ],
    ids=["other_width", "other_logit_alpha", "other_coupling"],
)
def test_resume_refuses_a_checkpoint_of_another_model(trained, model, match):
    folder, train, val, kw = trained
    with pytest.raises(ValueError, match=match):
        fit(model(), train, val, resume=folder / "last.pt", **kw)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(batch_size=16), "batch_size=32 in the checkpoint, 16 here"),
        (dict(lr=1e-2), "lr=0.001 in the checkpoint, 0.01 here"),
        (dict(seed=1), "seed=0 in the checkpoint, 1 here"),
        (dict(schedule=None), "schedule='cosine' in the checkpoint, None here"),
        (dict(epochs=4), "epochs=2 in the checkpoint, 4 here"),  # the schedule spans them
        (dict(clip_grad_norm=None), "clip_grad_norm=100.0 in the checkpoint, None here"),
    ],
)
def test_resume_refuses_other_options(trained, change, match):
    folder, train, val, kw = trained
    with pytest.raises(ValueError, match=match):
        fit(realnvp17(), train, val, resume=folder / "last.pt", **{**kw, **change})


def test_resume_refuses_other_data_and_a_swapped_file(trained, tmp_path):
    folder, train, val, kw = trained
    with pytest.raises(ValueError, match="other train data"):
        fit(realnvp17(), train.flip(0), val, resume=folder / "last.pt", **kw)
    with pytest.raises(ValueError, match="other val data"):
        fit(realnvp17(), train, val[:10], resume=folder / "last.pt", **kw)
    # A valid checkpoint of another run put in place of last.pt passes the digest
    # (it detects damage, not substitution) and is refused by the resume check.
    other = levels_data(64, 8, 5)
    fit(realnvp17(), other, val, checkpoint_dir=tmp_path / "other", **kw)
    shutil.copy(tmp_path / "other" / "last.pt", folder / "last.pt")
    assert load_checkpoint(folder / "last.pt")["epoch"] == 2
    with pytest.raises(ValueError, match="other train data"):
        fit(realnvp17(), train, val, resume=folder / "last.pt", **kw)


def test_resume_restores_the_saved_masks(trained, tmp_path):
    """Masks are state: resuming into a model built with other masks continues the
    checkpointed model (the couplings rebuild their indices from the saved mask)."""
    folder, train, val, kw = trained
    checkpoint = load_checkpoint(folder / "last.pt")["model"]
    model = realnvp17(mask_pattern="checkerboard")
    fit(model, train, val, resume=folder / "last.pt", **kw)  # nothing left to train
    for key, value in model.state_dict().items():
        if key.endswith("mask"):
            assert torch.equal(value, checkpoint[key])
    halves = realnvp17()
    halves.load_state_dict(load_checkpoint(folder / "best.pt")["model"])  # fit restored best
    x = torch.randint(0, 17, (5, 8)).float()
    torch.manual_seed(5)  # the same dequantization draws for both
    expected = halves.elbo(x)
    torch.manual_seed(5)
    assert torch.equal(model.elbo(x), expected)


# ---------------------------------------------------------------------------
# Damaged and foreign files.
# ---------------------------------------------------------------------------


def good_checkpoint(path):
    torch.manual_seed(0)
    model = fj.realnvp(6, num_layers=3, hidden_features=8)
    save_checkpoint({"model": model.state_dict(), "epoch": 1}, path)
    return path.read_bytes()


def resume_into_fresh_model(path):
    return fit(
        fj.realnvp(6, num_layers=3, hidden_features=8),
        torch.randn(8, 6),
        resume=path,
        epochs=2,
        progress=False,
    )


@pytest.mark.parametrize(
    "damage",
    [
        "truncated_half",
        "truncated_in_header",
        "truncated_in_magic",
        "empty",
        "random_bytes",
        "flipped_tail",
    ],
)
def test_damaged_checkpoint_gives_a_clear_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "damaged.pt"
    data = good_checkpoint(path)
    damaged = {
        "truncated_half": data[: len(data) // 2],
        "truncated_in_header": data[: len(MAGIC) + 10],
        "truncated_in_magic": data[:10],
        "empty": b"",
        "random_bytes": os.urandom(len(data)),
        "flipped_tail": data[:-200] + bytes(b ^ 0xFF for b in data[-200:]),
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="damaged.pt"):
        resume_into_fresh_model(path)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here.pt"):
        load_checkpoint(tmp_path / "nothing-here.pt")
    with pytest.raises(IsADirectoryError, match="is a folder.*last.pt"):
        load_checkpoint(tmp_path)


def test_a_plain_torch_save_file_is_not_a_checkpoint(tmp_path):
    """The previous format (torch.save alone) carried no digest; it is refused."""
    path = tmp_path / "old.pt"
    torch.manual_seed(0)
    torch.save({"model": fj.realnvp(6, 3, 8).state_dict(), "epoch": 1}, path)
    with pytest.raises(ValueError, match="old.pt.*is not a flowjoint checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="old.pt.*is not a flowjoint checkpoint"):
        resume_into_fresh_model(path)


def tensor_records(payload):
    """(name, offset, size) of every stored tensor inside a torch.save zip payload."""
    records = []
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        for info in archive.infolist():
            if "/data/" not in info.filename:
                continue
            start = info.header_offset
            name_length, extra_length = struct.unpack("<HH", payload[start + 26 : start + 30])
            offset = start + 30 + name_length + extra_length
            records.append((info.filename, offset, info.file_size))
    return records


def flip4(data, offset):
    offset = min(offset, len(data) - 4)
    return data[:offset] + bytes(b ^ 0x5A for b in data[offset : offset + 4]) + data[offset + 4 :]


def test_four_flipped_bytes_anywhere_are_detected(tmp_path):
    """Every tensor record of a real last.pt, and 40 offsets spread over the file."""
    folder = tmp_path / "run"
    torch.manual_seed(0)
    fit(
        fj.realnvp(6, 3, 8),
        torch.randn(32, 6),
        torch.randn(8, 6),
        epochs=1,
        batch_size=16,
        checkpoint_dir=folder,
        progress=False,
    )
    data = (folder / "last.pt").read_bytes()
    header = len(MAGIC) + 32
    payload = data[header:]
    records = tensor_records(payload)
    assert len(records) >= 60  # model, Adam moments and steps, best weights, RNG states
    offsets = [header + offset + size // 2 for _, offset, size in records]
    offsets += [header + (len(payload) - 4) * k // 39 for k in range(40)]
    offsets += [0, len(MAGIC) - 2, len(MAGIC) + 5]  # magic and digest
    path = tmp_path / "flipped" / "last.pt"
    path.parent.mkdir()
    for offset in offsets:
        path.write_bytes(flip4(data, offset))
        with pytest.raises(ValueError, match=r"flipped/last\.pt"):
            load_checkpoint(path)
    for _, offset, size in records[::4]:
        path.write_bytes(flip4(data, header + offset + size // 2))
        with pytest.raises(ValueError, match=r"flipped/last\.pt.*corrupt"):
            resume_into_fresh_model(path)
    # Without the digest the same flips load as if nothing happened: torch.load does
    # not check tensor data, so this test fails on a checkpoint without its own check.
    silent = 0
    for _, offset, size in records:
        changed = flip4(payload, offset + size // 2)
        try:
            torch.load(io.BytesIO(changed), weights_only=True)
            silent += 1
        except Exception:
            pass
    assert silent >= len(records) // 2, (silent, len(records))


class Payload:
    """Unpickling this object would create a file: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_loading_never_unpickles_arbitrary_objects(tmp_path, monkeypatch):
    """Even inside a well-formed file with a correct digest."""
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.ones(2)}, "extra": Payload(marker)}, buffer)
    payload = buffer.getvalue()
    path = tmp_path / "evil.pt"
    path.write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(ValueError, match="cannot read checkpoint.*evil.pt"):
        load_checkpoint(path)
    assert not marker.exists(), "loading a checkpoint ran code from the file"
    assert calls and all(flag is True for flag in calls), f"torch.load weights_only={calls}"
    with pytest.raises(TypeError, match="weights_only"):  # nor is such a state written
        save_checkpoint({"model": {}, "extra": Payload(marker)}, tmp_path / "never.pt")
    assert not marker.exists() and not (tmp_path / "never.pt").exists()
    real_load(io.BytesIO(payload), weights_only=False)  # the payload is real
    assert marker.exists()


# ---------------------------------------------------------------------------
# Interrupted writes.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_failed_write_keeps_the_good_checkpoint_and_leaves_no_temp_file(
    tmp_path, monkeypatch, where
):
    path = tmp_path / "last.pt"
    good = good_checkpoint(path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt if where == "fsync" else OSError("disk full")

    monkeypatch.setattr(os, where, crash)
    with pytest.raises(KeyboardInterrupt if where == "fsync" else OSError):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


CHILD = textwrap.dedent(
    """
    import os, sys, time, torch
    from flowjoint.checkpoints import save_checkpoint

    real_fdopen = os.fdopen

    class HalfThenHang:
        # The temporary file: writes stop partway through the payload, then wait.
        def __init__(self, file):
            self.file, self.written = file, 0
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.file.close()
        def write(self, data):
            if self.written + len(data) > 200_000:
                self.file.write(data[: 200_000 - self.written])
                self.file.flush()
                print("half written", flush=True)
                time.sleep(60)  # killed here
            self.file.write(data)
            self.written += len(data)
        def flush(self):
            self.file.flush()
        def fileno(self):
            return self.file.fileno()

    os.fdopen = lambda fd, mode: HalfThenHang(real_fdopen(fd, mode))
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
        partial = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
        assert len(partial) == 1 and partial[0].stat().st_size >= 200_000
        child.kill()  # SIGKILL: no cleanup handlers run
    finally:
        child.wait(timeout=60)
    assert path.read_bytes() == good
    assert load_checkpoint(path)["epoch"] == 1
    # The half-written temporary file is a hidden sibling, never the checkpoint itself.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(name.startswith(".last.pt.") and name.endswith(".tmp") for name in leftovers)


def test_resuming_a_run_that_stopped_early_trains_nothing(tmp_path):
    torch.manual_seed(0)
    train, val = torch.randn(200, 2), torch.randn(50, 2) * 3
    options = dict(epochs=30, batch_size=100, patience=1, lr=5e-2, progress=False)
    first = fit(fj.realnvp(2, 2, 8), train, val, checkpoint_dir=tmp_path, **options)
    assert first.stop_reason == "early_stopping" and len(first.history) < 30
    saved = (tmp_path / "last.pt").read_bytes()
    resumed = fit(
        fj.realnvp(2, 2, 8),
        train,
        val,
        checkpoint_dir=tmp_path,
        resume=tmp_path / "last.pt",
        **options,
    )
    assert resumed.stop_reason == "early_stopping"
    assert len(resumed.history) == len(first.history)
    assert (tmp_path / "last.pt").read_bytes() == saved  # nothing trained, nothing rewritten
