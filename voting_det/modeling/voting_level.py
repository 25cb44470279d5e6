"""One level of the local branch (docs/method.md section 2): the primitive
module on one feature map.

:class:`VotingLevel` crops each input box (ROIAlign of the enlarged box to an
anisotropic M x N grid), lets its K primitives detect and vote (Eq. 2,
:class:`~voting_det.modeling.voting.PrimitiveVoting`), places the box centre at
the soft-argmax of the vote heatmap and predicts the score and the size with
FC_L. Its outputs are a :class:`LevelOutput`; :meth:`VotingLevel.trace` turns
selected rows of one into the explanation fields (Eq. 3).
"""
import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import FastRCNNConvFCHead
from detectron2.structures import Boxes
from torch import Tensor, nn

from ..config import EXPLAIN_RANKINGS
from .borders import BorderVoting
from .grid import cell_centres_of, enlarge_boxes, grid_to_image, interpolate_bilinear
from .primitives import PrimitiveVoting
from .voting import temperature

__all__ = [
    "RANKING_KEYS",
    "LevelOutput",
    "VotingLevel",
    "box_deltas",
    "contrastive_scores",
    "fc_head",
    "rank_primitives",
    "vote_shares",
]

# Smallest size (pixels) a box gets from its borders (crossed borders give this).
MIN_BORDER_EXTENT = 1.0
# Clamp of predicted log size changes, as detectron2's Box2BoxTransform (log(1000/16)).
SIZE_DELTA_CLAMP = math.log(1000.0 / 16)
# Box deltas relative to a reference box, unit weights: ((cx'-cx)/w, (cy'-cy)/h, log w'/w, log h'/h).
UNIT_BOX_TRANSFORM = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0), scale_clamp=SIZE_DELTA_CLAMP)


def box_deltas(reference: Tensor, boxes: Tensor) -> Tensor:
    """``boxes`` relative to ``reference`` (both ``(R, 4)`` XYXY): centre offset
    per axis in reference sizes and log size change (docs/method.md section 2, losses)."""
    return UNIT_BOX_TRANSFORM.get_deltas(reference, boxes)


def fc_head(input_shape: ShapeSpec, fc_dims: Sequence[int]) -> Tuple[nn.Module, int]:
    """detectron2's ``FastRCNNConvFCHead`` with FC layers only (flatten, then
    Linear + ReLU per entry of ``fc_dims``), its layers initialised as
    ``nn.Linear`` does (the paper's FC layers; detectron2's box head would
    use Xavier); no entries: a flatten. Returns it and its output size."""
    if not fc_dims:
        return nn.Flatten(), input_shape.channels * input_shape.height * input_shape.width
    head = FastRCNNConvFCHead(input_shape, conv_dims=[], fc_dims=list(fc_dims))
    for layer in head.fcs:
        layer.reset_parameters()
    return head, head.output_shape.channels


# Trace fields each ranking of MODEL.EXPLAIN.RANK_BY sorts by, most significant
# first: ties of the first (alpha saturates at 1 for every primitive that responds
# in every cell of the crop) are broken by the second, then by the peak response;
# only primitives equal on all three (no response at all) stay in index order.
RANKING_KEYS = {
    "contribution": ("contributions", "alpha", "peak_response"),
    "alpha": ("alpha", "contributions", "peak_response"),
    "contrastive": ("contrastive", "contributions", "peak_response"),
    "response_mass": ("response_mass", "contributions", "peak_response"),
}


def rank_primitives(keys: Sequence[Tensor], descending: bool = True) -> Tensor:
    """Indices ``(..., K)`` of the primitives sorted by ``keys`` (each ``(..., K)``)
    lexicographically: by the first key, ties by the second, and so on (stable
    sorts from the last key to the first); all keys equal keeps index order."""
    order = None
    for key in reversed(list(keys)):
        values = key if order is None else key.gather(-1, order)
        step = torch.sort(values, dim=-1, descending=descending, stable=True).indices
        order = step if order is None else order.gather(-1, step)
    return order


def vote_shares(contributions: Tensor) -> Tensor:
    """Each primitive's share of the vote at the predicted centre, c_k / Phi(x^)
    (rows sum to 1; a row with no vote at all is 0)."""
    total = contributions.sum(dim=-1, keepdim=True)
    positive = total > 0
    return torch.where(positive, contributions / torch.where(positive, total, torch.ones_like(total)),
                       torch.zeros_like(contributions))


def contrastive_scores(contributions: Tensor, reference: Tensor) -> Tensor:
    """The contrastive ranking's score: this detection's vote share c_k / Phi(x^)
    minus ``reference`` ``(K,)``, the mean share over the training images
    (what this image's votes did beyond the typical image's)."""
    return vote_shares(contributions) - reference.to(contributions)


@dataclasses.dataclass
class LevelOutput:
    """What one level computes for R input boxes (all rows aligned)."""

    input_boxes: Tensor  # (R, 4) the boxes voted in, image XYXY
    crop_boxes: Tensor  # (R, 4) the enlarged crops, image XYXY
    crops: Tensor  # (R, C, M, N) Gamma_p, the ROIAligned features
    response_maps: Tensor  # (R, K, M, N) Rs_k
    vote_heatmap: Tensor  # (R, M, N) Phi
    probabilities: Tensor  # (R, M, N) p, the soft-argmax weights
    centre_cells: Tensor  # (R, 2) soft-argmax centre, cell xy
    centres: Tensor  # (R, 2) the same in image xy
    logits: Tensor  # (R, C+1) FC_L's class scores
    size_deltas: Tensor  # (R, 2) log size change of the input box
    pred_boxes: Tensor  # (R, 4) the level's box, image XYXY
    # With border votes (MODEL.VOTING.BORDER_AXES): per axis the BorderVoting
    # outputs (profiles, heatmaps, probabilities, positions in cell units), and
    # the borders in the image, (R, 4) x_left, y_top, x_right, y_bottom (NaN on
    # an axis that does not vote).
    borders: Optional[Dict[str, Dict[str, Tensor]]] = None
    border_positions: Optional[Tensor] = None
    # With the IoU branch (MODEL.VOTING.LOSS_WEIGHT_IOU > 0): (R,) logit of the
    # predicted IoU of pred_boxes with the true box.
    iou_logits: Optional[Tensor] = None

    def select(self, index: Tensor) -> "LevelOutput":
        """The rows ``index`` of every field."""

        def rows(value):
            if value is None:
                return None
            if isinstance(value, dict):
                return {key: rows(v) for key, v in value.items()}
            return value[index]

        return LevelOutput(**{f.name: rows(getattr(self, f.name)) for f in dataclasses.fields(self)})


class VotingLevel(nn.Module):
    """The primitive module at one level (docs/method.md section 2, steps 1-5)."""

    # Trace fields in image coordinates: points (..., 2) and boxes (..., 4).
    TRACE_IMAGE_FIELDS = ("centres", "input_boxes", "crop_boxes", "boxes", "peak_points", "border_positions")

    def __init__(
        self,
        *,
        name: str,
        in_channels: int,
        stride: int,
        num_classes: int,
        num_primitives: int,
        grid_size: Tuple[int, int],
        spatial_template_size: Optional[Tuple[int, int]],
        crop_context: Tuple[float, float],
        pooler_type: str,
        sampling_ratio: int,
        log_temperature_init: float,
        log_temperature_range: Tuple[float, float],
        learn_temperature: bool,
        fc_dims: Sequence[int],
        border_axes: Sequence[str] = (),
        border_readout_window: int = 0,
        iou_branch: bool = False,
    ):
        super().__init__()
        self.name = name
        self.grid_size = tuple(grid_size)
        self.crop_context = tuple(crop_context)
        self.pooler = ROIPooler(
            output_size=self.grid_size,
            scales=(1.0 / stride,),
            sampling_ratio=sampling_ratio,
            pooler_type=pooler_type,
        )
        self.primitives = PrimitiveVoting(
            in_channels,
            num_primitives,
            self.grid_size,
            spatial_template_size=spatial_template_size,
            log_temperature_range=log_temperature_range,
        )
        with torch.no_grad():
            self.primitives.log_temperature.fill_(log_temperature_init)
        self.primitives.log_temperature.requires_grad_(learn_temperature)
        m, n = self.grid_size
        self.fc, dim = fc_head(ShapeSpec(channels=in_channels, height=m, width=n), fc_dims)
        # the contrastive reference (K mean vote shares over training images), not part of the weights
        self.register_buffer("explain_reference", None, persistent=False)
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.size_pred = nn.Linear(dim, 2)
        # IoU-aware scoring: the predicted IoU of this level's box (a logit)
        self.iou_pred = nn.Linear(dim, 1) if iou_branch else None
        for layer in (self.cls_score, self.size_pred, self.iou_pred):
            if layer is not None:
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)
        # border votes (docs/method.md section 2b): the size along these axes
        # comes from the borders the primitives vote for, not from size_pred
        self.borders = None
        if border_axes:
            self.borders = BorderVoting(
                num_primitives,
                self.grid_size,
                border_axes,
                self.crop_context,
                log_temperature_init=log_temperature_init,
                log_temperature_range=log_temperature_range,
                readout_window=border_readout_window,
            )
            self.borders.log_temperature.requires_grad_(learn_temperature)

    def set_explain_reference(self, mean_shares: Optional[Tensor]) -> None:
        """Give this level the contrastive reference (its K mean vote shares;
        None removes it). Its traces then carry ``contrastive`` and may rank by it."""
        if mean_shares is not None:
            mean_shares = torch.as_tensor(mean_shares, dtype=torch.float32).flatten()
            k = self.primitives.semantic_templates.shape[0]
            if mean_shares.numel() != k:
                raise ValueError(f"level {self.name}: the contrastive reference has {mean_shares.numel()} values, "
                                 f"the level has K = {k} primitives (a reference of another model?)")
            mean_shares = mean_shares.to(self.primitives.semantic_templates.device)
        self.explain_reference = mean_shares

    def crop(self, feature: Tensor, boxes: List[Boxes]) -> Tuple[Tensor, Tensor]:
        """ROIAlign of the enlarged boxes: crops ``(R, C, M, N)`` and crop boxes ``(R, 4)``."""
        crop_boxes = [Boxes(enlarge_boxes(b.tensor, *self.crop_context)) for b in boxes]
        return self.pooler([feature], crop_boxes), cat([b.tensor for b in crop_boxes])

    def forward(self, feature: Tensor, boxes: List[Boxes], primitive_mask: Optional[Tensor] = None) -> LevelOutput:
        """Vote inside each box of ``boxes`` (one Boxes per image) on ``feature``.

        ``primitive_mask`` (``(K,)`` or ``(R, K)``) deletes primitives (see
        :func:`~voting_det.modeling.voting.mask_primitives`); None keeps all.
        """
        input_boxes = cat([b.tensor for b in boxes])
        crops, crop_boxes = self.crop(feature, boxes)
        voted = self.primitives(crops, primitive_mask)
        centres = grid_to_image(voted["centre_cells"], crop_boxes, self.grid_size)
        mean_response = voted["response_maps"].mean(dim=1, keepdim=True)
        hidden = self.fc(mean_response * crops)
        size_deltas = self.size_pred(hidden).clamp(max=SIZE_DELTA_CLAMP)
        borders, border_positions = None, None
        if self.borders is not None:
            borders = self.borders(voted["response_maps"])
            size_deltas, border_positions = self._sizes_from_borders(borders, input_boxes, crop_boxes, size_deltas)
        sizes = (input_boxes[:, 2:] - input_boxes[:, :2]) * torch.exp(size_deltas)
        return LevelOutput(
            input_boxes=input_boxes,
            crop_boxes=crop_boxes,
            crops=crops,
            centres=centres,
            logits=self.cls_score(hidden),
            size_deltas=size_deltas,
            pred_boxes=torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1),
            borders=borders,
            border_positions=border_positions,
            iou_logits=self.iou_pred(hidden)[:, 0] if self.iou_pred is not None else None,
            **voted,
        )

    def _sizes_from_borders(
        self, borders: Dict[str, Dict[str, Tensor]], input_boxes: Tensor, crop_boxes: Tensor, size_deltas: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """The log size changes with the voting axes' sizes replaced by the
        distance between their two borders (at least :data:`MIN_BORDER_EXTENT`
        pixels), and the borders in image coordinates ``(R, 4)``."""
        input_sizes = input_boxes[:, 2:] - input_boxes[:, :2]
        columns = [size_deltas[:, 0], size_deltas[:, 1]]
        positions = torch.full_like(input_boxes, float("nan"))
        for axis, out in borders.items():
            dim = 0 if axis == "x" else 1
            scale = (crop_boxes[:, 2 + dim] - crop_boxes[:, dim]) / self.borders.length(axis)
            image = crop_boxes[:, dim : dim + 1] + out["positions"] * scale[:, None]  # (R, 2) low, high
            positions = positions.index_copy(1, torch.tensor([dim, dim + 2], device=positions.device), image)
            extent = (image[:, 1] - image[:, 0]).clamp_min(MIN_BORDER_EXTENT)
            columns[dim] = torch.log(extent / input_sizes[:, dim].clamp_min(MIN_BORDER_EXTENT))
        return torch.stack(columns, dim=1).clamp(max=SIZE_DELTA_CLAMP), positions

    @torch.no_grad()
    def trace(
        self, out: LevelOutput, top: int, tau: float = 0.0, normalize: bool = False, rank_by: str = "alpha"
    ) -> Dict[str, Tensor]:
        """The full trace of the rows of ``out`` (e.g. the detections kept
        after NMS, see :meth:`LevelOutput.select`), for explanations.

        Args:
            out: a :meth:`forward` result, indexed to the R rows wanted.
            top: number of primitives whose maps are kept, ranked by ``rank_by``.
            tau, normalize: Eq. 3's options (``MODEL.VOTING.TRACE_TAU`` / ``TRACE_NORMALIZE``).
            rank_by: one of :data:`voting_det.config.EXPLAIN_RANKINGS`; ties
                are broken by the next keys of :data:`RANKING_KEYS`.
                "contrastive" needs the level's reference
                (:meth:`set_explain_reference`).

        Returns:
            dict of per-row tensors (S = min(top, K)): for all K primitives
            ``alpha`` (Eq. 3), ``contributions`` c_k at the continuous centre
            (their sum is ``vote_at_centre``, Phi there), ``response_mass``
            (sum Rs_k), ``peak_response`` (max Rs_k) and ``peak_points`` (R, K, 2)
            (its cell centre, image xy); ``top_primitives`` (R, S) best first
            and their ``response_maps`` Rs_k, ``primitive_votes`` Phi_k (Phi is
            their mean over all K) and ``reconstructions`` Rc_k, each
            (R, S, M, N), and ``spatial_templates`` D_k (R, S, Hd, Wd); the
            ``vote_heatmap`` Phi and ``probabilities`` p (R, M, N),
            ``centre_cells`` and ``centres`` (soft-argmax, cell and image xy),
            ``temperature`` T, ``input_boxes``, ``crop_boxes`` and the level's
            ``boxes`` (image XYXY) and ``probs`` (R, C+1); with a contrastive
            reference also ``contrastive`` (R, K) (:func:`contrastive_scores`).
            All detached.
        """
        if rank_by not in EXPLAIN_RANKINGS:
            raise ValueError(f"config key MODEL.EXPLAIN.RANK_BY: must be one of {EXPLAIN_RANKINGS}, got {rank_by!r}")
        explanation = self.primitives.explain(
            {"response_maps": out.response_maps, "vote_heatmap": out.vote_heatmap, "centre_cells": out.centre_cells},
            tau=tau,
            normalize=normalize,
        )
        Rs = out.response_maps
        r, k, m, n = Rs.shape
        alpha, contributions = explanation["alpha"], explanation["contributions_bilinear"]
        peak_response, peak_index = Rs.reshape(r, k, m * n).max(dim=2)
        scores = {"alpha": alpha, "contributions": contributions, "peak_response": peak_response}
        reference = self.explain_reference
        if reference is not None:
            scores["contrastive"] = contrastive_scores(contributions, reference)
        elif rank_by == "contrastive":
            raise ValueError(
                f"config key MODEL.EXPLAIN.RANK_BY: 'contrastive' needs the mean vote shares of the training images "
                f"(level {self.name} has none): write them with tools/explanation_specificity.py --write-reference "
                f"and explain with voting_det.interpretation.Explainer, which reads MODEL.EXPLAIN.REFERENCE"
            )
        order = rank_primitives([scores[key] for key in RANKING_KEYS[rank_by]])[:, : min(top, k)]

        def pick(maps: Tensor) -> Tensor:
            return maps.gather(1, order[:, :, None, None].expand(-1, -1, *maps.shape[2:]))

        peak_cells = cell_centres_of(peak_index, self.grid_size).to(Rs)
        peak_points = grid_to_image(
            peak_cells.reshape(-1, 2), out.crop_boxes.repeat_interleave(k, dim=0), self.grid_size
        ).reshape(r, k, 2)
        D, _ = self.primitives.templates_and_operator()
        t = temperature(self.primitives.log_temperature, *self.primitives.log_temperature_range)
        trace = {
            "alpha": alpha,
            "contributions": contributions,
            "vote_at_centre": interpolate_bilinear(out.vote_heatmap, out.centre_cells),
            "response_mass": Rs.sum(dim=(2, 3)),
            "peak_response": peak_response,
            "peak_points": peak_points,
            "top_primitives": order,
            "response_maps": pick(Rs),
            "primitive_votes": pick(explanation["primitive_votes"]),
            "reconstructions": pick(explanation["reconstruction"]),
            "spatial_templates": D[order],
            "vote_heatmap": out.vote_heatmap,
            "probabilities": out.probabilities,
            "centre_cells": out.centre_cells,
            "centres": out.centres,
            "temperature": t.expand(r),
            "input_boxes": out.input_boxes,
            "crop_boxes": out.crop_boxes,
            "boxes": out.pred_boxes,
            "probs": F.softmax(out.logits, dim=1),
        }
        if "contrastive" in scores:
            trace["contrastive"] = scores["contrastive"]
        if out.borders is not None:
            trace.update(self._trace_borders(out, top))
        return {name: value.detach() for name, value in trace.items()}

    def _trace_borders(self, out: LevelOutput, top: int) -> Dict[str, Tensor]:
        """The border votes' trace: ``border_positions`` (R, 4) image x_left,
        y_top, x_right, y_bottom; ``border_contributions`` (R, 4, K), each
        primitive's vote at each border; ``border_top_primitives`` (R, 4, S)
        the primitives with the largest of these, best first. NaN (and -1 in
        the ranking) on an axis that does not vote."""
        r, k = out.response_maps.shape[:2]
        contributions = out.response_maps.new_full((r, 4, k), float("nan"))
        for axis in out.borders:
            dim = 0 if axis == "x" else 1
            contributions[:, [dim, dim + 2]] = self.borders.explain(out.borders, axis)
        order = rank_primitives([contributions.nan_to_num(-1.0)])[..., : min(top, k)]
        order = torch.where(contributions[..., :1].isnan(), torch.full_like(order, -1), order)
        return {
            "border_positions": out.border_positions,
            "border_contributions": contributions,
            "border_top_primitives": order,
        }
