"""Grid geometry of the primitive module (docs/method.md section 2): the
M x N ROIAlign grid of a crop and the image around it.

Coordinates on the grid are ``(x, y)`` in cell units: cell ``(row a, col b)``
covers ``[b, b + 1) x [a, a + 1)`` and has its centre at ``(b + 0.5, a + 0.5)``.
Per-axis pairs given as arguments (``sigma_cells``, ``spatial_template_init_sigma``)
are ``(x, y)`` as well; sizes (``grid_size``, kernel sizes) are ``(H, W)`` like
torch shapes.
"""
from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    "axis_cell_centres",
    "bilinear_cell_weights",
    "cell_centres_of",
    "enlarge_boxes",
    "grid_to_image",
    "image_to_grid",
    "interpolate_bilinear",
    "linear_cell_weights",
    "nearest_cell_index",
]


# Centre of a cell in cell units: cell b covers [b, b + 1).
_CELL_CENTRE_OFFSET = 0.5


def axis_cell_centres(size: int, like: Tensor) -> Tensor:
    """Centres ``0.5, 1.5, ...`` of ``size`` cells along one axis."""
    return torch.arange(size, dtype=like.dtype, device=like.device) + _CELL_CENTRE_OFFSET


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
    ``context_h`` in height (the crop of docs/method.md section 2, step 1, e.g. 1.5 x 3).
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


def linear_cell_weights(positions: Tensor, size: int) -> Tensor:
    """Linear interpolation weights of the ``size`` cell centres along one
    axis at ``positions`` (cell units, any shape S) -> ``S + (size,)``; they
    sum to 1, and a position beyond the outermost centres takes the end cell."""
    index = (positions - _CELL_CENTRE_OFFSET).clamp(0, size - 1)
    cells = torch.arange(size, dtype=positions.dtype, device=positions.device)
    return (1 - (index[..., None] - cells).abs()).clamp_min(0)


def bilinear_cell_weights(centre_cells: Tensor, grid_size: Tuple[int, int]) -> Tensor:
    """Bilinear interpolation weights of the cell centres at ``(x, y)``.

    Weights sum to 1; a point beyond the outermost cell centres takes the border
    cells' values. ``(R, 2)`` -> ``(R, M, N)``.
    """
    m, n = grid_size
    return linear_cell_weights(centre_cells[:, 1], m)[:, :, None] * linear_cell_weights(centre_cells[:, 0], n)[:, None, :]


def interpolate_bilinear(grid: Tensor, centre_cells: Tensor) -> Tensor:
    """Bilinear value of an ``(R, M, N)`` map at ``(R, 2)`` ``(x, y)`` -> ``(R,)``."""
    return (grid * bilinear_cell_weights(centre_cells, grid.shape[1:])).sum(dim=(1, 2))
