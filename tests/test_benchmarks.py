"""The benchmark scripts run end to end in a tiny mode, so that they cannot rot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import peers  # noqa: E402

TINY = ["--tiny", "--no-wait", "--max-load", "1.0", "--threads", "1"]


def test_peers_tiny_run(capsys):
    report = peers.main(TINY)
    out = capsys.readouterr().out
    assert "log_prob == dense change of variables" in out
    assert "flowjoint == raw, log_scale_bound=None" in out
    assert set(report["configs"]) == {c.label for c in peers.TINY_CONFIGS}
    for cfg in peers.TINY_CONFIGS:
        config = report["configs"][cfg.label]
        assert set(config["ops"]) == {"train step", "log_prob", "sample"}
        assert set(config["clamp cost"]) == set(config["ops"])
        for results in config["ops"].values():
            assert {"raw", "raw (A/A)", peers.UNCLAMPED, *cfg.libraries} <= set(results)
            assert results["raw"]["ratio"] == 1.0
            assert all(r["ms"] > 0 for r in results.values())
    images = [c for c in peers.TINY_CONFIGS if isinstance(c, peers.ImageConfig)]
    assert images and set(images[0].libraries) == {"flowjoint", "nflows", "normflows"}


def test_peers_check_catches_a_wrong_log_det(monkeypatch):
    """The float64 check is not vacuous: a raw model with a sign error fails it."""
    original = peers.RawRealNVP.log_prob
    monkeypatch.setattr(peers.RawRealNVP, "log_prob", lambda self, x: original(self, x) + 0.1)
    with pytest.raises(AssertionError, match="raw"):
        peers.check_correctness(peers.TINY_CONFIGS[0], [], print)


def test_peers_image_check_catches_a_wrong_log_det(monkeypatch):
    import peers_images

    original = peers_images.RawMultiscale.log_prob
    monkeypatch.setattr(
        peers_images.RawMultiscale, "log_prob", lambda self, x: original(self, x) * 1.001
    )
    with pytest.raises(AssertionError, match="raw"):
        peers.check_correctness(peers.TINY_CONFIGS[1], [], print)


def test_peers_image_check_catches_flowjoint_and_raw_apart(monkeypatch):
    """With the same weights, flowjoint and raw must agree: a raw clamp of another
    bound (a different function with the right Jacobian) is caught."""
    import peers_images

    original = peers_images.build_raw
    monkeypatch.setattr(
        peers_images, "build_raw", lambda cfg, bound=3.0: original(cfg, None if bound else 3.0)
    )
    monkeypatch.setitem(peers_images.BUILDERS, "raw", peers_images.build_raw)
    with pytest.raises(AssertionError, match="disagree"):
        peers.check_correctness(peers.TINY_CONFIGS[1], ["flowjoint"], print)


def test_vae_tiny_run():
    import vae

    report = vae.main(TINY)
    assert report["train step"]["raw"] == 1.0
    assert set(report["train step"]) == {"raw", "JointVAE", "JointVAE validate=False", "raw (A/A)"}
    (iwae,) = [k for k in report if k.startswith("iwae") and not k.endswith("ms")]
    assert set(report[iwae]) == {"raw", "JointVAE", "raw (A/A)"}


def test_vae_check_catches_a_different_iwae(monkeypatch):
    """The float64 check compares the bounds themselves: an IWAE off by log K fails it."""
    import vae

    original = vae.RawVAE.iwae
    monkeypatch.setattr(vae.RawVAE, "iwae", lambda self, x, k: original(self, x, k) + 1e-6)
    with pytest.raises(AssertionError, match="iwae"):
        vae.check_same_bounds(vae.parse_args(TINY), print)


@pytest.mark.parametrize("what", ["vae", "image"])
def test_vae_memory_measurement_tiny(what):
    import vae

    args = vae.parse_args(
        ["--threads", "1", "--memory-images", "4", "--iwae-samples", "3"]
        + ["--image-iwae-samples", "2", "--image-chunk-size", "2"]
    )
    result = vae.measure_memory(what, args)
    assert result["images"] == 4 and result["peak MiB"] >= result["before MiB"] > 0
    assert result["seconds"] > 0


def test_load_reading_and_rounds():
    before = common.read_cpu_ticks()
    sum(i * i for i in range(200_000))
    load = common.other_load(before, common.read_cpu_ticks())
    assert 0.0 <= load <= 1.0
    calls = {"a": 0, "b": 0}

    def bump(name):
        calls[name] += 1

    comparison = common.compare(
        {"a": lambda: bump("a"), "b": lambda: bump("b")},
        reference="a",
        rounds=4,
        target_seconds=0.001,
        max_load=1.0,
    )
    assert len(comparison.results["b"].ratios) == 4
    assert comparison.results["a"].median_ratio == 1.0
    # A round is re-run when the others' load is above the limit (here: always).
    comparison = common.compare(
        {"a": lambda: None}, "a", rounds=2, target_seconds=0.0, max_load=-1.0, max_retries=2
    )
    assert comparison.reruns == 4 and comparison.flagged == 2


@pytest.mark.parametrize("against", [None, "nflows"])
def test_paired_tiny_run(capsys, against):
    import paired

    extra = [] if against is None else ["--against", against]
    args = ["--tiny", "--seconds", "0", "--min-groups", "5", "--threads", "1", *extra]
    report = paired.main(args)
    out = capsys.readouterr().out
    assert set(report["configs"]) == {c.label for c in peers.TINY_CONFIGS}
    for ops in report["configs"].values():
        assert set(ops) == {"train step", "log_prob", "sample"}
        for op, r in ops.items():
            assert r["groups"] == 5 and r["ratio"] > 0 and r["A/A"] > 0
            assert r["interval"][0] <= r["ratio"] <= r["interval"][1]
            assert r["A/A interval"][0] <= r["A/A"] <= r["A/A interval"][1]
            assert r["target"] == (paired.TARGETS[op] if against is None else 1.0)
    assert "| config" in out and ("| met" in out if against is None else "flowjoint ahead" in out)


def test_paired_refuses_bad_arguments():
    import paired

    for bad in (["--threads", "0"], ["--seconds", "inf"], ["--seconds", "nan"], ["--only", "D=3"],
                ["--against", "flowjoint"]):  # fmt: skip
        with pytest.raises(SystemExit):
            paired.parse_args(bad)


def test_paired_groups_shuffle_the_order_and_time_every_candidate():
    import paired

    seen = []
    calls = {name: (lambda name=name: seen.append(name)) for name in "abc"}
    times = paired.timed_groups(calls, seconds=0.0, min_groups=30)
    assert all(len(t) == 30 for t in times.values())
    groups = [tuple(seen[6 + 3 * i : 9 + 3 * i]) for i in range(30)]  # after the warm-up
    assert all(sorted(g) == ["a", "b", "c"] for g in groups)
    assert len(set(groups)) > 3  # orders vary
    assert paired.median_interval([1.0] * 7) == (1.0, 1.0)
