"""The VAE's stack ``[Augment(d), encoder coupling]`` on ``p(z) p(x|z)`` in one pass.

A [`JointVAE`][flowjoint.JointVAE] without preprocessing or flow-posterior layers is
the stack ``Compose([Augment(d), EncoderCoupling])`` on a ``JointBase``. Its one-sample
log-weight is the sum the stack computes::

    eps ~ N(0, I_d)                                   # Augment's draw
    z, log_det = mu(x) + sigma(x) * eps, sum log sigma(x)
    log_weight = (log p(z) + log p(x|z)) + (-log N(eps) + log_det)

`standard_log_weights` computes it with the same operations in the same order and
the same draw (``Augment.draw``), without ``Compose``'s cascade, the layers' module
calls and the argument checks the public entry points have made (the coupling's
check of the state is kept). It steps aside (returns ``None``) for any other
stack, a subclass of one of its layers, a layer method replaced on its class or
instance, a layer compiled in place (``Module.compile``), and whenever a hook is set
on a module that the stack's pass calls as a module, so that hooks fire as they
would. ``tests/test_vae_pass.py``
checks that both passes give the same bits, gradients, draws and errors.
"""

from __future__ import annotations

from torch import Tensor, nn

from flowjoint.augmented import EncoderCoupling, check_state
from flowjoint.decoders import JointBase
from flowjoint.distributions import standard_normal_nll
from flowjoint.elementwise import ConditionalAffine
from flowjoint.stochastic import Augment, AugmentedState
from flowjoint.transforms import Compose, any_hooks

__all__ = ["standard_log_weights"]

# The methods the generic pass goes through, as defined: a stack whose modules have
# them replaced (on the class or on an instance) takes the generic pass.
_METHODS = (
    (Compose, "forward", Compose.forward),
    (Augment, "forward", Augment.forward),
    (EncoderCoupling, "forward", EncoderCoupling.forward),
    (ConditionalAffine, "map", ConditionalAffine.map),
    (JointBase, "log_prob", JointBase.log_prob),
)


def standard_stack(transform: nn.Module, base: nn.Module) -> tuple[Augment, EncoderCoupling] | None:
    """``(augment, coupling)`` if ``transform`` on ``base`` is the plain VAE stack, its
    modules as defined (no hook, no ``Module.compile``, no replaced method); otherwise
    ``None``."""
    if type(transform) is not Compose or type(base) is not JointBase:
        return None
    layers = list(transform.transforms._modules.values())  # the ModuleList's entries
    if len(layers) != 2 or type(layers[0]) is not Augment:
        return None
    augment, coupling = layers
    if type(coupling) is not EncoderCoupling or type(coupling.elementwise) is not ConditionalAffine:
        return None
    elementwise = coupling.elementwise
    modules = (transform, augment, coupling, elementwise, base)
    for (cls, name, method), module in zip(_METHODS, modules, strict=True):
        if getattr(cls, name) is not method or name in module.__dict__:
            return None
    if any(module._compiled_call_impl is not None for module in modules):
        return None
    # The generic pass calls these through __call__ (the element-wise map and its
    # function when hooked); the nets are module calls in both passes.
    if any_hooks((transform, augment, coupling, elementwise, elementwise.function)):
        return None
    return augment, coupling


def standard_log_weights(
    transform: nn.Module, base: nn.Module, inputs: Tensor, num_samples: int
) -> Tensor | None:
    """The stack's log-weights ``(batch * num_samples,)`` (``num_samples`` consecutive
    rows per input), or ``None`` when the stack is not the plain VAE stack."""
    stack = standard_stack(transform, base)
    if stack is None:
        return None
    augment, coupling = stack
    # Augment's and the coupling's work without their module calls and the checks the
    # public entry made; the coupling's state check is kept. Summed as Compose sums.
    eps = augment.draw(inputs, num_samples)
    check_state(AugmentedState(inputs, eps), coupling.data_shape, coupling.latent_features)
    z, log_det = coupling.elementwise.run(eps, inputs)
    return base.log_prob(AugmentedState(inputs, z)) + (standard_normal_nll(eps) + log_det)
