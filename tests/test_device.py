"""Device correctness: nothing is created on the CPU when the inputs live elsewhere.

Every public layer, Flow.log_prob / sample / sample_and_log_prob, the preprocessing
transforms and JointVAE are moved to the ``meta`` device and run on meta inputs:

* an op mixing a meta tensor with a CPU tensor (a log-det accumulator, a mask or a
  permutation that is not a buffer, a base density's constants) raises;
* a dispatch mode records every op that *produces* a CPU tensor while the model
  runs, so that even a CPU tensor created and then moved with ``.to(device)``
  (a host allocation and a copy per call on a GPU) fails the test, naming the op;
* every output must be on meta.

Checks that read tensor values (``validate=True`` of ``Logit``, the dequantization
layers, ``JointVAE`` and ``Flow``, and torch.distributions' own argument validation used by
``JointVAE.posterior`` and ``.likelihood``) cannot run on meta and are switched off
here; on a GPU they cost one device synchronisation per call.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import flowjoint as fj
from flowjoint.preprocess import Logit, Scale, pixel_preprocessing

META = torch.device("meta")
FEATURES, CONTEXT = 6, 3
MASK = torch.tensor([False, True, False, True, True, False])


class NoCPUTensors(TorchDispatchMode):
    """Record every aten op that returns a CPU tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.offenders: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type == "cpu":
                self.offenders.append(str(func))
        return out


def run_on_meta(fn, *args, **kwargs):
    """Call fn under NoCPUTensors; fail naming any op that made a CPU tensor."""
    with NoCPUTensors() as mode:
        out = fn(*args, **kwargs)
    assert not mode.offenders, f"CPU tensors created by {sorted(set(mode.offenders))}"
    for value in tree_flatten(out)[0]:
        if isinstance(value, torch.Tensor):
            assert value.device == META, f"output on {value.device}, expected meta"
    return out


def meta(*shape):
    return torch.empty(*shape, device=META)


LAYERS = {
    "affine": (lambda: fj.AffineCoupling(MASK, 16), 0),
    "affine_halves": (lambda: fj.AffineCoupling(torch.arange(6) >= 3, 16), 0),
    "affine_first_half": (lambda: fj.AffineCoupling(torch.arange(6) < 3, 16), 0),
    "affine_context": (lambda: fj.AffineCoupling(MASK, 16, context_features=CONTEXT), CONTEXT),
    "additive": (lambda: fj.AdditiveCoupling(MASK, 16), 0),
    "additive_context": (lambda: fj.AdditiveCoupling(MASK, 16, context_features=CONTEXT), CONTEXT),
    "conditional_affine": (lambda: fj.ConditionalAffine(FEATURES, CONTEXT, 16), CONTEXT),
    "conditional_additive": (
        lambda: fj.ConditionalAffine(FEATURES, CONTEXT, 16, additive=True),
        CONTEXT,
    ),
    "actnorm": (lambda: fj.ActNorm(FEATURES), 0),
    "batchnorm": (lambda: fj.BatchNorm(FEATURES), 0),
    "permutation": (lambda: fj.Permutation(torch.tensor([5, 0, 4, 1, 3, 2])), 0),
    "random_permutation": (lambda: fj.RandomPermutation(FEATURES), 0),
    "reverse_permutation": (lambda: fj.ReversePermutation(FEATURES), 0),
    "compose": (
        lambda: fj.Compose(
            [
                fj.ActNorm(FEATURES),
                fj.AffineCoupling(MASK, 16, context_features=CONTEXT),
                fj.RandomPermutation(FEATURES),
                fj.AdditiveCoupling(~MASK, 16),
            ]
        ),
        CONTEXT,
    ),
    "scale": (lambda: Scale(1 / 17), 0),
    "logit": (lambda: Logit(0.05, validate=False), 0),
    "pixel_preprocessing": (lambda: fj.Compose(pixel_preprocessing(17, 0.05, "none")), 0),
}
# SplineCoupling is not here: nflows' spline selects the entries inside its interval with a
# boolean mask, whose size depends on the values and cannot be known on meta.


def unchecked(layer):
    """Switch off value-reading checks (they cannot run on meta)."""
    for module in layer.modules():
        if hasattr(module, "validate"):
            module.validate = False
    return layer


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_layer_runs_on_meta_without_cpu_tensors(name, mode):
    factory, width = LAYERS[name]
    layer = unchecked(factory()).to(META).train(mode == "train")
    x = meta(5, FEATURES)
    context = meta(5, width) if width else None
    outputs, logabsdet = run_on_meta(layer, x, context=context)
    assert outputs.shape == (5, FEATURES) and logabsdet.shape == (5,)
    if name == "batchnorm" and mode == "train":
        return  # BatchNorm inverts only in eval mode, by design
    outputs, logabsdet = run_on_meta(layer.inverse, x, context=context)
    assert outputs.shape == (5, FEATURES) and logabsdet.shape == (5,)


FLOWS = {
    "realnvp": (lambda: fj.realnvp(FEATURES, num_layers=4, hidden_features=16), 0),
    "realnvp_actnorm_checkerboard": (
        lambda: fj.realnvp(
            FEATURES, num_layers=4, hidden_features=16, actnorm=True, mask_pattern="checkerboard"
        ),
        0,
    ),
    "nice": (lambda: fj.nice(FEATURES, num_layers=4, hidden_features=16), 0),
    "conditional_realnvp": (
        lambda: fj.realnvp(FEATURES, num_layers=4, hidden_features=16, context_features=CONTEXT),
        CONTEXT,
    ),
}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_flow_runs_on_meta_without_cpu_tensors(name):
    factory, width = FLOWS[name]
    flow = factory().to(META)
    x = meta(5, FEATURES)
    context = meta(5, width) if width else None
    assert run_on_meta(flow.log_prob, x, context=context).shape == (5,)
    assert run_on_meta(flow.transform_to_noise, x, context=context).shape == (5, FEATURES)
    flow.eval()
    samples = run_on_meta(flow.sample, 7, context=context)
    samples, log_prob = run_on_meta(flow.sample_and_log_prob, 7, context=context)
    if width:
        assert samples.shape == (5, 7, FEATURES) and log_prob.shape == (5, 7)
    else:
        assert samples.shape == (7, FEATURES) and log_prob.shape == (7,)


def test_standard_normal_follows_the_module_device():
    base = fj.StandardNormal(FEATURES).to(META)
    assert run_on_meta(base.sample, 4).device == META
    assert run_on_meta(base.log_prob, meta(4, FEATURES)).shape == (4,)
    assert run_on_meta(base.sample, 2, context=meta(3, 1)).shape == (3, 2, FEATURES)


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_dequantized_flow_runs_on_meta(dequantization):
    layers = pixel_preprocessing(17, 0.05, dequantization, shape=FEATURES, hidden_features=8)
    model = unchecked(fj.realnvp(FEATURES, num_layers=2, preprocessing=layers)).to(META)
    x = meta(5, FEATURES)
    assert run_on_meta(model.elbo, x).shape == (5,)
    assert run_on_meta(model.iwae, x, num_samples=3).shape == (5,)
    model.eval()
    assert run_on_meta(model.sample, 3).shape == (3, FEATURES)


IMAGE = (2, 4, 4)
IMAGE_LAYERS = {
    "checkerboard": lambda: fj.AffineCoupling(fj.checkerboard_mask(IMAGE), 8, 1),
    "channels": lambda: fj.AffineCoupling(fj.channel_mask(2), net=fj.ResidualConvNet(1, 2, 8, 1)),
    "actnorm": lambda: fj.ActNorm(2),
    "batchnorm": lambda: fj.BatchNorm(2),
    "permutation": lambda: fj.RandomPermutation(2),
}


@pytest.mark.parametrize("name", sorted(IMAGE_LAYERS))
def test_image_layers_run_on_meta(name):
    layer = IMAGE_LAYERS[name]().to(META)
    x = meta(3, *IMAGE)
    outputs, logabsdet = run_on_meta(layer, x)
    assert outputs.shape == x.shape and logabsdet.shape == (3,)
    layer.eval()
    assert run_on_meta(layer.inverse, x)[0].shape == x.shape


@pytest.mark.parametrize("model", ["vae", "augmented"])
def test_convolutional_vae_and_augmented_flow_run_on_meta(model):
    shape, d = (1, 8, 8), 3
    if model == "vae":
        net = fj.JointVAE(shape, d, 16, likelihood="gaussian", validate=False)
    else:
        net = fj.AugmentedFlow(shape, d, num_steps=1, hidden_features=16)
    net = net.to(META)
    x = meta(2, *shape)
    assert run_on_meta(net.elbo, x).shape == (2,)
    assert run_on_meta(net.iwae, x, num_samples=3).shape == (2,)
    assert run_on_meta(net.sample, 2).shape == (2, *shape)


def test_the_dispatch_check_catches_a_stray_cpu_tensor():
    """The check can fail: a log-det accumulator made with torch.zeros(batch) is caught."""

    class Stray(fj.ReversePermutation):
        def forward(self, inputs, context=None):
            outputs, _ = super().forward(inputs, context)
            return outputs, torch.zeros(inputs.shape[0]).to(inputs.device)

    with pytest.raises(AssertionError, match="CPU tensors created by"):
        run_on_meta(Stray(FEATURES), meta(2, FEATURES))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_joint_vae_runs_on_meta_without_cpu_tensors(likelihood):
    vae_module = pytest.importorskip("flowjoint.vae")
    D, d = 8, 3
    vae = vae_module.JointVAE(D, d, hidden_features=16, likelihood=likelihood, validate=False)
    vae = vae.to(META)
    x, eps, z = meta(5, D), meta(5, d), meta(5, d)
    assert run_on_meta(vae.log_prob, x, eps).shape == (5,)
    assert run_on_meta(vae.elbo, x).shape == (5,)
    assert run_on_meta(vae.elbo, x, num_samples=3).shape == (5,)
    assert run_on_meta(vae.iwae, x, num_samples=4).shape == (5,)
    # torch.distributions validates its arguments by reading values; off for meta.
    previous = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        assert run_on_meta(lambda: vae.posterior(x).log_prob(z)).shape == (5,)
        assert run_on_meta(lambda: vae.likelihood(z).log_prob(x)).shape == (5,)
    finally:
        torch.distributions.Distribution.set_default_validate_args(previous)
    assert run_on_meta(vae.sample, 4).shape == (4, D)


def test_augmented_flow_runs_on_meta_without_cpu_tensors():
    augmented = pytest.importorskip("flowjoint.augmented")
    D, d = 8, 3
    model = augmented.AugmentedFlow(D, d, num_steps=2, hidden_features=16).to(META)
    x, eps = meta(5, D), meta(5, d)
    assert run_on_meta(model.log_prob, x, eps).shape == (5,)
    assert run_on_meta(model.elbo, x).shape == (5,)
    assert run_on_meta(model.iwae, x, num_samples=4).shape == (5,)
    assert run_on_meta(model.sample, 4).shape == (4, D)
