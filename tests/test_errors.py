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
        r"inputs.*\(batch, features\).*\(3,\)",
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
        r"mask.*all True.*\[True, True, True\]",
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
    "2d_mask": (
        lambda: fj.AffineCoupling(torch.ones(2, 2, dtype=torch.bool)),
        ValueError,
        r"mask.*1-D.*\(2, 2\)",
    ),
    "mask_wrong_length_for_inputs": (
        lambda: fj.AffineCoupling(torch.tensor([False, True]))(torch.randn(2, 3)),
        ValueError,
        r"inputs.*2 features.*\(2, 3\)",
    ),
    "bad_net_width": (
        lambda: fj.AffineCoupling(MASK, net=torch.nn.Linear(1, 3))(torch.randn(2, 3)),
        ValueError,
        r"net.*\(batch, 4\).*\(2, 3\)",
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
        r"inputs.*3 features",
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
        r"inputs.*2 rows.*\(1, 2\)",
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
