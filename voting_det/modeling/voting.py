"""The primitive module's math (METHOD.md section 2, paper Eq. 2 and Eq. 3).

Every function here is pure and batched over the R proposals of a level; none
loops over proposals or over the K primitives in Python. Shapes:

- ``gamma``: the ROIAligned crop, ``(R, C, M, N)`` (an M x N grid, H x W);
- semantic templates ``v``: ``(K, C)``;
- response maps ``Rs``: ``(R, K, M, N)``;
- spatial templates ``D``: ``(K, Hd, Wd)``, odd sizes, by default
  ``(2M - 1, 2N - 1)`` so that every cell can vote for every other cell;
- vote heatmap ``Phi`` and location probabilities ``p``: ``(R, M, N)``.

Coordinates on the grid are ``(x, y)`` in cell units: cell ``(row a, col b)``
covers ``[b, b + 1) x [a, a + 1)`` and has its centre at ``(b + 0.5, a + 0.5)``.
Per-axis pairs given as arguments (``sigma_cells``, ``spatial_template_init_sigma``)
are ``(x, y)`` as well; sizes (``grid_size``, kernel sizes) are ``(H, W)`` like
torch shapes.

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
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_LOG_TEMPERATURE_RANGE",
    "DEFAULT_KMEANS_ITERATIONS",
    "SPATIAL_TEMPLATE_INIT_SIGMA_FRACTION",
    "PrimitiveVoting",
    "bilinear_cell_weights",
    "cell_centres_of",
    "contributions",
    "contributions_bilinear",
    "enlarge_boxes",
    "gaussian_heatmap_target",
    "grid_to_image",
    "heatmap_loss",
    "image_to_grid",
    "interpolate_bilinear",
    "kmeans_semantic_templates",
    "mask_primitives",
    "nearest_cell_index",
    "normalize_features",
    "reconstruct",
    "response_maps",
    "semantic_templates",
    "soft_argmax",
    "spatial_templates",
    "temperature",
    "trace_back",
    "trace_back_from_maps",
    "vote",
    "vote_operator",
    "vote_per_primitive",
]

# Guards the L2 norms of gamma_i and v_k and the std of Phi (METHOD.md 2.1, 2.4).
DEFAULT_EPS = 1e-6
# Clamp range of the learned log temperature t, T = exp(t) in [0.05, 20].
DEFAULT_LOG_TEMPERATURE_RANGE = (-3.0, 3.0)
# Lloyd iterations of the optional k-means initialisation of the semantic templates.
DEFAULT_KMEANS_ITERATIONS = 20
# Default std of the centred Gaussian that initialises the spatial-template
# logits, as a fraction of the grid size per axis (see PrimitiveVoting).
SPATIAL_TEMPLATE_INIT_SIGMA_FRACTION = 0.5
# Centre of a cell in cell units: cell b covers [b, b + 1).
_CELL_CENTRE_OFFSET = 0.5


def _unit_vectors(x: Tensor, dim: int, eps: float) -> Tensor:
    """``x / sqrt(|x|^2 + eps^2)`` along ``dim``: unit length for ``|x| >> eps``,
    exactly 0 for a zero vector, and a finite gradient everywhere."""
    return x * torch.rsqrt(x.square().sum(dim=dim, keepdim=True) + eps * eps)


def normalize_features(gamma: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """L2-normalise every C-vector gamma_i of a crop (METHOD.md 2, step 1).

    Args:
        gamma: ``(R, C, M, N)`` ROIAligned features.
        eps: cells whose norm is far below ``eps`` (the all-zero crop outside the
            ultrasound fan) stay 0 instead of becoming NaN.

    Returns:
        ``(R, C, M, N)``, each cell's C-vector of unit length (or 0).
    """
    return _unit_vectors(gamma, dim=1, eps=eps)


def semantic_templates(v: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """The semantic templates v_k renormalised to unit length (done in every
    forward, METHOD.md 2, step 2). ``v``: ``(K, C)`` -> ``(K, C)``."""
    return _unit_vectors(v, dim=1, eps=eps)


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
    (METHOD.md 2, step 3). ``logits``: ``(K, Hd, Wd)`` -> ``(K, Hd, Wd)``."""
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


def _operator_of(D: Tensor, grid_size: Tuple[int, int], operator: Optional[Tensor]) -> Tensor:
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
    operator = _operator_of(D, (m, n), operator).reshape(k * m * n, m * n)
    return (Rs.reshape(r, k * m * n) @ operator).reshape(r, m, n) / k


def vote_per_primitive(Rs: Tensor, D: Tensor, operator: Optional[Tensor] = None) -> Tensor:
    """Each primitive's own vote ``Phi_k = Rs_k (*) D_k`` (Eq. 2 before the mean
    over k), so that ``vote(Rs, D) == vote_per_primitive(Rs, D).mean(1)``.
    ``Rs``: ``(R, K, M, N)``, ``D``: ``(K, Hd, Wd)`` -> ``(R, K, M, N)``;
    ``operator`` as in :func:`vote`."""
    r, k, m, n = Rs.shape
    operator = _operator_of(D, (m, n), operator)
    return torch.einsum("rki,kij->rkj", Rs.reshape(r, k, m * n), operator).reshape(r, k, m, n)


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
    operator = _operator_of(D, (m, n), operator)
    return torch.einsum("kij,rj->rki", operator, Phi.reshape(r, m * n)).reshape(r, -1, m, n)


def temperature(
    log_temperature: Tensor,
    t_min: float = DEFAULT_LOG_TEMPERATURE_RANGE[0],
    t_max: float = DEFAULT_LOG_TEMPERATURE_RANGE[1],
) -> Tensor:
    """The softmax temperature ``T = exp(clamp(t, t_min, t_max))`` (METHOD.md 2, step 4)."""
    return torch.exp(log_temperature.clamp(t_min, t_max))


def _cell_centres(size: int, like: Tensor) -> Tensor:
    """Centres ``0.5, 1.5, ...`` of ``size`` cells along one axis."""
    return torch.arange(size, dtype=like.dtype, device=like.device) + _CELL_CENTRE_OFFSET


def soft_argmax(
    Phi: Tensor,
    log_temperature: Tensor,
    t_min: float = DEFAULT_LOG_TEMPERATURE_RANGE[0],
    t_max: float = DEFAULT_LOG_TEMPERATURE_RANGE[1],
    eps: float = DEFAULT_EPS,
) -> Tuple[Tensor, Tensor]:
    """Location from the vote heatmap (METHOD.md 2, step 4).

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
    centre_x = (p.sum(dim=1) * _cell_centres(n, p)).sum(dim=1)
    centre_y = (p.sum(dim=2) * _cell_centres(m, p)).sum(dim=1)
    return p, torch.stack([centre_x, centre_y], dim=1)


def grid_to_image(centre_cells: Tensor, crop_boxes: Tensor, grid_size: Tuple[int, int]) -> Tensor:
    """Map ``(x, y)`` cell coordinates to image coordinates through the crop box.

    Consistent with ROIAlign with ``aligned=True`` (detectron2's ROIAlignV2),
    which samples cell b over ``[x0 + b w / N, x0 + (b + 1) w / N]``:
    ``x = x0 + x_cells / N * (x1 - x0)``, ``y = y0 + y_cells / M * (y1 - y0)``.

    Args:
        centre_cells: ``(R, 2)`` ``(x, y)`` in cell units.
        crop_boxes: ``(R, 4)`` XYXY boxes the grid was cropped from (the
            enlarged boxes of :func:`enlarge_boxes`).
        grid_size: ``(M, N)``.

    Returns:
        ``(R, 2)`` ``(x, y)`` in image coordinates.
    """
    m, n = grid_size
    origin = crop_boxes[:, :2]
    extent = crop_boxes[:, 2:] - origin
    cells = torch.tensor([n, m], dtype=centre_cells.dtype, device=centre_cells.device)
    return origin + centre_cells / cells * extent


def image_to_grid(points: Tensor, crop_boxes: Tensor, grid_size: Tuple[int, int]) -> Tensor:
    """The inverse of :func:`grid_to_image`: image ``(x, y)`` to cell units of
    the crop grid (e.g. the true centre, for the heatmap target).
    ``points``: ``(R, 2)``; ``crop_boxes``: ``(R, 4)``; returns ``(R, 2)``."""
    m, n = grid_size
    origin = crop_boxes[:, :2]
    extent = crop_boxes[:, 2:] - origin
    cells = torch.tensor([n, m], dtype=points.dtype, device=points.device)
    return (points - origin) / extent * cells


def enlarge_boxes(boxes: Tensor, context_w: float, context_h: float) -> Tensor:
    """Scale XYXY boxes about their centres by ``context_w`` in width and
    ``context_h`` in height (the crop of METHOD.md 2, step 1, e.g. 1.5 x 3).
    ``boxes``: ``(R, 4)`` -> ``(R, 4)``."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * boxes.new_tensor([context_w, context_h])
    return torch.cat([centre - half, centre + half], dim=1)


def nearest_cell_index(centre_cells: Tensor, grid_size: Tuple[int, int]) -> Tensor:
    """Flat index ``row * N + col`` of the cell containing each ``(x, y)``
    (the cell whose centre is nearest), clamped into the grid. ``(R, 2)`` -> ``(R,)``."""
    m, n = grid_size
    col = centre_cells[:, 0].floor().long().clamp(0, n - 1)
    row = centre_cells[:, 1].floor().long().clamp(0, m - 1)
    return row * n + col


def cell_centres_of(index: Tensor, grid_size: Tuple[int, int]) -> Tensor:
    """``(x, y)`` in cell units of the centres of the cells with flat index
    ``row * N + col`` (the inverse of :func:`nearest_cell_index`).
    ``index``: any shape ``S`` -> ``S + (2,)``, floating point."""
    n = grid_size[1]
    col = (index % n).to(torch.get_default_dtype())
    row = torch.div(index, n, rounding_mode="floor").to(col.dtype)
    return torch.stack([col + _CELL_CENTRE_OFFSET, row + _CELL_CENTRE_OFFSET], dim=-1)


def bilinear_cell_weights(centre_cells: Tensor, grid_size: Tuple[int, int]) -> Tensor:
    """Bilinear interpolation weights of the cell centres at ``(x, y)``.

    Weights sum to 1; a point beyond the outermost cell centres takes the border
    cells' values. ``(R, 2)`` -> ``(R, M, N)``.
    """
    m, n = grid_size

    def hat(position: Tensor, size: int) -> Tensor:
        index = (position - _CELL_CENTRE_OFFSET).clamp(0, size - 1)
        cells = torch.arange(size, dtype=position.dtype, device=position.device)
        return (1 - (index[:, None] - cells).abs()).clamp_min(0)

    return hat(centre_cells[:, 1], m)[:, :, None] * hat(centre_cells[:, 0], n)[:, None, :]


def interpolate_bilinear(grid: Tensor, centre_cells: Tensor) -> Tensor:
    """Bilinear value of an ``(R, M, N)`` map at ``(R, 2)`` ``(x, y)`` -> ``(R,)``."""
    return (grid * bilinear_cell_weights(centre_cells, grid.shape[1:])).sum(dim=(1, 2))


def _contributions_at(Rs: Tensor, D: Tensor, weights: Tensor, operator: Optional[Tensor] = None) -> Tensor:
    """``c_k = sum_j w(j) Phi_k(j) / K``, evaluated through the adjoint:
    ``<Rs_k (*) D_k, w> = <Rs_k, reconstruct_k(w)>``."""
    k = Rs.shape[1]
    return (Rs * reconstruct(weights, D, operator)).sum(dim=(2, 3)) / k


def contributions(Rs: Tensor, D: Tensor, centre_index: Tensor, operator: Optional[Tensor] = None) -> Tensor:
    """Each primitive's vote at the predicted cell, ``c_k = (Rs_k (*) D_k)(x_hat) / K``
    (METHOD.md 2, trace-back): an exact decomposition, ``sum_k c_k = Phi(x_hat)``.

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
    dx = (_cell_centres(n, centres_cells)[None, :] - centres_cells[:, :1]) / sigma_x
    dy = (_cell_centres(m, centres_cells)[None, :] - centres_cells[:, 1:]) / sigma_y
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


def _kmeans_plus_plus(points: Tensor, num_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding on unit vectors with the cosine distance ``1 - cos``."""
    first = torch.randint(points.shape[0], (1,), generator=generator, device=points.device)
    centres = [points[first[0]]]
    closest = 1 - points @ centres[0]
    for _ in range(1, num_clusters):
        weights = closest.clamp_min(0)
        if weights.sum() <= 0:
            weights = torch.ones_like(weights)
        chosen = torch.multinomial(weights, 1, generator=generator)[0]
        centres.append(points[chosen])
        closest = torch.minimum(closest, 1 - points @ points[chosen])
    return torch.stack(centres)


def kmeans_semantic_templates(
    features: Tensor,
    num_primitives: int,
    iterations: int = DEFAULT_KMEANS_ITERATIONS,
    seed: int = 0,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Spherical k-means of ROI feature vectors, the optional initialisation of
    the semantic templates (compositional-voting practice, METHOD.md 2).

    Cosine similarity, seeded k-means++ start, ``iterations`` Lloyd steps; a
    cluster left empty is restarted at the point worst served by its centre.

    Args:
        features: ``(P, C)`` feature vectors (e.g. cells of training-positive crops).
        num_primitives: K, at most P.
        iterations: Lloyd iterations.
        seed: seed of the k-means++ start.
        eps: guards the normalisation of zero vectors.

    Returns:
        ``(K, C)`` unit cluster directions.
    """
    if features.shape[0] < num_primitives:
        raise ValueError(f"k-means needs at least K={num_primitives} feature vectors, got {features.shape[0]}")
    points = _unit_vectors(features.detach(), dim=1, eps=eps)
    generator = torch.Generator(device=points.device)
    generator.manual_seed(seed)
    centres = _kmeans_plus_plus(points, num_primitives, generator)
    for _ in range(iterations):
        similarity = points @ centres.T
        best, assignment = similarity.max(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=num_primitives)
        empty = (counts == 0).nonzero().squeeze(1)
        if empty.numel() > 0:
            worst = best.topk(empty.numel(), largest=False).indices
            sums[empty] = points[worst]
        centres = _unit_vectors(sums, dim=1, eps=eps)
    return centres


class PrimitiveVoting(nn.Module):
    """The primitive module's parameters and its forward at one level
    (METHOD.md 2, steps 1-4; the crop itself is done by the caller).

    Parameters (none should get weight decay, METHOD.md 2 "Losses"):

    - ``semantic_templates`` ``(K, C)``: random unit vectors drawn from torch's
      global RNG (seed it for reproducibility), or k-means of ROI features via
      :meth:`init_semantic_templates_kmeans`;
    - ``spatial_template_logits`` ``(K, Hd, Wd)``: initialised to the log of a
      centred Gaussian, the same for every k (each primitive starts by voting
      for its own location, blurred). Not zeros: with full-size kernels a
      uniform D_k sends every response to every cell with the same weight, so
      Phi is exactly constant, its std 0, and the standardised soft-argmax has
      no gradient to learn from. The default std, half the grid per axis, keeps
      the far displacements' softmax gradient alive (``exp(-2)`` of the peak
      at the largest displacement);
    - ``log_temperature`` t, a scalar initialised to 0 (T = 1), clamped to
      ``log_temperature_range`` in the forward.

    Args:
        in_channels: C.
        num_primitives: K.
        grid_size: ``(M, N)`` of the ROIAligned crop.
        spatial_template_size: odd ``(Hd, Wd)``; default ``(2M - 1, 2N - 1)``.
        spatial_template_init_sigma: ``(sigma_x, sigma_y)`` in cells of the
            initial Gaussian; default half the grid, ``(N / 2, M / 2)``.
        log_temperature_range: ``(t_min, t_max)``.
        eps: see :func:`normalize_features` and :func:`soft_argmax`.
    """

    def __init__(
        self,
        in_channels: int,
        num_primitives: int,
        grid_size: Tuple[int, int],
        spatial_template_size: Optional[Tuple[int, int]] = None,
        spatial_template_init_sigma: Optional[Tuple[float, float]] = None,
        log_temperature_range: Tuple[float, float] = DEFAULT_LOG_TEMPERATURE_RANGE,
        eps: float = DEFAULT_EPS,
    ):
        super().__init__()
        m, n = grid_size
        kh, kw = spatial_template_size if spatial_template_size is not None else (2 * m - 1, 2 * n - 1)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"spatial_template_size must be odd, got {kh} x {kw}")
        if spatial_template_init_sigma is None:
            spatial_template_init_sigma = (
                SPATIAL_TEMPLATE_INIT_SIGMA_FRACTION * n,
                SPATIAL_TEMPLATE_INIT_SIGMA_FRACTION * m,
            )
        sigma_x, sigma_y = spatial_template_init_sigma
        self.grid_size = (m, n)
        self.log_temperature_range = tuple(log_temperature_range)
        self.eps = eps

        self.semantic_templates = nn.Parameter(semantic_templates(torch.randn(num_primitives, in_channels), eps))
        dy = (torch.arange(kh, dtype=torch.float32) - kh // 2) / sigma_y
        dx = (torch.arange(kw, dtype=torch.float32) - kw // 2) / sigma_x
        gaussian_logits = -0.5 * (dy.square()[:, None] + dx.square()[None, :])
        self.spatial_template_logits = nn.Parameter(gaussian_logits.expand(num_primitives, kh, kw).clone())
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self._operator_cache: Optional[Tuple[tuple, Tensor, Tensor]] = None

    def spatial_templates(self) -> Tensor:
        """The current spatial templates D_k, ``(K, Hd, Wd)``."""
        return spatial_templates(self.spatial_template_logits)

    def templates_and_operator(self) -> Tuple[Tensor, Tensor]:
        """D_k and the vote operator of Eq. 2 (:func:`vote_operator`, ``(K, MN, MN)``).

        Both depend only on the spatial-template logits, not on the image: when
        no gradient is recorded (inference) they are built once and reused until
        the logits change (an optimizer step or a loaded checkpoint bumps the
        tensor's version), which saves a ``K x MN x MN`` gather per level and
        forward. With gradients they are built in the graph every time.
        """
        logits = self.spatial_template_logits
        if torch.is_grad_enabled() and logits.requires_grad:
            self._operator_cache = None
            D = spatial_templates(logits)
            return D, vote_operator(D, self.grid_size)
        key = (logits._version, logits.data_ptr(), logits.dtype, logits.device, logits.shape)
        if self._operator_cache is None or self._operator_cache[0] != key:
            with torch.no_grad():
                D = spatial_templates(logits)
                self._operator_cache = (key, D, vote_operator(D, self.grid_size))
        return self._operator_cache[1], self._operator_cache[2]

    def forward(self, gamma: Tensor, primitive_mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Detection, vote and location for the crops ``gamma`` ``(R, C, M, N)``.

        ``primitive_mask`` (``(K,)`` or ``(R, K)``, see :func:`mask_primitives`)
        deletes primitives before they vote; None (the default) keeps them all.

        Returns:
            dict with ``response_maps`` Rs ``(R, K, M, N)``, ``vote_heatmap`` Phi
            ``(R, M, N)``, ``probabilities`` p ``(R, M, N)`` and
            ``centre_cells`` ``(R, 2)`` ``(x, y)`` in cell units (map them with
            :func:`grid_to_image`).
        """
        if tuple(gamma.shape[2:]) != self.grid_size:
            raise ValueError(f"expected crops of size {self.grid_size}, got {tuple(gamma.shape[2:])}")
        Rs = response_maps(normalize_features(gamma, self.eps), semantic_templates(self.semantic_templates, self.eps))
        if primitive_mask is not None:
            Rs = mask_primitives(Rs, primitive_mask)
        D, operator = self.templates_and_operator()
        Phi = vote(Rs, D, operator)
        p, centre_cells = soft_argmax(Phi, self.log_temperature, *self.log_temperature_range, eps=self.eps)
        return {"response_maps": Rs, "vote_heatmap": Phi, "probabilities": p, "centre_cells": centre_cells}

    @torch.no_grad()
    def explain(self, outputs: Dict[str, Tensor], tau: float = 0.0, normalize: bool = False) -> Dict[str, Tensor]:
        """The trace-back of Eq. 3 for a :meth:`forward` result (no gradient).

        Args:
            outputs: what :meth:`forward` returned.
            tau, normalize: see :func:`trace_back_from_maps`.

        Returns:
            dict with ``alpha`` ``(R, K)``; ``contributions`` ``(R, K)`` at the
            cell nearest the centre and ``contributions_bilinear`` ``(R, K)`` at
            the continuous centre; ``reconstruction`` Rc ``(R, K, M, N)``;
            ``primitive_votes`` ``(R, K, M, N)`` (Phi_k, Phi = their mean).
        """
        Rs, Phi, centre_cells = outputs["response_maps"], outputs["vote_heatmap"], outputs["centre_cells"]
        D, operator = self.templates_and_operator()
        Rc = reconstruct(Phi, D, operator)
        return {
            "alpha": trace_back_from_maps(Rs, Rc, tau=tau, normalize=normalize),
            "contributions": contributions(Rs, D, nearest_cell_index(centre_cells, self.grid_size), operator),
            "contributions_bilinear": contributions_bilinear(Rs, D, centre_cells, operator),
            "reconstruction": Rc,
            "primitive_votes": vote_per_primitive(Rs, D, operator),
        }

    @torch.no_grad()
    def init_semantic_templates_kmeans(
        self, features: Tensor, iterations: int = DEFAULT_KMEANS_ITERATIONS, seed: int = 0
    ) -> None:
        """Set the semantic templates to the spherical k-means directions of
        ``features`` ``(P, C)`` (:func:`kmeans_semantic_templates`)."""
        centres = kmeans_semantic_templates(features, self.semantic_templates.shape[0], iterations, seed, self.eps)
        self.semantic_templates.copy_(centres.to(self.semantic_templates))
