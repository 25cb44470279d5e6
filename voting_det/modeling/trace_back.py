"""The trace-back of Eq. 3 (docs/method.md section 2, trace-back): which
primitives placed a centre. Reconstructions Rc_k of the vote heatmap through
the spatial templates, the trace-back score alpha_k and the contributions c_k
of each primitive to the vote at the centre. Pure, batched functions; shapes
as in :mod:`.voting`.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .grid import bilinear_cell_weights
from .voting import operator_of

__all__ = [
    "contributions",
    "contributions_bilinear",
    "reconstruct",
    "trace_back",
    "trace_back_from_maps",
]


def reconstruct(Phi: Tensor, D: Tensor, operator: Optional[Tensor] = None) -> Tensor:
    """Eq. 3's back-projection: ``Rc_k = adjoint of primitive k's vote applied to Phi``,
    ``Rc_k(i) = sum_j Phi(j) D_k(j - i + c)`` (a transposed convolution,
    ``scipy.signal.correlate2d(Phi, D_k, mode='same')``): the responses of
    primitive k that would have voted for where the heatmap is.

    Args:
        Phi: ``(R, M, N)`` vote heatmap.
        D: ``(K, Hd, Wd)`` spatial templates.
        operator: as in :func:`vote`.

    Returns:
        ``Rc``: ``(R, K, M, N)``.
    """
    r, m, n = Phi.shape
    operator = operator_of(D, (m, n), operator)
    # the primitive count from the templates, not -1: with no box (R = 0) -1 is ambiguous
    return torch.einsum("kij,rj->rki", operator, Phi.reshape(r, m * n)).reshape(r, D.shape[0], m, n)


def _contributions_at(Rs: Tensor, D: Tensor, weights: Tensor, operator: Optional[Tensor] = None) -> Tensor:
    """``c_k = sum_j w(j) Phi_k(j) / K``, evaluated through the adjoint:
    ``<Rs_k (*) D_k, w> = <Rs_k, reconstruct_k(w)>``."""
    k = Rs.shape[1]
    return (Rs * reconstruct(weights, D, operator)).sum(dim=(2, 3)) / k


def contributions(Rs: Tensor, D: Tensor, centre_index: Tensor, operator: Optional[Tensor] = None) -> Tensor:
    """Each primitive's vote at the predicted cell, ``c_k = (Rs_k (*) D_k)(x_hat) / K``
    (docs/method.md section 2, trace-back): an exact decomposition, ``sum_k c_k = Phi(x_hat)``.

    Args:
        Rs: ``(R, K, M, N)`` response maps.
        D: ``(K, Hd, Wd)`` spatial templates.
        centre_index: ``(R,)`` flat cell index of x_hat (:func:`nearest_cell_index`).
        operator: as in :func:`vote`.

    Returns:
        ``(R, K)``.
    """
    r, _, m, n = Rs.shape
    one_hot = F.one_hot(centre_index, m * n).to(Rs.dtype).reshape(r, m, n)
    return _contributions_at(Rs, D, one_hot, operator)


def contributions_bilinear(Rs: Tensor, D: Tensor, centre_cells: Tensor, operator: Optional[Tensor] = None) -> Tensor:
    """:func:`contributions` at the continuous centre: ``c_k`` is the bilinear
    interpolation of ``Phi_k / K`` at ``(x, y)``, so ``sum_k c_k`` is the
    bilinearly interpolated Phi (:func:`interpolate_bilinear`). ``(R, K)``."""
    return _contributions_at(Rs, D, bilinear_cell_weights(centre_cells, Rs.shape[2:]), operator)


def _divide_or_zero(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` where the denominator is positive, else 0."""
    positive = denominator > 0
    safe = torch.where(positive, denominator, torch.ones_like(denominator))
    return torch.where(positive, numerator / safe, torch.zeros_like(numerator))


def _unit_mass(maps: Tensor) -> Tensor:
    """Rescale each ``(M, N)`` map of ``(R, K, M, N)`` to sum 1 (all-zero maps stay 0)."""
    return _divide_or_zero(maps, maps.sum(dim=(2, 3), keepdim=True))


def trace_back_from_maps(Rs: Tensor, Rc: Tensor, tau: float = 0.0, normalize: bool = False) -> Tensor:
    """Eq. 3 given the response maps and their reconstruction.

    ``B_k = [Rs_k > 0] and [Rc_k > tau * max_i Rc_k]`` and
    ``alpha_k = (sum_i Rs_k B_k + sum_i Rc_k B_k) / (sum_i Rs_k + sum_i Rc_k)``,
    0 when the denominator is 0; ``alpha_k`` is in ``[0, 1]``.

    ``normalize=False`` (the default) is Eq. 3 as the paper writes it. The two
    terms then weigh in with their masses, and those are on a common scale:
    ``sum_i Rc_k(i) <= sum_j Phi(j) <= mean_k' sum_i Rs_k'(i)`` (template mass
    that falls off the grid is lost), so a primitive more active than the
    average one is judged mostly by whether its detections lie where the
    consensus is, a less active one mostly by whether the consensus lies on its
    detections. ``normalize=True`` rescales ``Rs_k`` and ``Rc_k`` each to unit
    mass first, giving the mean of the two fractions: comparable across
    primitives, levels and images, but blind to how strongly a primitive
    responds (one faint response inside the consensus already gives
    ``alpha_k >= 1/2``), which is why it is not the default.

    Args:
        Rs: ``(R, K, M, N)`` response maps.
        Rc: ``(R, K, M, N)`` reconstructions (:func:`reconstruct`).
        tau: threshold on ``Rc_k`` relative to its maximum (0 = the paper).
        normalize: see above.

    Returns:
        ``alpha``: ``(R, K)``.
    """
    if normalize:
        Rs, Rc = _unit_mass(Rs), _unit_mass(Rc)
    peak = Rc.amax(dim=(2, 3), keepdim=True)
    support = (Rs > 0) & (Rc > tau * peak)
    agreed = torch.where(support, Rs + Rc, torch.zeros_like(Rs)).sum(dim=(2, 3))
    total = (Rs + Rc).sum(dim=(2, 3))
    return _divide_or_zero(agreed, total)


def trace_back(Rs: Tensor, D: Tensor, Phi: Tensor, tau: float = 0.0, normalize: bool = False) -> Tensor:
    """Eq. 3, the trace-back score alpha_k of every primitive of every proposal:
    :func:`trace_back_from_maps` with ``Rc = reconstruct(Phi, D)``. ``(R, K)``."""
    return trace_back_from_maps(Rs, reconstruct(Phi, D), tau=tau, normalize=normalize)
