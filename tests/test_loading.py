"""State survives loading: everything derived from a saved buffer is rebuilt, or refused.

Each test loads a state into an object built with *other* arguments (another seed,
another mask) and requires the loaded object to compute exactly like the saved one.
"""

from __future__ import annotations

import pytest
import torch

import flowjoint as fj
from flowjoint.testing import randomize_parameters

pytestmark = pytest.mark.usefixtures("float64")


def test_permutation_inverse_is_rebuilt_on_load():
    saved = fj.RandomPermutation(5, seed=1)
    loaded = fj.RandomPermutation(5, seed=0)
    loaded.load_state_dict(saved.state_dict())
    x = torch.randn(4, 5)
    assert torch.equal(loaded(x)[0], saved(x)[0])
    assert torch.equal(loaded.inverse(loaded(x)[0])[0], x)


def test_a_flow_with_a_loaded_permutation_samples_its_own_density():
    def build(seed):
        mask = torch.tensor([False, False, True, True, True])
        layers = [fj.AffineCoupling(mask, 8), fj.RandomPermutation(5, seed=seed)]
        layers.append(fj.AffineCoupling(mask, 8))
        return randomize_parameters(fj.Flow(fj.Compose(layers), fj.StandardNormal(5)), 0.5)

    saved, loaded = build(1), build(0)
    loaded.load_state_dict(saved.state_dict())
    samples, log_prob = loaded.sample_and_log_prob(50)
    torch.testing.assert_close(log_prob, loaded.log_prob(samples), rtol=0, atol=1e-10)


@pytest.mark.parametrize("bad", [[0, 0, 0], [0, 1, 3]], ids=["repeats", "out_of_range"])
def test_a_tensor_that_is_not_a_permutation_is_refused_on_load(bad):
    layer = fj.Permutation(torch.tensor([2, 0, 1]))
    with pytest.raises(ValueError, match="permutation must hold each of 0..2 once"):
        layer.load_state_dict({"permutation": torch.tensor(bad)})
    assert torch.equal(layer.permutation, torch.tensor([2, 0, 1]))  # unchanged


def test_a_permutation_of_another_length_is_refused_on_load():
    with pytest.raises(ValueError, match=r"4 entries into a Permutation of 3|\{'features': 4\}"):
        fj.RandomPermutation(3).load_state_dict(fj.RandomPermutation(4).state_dict())


def test_coupling_computes_with_the_loaded_mask():
    saved = randomize_parameters(fj.AffineCoupling(torch.tensor([False, True, False, True]), 8))
    loaded = fj.AffineCoupling(torch.tensor([True, False, True, False]), 8)
    loaded.load_state_dict(saved.state_dict())
    x = torch.randn(6, 4)
    y, logabsdet = saved(x)
    assert torch.equal(loaded.mask, saved.mask)
    assert torch.equal(loaded(x)[0], y) and torch.equal(loaded(x)[1], logabsdet)
    assert torch.equal(loaded.inverse(y)[0], saved.inverse(y)[0])


def test_coupling_layout_changes_with_the_loaded_mask():
    """halves (contiguous blocks, the chained path) into interleaved (gathers) and back."""
    saved = randomize_parameters(fj.realnvp(6, 4, 8, mask_pattern="halves"), 0.5)
    loaded = fj.realnvp(6, 4, 8, mask_pattern="checkerboard")
    loaded.load_state_dict(saved.state_dict())
    x = torch.randn(5, 6)
    assert torch.equal(loaded.log_prob(x), saved.log_prob(x))
    back = fj.realnvp(6, 4, 8, mask_pattern="halves")
    back.load_state_dict(loaded.state_dict())
    assert torch.equal(back.log_prob(x), saved.log_prob(x))


def test_a_mask_with_other_counts_is_refused_on_load():
    saved = fj.AffineCoupling(torch.tensor([False, True, True, True]), 8, net=torch.nn.Linear(1, 6))
    loaded = fj.AffineCoupling(
        torch.tensor([True, False, False, True]), 8, net=torch.nn.Linear(2, 4)
    )
    with pytest.raises(ValueError, match="3 transformed entries into a coupling"):
        loaded.load_state_dict(saved.state_dict())


def test_an_image_mask_is_rebuilt_on_load():
    saved = randomize_parameters(fj.AffineCoupling(fj.checkerboard_mask((1, 4, 4), 0), 8, 1))
    loaded = fj.AffineCoupling(fj.checkerboard_mask((1, 4, 4), 1), 8, 1)
    loaded.load_state_dict(saved.state_dict())
    x = torch.randn(3, 1, 4, 4)
    assert torch.equal(loaded(x)[0], saved(x)[0])


def test_resuming_into_a_model_built_with_other_masks_trains_the_saved_model(tmp_path):
    from flowjoint.train import fit

    x = torch.randn(64, 4)
    first = fj.realnvp(4, 2, 8, mask_pattern="halves")
    fit(first, x, epochs=1, batch_size=32, checkpoint_dir=tmp_path, progress=False)
    other = fj.realnvp(4, 2, 8, mask_pattern="checkerboard")
    fit(other, x, epochs=2, batch_size=32, resume=tmp_path / "last.pt", progress=False)
    same = fj.realnvp(4, 2, 8, mask_pattern="halves")
    fit(same, x, epochs=2, batch_size=32, resume=tmp_path / "last.pt", progress=False)
    assert torch.equal(other.transform[0].mask, same.transform[0].mask)
    torch.testing.assert_close(other.log_prob(x), same.log_prob(x), rtol=0, atol=0)


# Layers whose computation depends on settings that are not tensors: a state saved with
# other settings is refused on load (naming the setting) instead of computing with this
# layer's settings on the other layer's weights.
SETTINGS = {
    "affine_bound": (
        lambda: fj.AffineCoupling(torch.tensor([True, False]), 4, log_scale_bound=3.0),
        lambda: fj.AffineCoupling(torch.tensor([True, False]), 4, log_scale_bound=5.0),
        "log_scale_bound",
    ),
    "affine_unbounded": (
        lambda: fj.AffineCoupling(torch.tensor([True, False]), 4, log_scale_bound=None),
        lambda: fj.AffineCoupling(torch.tensor([True, False]), 4),
        "log_scale_bound",
    ),
    "spline_bins": (
        lambda: fj.SplineCoupling(torch.tensor([True, False]), 4, num_bins=4),
        lambda: fj.SplineCoupling(torch.tensor([True, False]), 4, num_bins=4, tail_bound=5.0),
        "tail_bound",
    ),
    "scale": (lambda: fj.Scale(divisor=255.0), lambda: fj.Scale(divisor=256.0), "divisor"),
    "logit": (lambda: fj.Logit(alpha=0.01), lambda: fj.Logit(alpha=1e-6), "alpha"),
    "augment": (lambda: fj.Augment(3), lambda: fj.Augment(4), "features"),
    "dequantization": (
        lambda: fj.UniformDequantization(256),
        lambda: fj.UniformDequantization(2),
        "levels",
    ),
    "batchnorm": (lambda: fj.BatchNorm(2), lambda: fj.BatchNorm(2, momentum=0.5), "momentum"),
    "squeeze": (lambda: fj.Squeeze(2), lambda: fj.Squeeze(4), "factor"),
    "reverse": (lambda: fj.ReversePermutation(4), lambda: fj.ReversePermutation(5), "features"),
    "multiscale": (
        lambda: fj.multiscale_realnvp((1, 8, 8), num_scales=2, hidden_channels=4),
        lambda: fj.multiscale_realnvp((1, 8, 8), num_scales=3, hidden_channels=4),
        "",
    ),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_a_state_saved_with_other_settings_is_refused(name):
    build_saved, build_other, setting = SETTINGS[name]
    state = build_saved().state_dict()
    with pytest.raises((ValueError, RuntimeError), match=f"saved with.*{setting}|size mismatch"):
        build_other().load_state_dict(state)
    build_saved().load_state_dict(state)  # the same settings load


def test_saved_settings_survive_torch_save_with_weights_only(tmp_path):
    flow = fj.realnvp(4, num_layers=2, hidden_features=8, log_scale_bound=2.0)
    torch.save(flow.state_dict(), tmp_path / "flow.pt")
    state = torch.load(tmp_path / "flow.pt", weights_only=True)
    fj.realnvp(4, num_layers=2, hidden_features=8, log_scale_bound=2.0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"log_scale_bound.*2\.0.*3\.0"):
        fj.realnvp(4, num_layers=2, hidden_features=8).load_state_dict(state)


def test_every_entry_of_a_state_is_a_tensor_and_functional_call_takes_it():
    from torch.func import functional_call

    flow = fj.realnvp(4, num_layers=2, hidden_features=8)
    state = flow.state_dict()
    assert any(key.endswith("saved_settings") for key in state)
    assert all(torch.is_tensor(value) for value in state.values())
    x = torch.randn(3, 4)
    inner = {k.removeprefix("transform."): v for k, v in state.items()}
    outputs, logabsdet = functional_call(flow.transform, inner, (x,))
    expected = flow.transform(x)
    assert torch.equal(outputs, expected[0]) and torch.equal(logabsdet, expected[1])


def test_a_state_saved_before_layers_recorded_their_settings_loads():
    state = fj.realnvp(4, num_layers=2, hidden_features=8).state_dict()
    legacy = {k: v for k, v in state.items() if not k.endswith("saved_settings")}
    result = fj.realnvp(4, num_layers=2, hidden_features=8).load_state_dict(legacy)
    assert not result.missing_keys and not result.unexpected_keys


def test_unreadable_saved_settings_are_refused():
    state = fj.Logit(0.01).state_dict()
    state["saved_settings"] = torch.tensor([255, 0], dtype=torch.uint8)
    with pytest.raises(ValueError, match="saved settings are unreadable"):
        fj.Logit(0.01).load_state_dict(state)
