"""Geometry of the context branch (docs/method.md section 3, paper Eq. 4 and Eq. 5).

Pure, batched functions: the fixed layout of the O context boxes around a
proposal, their union box, the deformable translation of Eq. 4, and a bilinear
ROI sampler that, unlike detectron2's / torchvision's ROIAlign, is
differentiable in the box coordinates, so that the deformation offsets learn.

Boxes are XYXY in image pixels; layouts are ``(dx, dy, w, h)`` in units of the
image (fractions of its width and height), ``dy < 0`` being above the proposal.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import shapes_to_tensor
from torch import Tensor

__all__ = [
    "CONTEXT_LAYOUTS",
    "DEFAULT_DEFORMATION_GAMMA",
    "DEFAULT_SAMPLING_RATIO",
    "context_layout",
    "deform_boxes",
    "place_context_boxes",
    "sample_boxes_bilinear",
    "union_box",
]

# Context boxes (dx, dy, w, h), in fractions of the image width / height, of the
# box centre relative to the proposal centre and of the box size. Designed on the
# NT images of the public set: the NT lies low in the image (its centre at
# 0.73-0.88 of the height, 5th-95th percentile) and is wide (0.19-0.67 of the
# width); the head is above it, 0.2-0.6 image heights up, and toward either side
# (a fetus faces either way); the trunk and the chin lie left and right of it at
# its own height; the amnion, the classic look-alike, lies just below it.
# The layouts are nested (O=2 in O=4 in O=6), so the O ablation adds context:
#   O=2  above-left, above-right: the head, x in [-0.4, 0.4], y in [-0.6, 0]
#   O=4  + left, right: trunk / chin at NT height, |x| in [0.2, 0.6], y in [-0.15, 0.15]
#   O=6  + below-left, below-right: amnion / membranes, x in [-0.4, 0.4], y in [0, 0.3]
# The union for O=6 spans 1.2 x 0.9 of the image around the proposal centre.
_ABOVE_LEFT = (-0.2, -0.3, 0.4, 0.6)
_ABOVE_RIGHT = (0.2, -0.3, 0.4, 0.6)
_LEFT = (-0.4, 0.0, 0.4, 0.3)
_RIGHT = (0.4, 0.0, 0.4, 0.3)
_BELOW_LEFT = (-0.2, 0.15, 0.4, 0.3)
_BELOW_RIGHT = (0.2, 0.15, 0.4, 0.3)
CONTEXT_LAYOUTS = {
    2: (_ABOVE_LEFT, _ABOVE_RIGHT),
    4: (_ABOVE_LEFT, _ABOVE_RIGHT, _LEFT, _RIGHT),
    6: (_ABOVE_LEFT, _ABOVE_RIGHT, _LEFT, _RIGHT, _BELOW_LEFT, _BELOW_RIGHT),
}
# Eq. 4's gamma: the offsets FC_G1 predicts are scaled by it, in units of the
# box size (the deformable RoI pooling practice).
DEFAULT_DEFORMATION_GAMMA = 0.1
# Bilinear samples per output cell and axis of sample_boxes_bilinear.
DEFAULT_SAMPLING_RATIO = 2
# ROIAlign with aligned=True shifts box coordinates by half a pixel so that
# pixel p's value sits at continuous coordinate p + 0.5.
_ALIGNED_OFFSET = 0.5
# A sample sits at the centre of its sub-bin: offset 0.5 in sub-bin units.
_BIN_CENTRE = 0.5
_LAYOUT_COLUMNS = 4


def context_layout(num_boxes: int, custom: Optional[Sequence[Sequence[float]]] = None) -> Tensor:
    """The context boxes' layout ``(O, 4)`` as ``(dx, dy, w, h)`` in image units.

    Args:
        num_boxes: O; built-in layouts exist for the keys of
            :data:`CONTEXT_LAYOUTS` (2, 4, 6, documented there).
        custom: an ``(O, 4)`` layout used instead of the built-in one.

    Raises:
        ValueError: no built-in layout for ``num_boxes`` and no ``custom``
            layout, or a ``custom`` layout of the wrong shape or with a
            non-positive size.
    """
    if custom is None:
        if num_boxes not in CONTEXT_LAYOUTS:
            raise ValueError(
                f"no built-in context layout for O={num_boxes} (built-in keys: {sorted(CONTEXT_LAYOUTS)}); "
                f"give a custom ({num_boxes}, {_LAYOUT_COLUMNS}) layout of (dx, dy, w, h) in image units"
            )
        return torch.tensor(CONTEXT_LAYOUTS[num_boxes], dtype=torch.float32)
    layout = torch.as_tensor(custom, dtype=torch.float32)
    if layout.shape != (num_boxes, _LAYOUT_COLUMNS):
        raise ValueError(
            f"a custom context layout for O={num_boxes} must have shape ({num_boxes}, {_LAYOUT_COLUMNS}), "
            f"got {tuple(layout.shape)}"
        )
    if (layout[:, 2:] <= 0).any():
        raise ValueError("a custom context layout needs positive widths and heights (columns w, h)")
    return layout


def place_context_boxes(centres: Tensor, image_size: Tuple[int, int], layout: Tensor) -> Tensor:
    """The context boxes x_o around each proposal centre (docs/method.md section 3).

    Box o of proposal r has its centre at ``centre_r + (dx_o W, dy_o H)`` and
    size ``(w_o W, h_o H)``. Boxes are NOT clipped to the image: clipping would
    shrink and shift the boxes of proposals near a border, so a context box would
    no longer mean the same part of the anatomy, and the deformation of Eq. 4 is
    relative to the box size; the sampler reads zeros outside the image, as it
    does outside the ultrasound fan.

    Args:
        centres: ``(R, 2)`` proposal centres ``(x, y)`` in image pixels.
        image_size: ``(H, W)`` of the image (ints, or 0-dim tensors under tracing).
        layout: ``(O, 4)`` from :func:`context_layout`.

    Returns:
        ``(R, O, 4)`` XYXY boxes.
    """
    height, width = image_size
    # (ints, or 0-dim tensors when traced for export: then the size stays an input of the graph)
    scale = shapes_to_tensor([width, height]).to(centres)
    layout = layout.to(centres)
    box_centres = centres[:, None, :] + layout[None, :, :2] * scale
    half = layout[None, :, 2:] * scale / 2
    return torch.cat([box_centres - half, box_centres + half], dim=2)


def union_box(boxes: Tensor) -> Tensor:
    """The union box x_u enclosing the O boxes of each proposal: ``(R, O, 4)`` -> ``(R, 4)``."""
    return torch.cat([boxes[..., :2].amin(dim=1), boxes[..., 2:].amax(dim=1)], dim=1)


def deform_boxes(boxes: Tensor, offsets: Tensor, gamma: float = DEFAULT_DEFORMATION_GAMMA) -> Tensor:
    """Eq. 4's deformable step ``x_o' = x_o + delta_o``.

    ``delta_o = gamma * offsets_o * (w_o, h_o)``: a translation in units of the
    box's own size, ``offsets`` being FC_G1's output (deformable RoI pooling).

    Args:
        boxes: ``(R, O, 4)`` XYXY context boxes.
        offsets: ``(R, O, 2)`` ``(dx, dy)``.
        gamma: the gain on the offsets.

    Returns:
        ``(R, O, 4)`` translated boxes, same sizes.
    """
    size = boxes[..., 2:] - boxes[..., :2]
    delta = gamma * offsets * size
    return boxes + torch.cat([delta, delta], dim=-1)


def _sampling_grid(
    boxes: Tensor,
    output_size: Tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    feature_size: Tuple[int, int],
) -> Tensor:
    """``(R, h*S, w*S, 2)`` grid_sample coordinates (align_corners=False) of the
    ROIAlign (aligned=True) sample points: S x S points evenly inside each of
    the h x w bins of every box."""
    out_h, out_w = output_size
    feat_h, feat_w = feature_size
    start = boxes[:, :2] * spatial_scale - _ALIGNED_OFFSET
    extent = (boxes[:, 2:] - boxes[:, :2]) * spatial_scale

    def axis(start_: Tensor, extent_: Tensor, bins: int, size: int) -> Tensor:
        samples = bins * sampling_ratio
        fractions = (torch.arange(samples, dtype=boxes.dtype, device=boxes.device) + _BIN_CENTRE) / samples
        pixel = start_[:, None] + fractions[None, :] * extent_[:, None]
        # grid_sample with align_corners=False puts pixel p at (2p + 1) / size - 1.
        return (2 * pixel + 1) / size - 1

    gx = axis(start[:, 0], extent[:, 0], out_w, feat_w)
    gy = axis(start[:, 1], extent[:, 1], out_h, feat_h)
    return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)


def sample_boxes_bilinear(
    features: Tensor,
    boxes: Tensor,
    batch_index: Tensor,
    output_size: Tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = DEFAULT_SAMPLING_RATIO,
) -> Tensor:
    """An ROIAlign differentiable in the box coordinates (for Eq. 4's x_o').

    Samples like ``torchvision.ops.roi_align(aligned=True)`` (detectron2's
    ROIAlignV2) with a fixed ``sampling_ratio``: every output cell is the mean of
    ``S x S`` bilinear samples evenly spaced in its bin (S = 2 by default, which
    limits aliasing for the large context boxes). Built on
    ``torch.nn.functional.grid_sample`` (bilinear, zeros padding,
    align_corners=False), so the gradient reaches ``boxes``. It equals ROIAlign
    wherever the samples lie inside the feature map; within one pixel outside,
    ROIAlign repeats the border while this fades to zero, and further out both
    read zeros.

    Batched over all boxes; the only Python loop is over the B images.

    Args:
        features: ``(B, C, H, W)``.
        boxes: ``(R, 4)`` XYXY in image coordinates (callers flatten R x O boxes).
        batch_index: ``(R,)`` image of each box.
        output_size: ``(h, w)``.
        spatial_scale: feature-map size over image size (1 / stride).
        sampling_ratio: S, samples per cell and axis.

    Returns:
        ``(R, C, h, w)``.
    """
    num_images, channels, feat_h, feat_w = features.shape
    out_h, out_w = output_size
    grid = _sampling_grid(boxes, output_size, spatial_scale, sampling_ratio, (feat_h, feat_w))
    grid_h, grid_w = grid.shape[1:3]
    crops, order = [], []
    for image in range(num_images):
        selected = (batch_index == image).nonzero().squeeze(1)
        count = selected.numel()
        if count == 0:
            continue
        samples = F.grid_sample(
            features[image : image + 1],
            # -1, not count: a traced graph (tools/export_model.py) keeps the box count dynamic
            grid[selected].reshape(1, -1, grid_w, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        # pool first (no window straddles two boxes: grid_h = out_h * S), then
        # move the box axis first on the S*S times smaller result
        pooled = F.avg_pool2d(samples, sampling_ratio)
        crops.append(pooled.reshape(channels, -1, out_h, out_w).transpose(0, 1))
        order.append(selected)
    sampled = torch.cat(order) if order else batch_index.new_zeros(0)
    if sampled.numel() != boxes.shape[0]:
        raise ValueError(f"batch_index must lie in [0, {num_images}) for every box")
    if not crops:
        return features.new_zeros(0, channels, out_h, out_w)
    return torch.cat(crops)[torch.argsort(sampled)]
