"""Border votes (docs/method.md section 2b): the primitives also vote for the
structure's borders, so that its size comes from votes, as its centre does,
instead of from an FC regression.

Along one axis of the M x N crop grid (``"y"``: the rows, the upper and lower
borders; ``"x"``: the columns, the two ends), each primitive's response map is
reduced to a profile along that axis (its mean over the other axis), and the
profiles vote with one-dimensional templates, one per border, by the same rule
as Eq. 2:

    Psi_b(j) = 1/K sum_k sum_i r_k(i) d_k^b(j - i + c)

``r_k`` the profile of primitive k, ``d_k^b`` its template for border b (a
softmax over its 2L - 1 displacements, L the number of cells along the axis,
``c = L - 1`` its centre). The border is the soft-argmax of ``Psi_b`` along the
axis, with the standardisation of :func:`~voting_det.modeling.voting.soft_argmax`
and a learned temperature of its own. Shapes (B = 2 borders per axis, low then
high: upper then lower, left then right):

- profiles ``r``: ``(R, K, L)``;
- templates ``d``: ``(K, B, 2L - 1)``; operator ``(K, L, B, L)``;
- border heatmaps ``Psi`` and probabilities: ``(R, B, L)``; positions ``(R, B)``
  in cell units along the axis (cell j covers ``[j, j + 1)``).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .grid import axis_cell_centres, linear_cell_weights
from .voting import DEFAULT_EPS, DEFAULT_LOG_TEMPERATURE_RANGE, temperature

__all__ = [
    "AxisTemplates",
    "BORDER_AXES",
    "BorderVoting",
    "border_contributions",
    "border_heatmap_target",
    "border_operator",
    "border_templates",
    "border_vote",
    "border_votes_per_primitive",
    "local_positions",
    "profiles",
    "soft_argmax_1d",
]

# Axis name -> (dimension of the response maps (R, K, M, N) it runs along, the one averaged out).
BORDER_AXES = {"y": (2, 3), "x": (3, 2)}
# Borders per axis: the low one (upper / left) and the high one (lower / right).
NUM_BORDERS = 2
# Initial templates: a Gaussian centred where the input box's border lies
# (the crop is the input box enlarged by the crop context), its std this
# fraction of the axis length.
BORDER_TEMPLATE_INIT_SIGMA_FRACTION = 0.25


def profiles(Rs: Tensor, axis: str) -> Tensor:
    """Each primitive's response along ``axis``: ``(R, K, M, N)`` -> ``(R, K, L)``
    (the mean over the other axis)."""
    _, other = BORDER_AXES[axis]
    return Rs.mean(dim=other)


def border_templates(logits: Tensor) -> Tensor:
    """Templates ``d_k^b``: a softmax over each template's displacements
    (non-negative, unit mass). ``(K, B, 2L - 1)`` -> the same."""
    return torch.softmax(logits, dim=-1)


def border_operator(d: Tensor) -> Tensor:
    """The border vote as a matrix, ``T[k, i, b, j] = d_k^b(j - i + L - 1)``.

    Args:
        d: ``(K, B, 2L - 1)`` templates (:func:`border_templates`).

    Returns:
        ``(K, L, B, L)``, differentiable in ``d``.
    """
    k, b, size = d.shape
    if size % 2 == 0:
        raise ValueError(f"border templates need an odd size 2L - 1, got {size}")
    length = (size + 1) // 2
    cells = torch.arange(length, device=d.device)
    index = cells[None, :] - cells[:, None] + length - 1  # [i, j] -> j - i + c
    return d[:, :, index].permute(0, 2, 1, 3)


def border_vote(r: Tensor, operator: Tensor) -> Tensor:
    """``Psi_b(j) = 1/K sum_k sum_i r_k(i) T[k, i, b, j]``: ``(R, K, L)`` -> ``(R, B, L)``."""
    rows, k, length = r.shape
    _, _, b, _ = operator.shape
    return (r.reshape(rows, k * length) @ operator.reshape(k * length, b * length)).reshape(rows, b, length) / k


def border_votes_per_primitive(r: Tensor, operator: Tensor) -> Tensor:
    """Each primitive's own border vote (before the mean over k):
    ``(R, K, L)`` -> ``(R, K, B, L)``; their mean over k is :func:`border_vote`."""
    return torch.einsum("rki,kibj->rkbj", r, operator)


def soft_argmax_1d(
    Psi: Tensor,
    log_temperature: Tensor,
    t_min: float = DEFAULT_LOG_TEMPERATURE_RANGE[0],
    t_max: float = DEFAULT_LOG_TEMPERATURE_RANGE[1],
    eps: float = DEFAULT_EPS,
) -> Tuple[Tensor, Tensor]:
    """The soft-argmax of each border heatmap along its axis.

    ``p = softmax(((Psi - mean) / (std + eps)) / T)`` over the L cells
    (population std), position ``sum_j p(j) (j + 1/2)``.

    Returns:
        ``p`` ``(R, B, L)`` and the positions ``(R, B)`` in cell units.
    """
    standardised = (Psi - Psi.mean(dim=-1, keepdim=True)) / (Psi.std(dim=-1, unbiased=False, keepdim=True) + eps)
    p = torch.softmax(standardised / temperature(log_temperature, t_min, t_max), dim=-1)
    return p, (p * axis_cell_centres(Psi.shape[-1], p)).sum(dim=-1)


def local_positions(p: Tensor, window: int) -> Tensor:
    """The read-out of each border restricted to its peak: the p-weighted mean
    of the cell centres within ``window`` cells of the most probable cell
    (``MODEL.VOTING.BORDER_READOUT_WINDOW``). A soft-argmax over the whole axis
    is pulled toward the axis' middle by the mass away from the peak; this
    read-out is not. ``p`` ``(R, B, L)`` -> positions ``(R, B)`` in cell units."""
    if window < 1:
        raise ValueError(f"the read-out window must be >= 1 cell, got {window}")
    cells = torch.arange(p.shape[-1], device=p.device)
    near = (cells - p.argmax(dim=-1, keepdim=True)).abs() <= window
    q = p * near
    return (q * axis_cell_centres(p.shape[-1], p)).sum(dim=-1) / q.sum(dim=-1)


def border_heatmap_target(positions: Tensor, length: int, sigma: float) -> Tensor:
    """Target of the border loss: a Gaussian at each true border, unit mass,
    normalised in log space (finite for a border far outside the crop).
    ``positions`` ``(R, B)`` in cell units -> ``(R, B, length)``."""
    d = (axis_cell_centres(length, positions) - positions[..., None]) / sigma
    return torch.softmax(-0.5 * d.square(), dim=-1)


def border_contributions(per_primitive: Tensor, positions: Tensor) -> Tensor:
    """Each primitive's vote at the border it helped place: ``Psi_{k,b}``
    interpolated linearly between the cell centres at the position
    (their mean over k is ``Psi_b`` there). ``per_primitive`` ``(R, K, B, L)``,
    ``positions`` ``(R, B)`` -> ``(R, B, K)``."""
    weights = linear_cell_weights(positions, per_primitive.shape[-1])  # (R, B, L)
    return torch.einsum("rkbj,rbj->rbk", per_primitive, weights)


class AxisTemplates(nn.Module):
    """The border templates' logits of one axis, ``(K, 2, 2L - 1)``. Named
    ``spatial_template_logits`` as the 2-D templates' are: they are spatial
    templates along one axis, and the optimizer gives them the templates'
    treatment by that name (``SOLVER.NO_DECAY_KEYS``: no weight decay, the
    voting learning-rate factor)."""

    def __init__(self, logits: Tensor):
        super().__init__()
        self.spatial_template_logits = nn.Parameter(logits)


class BorderVoting(nn.Module):
    """The border votes of one level, for the axes asked.

    Parameters: per axis, templates ``axis_templates[<axis>].spatial_template_logits`` ``(K, 2, 2L - 1)``,
    initialised to a Gaussian (std a quarter of the axis) centred at the
    displacement from the crop centre to the input box's border (so that a
    primitive responding at the structure's centre starts by voting for the
    input box), the same for every k; one learned ``log_temperature`` for all
    borders.

    Args:
        num_primitives: K.
        grid_size: ``(M, N)``.
        axes: a subset of ``("y", "x")``.
        crop_context: ``(context_w, context_h)``, the crop's enlargement of the
            input box (:func:`~voting_det.modeling.grid.enlarge_boxes`).
        log_temperature_init, log_temperature_range: of the border soft-argmax.
        readout_window: at inference, read each border with
            :func:`local_positions` within this many cells of its peak
            (0: the soft-argmax over the whole axis, as in training).
    """

    def __init__(
        self,
        num_primitives: int,
        grid_size: Tuple[int, int],
        axes: Sequence[str],
        crop_context: Tuple[float, float],
        log_temperature_init: float = 0.0,
        log_temperature_range: Tuple[float, float] = DEFAULT_LOG_TEMPERATURE_RANGE,
        eps: float = DEFAULT_EPS,
        readout_window: int = 0,
    ):
        super().__init__()
        if readout_window < 0:
            raise ValueError(f"the border read-out window must be >= 0 cells (0 = the soft-argmax), got {readout_window}")
        self.readout_window = int(readout_window)
        unknown = [a for a in axes if a not in BORDER_AXES]
        if unknown or len(set(axes)) != len(axes):
            raise ValueError(f"border axes must be distinct names of {sorted(BORDER_AXES)}, got {list(axes)}")
        self.axes = tuple(axes)
        self.grid_size = tuple(grid_size)
        self.log_temperature_range = tuple(log_temperature_range)
        self.eps = eps
        m, n = self.grid_size
        context = {"x": crop_context[0], "y": crop_context[1]}
        self.axis_templates = nn.ModuleDict()
        for axis in self.axes:
            length = m if axis == "y" else n
            # the input box's half size in cells: it spans L / context of the crop's L cells
            half = length / (2.0 * context[axis])
            sigma = BORDER_TEMPLATE_INIT_SIGMA_FRACTION * length
            shifts = torch.arange(2 * length - 1, dtype=torch.float32) - (length - 1)
            logits = torch.stack([-0.5 * ((shifts + half) / sigma).square(), -0.5 * ((shifts - half) / sigma).square()])
            self.axis_templates[axis] = AxisTemplates(logits.expand(num_primitives, -1, -1).clone())
        self.log_temperature = nn.Parameter(torch.tensor(float(log_temperature_init)))

    def length(self, axis: str) -> int:
        """Cells along ``axis``."""
        return self.grid_size[0] if axis == "y" else self.grid_size[1]

    def templates(self, axis: str) -> Tensor:
        """The templates ``d_k^b`` of ``axis``, ``(K, 2, 2L - 1)``."""
        return border_templates(self.logits(axis))

    def logits(self, axis: str) -> Tensor:
        """The template logits of ``axis``, ``(K, 2, 2L - 1)``."""
        return self.axis_templates[axis].spatial_template_logits

    def forward(self, Rs: Tensor) -> Dict[str, Dict[str, Tensor]]:
        """Border heatmaps, probabilities and positions from the response maps
        ``(R, K, M, N)`` (masked primitives, if any, already zeroed).

        Returns:
            per axis a dict with ``profiles`` ``(R, K, L)``, ``heatmaps``
            ``Psi`` and ``probabilities`` ``(R, 2, L)``, ``positions`` ``(R, 2)``
            (cell units, low border first; at inference with a read-out
            window, :func:`local_positions` of the probabilities).
        """
        out = {}
        for axis in self.axes:
            r = profiles(Rs, axis)
            Psi = border_vote(r, border_operator(self.templates(axis)))
            p, positions = soft_argmax_1d(Psi, self.log_temperature, *self.log_temperature_range, eps=self.eps)
            if self.readout_window and not self.training:
                positions = local_positions(p, self.readout_window)
            out[axis] = {"profiles": r, "heatmaps": Psi, "probabilities": p, "positions": positions}
        return out

    @torch.no_grad()
    def explain(self, voted: Dict[str, Dict[str, Tensor]], axis: str) -> Tensor:
        """Each primitive's vote at the two borders of ``axis`` it placed,
        ``(R, 2, K)`` (:func:`border_contributions`)."""
        per_primitive = border_votes_per_primitive(voted[axis]["profiles"], border_operator(self.templates(axis)))
        return border_contributions(per_primitive, voted[axis]["positions"])


def temperature_of(module: Optional[BorderVoting]) -> Optional[Tensor]:
    """The border soft-argmax's temperature T of ``module`` (None without one)."""
    if module is None:
        return None
    return temperature(module.log_temperature.detach(), *module.log_temperature_range)
