"""The conformance harness catches the bugs it exists for (each mutant must fail)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import flowjoint as fj
from flowjoint.testing import check_transform, randomize_parameters

MASK = torch.tensor([False, True, True, False])


class Coupling(fj.AffineCoupling):
    def _shift_and_log_scale(self, kept):
        return self.elementwise.function.shift_and_log_scale(self.elementwise.params(kept))


class WrongSign(fj.AffineCoupling):
    """Negated log-det in both directions, so that they still cancel."""

    def forward(self, inputs, context=None):
        outputs, logabsdet = super().forward(inputs, context)
        return outputs, -logabsdet

    def inverse(self, inputs, context=None):
        outputs, logabsdet = super().inverse(inputs, context)
        return outputs, -logabsdet


class OneSidedSign(fj.AffineCoupling):
    def inverse(self, inputs, context=None):
        outputs, logabsdet = super().inverse(inputs, context)
        return outputs, -logabsdet


class MissingTerm(Coupling):
    """Drops the log-scale of the last transformed feature, consistently both ways."""

    def forward(self, inputs, context=None):
        kept, transformed = self.split(inputs)
        shift, log_scale = self._shift_and_log_scale(kept)
        outputs = self.merge(kept, shift + log_scale.exp() * transformed)
        return outputs, log_scale[:, :-1].sum(-1)

    def inverse(self, inputs, context=None):
        outputs, _ = super().inverse(inputs, context)
        kept, _ = self.split(inputs)
        _, log_scale = self._shift_and_log_scale(kept)
        return outputs, -log_scale[:, :-1].sum(-1)


class WrongInverse(Coupling):
    def inverse(self, inputs, context=None):
        kept, transformed = self.split(inputs)
        shift, log_scale = self._shift_and_log_scale(kept)
        outputs = self.merge(kept, transformed * torch.exp(-log_scale) - shift)  # bug
        return outputs, -log_scale.sum(-1)


class LeakyKept(fj.AffineCoupling):
    """Touches the kept features by one ulp: bit-identity must catch it."""

    def forward(self, inputs, context=None):
        outputs, logabsdet = super().forward(inputs, context)
        nudged = torch.nextafter(outputs, torch.full_like(outputs, float("inf")))
        return torch.where(self.mask, outputs, nudged), logabsdet


class UnusedParameter(fj.AffineCoupling):
    def __init__(self, mask):
        super().__init__(mask)
        self.forgotten = nn.Parameter(torch.zeros(3))


class NonPersistentScale(fj.Transform):
    """Keeps its scale in a non-persistent buffer: lost by a state_dict round trip."""

    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(4))
        self.register_buffer("offset", torch.zeros(4), persistent=False)

    def forward(self, inputs, context=None):
        return inputs * self.log_scale.exp() + self.offset, self.log_scale.sum().expand(
            inputs.shape[0]
        )

    def inverse(self, inputs, context=None):
        return (inputs - self.offset) * torch.exp(-self.log_scale), (-self.log_scale.sum()).expand(
            inputs.shape[0]
        )


@pytest.mark.parametrize(
    "layer,message",
    [
        (WrongSign(MASK), "slogdet"),
        (OneSidedSign(MASK), "cancel"),
        (MissingTerm(MASK), "slogdet"),
        (WrongInverse(MASK), "inverse"),
        (LeakyKept(MASK), "mask False"),
        (UnusedParameter(MASK), "forgotten"),
    ],
    ids=[
        "wrong_sign",
        "one_sided_sign",
        "missing_jacobian_term",
        "wrong_inverse",
        "leaky_kept",
        "unused_param",
    ],
)
def test_harness_catches_bug(layer, message):
    with pytest.raises(AssertionError, match=message):
        check_transform(layer, 4)


def test_harness_catches_state_lost_in_state_dict():
    layer = NonPersistentScale()
    layer.offset.fill_(0.5)
    with torch.no_grad():
        layer.log_scale.fill_(0.2)
    # The clone is perturbed, so only the buffer survives as-is; make the buffer differ.
    original = check_transform(layer, 4)
    assert original.logabsdet_error < 1e-12

    class Drifting(NonPersistentScale):
        def _load_from_state_dict(self, *args, **kwargs):
            super()._load_from_state_dict(*args, **kwargs)
            self.offset.add_(1.0)  # loading changes the layer

    with pytest.raises(AssertionError, match="state_dict"):
        check_transform(Drifting(), 4)


class StaleInverse(fj.Permutation):
    """Today's permutation before the fix: the inverse index is not rebuilt on load."""

    def __init__(self, features, seed):
        generator = torch.Generator().manual_seed(seed)
        super().__init__(torch.randperm(features, generator=generator))
        self._load_state_dict_pre_hooks.clear()


class StaleMask(fj.AffineCoupling):
    """A coupling whose index buffers are not rebuilt when another mask is loaded."""

    def _load_mask(self, *args):
        pass


def test_harness_catches_state_derived_from_a_saved_buffer_going_stale():
    """Loading into a layer built with other arguments must compute like the saved one."""
    check_transform(fj.RandomPermutation(5, seed=0), 5, reload_into=fj.RandomPermutation(5, seed=1))
    with pytest.raises(AssertionError, match="other arguments computes differently"):
        check_transform(StaleInverse(5, 0), 5, reload_into=StaleInverse(5, 1))
    mask = torch.tensor([False, True, False, True])
    check_transform(fj.AffineCoupling(mask, 8), 4, reload_into=fj.AffineCoupling(~mask, 8))
    with pytest.raises(AssertionError, match="other arguments computes differently"):
        check_transform(StaleMask(mask, 8), 4, reload_into=StaleMask(~mask, 8))


class WrongAugment(fj.Augment):
    """The contribution with the wrong sign: +log N(eps)."""

    def forward(self, inputs, context=None, num_samples=1):
        state, log_weight = super().forward(inputs, context, num_samples)
        return state, -log_weight


class LossyDequantization(fj.UniformDequantization):
    """A generative direction that rounds instead of flooring."""

    def inverse(self, inputs, context=None):
        return inputs.round(), inputs.new_full((inputs.shape[0],), float("nan"))


def _minus_log_normal(inputs, outputs, context):
    return -torch.distributions.Normal(0.0, 1.0).log_prob(outputs.latent).sum(-1)


def test_harness_catches_stochastic_layer_bugs():
    check_transform(fj.Augment(2), 3, reference_log_weight=_minus_log_normal)
    with pytest.raises(AssertionError, match="reference density"):
        check_transform(WrongAugment(2), 3, reference_log_weight=_minus_log_normal)
    levels = torch.randint(0, 4, (6, 3)).double()
    zero = lambda x, y, c: torch.zeros(x.shape[0], dtype=x.dtype)  # noqa: E731
    check_transform(fj.UniformDequantization(4), inputs=levels, reference_log_weight=zero)
    with pytest.raises(AssertionError, match="does not recover the input"):
        check_transform(LossyDequantization(4), inputs=levels, reference_log_weight=zero)
    with pytest.raises(TypeError, match="reference_log_weight is required"):
        check_transform(fj.Augment(2), 3)


def test_harness_leaves_the_layer_untouched():
    layer = fj.AffineCoupling(MASK)
    before = copy.deepcopy(layer.state_dict())
    check_transform(layer, 4)
    after = layer.state_dict()
    assert before.keys() == after.keys()
    for key, value in after.items():
        assert torch.equal(before[key], value) if torch.is_tensor(value) else before[key] == value
    assert layer.training


def test_randomize_parameters_makes_a_fresh_coupling_non_identity():
    layer = fj.AffineCoupling(MASK)
    x = torch.randn(3, 4)
    assert torch.equal(layer(x)[0], x)  # zero-initialised last layer
    randomize_parameters(layer)
    assert not torch.allclose(layer(x)[0], x)
