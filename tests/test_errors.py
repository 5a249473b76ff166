"""Bad input: a ValueError/TypeError naming the argument and the value."""

from __future__ import annotations

import pytest
import torch

import flowjoint as fj

MASK = torch.tensor([False, True, True])


def coupling():
    return fj.AffineCoupling(MASK, 8)


def conditional():
    return fj.AffineCoupling(MASK, 8, context_features=2)


CASES = {
    "wrong_feature_count": (
        lambda: coupling()(torch.randn(4, 5)),
        ValueError,
        r"inputs.*3 features.*\(4, 5\)",
    ),
    "one_dimensional_inputs": (
        lambda: coupling()(torch.randn(3)),
        ValueError,
        r"inputs.*\(batch, \*event_shape\).*\(3,\)",
    ),
    "integer_inputs": (
        lambda: coupling()(torch.ones(4, 3, dtype=torch.long)),
        TypeError,
        r"inputs.*floating.*torch.int64",
    ),
    "not_a_tensor": (
        lambda: coupling()([[1.0, 2.0, 3.0]]),
        TypeError,
        r"inputs.*torch.Tensor.*list",
    ),
    "missing_context": (
        lambda: conditional()(torch.randn(4, 3)),
        ValueError,
        r"context is required.*2 context features",
    ),
    "context_batch_mismatch": (
        lambda: conditional()(torch.randn(4, 3), torch.randn(5, 2)),
        ValueError,
        r"context.*batch size.*\(4\).*\(5, 2\)",
    ),
    "context_width": (
        lambda: conditional()(torch.randn(4, 3), torch.randn(4, 7)),
        ValueError,
        r"context.*2 features.*\(4, 7\)",
    ),
    "inverse_missing_context": (
        lambda: conditional().inverse(torch.randn(4, 3)),
        ValueError,
        r"context is required",
    ),
    "all_true_mask": (
        lambda: fj.AffineCoupling(torch.ones(3, dtype=torch.bool)),
        ValueError,
        r"mask.*keep at least one.*all True.*\(3,\)",
    ),
    "all_false_mask": (
        lambda: fj.AdditiveCoupling(torch.zeros(3, dtype=torch.bool)),
        ValueError,
        r"mask.*all False",
    ),
    "int_mask": (
        lambda: fj.AffineCoupling(torch.tensor([0, 1, 1])),
        TypeError,
        r"mask.*torch.bool.*torch.int64",
    ),
    "list_mask": (lambda: fj.AffineCoupling([False, True]), TypeError, r"mask.*list"),
    "2d_mask_without_net": (
        lambda: fj.AffineCoupling(torch.tensor([[True, False], [False, True]])),
        ValueError,
        r"net is required for a mask of shape \(2, 2\)",
    ),
    "mask_wrong_length_for_inputs": (
        lambda: fj.AffineCoupling(torch.tensor([False, True]))(torch.randn(2, 3)),
        ValueError,
        r"inputs.*2 features.*\(2, 3\)",
    ),
    "bad_net_width": (
        lambda: fj.AffineCoupling(MASK, net=torch.nn.Linear(1, 3))(torch.randn(2, 3)),
        ValueError,
        r"net must map the context \(2, 1\) to \(2, 4\).*\(2, 3\)",
    ),
    "net_not_module": (
        lambda: fj.AffineCoupling(MASK, net=lambda c: c),
        TypeError,
        r"net.*Module.*function",
    ),
    "conditional_affine_no_context_features": (
        lambda: fj.ConditionalAffine(3, 0),
        ValueError,
        r"context_features.*>= 1.*0",
    ),
    "negative_context_features": (
        lambda: fj.AffineCoupling(MASK, context_features=-1),
        ValueError,
        r"context_features.*-1",
    ),
    "bad_log_scale_bound": (
        lambda: fj.AffineCoupling(MASK, log_scale_bound=0.0),
        ValueError,
        r"log_scale_bound.*0.0",
    ),
    "permutation_repeats": (
        lambda: fj.Permutation(torch.tensor([0, 0, 1])),
        ValueError,
        r"permutation.*\[0, 0, 1\]",
    ),
    "permutation_float": (
        lambda: fj.Permutation(torch.tensor([0.0, 1.0])),
        TypeError,
        r"permutation",
    ),
    "empty_compose": (lambda: fj.Compose([]), ValueError, r"transforms.*empty"),
    "compose_non_transform": (
        lambda: fj.Compose([torch.nn.Linear(2, 2)]),
        TypeError,
        r"transforms\[0\].*Linear",
    ),
    "flow_non_transform": (
        lambda: fj.Flow(torch.nn.Linear(2, 2), fj.StandardNormal(2)),
        TypeError,
        r"transform.*Linear",
    ),
    "flow_bad_base": (
        lambda: fj.Flow(fj.ReversePermutation(2), torch.distributions.Normal(0, 1)),
        TypeError,
        r"base.*Normal",
    ),
    "sample_zero": (lambda: fj.realnvp(2).sample(0), ValueError, r"num_samples.*>= 1.*0"),
    "sample_float": (lambda: fj.realnvp(2).sample(2.5), TypeError, r"num_samples.*2.5"),
    "flow_context_mismatch": (
        lambda: fj.realnvp(2, context_features=1).log_prob(torch.randn(3, 2), torch.randn(2, 1)),
        ValueError,
        r"context.*batch size.*\(3\)",
    ),
    "base_wrong_features": (
        lambda: fj.StandardNormal(3).log_prob(torch.randn(2, 4)),
        ValueError,
        r"inputs must have shape \(batch, 3\).*\(2, 4\)",
    ),
    "features_zero": (lambda: fj.ActNorm(0), ValueError, r"features.*>= 1.*0"),
    "builder_one_feature": (lambda: fj.realnvp(1), ValueError, r"features.*>= 2.*1"),
    "builder_bad_pattern": (
        lambda: fj.nice(4, mask_pattern="stripes"),
        ValueError,
        r"pattern.*stripes",
    ),
    "batchnorm_single_row": (
        lambda: fj.BatchNorm(2)(torch.randn(1, 2)),
        ValueError,
        r"inputs.*at least 2 values per channel.*\(1, 2\)",
    ),
    "infinite_log_scale_bound": (
        lambda: fj.AffineCoupling(MASK, log_scale_bound=float("inf")),
        ValueError,
        r"log_scale_bound must be finite, got inf",
    ),
    "overflowing_log_scale_bound": (
        lambda: fj.AffineCoupling(MASK, log_scale_bound=1e300),
        ValueError,
        r"log_scale_bound must be <= 80.0, got 1e\+300",
    ),
    "stochastic_stack_to_log_prob": (
        lambda: fj.Flow(
            fj.Compose([fj.UniformDequantization(4), fj.ActNorm(2)]), fj.StandardNormal(2)
        ).log_prob(torch.zeros(3, 2)),
        ValueError,
        r"log_prob needs a bijective stack.*transform\[0\] \(UniformDequantization\)"
        r".*elbo.*iwae",
    ),
    "stochastic_stack_to_sample_and_log_prob": (
        lambda: fj.JointVAE(4, 2, 8).sample_and_log_prob(3),
        ValueError,
        r"sample_and_log_prob needs a bijective stack.*Augment",
    ),
    "non_integer_data_to_dequantization": (
        lambda: fj.UniformDequantization(17)(torch.tensor([[0.5, 3.0]])),
        ValueError,
        r"inputs of UniformDequantization must be integer levels from 0 up to 16.*0.5",
    ),
    "levels_out_of_range": (
        lambda: fj.UniformDequantization(17)(torch.tensor([[17.0, 3.0]])),
        ValueError,
        r"integer levels from 0 up to 16.*17.0",
    ),
    "image_mask_on_wrong_event": (
        lambda: fj.AffineCoupling(fj.checkerboard_mask((1, 4, 4)), 8, 1)(torch.randn(2, 1, 4, 6)),
        ValueError,
        r"inputs must have shape \(batch, 1, 4, 4\), got \(2, 1, 4, 6\)",
    ),
    "channel_mask_wrong_channels": (
        lambda: fj.AffineCoupling(fj.channel_mask(4), net=fj.ResidualConvNet(2, 4, 4, 1))(
            torch.randn(2, 3, 4, 4)
        ),
        ValueError,
        r"inputs must have 4 channels.*\(2, 3, 4, 4\)",
    ),
    "default_mlp_on_images": (
        lambda: fj.AffineCoupling(fj.channel_mask(2))(torch.randn(2, 2, 4, 4)),
        ValueError,
        r"not vectors.*default MLP.*conv net",
    ),
    "compose_num_samples_without_stochastic_layer": (
        lambda: fj.Compose([fj.ActNorm(2)])(torch.randn(3, 2), num_samples=4),
        ValueError,
        r"num_samples=4 needs a stochastic layer",
    ),
    "negative_temperature": (
        lambda: fj.realnvp(2).sample(3, temperature=-1.0),
        ValueError,
        r"temperature must be >= 0.0, got -1.0",
    ),
    "sample_batch_size_zero": (
        lambda: fj.realnvp(2).sample(3, batch_size=0),
        ValueError,
        r"batch_size must be >= 1, got 0",
    ),
    "actnorm_empty_first_batch": (
        lambda: fj.ActNorm(2)(torch.zeros(0, 2)),
        ValueError,
        r"ActNorm is initialised from its first training batch, got an empty batch",
    ),
    "jacobian_mask_length": (
        lambda: fj.block_structure(torch.eye(3), torch.tensor([False, True])),
        ValueError,
        r"mask.*length 3.*2",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_named(case):
    call, error, message = CASES[case]
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: fj.checkerboard_mask((1, 28)), r"shape must be \(C, H, W\), got \(1, 28\)"),
        (lambda: fj.checkerboard_mask((1, 4, 4), parity=2), r"parity must be 0 or 1, got 2"),
        (lambda: fj.channel_mask(4, parity=-1), r"parity must be 0 or 1, got -1"),
    ],
    ids=["checkerboard_shape", "checkerboard_parity", "channel_parity"],
)
def test_mask_builders_name_their_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: fj.realnvp(4, 2, 8).log_prob(torch.randn(3, 4, dtype=torch.float64)),
        lambda: fj.realnvp(4, 2, 8).double().log_prob(torch.randn(3, 4)),
        lambda: fj.JointVAE(4, 2, 8, likelihood="gaussian").elbo(torch.randn(3, 4).double()),
        lambda: fj.multiscale_realnvp((1, 4, 4), 1, 1, 4, levels=4).elbo(
            torch.randint(0, 4, (2, 1, 4, 4)).double()
        ),
        lambda: fj.realnvp(4, 2, 8, context_features=2).sample(
            3, context=torch.randn(2, 2, dtype=torch.float64)
        ),
    ],
    ids=["float64_into_float32", "float32_into_float64", "vae", "multiscale", "context"],
)
def test_inputs_of_another_dtype_than_the_model_name_both(call):
    with pytest.raises(TypeError, match=r"dtype torch\.float(64|32), but the model computes in"):
        call()


def test_the_dtype_check_reads_the_tensors_the_model_holds_now():
    """The model's dtype is read at each call: after .double(), under functional_call with
    float64 tensors, and with no parameters but a floating buffer."""

    class LogProb(torch.nn.Module):
        def __init__(self, flow):
            super().__init__()
            self.flow = flow

        def forward(self, inputs):
            return self.flow.log_prob(inputs)

    flow = fj.realnvp(4, 2, 8)
    x = torch.randn(3, 4)
    flow.log_prob(x)
    model = LogProb(flow)
    state = {k: v.double() for k, v in model.state_dict().items()}
    assert torch.func.functional_call(model, state, (x.double(),)).dtype == torch.float64
    with pytest.raises(TypeError, match="model computes in torch.float64"):
        torch.func.functional_call(model, state, (x,))
    flow.log_prob(x)  # the model's own float32 tensors again
    flow.double()
    with pytest.raises(TypeError, match="model computes in torch.float64"):
        flow.log_prob(x)
    buffers_only = fj.Flow(fj.ReversePermutation(4), fj.StandardNormal(4)).double()
    with pytest.raises(TypeError, match="model computes in torch.float64"):
        buffers_only.log_prob(x)
    looped = fj.realnvp(4, 2, 8)
    looped.transform.transforms[0].loop = looped  # a module graph with a cycle
    with pytest.raises(TypeError, match="model computes in torch.float32"):
        looped.log_prob(x.double())


@pytest.mark.parametrize("temperature", [1e39, 1e300, float("inf"), float("nan")])
def test_a_temperature_beyond_the_models_dtype_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature must be finite"):
        fj.realnvp(2, 2, 8).sample(3, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be finite"):
        fj.JointVAE(4, 2, 8, likelihood="gaussian").sample(2, temperature=temperature)
    samples = fj.realnvp(2, 2, 8).double().sample(3, temperature=1e39)  # finite in float64
    assert samples.isfinite().all()


def test_levels_beyond_the_exact_integers_of_the_dtype_are_refused():
    layer = fj.UniformDequantization(2**25)
    with pytest.raises(ValueError, match="levels=33554432 is too many for torch.float32"):
        layer(torch.tensor([[3.0, 12345678.0]]))
    outputs, _ = layer(torch.tensor([[3.0, 12345678.0]], dtype=torch.float64))
    assert (outputs.frac() > 0).all()  # the noise survives in float64


@pytest.mark.parametrize("bound", [1e-7, 1e-39, 1e-300, 0.0, -1.0, float("inf"), float("nan")])
def test_a_log_scale_bound_that_cannot_be_computed_is_refused(bound):
    with pytest.raises(ValueError, match="log_scale_bound must be"):
        fj.AffineCoupling(MASK, 8, log_scale_bound=bound)


def test_the_smallest_log_scale_bound_gives_an_identity_fresh_layer():
    layer = fj.AffineCoupling(MASK, 8, log_scale_bound=1e-6)
    outputs, logabsdet = layer(torch.randn(3, 3))
    assert logabsdet.isfinite().all() and outputs.isfinite().all()
