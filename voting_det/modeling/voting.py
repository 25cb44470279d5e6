"""The primitive module's math up to the vote and its location (docs/method.md
section 2, paper Eq. 2): detection (response maps), the vote heatmap, the
soft-argmax and the heatmap loss. Grid coordinates: :mod:`.grid`; the
trace-back of Eq. 3: :mod:`.trace_back`.

Every function here is pure and batched over the R proposals of a level; none
loops over proposals or over the K primitives in Python. Shapes:

- ``gamma``: the ROIAligned crop, ``(R, C, M, N)`` (an M x N grid, H x W);
- semantic templates ``v``: ``(K, C)``;
- response maps ``Rs``: ``(R, K, M, N)``;
- spatial templates ``D``: ``(K, Hd, Wd)``, odd sizes, by default
  ``(2M - 1, 2N - 1)`` so that every cell can vote for every other cell;
- vote heatmap ``Phi`` and location probabilities ``p``: ``(R, M, N)``.

Eq. 2 (the vote) is a true 2-D convolution of each response map with its spatial
template, ``Phi(j) = 1/K sum_k sum_i Rs_k(i) D_k(j - i + c)`` (``c`` the kernel
centre: a primitive responding at cell i votes for cell i + d with weight
``D_k(c + d)``). It is computed as one matrix product with the vote operator of
:func:`vote_operator` (a block-Toeplitz matrix gathered from ``D``), not as
``conv2d`` with flipped kernels (K input channels, one output channel). Both
agree to 1e-6; median times on the development CPU (2 shared threads,
torch 2.x, R = 100 proposals, K = 128, conv2d / matrix product, in ms):

==========  ==========  ===========  ================
grid M x N  kernel      forward      forward+backward
==========  ==========  ===========  ================
6 x 24      11 x 47     488 / 52     2157 / 40
8 x 32      15 x 63     1632 / 88    6042 / 323
6 x 24      5 x 9       11 / 11      36 / 38
8 x 32      5 x 9       64 / 80      202 / 288
==========  ==========  ===========  ================

The default full-size kernels are 10-50x faster as a matrix product; conv2d
wins only for small configured kernels, by at most 1.5x, so the matrix product
is the one implementation.
"""
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .grid import axis_cell_centres

__all__ = [
    "unit_vectors",
    "operator_of",
    "DEFAULT_EPS",
    "DEFAULT_LOG_TEMPERATURE_RANGE",
    "gaussian_heatmap_target",
    "heatmap_loss",
    "mask_primitives",
    "normalize_features",
    "response_maps",
    "semantic_templates",
    "soft_argmax",
    "spatial_templates",
    "temperature",
    "vote",
    "vote_operator",
    "vote_per_primitive",
]


# Guards the L2 norms of gamma_i and v_k and the std of Phi (docs/method.md section 2, steps 1 and 4).
DEFAULT_EPS = 1e-6


# Clamp range of the learned log temperature t, T = exp(t) in [0.05, 20].
DEFAULT_LOG_TEMPERATURE_RANGE = (-3.0, 3.0)


def unit_vectors(x: Tensor, dim: int, eps: float) -> Tensor:
    """``x / sqrt(|x|^2 + eps^2)`` along ``dim``: unit length for ``|x| >> eps``,
    exactly 0 for a zero vector, and a finite gradient everywhere."""
    return x * torch.rsqrt(x.square().sum(dim=dim, keepdim=True) + eps * eps)


def normalize_features(gamma: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """L2-normalise every C-vector gamma_i of a crop (docs/method.md section 2, step 1).

    Args:
        gamma: ``(R, C, M, N)`` ROIAligned features.
        eps: cells whose norm is far below ``eps`` (the all-zero crop outside the
            ultrasound fan) stay 0 instead of becoming NaN.

    Returns:
        ``(R, C, M, N)``, each cell's C-vector of unit length (or 0).
    """
    return unit_vectors(gamma, dim=1, eps=eps)


def semantic_templates(v: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """The semantic templates v_k renormalised to unit length (done in every
    forward, docs/method.md section 2, step 2). ``v``: ``(K, C)`` -> ``(K, C)``."""
    return unit_vectors(v, dim=1, eps=eps)


def response_maps(gamma_n: Tensor, v_n: Tensor) -> Tensor:
    """Detection of each primitive: ``Rs_k(i) = max(v_k . gamma_i, 0)``.

    Args:
        gamma_n: ``(R, C, M, N)`` unit feature vectors (:func:`normalize_features`).
        v_n: ``(K, C)`` unit semantic templates (:func:`semantic_templates`).

    Returns:
        Response maps ``Rs``: ``(R, K, M, N)``, values in ``[0, 1]``.
    """
    return torch.einsum("rcmn,kc->rkmn", gamma_n, v_n).clamp_min(0)


def mask_primitives(Rs: Tensor, primitive_mask: Tensor) -> Tensor:
    """Delete primitives: ``Rs_k * mask_k``, the intervention of the deletion test
    (docs/interpretation.md). A primitive with mask 0 neither detects nor votes:
    its response map is 0 wherever it is read afterwards (the vote of Eq. 2, whose
    1/K is kept, and the mean response that gates FC_L).

    Args:
        Rs: ``(R, K, M, N)`` response maps.
        primitive_mask: ``(K,)`` (the same for every proposal) or ``(R, K)``
            multipliers, 1 = kept, 0 = deleted.

    Returns:
        ``(R, K, M, N)``.
    """
    r, k = Rs.shape[:2]
    if tuple(primitive_mask.shape) not in ((k,), (r, k)):
        raise ValueError(f"a primitive mask must have shape (K,) = ({k},) or (R, K) = ({r}, {k}), "
                         f"got {tuple(primitive_mask.shape)}")
    mask = primitive_mask.to(Rs).expand(r, k)
    return Rs * mask[:, :, None, None]


def spatial_templates(logits: Tensor) -> Tensor:
    """Spatial templates D_k: a softmax over each template's whole support, so
    every D_k is non-negative with unit mass and no displacement is dead
    (docs/method.md section 2, step 3). ``logits``: ``(K, Hd, Wd)`` -> ``(K, Hd, Wd)``."""
    num_templates = logits.shape[0]
    return torch.softmax(logits.reshape(num_templates, -1), dim=1).reshape(logits.shape)


@lru_cache(maxsize=16)
def _vote_index(grid_size: Tuple[int, int], kernel_size: Tuple[int, int], device: torch.device) -> Tensor:
    """``(M*N, M*N)`` index into a flattened kernel padded by one trailing zero:
    entry ``[i, j]`` is the position of displacement ``j - i`` from the kernel
    centre, or the padding position when ``j - i`` lies outside the kernel."""
    (m, n), (kh, kw) = grid_size, kernel_size
    # a normal tensor even when first asked for under torch.inference_mode: the
    # cached index is reused by training, which saves it for backward
    with torch.inference_mode(False):
        rows, cols = torch.meshgrid(torch.arange(m, device=device), torch.arange(n, device=device), indexing="ij")
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        du = rows[None, :] - rows[:, None] + kh // 2
        dv = cols[None, :] - cols[:, None] + kw // 2
        inside = (du >= 0) & (du < kh) & (dv >= 0) & (dv < kw)
        return torch.where(inside, du * kw + dv, torch.full_like(du, kh * kw))


def operator_of(D: Tensor, grid_size: Tuple[int, int], operator: Optional[Tensor]) -> Tensor:
    """``operator`` when given (checked against D's size), else ``vote_operator(D, grid_size)``."""
    if operator is None:
        return vote_operator(D, grid_size)
    cells = grid_size[0] * grid_size[1]
    if tuple(operator.shape) != (D.shape[0], cells, cells):
        raise ValueError(f"a vote operator for K={D.shape[0]} and grid {tuple(grid_size)} has shape "
                         f"({D.shape[0]}, {cells}, {cells}), got {tuple(operator.shape)}")
    return operator


def vote_operator(D: Tensor, grid_size: Tuple[int, int]) -> Tensor:
    """The vote of Eq. 2 as a matrix: ``T[k, i, j] = D_k(j - i + c)``.

    Row ``i`` of ``T_k`` is where a response of primitive k at cell ``i`` sends
    its votes; displacements outside the kernel (a configured kernel smaller
    than ``(2M - 1, 2N - 1)``) weigh 0, as does the zero padding of a
    convolution.

    Args:
        D: ``(K, Hd, Wd)`` spatial templates, odd sizes.
        grid_size: ``(M, N)``.

    Returns:
        ``(K, M*N, M*N)``, differentiable in ``D``.
    """
    num_templates, kh, kw = D.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"spatial templates need odd sizes to have a centre, got {kh} x {kw}")
    index = _vote_index(tuple(grid_size), (kh, kw), D.device)
    padded = F.pad(D.reshape(num_templates, kh * kw), (0, 1))
    return padded[:, index]


def vote(Rs: Tensor, D: Tensor, operator: Optional[Tensor] = None) -> Tensor:
    """Eq. 2, the vote heatmap ``Phi = 1/K sum_k Rs_k (*) D_k`` on the M x N grid.

    A primitive responding at cell i votes for cell ``i + d`` with weight
    ``D_k(c + d)``, d measured from the kernel centre c:
    ``Phi(j) = 1/K sum_k sum_i Rs_k(i) D_k(j - i + c)`` -- a true convolution
    with 'same' output size and zero padding (``scipy.signal.convolve2d(Rs_k,
    D_k, mode='same')`` averaged over k). One matrix product over all k and all
    proposals (see the module docstring for why not ``conv2d``).

    Args:
        Rs: ``(R, K, M, N)`` response maps.
        D: ``(K, Hd, Wd)`` spatial templates.
        operator: ``vote_operator(D, (M, N))`` if already built (it is the
            same for every proposal; :class:`PrimitiveVoting` keeps it between
            forwards when no gradient is needed).

    Returns:
        ``Phi``: ``(R, M, N)``.
    """
    r, k, m, n = Rs.shape
    operator = operator_of(D, (m, n), operator).reshape(k * m * n, m * n)
    return (Rs.reshape(r, k * m * n) @ operator).reshape(r, m, n) / k


def vote_per_primitive(Rs: Tensor, D: Tensor, operator: Optional[Tensor] = None) -> Tensor:
    """Each primitive's own vote ``Phi_k = Rs_k (*) D_k`` (Eq. 2 before the mean
    over k), so that ``vote(Rs, D) == vote_per_primitive(Rs, D).mean(1)``.
    ``Rs``: ``(R, K, M, N)``, ``D``: ``(K, Hd, Wd)`` -> ``(R, K, M, N)``;
    ``operator`` as in :func:`vote`."""
    r, k, m, n = Rs.shape
    operator = operator_of(D, (m, n), operator)
    return torch.einsum("rki,kij->rkj", Rs.reshape(r, k, m * n), operator).reshape(r, k, m, n)


def temperature(
    log_temperature: Tensor,
    t_min: float = DEFAULT_LOG_TEMPERATURE_RANGE[0],
    t_max: float = DEFAULT_LOG_TEMPERATURE_RANGE[1],
) -> Tensor:
    """The softmax temperature ``T = exp(clamp(t, t_min, t_max))`` (docs/method.md section 2, step 4)."""
    return torch.exp(log_temperature.clamp(t_min, t_max))


def soft_argmax(
    Phi: Tensor,
    log_temperature: Tensor,
    t_min: float = DEFAULT_LOG_TEMPERATURE_RANGE[0],
    t_max: float = DEFAULT_LOG_TEMPERATURE_RANGE[1],
    eps: float = DEFAULT_EPS,
) -> Tuple[Tensor, Tensor]:
    """Location from the vote heatmap (docs/method.md section 2, step 4).

    ``p = softmax(((Phi - mean Phi) / (std Phi + eps)) / T)`` over each
    proposal's grid (population std), ``T`` from :func:`temperature`. Without
    the standardisation Phi spans a tiny range at initialisation, p is uniform
    and the centre sticks to the crop centre.

    Args:
        Phi: ``(R, M, N)`` vote heatmap.
        log_temperature: scalar tensor t.
        t_min, t_max: clamp range of t.
        eps: guards the std of a constant heatmap.

    Returns:
        ``p``: ``(R, M, N)`` location probabilities, and the centre ``(R, 2)``
        as ``(x, y)`` in cell units: the p-weighted mean of the cell centres.
    """
    r, m, n = Phi.shape
    flat = Phi.reshape(r, m * n)
    standardised = (flat - flat.mean(dim=1, keepdim=True)) / (flat.std(dim=1, unbiased=False, keepdim=True) + eps)
    p = torch.softmax(standardised / temperature(log_temperature, t_min, t_max), dim=1).reshape(r, m, n)
    centre_x = (p.sum(dim=1) * axis_cell_centres(n, p)).sum(dim=1)
    centre_y = (p.sum(dim=2) * axis_cell_centres(m, p)).sum(dim=1)
    return p, torch.stack([centre_x, centre_y], dim=1)


def gaussian_heatmap_target(centres_cells: Tensor, grid_size: Tuple[int, int], sigma_cells: Sequence[float]) -> Tensor:
    """Target of the heatmap loss: a Gaussian at the true centre, unit mass.

    Evaluated at the cell centres and normalised in log space (a softmax of the
    log-density), so a centre far from the grid still gives a finite target,
    concentrated on the nearest cells.

    Args:
        centres_cells: ``(R, 2)`` true centres ``(x, y)`` in cell units.
        grid_size: ``(M, N)``.
        sigma_cells: ``(sigma_x, sigma_y)`` in cells.

    Returns:
        ``(R, M, N)``, each summing to 1.
    """
    m, n = grid_size
    sigma_x, sigma_y = sigma_cells
    dx = (axis_cell_centres(n, centres_cells)[None, :] - centres_cells[:, :1]) / sigma_x
    dy = (axis_cell_centres(m, centres_cells)[None, :] - centres_cells[:, 1:]) / sigma_y
    log_density = -0.5 * (dy.square()[:, :, None] + dx.square()[:, None, :])
    return torch.softmax(log_density.reshape(-1, m * n), dim=1).reshape(-1, m, n)


def heatmap_loss(p: Tensor, target: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """KL divergence ``sum target (log target - log(p + eps))`` over the grid,
    mean over the R proposals (0, still connected to the graph, when R = 0).

    The cross-entropy with the target minus the target's own entropy: the same
    gradient, but 0 at a perfect fit, so the loss reads as a distance."""
    if p.shape[0] == 0:
        return p.sum()
    return (torch.xlogy(target, target) - torch.xlogy(target, p + eps)).sum(dim=(1, 2)).mean()
