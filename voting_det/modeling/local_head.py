"""The local branch (METHOD.md section 2): primitive voting coarse to fine.

:class:`VotingStage` is the primitive module at one level: crop (ROIAlign of
the enlarged input box to an anisotropic M x N grid), detection, voting and
location (Eq. 2, :mod:`voting_det.modeling.voting`), then FC_L for the score
and the size. :class:`VotingROIHeads` chains the stages (LS = ["res4"],
LCF = ["res4", "res3"]) on detectron2's sampled proposals and is a complete
detectron2 ROI head on its own.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, ROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances, pairwise_iou
from torch import Tensor, nn

from ..config import EXPLAIN_RANKINGS, VOTING_LEVELS, validate_voting_config
from .voting import (
    PrimitiveVoting,
    cell_centres_of,
    enlarge_boxes,
    gaussian_heatmap_target,
    grid_to_image,
    heatmap_loss,
    image_to_grid,
    interpolate_bilinear,
    temperature,
)

__all__ = ["VotingStage", "VotingROIHeads", "mlp", "box_deltas", "smooth_l1_mean"]

# Clamp of predicted log size changes, as detectron2's Box2BoxTransform (log(1000/16)).
SIZE_DELTA_CLAMP = math.log(1000.0 / 16)
# Box deltas relative to a reference box, unit weights: ((cx'-cx)/w, (cy'-cy)/h, log w'/w, log h'/h).
UNIT_BOX_TRANSFORM = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0), scale_clamp=SIZE_DELTA_CLAMP)


def mlp(in_dim: int, hidden: Sequence[int]) -> Tuple[nn.Module, int]:
    """Flatten + Linear/ReLU layers of ``hidden`` sizes; returns it and its output size."""
    layers: List[nn.Module] = [nn.Flatten()]
    for dim in hidden:
        layers += [nn.Linear(in_dim, dim), nn.ReLU(inplace=True)]
        in_dim = dim
    return nn.Sequential(*layers), in_dim


def box_deltas(reference: Tensor, boxes: Tensor) -> Tensor:
    """``boxes`` relative to ``reference`` (both ``(R, 4)`` XYXY): centre offset
    per axis in reference sizes and log size change (METHOD.md 2, losses)."""
    return UNIT_BOX_TRANSFORM.get_deltas(reference, boxes)


def smooth_l1_mean(pred: Tensor, target: Tensor, beta: float, num_samples: int) -> Tensor:
    """Smooth-L1 summed over the foreground rows given, divided by all sampled
    proposals (detectron2's normalisation); 0 attached to the graph when empty."""
    if pred.numel() == 0:
        return pred.sum()
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum") / max(num_samples, 1)


class VotingStage(nn.Module):
    """The primitive module at one level (METHOD.md 2, steps 1-5)."""

    def __init__(
        self,
        *,
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
    ):
        super().__init__()
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
        self.fc, dim = mlp(in_channels * m * n, fc_dims)
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.size_pred = nn.Linear(dim, 2)
        for layer in (self.cls_score, self.size_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def crop(self, feature: Tensor, boxes: List[Boxes]) -> Tuple[Tensor, Tensor]:
        """ROIAlign of the enlarged boxes: crops ``(R, C, M, N)`` and crop boxes ``(R, 4)``."""
        crop_boxes = [Boxes(enlarge_boxes(b.tensor, *self.crop_context)) for b in boxes]
        return self.pooler([feature], crop_boxes), cat([b.tensor for b in crop_boxes])

    def forward(
        self, feature: Tensor, boxes: List[Boxes], primitive_mask: Optional[Tensor] = None
    ) -> Dict[str, Tensor]:
        """Vote inside each box of ``boxes`` (one Boxes per image) on ``feature``.

        ``primitive_mask`` (``(K,)`` or ``(R, K)``) deletes primitives (see
        :func:`~voting_det.modeling.voting.mask_primitives`); None keeps all.

        Returns a dict of per-box tensors: ``input_boxes``, ``crop_boxes``,
        ``crops`` (raw Gamma_p), the :class:`PrimitiveVoting` outputs,
        ``centres`` (image xy), ``logits`` (R, C+1), ``size_deltas`` (R, 2) and
        the stage's ``pred_boxes`` (R, 4).
        """
        input_boxes = cat([b.tensor for b in boxes])
        crops, crop_boxes = self.crop(feature, boxes)
        out = self.primitives(crops, primitive_mask)
        centres = grid_to_image(out["centre_cells"], crop_boxes, self.grid_size)
        mean_response = out["response_maps"].mean(dim=1, keepdim=True)
        hidden = self.fc(mean_response * crops)
        size_deltas = self.size_pred(hidden).clamp(max=SIZE_DELTA_CLAMP)
        sizes = (input_boxes[:, 2:] - input_boxes[:, :2]) * torch.exp(size_deltas)
        pred_boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
        out.update(
            input_boxes=input_boxes,
            crop_boxes=crop_boxes,
            crops=crops,
            centres=centres,
            logits=self.cls_score(hidden),
            size_deltas=size_deltas,
            pred_boxes=pred_boxes,
        )
        return out

    # Trace fields in image coordinates: points (..., 2) and boxes (..., 4).
    TRACE_IMAGE_FIELDS = ("centres", "input_boxes", "crop_boxes", "boxes", "peak_points")

    @torch.no_grad()
    def trace(
        self, out: Dict[str, Tensor], top: int, tau: float = 0.0, normalize: bool = False, rank_by: str = "alpha"
    ) -> Dict[str, Tensor]:
        """The full trace of the boxes of a :meth:`forward` result (rows already
        selected, e.g. the detections kept after NMS), for explanations.

        Args:
            out: :meth:`forward`'s dict, every tensor indexed to the R rows wanted.
            top: number of primitives whose maps are kept, ranked by ``rank_by``.
            tau, normalize: Eq. 3's options (``MODEL.VOTING.TRACE_TAU`` / ``TRACE_NORMALIZE``).
            rank_by: one of :data:`voting_det.config.EXPLAIN_RANKINGS`.

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
            ``boxes`` (image XYXY) and ``probs`` (R, C+1). All detached.
        """
        if rank_by not in EXPLAIN_RANKINGS:
            raise ValueError(f"config key MODEL.EXPLAIN.RANK_BY: must be one of {EXPLAIN_RANKINGS}, got {rank_by!r}")
        explanation = self.primitives.explain(out, tau=tau, normalize=normalize)
        Rs = out["response_maps"]
        r, k, m, n = Rs.shape
        alpha, contributions = explanation["alpha"], explanation["contributions_bilinear"]
        ranking = alpha if rank_by == "alpha" else contributions
        order = torch.sort(ranking, dim=1, descending=True, stable=True).indices[:, : min(top, k)]

        def pick(maps: Tensor) -> Tensor:
            return maps.gather(1, order[:, :, None, None].expand(-1, -1, *maps.shape[2:]))

        peak_response, peak_index = Rs.reshape(r, k, m * n).max(dim=2)
        peak_cells = cell_centres_of(peak_index, self.grid_size).to(Rs)
        peak_points = grid_to_image(
            peak_cells.reshape(-1, 2), out["crop_boxes"].repeat_interleave(k, dim=0), self.grid_size
        ).reshape(r, k, 2)
        D, _ = self.primitives.templates_and_operator()
        t = temperature(self.primitives.log_temperature, *self.primitives.log_temperature_range)
        trace = {
            "alpha": alpha,
            "contributions": contributions,
            "vote_at_centre": interpolate_bilinear(out["vote_heatmap"], out["centre_cells"]),
            "response_mass": Rs.sum(dim=(2, 3)),
            "peak_response": peak_response,
            "peak_points": peak_points,
            "top_primitives": order,
            "response_maps": pick(Rs),
            "primitive_votes": pick(explanation["primitive_votes"]),
            "reconstructions": pick(explanation["reconstruction"]),
            "spatial_templates": D[order],
            "vote_heatmap": out["vote_heatmap"],
            "probabilities": out["probabilities"],
            "centre_cells": out["centre_cells"],
            "centres": out["centres"],
            "temperature": t.expand(r),
            "input_boxes": out["input_boxes"],
            "crop_boxes": out["crop_boxes"],
            "boxes": out["pred_boxes"],
            "probs": F.softmax(out["logits"], dim=1),
        }
        return {name: value.detach() for name, value in trace.items()}


@ROI_HEADS_REGISTRY.register()
class VotingROIHeads(ROIHeads):
    """Local branch of the paper as a detectron2 ROI head (LS or LCF).

    Training: detectron2 labels and samples the RPN proposals; the first level
    votes inside each proposal x_p, giving x_p'; each later level votes inside
    the previous level's box (detached) and has its labels re-matched against
    it (cascade style, IoU >= ``MODEL.VOTING.REMATCH_IOU``). Losses per level:
    cross-entropy, smooth-L1 on the centre offset and log size change relative
    to the level's input box, and a heatmap term (p vs a Gaussian at the true
    centre). Inference: the last level's box and class probabilities, through
    detectron2's ``fast_rcnn_inference`` (class-agnostic box, per-class scores).
    """

    @configurable
    def __init__(
        self,
        *,
        levels: Sequence[str],
        stages: Sequence[VotingStage],
        rematch_iou: float,
        loss_weights: Dict[str, float],
        smooth_l1_beta: float,
        heatmap_sigma: Tuple[float, float],
        test_score_thresh: float,
        test_nms_thresh: float,
        test_detections_per_img: int,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.levels = list(levels)
        self.stages = nn.ModuleList(stages)
        self.rematcher = Matcher([rematch_iou], [0, 1], allow_low_quality_matches=False)
        self.loss_weights = dict(loss_weights)
        self.smooth_l1_beta = smooth_l1_beta
        self.heatmap_sigma = tuple(heatmap_sigma)
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_detections_per_img = test_detections_per_img

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        validate_voting_config(cfg)
        ret = super().from_config(cfg)
        v = cfg.MODEL.VOTING
        stages = []
        for i, level in enumerate(v.LEVELS):
            if level not in input_shape:
                raise ValueError(
                    f"config key MODEL.VOTING.LEVELS: level {level!r} is not a backbone output "
                    f"{sorted(input_shape)} (MODEL.RESNETS.OUT_FEATURES)"
                )
            stages.append(
                VotingStage(
                    in_channels=input_shape[level].channels,
                    stride=input_shape[level].stride or VOTING_LEVELS[level],
                    num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                    num_primitives=v.NUM_PRIMITIVES,
                    grid_size=tuple(v.GRID_SIZES[i]),
                    spatial_template_size=tuple(v.SPATIAL_TEMPLATE_SIZES[i]) if v.SPATIAL_TEMPLATE_SIZES else None,
                    crop_context=tuple(v.CROP_CONTEXT),
                    pooler_type=v.POOLER_TYPE,
                    sampling_ratio=v.POOLER_SAMPLING_RATIO,
                    log_temperature_init=v.LOG_TEMPERATURE_INIT,
                    log_temperature_range=tuple(v.LOG_TEMPERATURE_RANGE),
                    learn_temperature=v.LEARN_TEMPERATURE,
                    fc_dims=v.FC_DIMS,
                )
            )
        ret.update(
            levels=list(v.LEVELS),
            stages=stages,
            rematch_iou=v.REMATCH_IOU,
            loss_weights={
                "cls": v.LOSS_WEIGHT_CLS,
                "centre": v.LOSS_WEIGHT_CENTRE,
                "size": v.LOSS_WEIGHT_SIZE,
                "heatmap": v.LOSS_WEIGHT_HEATMAP,
            },
            smooth_l1_beta=v.SMOOTH_L1_BETA,
            heatmap_sigma=tuple(v.HEATMAP_SIGMA),
            test_score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            test_nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            test_detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
        )
        return ret

    @torch.no_grad()
    def init_templates_kmeans(self, features: Dict[str, Tensor], gt_boxes: List[Boxes], seed: int = 0) -> int:
        """Set every level's semantic templates to the spherical k-means of the
        ROI feature vectors gamma_i of the ground-truth crops (the
        compositional-voting initialisation; METHOD.md 2, "Initialisation").
        Returns the number of crops used (0 leaves the templates unchanged)."""
        num = sum(len(b) for b in gt_boxes)
        if num == 0:
            return 0
        for stage, level in zip(self.stages, self.levels):
            crops, _ = stage.crop(features[level], gt_boxes)
            vectors = crops.permute(0, 2, 3, 1).reshape(-1, crops.shape[1])
            vectors = vectors[vectors.norm(dim=1) > 0]  # cells outside the fan carry nothing
            stage.primitives.init_semantic_templates_kmeans(vectors, seed=seed)
        return num

    # ------------------------------------------------------------------ stages
    def run_stages(
        self,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
        primitive_masks: Optional[Dict[str, Tensor]] = None,
    ) -> List[Dict[str, Tensor]]:
        """Run every level, coarse to fine, on ``proposals`` (``proposal_boxes``).

        With ``targets`` (training), each level's output also carries its
        labels: ``gt_classes`` (R,) and ``gt_boxes`` (R, 4), from detectron2's
        sampling for the first level and re-matched for the later ones.
        ``primitive_masks`` (level name -> ``(K,)`` or ``(R, K)`` mask) deletes
        primitives at those levels (the deletion test's intervention).
        """
        primitive_masks = primitive_masks or {}
        unknown = sorted(set(primitive_masks) - set(self.levels))
        if unknown:
            raise ValueError(f"primitive masks for levels {unknown} that do not run; the levels are {self.levels}")
        num_per_image = [len(p) for p in proposals]
        boxes = [p.proposal_boxes for p in proposals]
        outputs = []
        for i, (level, stage) in enumerate(zip(self.levels, self.stages)):
            out = stage(features[level], boxes, primitive_masks.get(level))
            if targets is not None:
                if i == 0:
                    out["gt_classes"], out["gt_boxes"] = self._sampled_labels(proposals)
                else:
                    out["gt_classes"], out["gt_boxes"] = self._rematch(boxes, targets)
            outputs.append(out)
            boxes = [Boxes(b) for b in out["pred_boxes"].detach().split(num_per_image)]
        return outputs

    def _sampled_labels(self, proposals: List[Instances]) -> Tuple[Tensor, Tensor]:
        classes, gt_boxes = [], []
        for p in proposals:
            classes.append(p.gt_classes)
            # an image without ground truth has no gt_boxes: all its samples are background
            gt_boxes.append(p.gt_boxes.tensor if p.has("gt_boxes") else p.proposal_boxes.tensor.new_zeros(len(p), 4))
        return cat(classes), cat(gt_boxes)

    def _rematch(self, boxes: List[Boxes], targets: List[Instances]) -> Tuple[Tensor, Tensor]:
        classes, gt_boxes = [], []
        for b, t in zip(boxes, targets):
            if len(t) == 0:
                classes.append(torch.full((len(b),), self.num_classes, dtype=torch.int64, device=b.device))
                gt_boxes.append(b.tensor.new_zeros(len(b), 4))
                continue
            matched, label = self.rematcher(pairwise_iou(t.gt_boxes, b))
            gt_classes = t.gt_classes[matched].clone()
            gt_classes[label == 0] = self.num_classes
            classes.append(gt_classes)
            gt_boxes.append(t.gt_boxes.tensor[matched])
        return cat(classes), cat(gt_boxes)

    # ------------------------------------------------------------------ losses
    def stage_losses(self, out: Dict[str, Tensor], level: str) -> Dict[str, Tensor]:
        """Losses of one level's output (METHOD.md 2, "Losses")."""
        gt_classes, num = out["gt_classes"], len(out["gt_classes"])
        fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
        input_boxes = out["input_boxes"][fg]
        target = box_deltas(input_boxes, out["gt_boxes"][fg])
        pred_centre = box_deltas(input_boxes, out["pred_boxes"][fg])[:, :2]
        grid_size = tuple(out["probabilities"].shape[1:])
        gt_centres = (out["gt_boxes"][fg, :2] + out["gt_boxes"][fg, 2:]) / 2
        cells = image_to_grid(gt_centres, out["crop_boxes"][fg], grid_size)
        heat_target = gaussian_heatmap_target(cells, grid_size, self.heatmap_sigma)
        w, beta = self.loss_weights, self.smooth_l1_beta
        losses = {
            "cls": F.cross_entropy(out["logits"], gt_classes, reduction="mean") if num else out["logits"].sum(),
            "centre": smooth_l1_mean(pred_centre, target[:, :2], beta, num),
            "size": smooth_l1_mean(out["size_deltas"][fg], target[:, 2:], beta, num),
            "heatmap": heatmap_loss(out["probabilities"][fg], heat_target),
        }
        return {f"loss_local_{k}_{level}": v * w[k] for k, v in losses.items()}

    def losses(self, outputs: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """All levels' losses, keys ``loss_local_{cls,centre,size,heatmap}_{level}``."""
        result = {}
        for level, out in zip(self.levels, outputs):
            result.update(self.stage_losses(out, level))
        return result

    # ------------------------------------------------------------------ inference
    def predict_instances(
        self, boxes: Tensor, probs: Tensor, proposals: List[Instances], extras: Dict[str, Tensor]
    ) -> List[Instances]:
        """detectron2's ``fast_rcnn_inference`` on per-proposal ``boxes`` (R, 4)
        and class ``probs`` (R, C+1); ``extras`` (per-proposal tensors) are
        attached to the kept detections under their keys."""
        num_per_image = [len(p) for p in proposals]
        instances, kept = fast_rcnn_inference(
            boxes.split(num_per_image),
            probs.split(num_per_image),
            [p.image_size for p in proposals],
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_detections_per_img,
        )
        for name, value in extras.items():
            for inst, idx, part in zip(instances, kept, value.split(num_per_image)):
                inst.set(name, part[idx])
        return instances

    def forward(self, images, features, proposals, targets=None):
        """detectron2's ROIHeads contract: losses in training, Instances in inference."""
        del images
        if self.training:
            assert targets, "'targets' argument is required during training"
            proposals = self.label_and_sample_proposals(proposals, targets)
            return proposals, self.losses(self.run_stages(features, proposals, targets))
        outputs = self.run_stages(features, proposals)
        last = outputs[-1]
        return self.predict_instances(last["pred_boxes"], F.softmax(last["logits"], dim=1), proposals, {}), {}
