"""Dense Jacobians of transforms, their block structure, and pictures of their pattern.

These tools make the shared triangular pattern visible: a NICE layer, a Real NVP
layer and the VAE's reparametrization ``(x, eps) -> (x, z)`` all have a Jacobian
that is block lower-triangular once features are ordered kept-then-transformed::

    [[ I,        0      ],      kept outputs do not depend on transformed inputs
     [ d y_B/dx_A, diag(scale) ]]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flowjoint.checks import check_inputs
from flowjoint.masks import check_mask
from flowjoint.stochastic import AugmentedState
from flowjoint.transforms import Transform

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "BlockStructure",
    "block_structure",
    "check_logabsdet",
    "jacobian",
    "plot_jacobian_patterns",
    "reorder",
]


def _flat(state: Tensor | AugmentedState) -> Tensor:
    """``(batch, *event)`` -> ``(batch, size)``; an ``(x, eps)`` state -> ``cat([x, eps])``."""
    if isinstance(state, AugmentedState):
        return torch.cat([state.data.flatten(1), state.latent.flatten(1)], dim=1)
    return state.flatten(1)


def _unflat(flat: Tensor, like: Tensor | AugmentedState) -> Tensor | AugmentedState:
    if isinstance(like, AugmentedState):
        size = like.data[0].numel()
        data, latent = flat.split([size, flat.shape[1] - size], dim=1)
        return AugmentedState(data.view_as(like.data), latent.view_as(like.latent))
    return flat.view_as(like)


def jacobian(
    transform: Transform,
    inputs: Tensor | AugmentedState,
    context: Tensor | None = None,
    inverse: bool = False,
) -> Tensor:
    """Dense Jacobian of the forward (or inverse) map at each batch item, via ``torch.func``.

    ``J[b, i, j] = d outputs[b, i] / d inputs[b, j]`` over the flattened events (an
    image ``(C, H, W)`` in C-order; an augmented state ``(x, eps)`` as ``x`` flattened,
    then ``eps``). Computed as the reverse-mode Jacobian of ``inputs -> outputs.sum(0)``,
    vectorised over output entries with ``torch.func.jacrev``; this equals the
    per-item Jacobian because batch items do not interact (true of every flowjoint
    layer; put ``BatchNorm`` in eval mode, and initialise ``ActNorm`` by a forward
    call in training mode first).

    Args:
        transform: any flowjoint or nflows bijection.
        inputs: ``(batch, *event)``, or an [`AugmentedState`][flowjoint.AugmentedState].
        context: ``(batch, context_features)`` or ``None``.
        inverse: differentiate ``transform.inverse`` instead.

    Returns:
        ``(batch, size_out, size_in)``.

    Example:
        >>> import torch
        >>> from flowjoint import ReversePermutation
        >>> jacobian(ReversePermutation(2), torch.zeros(1, 2))
        tensor([[[0., 1.],
                 [1., 0.]]])
    """
    if not isinstance(inputs, AugmentedState):
        check_inputs(inputs)
    fn = transform.inverse if inverse else transform

    def summed_outputs(flat: Tensor) -> Tensor:
        outputs = fn(_unflat(flat, inputs), context=context)[0]
        return _flat(outputs).sum(0)  # (size_out,)

    jac = torch.func.jacrev(summed_outputs)(_flat(inputs))  # (size_out, batch, size_in)
    return jac.permute(1, 0, 2)


def check_logabsdet(
    transform: Transform,
    inputs: Tensor,
    context: Tensor | None = None,
    inverse: bool = True,
) -> float:
    """Worst ``|logabsdet - log|det J||`` over the batch, with ``J`` the dense Jacobian.

    Checks the forward map at ``inputs`` and, if ``inverse``, the inverse map at the
    forward outputs. Use float64 inputs for a meaningful figure.

    Args:
        transform: any flowjoint or nflows bijection.
        inputs: ``(batch, *event)`` or an [`AugmentedState`][flowjoint.AugmentedState].
        context: ``(batch, context_features)`` or ``None``.
        inverse: also check ``transform.inverse``.

    Returns:
        The largest absolute error, a Python float (``inf`` if a Jacobian is singular).
    """
    outputs, logabsdet = transform(inputs, context=context)
    worst = _slogdet_error(logabsdet, jacobian(transform, inputs, context))
    if inverse:
        _, logabsdet_inv = transform.inverse(outputs, context=context)
        detached = _unflat(_flat(outputs).detach(), outputs)
        jac_inv = jacobian(transform, detached, context, inverse=True)
        worst = max(worst, _slogdet_error(logabsdet_inv, jac_inv))
    return worst


def _slogdet_error(logabsdet: Tensor, jac: Tensor) -> float:
    sign, reference = torch.linalg.slogdet(jac.detach())
    if bool((sign == 0).any()):
        return float("inf")
    return (logabsdet.detach() - reference).abs().max().item()


def reorder(jac: Tensor, mask: Tensor) -> Tensor:
    """Rows and columns of ``jac`` ``(..., D, D)`` ordered kept-then-transformed.

    ``mask`` is True for transformed entries: ``(D,)``, or an event-shaped mask such as
    a checkerboard ``(C, H, W)`` (flattened in C-order, like the Jacobian).
    """
    mask = check_mask(mask).reshape(-1)
    order = torch.cat([(~mask).nonzero().squeeze(-1), mask.nonzero().squeeze(-1)])
    order = order.to(jac.device)
    return jac.index_select(-2, order).index_select(-1, order)


@dataclass(frozen=True)
class BlockStructure:
    """Which blocks of a coupling-style Jacobian are exactly zero.

    Blocks are named ``(output part, input part)`` with parts ``kept`` (mask False)
    and ``transformed`` (mask True).

    Attributes:
        zero_blocks: the blocks that are exactly zero at every batch item.
        kept_is_identity: the kept -> kept block is exactly the identity.
        transformed_is_diagonal: the transformed -> transformed block is diagonal.
        triangular: after ordering kept-then-transformed the matrix is lower
            triangular (kept outputs ignore transformed inputs, and both diagonal
            blocks are lower triangular), so ``det J`` is the product of its diagonal.
    """

    zero_blocks: tuple[tuple[str, str], ...]
    kept_is_identity: bool
    transformed_is_diagonal: bool
    triangular: bool


def block_structure(jac: Tensor, mask: Tensor) -> BlockStructure:
    """Report the block structure of ``jac`` ``((batch,) D, D)`` split by ``mask`` ``(D,)``.

    Example:
        >>> import torch
        >>> from flowjoint import AffineCoupling
        >>> from flowjoint.testing import randomize_parameters
        >>> mask = torch.tensor([False, True, True])
        >>> layer = randomize_parameters(AffineCoupling(mask, hidden_features=8))
        >>> block_structure(jacobian(layer, torch.randn(4, 3)), mask).triangular
        True
    """
    mask = check_mask(mask).reshape(-1)
    if not isinstance(jac, Tensor) or jac.dim() not in (2, 3) or jac.shape[-1] != jac.shape[-2]:
        raise ValueError(f"jac must have shape ((batch,) D, D), got {getattr(jac, 'shape', jac)}")
    if jac.shape[-1] != mask.numel():
        raise ValueError(f"mask must have length {jac.shape[-1]} to match jac, got {mask.numel()}")
    jac = jac.detach().reshape(-1, *jac.shape[-2:])  # (batch, D, D)
    mask = mask.to(jac.device)
    parts = {"kept": ~mask, "transformed": mask}
    blocks = {
        (out, inp): jac[:, rows][:, :, cols]
        for out, rows in parts.items()
        for inp, cols in parts.items()
    }
    zero = tuple(name for name, block in blocks.items() if not bool(block.any()))
    kk = blocks["kept", "kept"]
    tt = blocks["transformed", "transformed"]
    kept_is_identity = torch.equal(
        kk, torch.eye(kk.shape[-1], dtype=kk.dtype, device=kk.device).expand_as(kk)
    )
    transformed_is_diagonal = torch.equal(tt, torch.diag_embed(tt.diagonal(dim1=-2, dim2=-1)))
    ordered = reorder(jac, mask)
    triangular = torch.equal(ordered, ordered.tril())
    return BlockStructure(zero, kept_is_identity, transformed_is_diagonal, triangular)


def plot_jacobian_patterns(
    jacobians: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None = None,
    path: str | None = None,
) -> Figure:
    """Draw the sparsity pattern of each Jacobian side by side.

    A cell is dark where the entry is non-zero at any batch item. With a mask for a
    panel, rows and columns are ordered kept-then-transformed and the blocks are
    outlined, so that the triangular pattern shows.

    Args:
        jacobians: title -> ``((batch,) D, D)`` Jacobian, e.g. from
            [`jacobian`][flowjoint.jacobian].
        masks: title -> mask ``(D,)`` (True = transformed) for the panels to reorder.
        path: if given, the figure is saved there (PNG, 150 dpi).

    Returns:
        The matplotlib figure (matplotlib is an optional dependency:
        ``pip install flowjoint[plot]``).
    """
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover
        raise ImportError(
            "plot_jacobian_patterns needs matplotlib: pip install 'flowjoint[plot]'"
        ) from error
    if not jacobians:
        raise ValueError("jacobians must hold at least one Jacobian, got an empty mapping")
    masks = dict(masks or {})
    fig, axes = plt.subplots(1, len(jacobians), figsize=(3.6 * len(jacobians), 3.8), squeeze=False)
    for ax, (title, jac) in zip(axes[0], jacobians.items()):
        jac = jac.detach().reshape(-1, *jac.shape[-2:]).cpu()
        pattern = (jac != 0).any(0)  # (D, D)
        mask = masks.get(title)
        if mask is not None:
            pattern = reorder(pattern.double(), mask.cpu()).bool()
            split = int((~mask).sum()) - 0.5
            ax.axhline(split, color="tab:red", lw=1)
            ax.axvline(split, color="tab:red", lw=1)
        ax.imshow(pattern.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("input")
        ax.set_ylabel("output")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig
