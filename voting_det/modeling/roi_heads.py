"""The ROI head of the paper's network (docs/method.md sections 2 to 4): it
owns the whole prediction from the proposals on.

:class:`VotingROIHeads` runs the local branch's voting levels coarse to fine
(LS = ["res4"], LCF = ["res4", "res3"]), and, when ``MODEL.CONTEXT.ENABLED``,
the context head on the context backbone's feature map and the fusion of
Eq. 1. In training it returns every loss; in inference, ``Instances``.
It follows detectron2's ``CascadeROIHeads``: labels ride on the proposals'
``Instances``, each later level re-matches its input boxes to the ground
truth with ``_match_and_label_boxes``.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat, cross_entropy
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, ROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss, smooth_l1_loss
from torch import Tensor, nn

from ..config import TEST_SCORES, VOTING_LEVELS, validate_explain_config, validate_voting_config
from .borders import border_heatmap_target, temperature_of
from .context_head import ContextOutput, build_context_head
from .grid import image_to_grid
from .voting import gaussian_heatmap_target, heatmap_loss, temperature
from .voting_level import LevelOutput, VotingLevel, box_deltas

__all__ = ["CONTEXT_FEATURES", "TRACE_PREFIX", "VotingROIHeads", "fuse_predictions", "iou_aware_probabilities"]

# Key of the context backbone's feature map in the features dict the
# meta-architecture hands to the ROI head.
CONTEXT_FEATURES = "context"
# Instance fields of the trace mode (MODEL.EXPLAIN.ENABLED): trace_<level>_<name>
# for every entry of VotingLevel.trace.
TRACE_PREFIX = "trace_"
# Floor of the fused probability inside the log of the fused cross-entropy.
FUSED_PROB_EPS = 1e-6


def fuse_predictions(mu: Tensor, local_boxes: Tensor, local_probs: Tensor, global_boxes: Tensor, global_probs: Tensor):
    """Eq. 1: ``x = mu x_L + (1 - mu) x_G`` and ``s = mu s_L + (1 - mu) s_G``,
    the scores as class probabilities. Returns (boxes, probabilities)."""
    boxes = mu * local_boxes + (1 - mu) * global_boxes
    probs = mu * local_probs + (1 - mu) * global_probs
    return boxes, probs


def iou_aware_probabilities(probs: Tensor, iou_logits: Tensor) -> Tensor:
    """IoU-aware scoring (MODEL.VOTING.LOSS_WEIGHT_IOU > 0): each class
    probability becomes the geometric mean of it and the predicted IoU,
    ``sqrt(p_c * sigmoid(iou_logit))``; the background column (last) is kept.
    ``probs`` (R, C+1), ``iou_logits`` (R,)."""
    iou = torch.sigmoid(iou_logits)[:, None]
    return torch.cat([torch.sqrt(probs[:, :-1] * iou), probs[:, -1:]], dim=1)


def _smooth_l1(pred: Tensor, target: Tensor, beta: float, num_samples: int) -> Tensor:
    """Smooth-L1 summed over the foreground rows given, divided by all sampled
    proposals (detectron2's normalisation of the box loss)."""
    return smooth_l1_loss(pred, target, beta, reduction="sum") / max(num_samples, 1)


def _labels(proposals: List[Instances]) -> Tuple[Tensor, Tensor]:
    """``gt_classes`` and ``gt_boxes`` of labelled proposals, concatenated (an
    image without ground truth has no ``gt_boxes``: its proposal boxes stand in,
    unused since all its samples are background)."""
    gt_classes = cat([p.gt_classes for p in proposals])
    gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals])
    return gt_classes, gt_boxes


def _foreground(gt_classes: Tensor, num_classes: int) -> Tensor:
    return (gt_classes >= 0) & (gt_classes < num_classes)


@ROI_HEADS_REGISTRY.register()
class VotingROIHeads(ROIHeads):
    """The local branch's levels, the context head and the fusion (Eq. 1).

    Training: detectron2 labels and samples the RPN proposals; the first level
    votes inside each proposal x_p, giving x_p'; each later level votes inside
    the previous level's box (detached) with its labels re-matched against it
    (IoU >= ``MODEL.VOTING.REMATCH_IOU``, or per level
    ``REMATCH_IOU_PER_LEVEL``). Losses per level: cross-entropy,
    smooth-L1 on the centre offset and log size change relative to the level's
    input box, and a heatmap term (p against a Gaussian at the true centre).
    With the context branch: its Fast R-CNN losses on the proposals and the
    losses of the fused prediction, each branch weighted
    (``MODEL.CONTEXT.LOSS_WEIGHT_{LOCAL,GLOBAL,FUSED}``).
    Inference: the last level's box and the local class probabilities
    (``test_score``: the last level's, or the levels' mean), fused with the
    context head's when it runs, through detectron2's ``fast_rcnn_inference``
    (class-agnostic box, per-class scores).
    """

    @configurable
    def __init__(
        self,
        *,
        levels: Sequence[VotingLevel],
        rematch_iou: Union[float, Sequence[float]],
        loss_weights: Dict[str, float],
        smooth_l1_beta: float,
        heatmap_sigma: Tuple[float, float],
        test_score_thresh: float,
        test_nms_thresh: float,
        test_detections_per_img: int,
        context_head: Optional[nn.Module] = None,
        fusion_init: float = 0.0,
        branch_loss_weights: Optional[Dict[str, float]] = None,
        test_mu: float = -1.0,
        test_score: str = "last",
        fuse_boxes: bool = True,
        return_intermediate: bool = False,
        explain: bool = False,
        explain_options: Optional[Dict[str, object]] = None,
        **kwargs,
    ):
        """
        Args:
            levels: the voting levels, coarse to fine (each has a ``name``,
                the feature map it reads).
            rematch_iou: IoU a later level's input box needs to a ground
                truth box to be foreground: one for every later level, or a
                sequence of one per later level (rising, as Cascade R-CNN's).
            loss_weights: per-level loss weights, keys cls, centre, size, heatmap,
                border, box_giou, iou (0 leaves that term out; iou > 0 needs
                levels built with ``iou_branch``, whose predicted IoU then
                enters the score at inference, :func:`iou_aware_probabilities`).
            smooth_l1_beta: of every smooth-L1 term.
            heatmap_sigma: (x, y) std in cells of the heatmap target.
            test_score_thresh, test_nms_thresh, test_detections_per_img: as
                detectron2's ``fast_rcnn_inference``.
            context_head: the context head (None: LS / LCF).
            fusion_init: initial fusion logit m, mu = sigmoid(m).
            branch_loss_weights: keys fused, local, global (context only).
            test_mu: a fixed mu in [0, 1] at inference; -1 keeps the learned one.
            test_score: the local score at inference, "last" (the last level's
                class probabilities) or "mean" (the levels' mean, as Cascade
                R-CNN averages its stages).
            fuse_boxes: Eq. 1 fuses the boxes too; False keeps the local box
                (the context branch enters the score only).
            return_intermediate: attach the per-branch boxes and scores to the detections.
            explain: also attach each detection's trace (``trace_<level>_<name>``).
            explain_options: ``top``, ``rank_by``, ``tau``, ``normalize`` of the trace.
        """
        super().__init__(**kwargs)
        self.levels = nn.ModuleList(levels)
        if isinstance(rematch_iou, (int, float)):
            rematch_iou = [float(rematch_iou)] * (len(levels) - 1)
        if len(rematch_iou) != len(levels) - 1:
            raise ValueError(f"rematch_iou needs one IoU per level after the first ({len(levels) - 1}), got {list(rematch_iou)}")
        self.proposal_matchers = [None] + [
            Matcher([float(iou)], [0, 1], allow_low_quality_matches=False) for iou in rematch_iou
        ]
        self.loss_weights = {"border": 1.0, "box_giou": 0.0, "iou": 0.0, **loss_weights}
        self.smooth_l1_beta = smooth_l1_beta
        self.heatmap_sigma = tuple(heatmap_sigma)
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_detections_per_img = test_detections_per_img
        self.context_head = context_head
        self.fusion_logit = nn.Parameter(torch.tensor(float(fusion_init))) if context_head is not None else None
        self.branch_loss_weights = dict(branch_loss_weights or {"fused": 1.0, "local": 1.0, "global": 1.0})
        self.test_mu = test_mu
        if test_score not in TEST_SCORES:
            raise ValueError(f"test_score must be one of {TEST_SCORES}, got {test_score!r}")
        self.test_score = test_score
        self.fuse_boxes = fuse_boxes
        self.return_intermediate = return_intermediate
        self.explain = explain
        self.explain_options = dict(explain_options or {"top": 5, "rank_by": "alpha", "tau": 0.0, "normalize": False})

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        validate_voting_config(cfg)
        validate_explain_config(cfg)
        ret = super().from_config(cfg)
        v, c = cfg.MODEL.VOTING, cfg.MODEL.CONTEXT
        levels = []
        for i, level in enumerate(v.LEVELS):
            if level not in input_shape:
                raise ValueError(
                    f"config key MODEL.VOTING.LEVELS: level {level!r} is not a backbone output "
                    f"{sorted(input_shape)} (MODEL.RESNETS.OUT_FEATURES)"
                )
            levels.append(
                VotingLevel(
                    name=level,
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
                    border_axes=tuple(v.BORDER_AXES),
                    border_readout_window=v.BORDER_READOUT_WINDOW,
                    iou_branch=v.LOSS_WEIGHT_IOU > 0,
                )
            )
        context_head = None
        if c.ENABLED:
            # the context backbone is a ResNet of the same MODEL.RESNETS settings, so
            # its map has the local backbone's channels and stride at that feature
            if c.IN_FEATURE not in input_shape:
                raise ValueError(
                    f"config key MODEL.CONTEXT.IN_FEATURE: {c.IN_FEATURE!r} must also be a local backbone output "
                    f"{sorted(input_shape)} (MODEL.RESNETS.OUT_FEATURES), which gives its shape"
                )
            context_head = build_context_head(cfg, input_shape[c.IN_FEATURE])
        ret.update(
            levels=levels,
            rematch_iou=list(v.REMATCH_IOU_PER_LEVEL) or v.REMATCH_IOU,
            loss_weights={
                "cls": v.LOSS_WEIGHT_CLS,
                "centre": v.LOSS_WEIGHT_CENTRE,
                "size": v.LOSS_WEIGHT_SIZE,
                "heatmap": v.LOSS_WEIGHT_HEATMAP,
                "border": v.LOSS_WEIGHT_BORDER,
                "box_giou": v.LOSS_WEIGHT_BOX_GIOU,
                "iou": v.LOSS_WEIGHT_IOU,
            },
            smooth_l1_beta=v.SMOOTH_L1_BETA,
            heatmap_sigma=tuple(v.HEATMAP_SIGMA),
            test_score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            test_nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            test_detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
            context_head=context_head,
            fusion_init=c.FUSION_INIT,
            branch_loss_weights={"fused": c.LOSS_WEIGHT_FUSED, "local": c.LOSS_WEIGHT_LOCAL, "global": c.LOSS_WEIGHT_GLOBAL},
            test_mu=c.TEST_MU,
            test_score=v.TEST_SCORE,
            fuse_boxes=c.FUSE_BOXES,
            return_intermediate=v.RETURN_INTERMEDIATE,
            explain=cfg.MODEL.EXPLAIN.ENABLED,
            explain_options={
                "top": cfg.MODEL.EXPLAIN.TOP_PRIMITIVES,
                "rank_by": cfg.MODEL.EXPLAIN.RANK_BY,
                "tau": v.TRACE_TAU,
                "normalize": v.TRACE_NORMALIZE,
            },
        )
        return ret

    @property
    def level_names(self) -> List[str]:
        """The feature maps the levels read, coarse to fine."""
        return [level.name for level in self.levels]

    @property
    def mu(self) -> Optional[Tensor]:
        """The fusion weight mu = sigmoid(m), or None without the context branch;
        at inference ``MODEL.CONTEXT.TEST_MU`` (when not -1) replaces it."""
        if self.fusion_logit is None:
            return None
        if not self.training and self.test_mu >= 0:
            return self.fusion_logit.new_tensor(self.test_mu)
        return torch.sigmoid(self.fusion_logit)

    # ------------------------------------------------------------------ forward
    def forward(self, images, features: Dict[str, Tensor], proposals: List[Instances], targets=None):
        """detectron2's ROIHeads contract. ``features`` holds the local
        backbone's maps and, with the context branch, the context backbone's
        under :data:`CONTEXT_FEATURES`.

        Returns:
            training: (sampled proposals with their labels, dict of losses);
            inference: (list of Instances, {}).
        """
        del images
        if self.training:
            assert targets, "'targets' argument is required during training"
            proposals = self.label_and_sample_proposals(proposals, targets)
            outputs, level_proposals = self.run_levels(features, proposals, targets)
            glob = self.context_head(features[CONTEXT_FEATURES], proposals) if self.context_head else None
            return proposals, self.losses(outputs, level_proposals, glob)
        outputs, _ = self.run_levels(features, proposals)
        glob = self.context_head(features[CONTEXT_FEATURES], proposals) if self.context_head else None
        return self.predict_instances(outputs, glob, proposals), {}

    def forward_with_given_boxes(self, features, instances):
        raise NotImplementedError("VotingROIHeads predicts its own boxes; detected_instances is not supported")

    def run_levels(
        self,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
        primitive_masks: Optional[Dict[str, Tensor]] = None,
    ) -> Tuple[List[LevelOutput], List[List[Instances]]]:
        """Run every level, coarse to fine, on ``proposals`` (``proposal_boxes``).

        Returns each level's output and its input boxes as Instances per
        image: the proposals for the first level, the previous level's boxes
        (detached) for the later ones. With ``targets`` (training) those are
        labelled again (``gt_classes``, ``gt_boxes``), as Cascade R-CNN does.
        ``primitive_masks`` (level name -> ``(K,)`` or ``(R, K)`` mask) deletes
        primitives at those levels (the deletion test's intervention).
        """
        primitive_masks = primitive_masks or {}
        unknown = sorted(set(primitive_masks) - set(self.level_names))
        if unknown:
            raise ValueError(f"primitive masks for levels {unknown} that do not run; the levels are {self.level_names}")
        num_per_image = [len(p) for p in proposals]
        outputs, level_proposals = [], []
        for i, level in enumerate(self.levels):
            if i > 0:
                boxes = outputs[-1].pred_boxes.detach().split(num_per_image)
                proposals = [self._next_proposals(p, b) for p, b in zip(proposals, boxes)]
                if targets is not None:
                    # detectron2's cascade labelling, with this head's matcher of level i
                    proposals = CascadeROIHeads._match_and_label_boxes(self, proposals, i, targets)
            level_proposals.append(proposals)
            outputs.append(level(features[level.name], [p.proposal_boxes for p in proposals], primitive_masks.get(level.name)))
        return outputs, level_proposals

    @staticmethod
    def _next_proposals(proposals: Instances, boxes: Tensor) -> Instances:
        """The next level's input: the previous level's boxes, the image size kept."""
        new = Instances(proposals.image_size)
        new.proposal_boxes = Boxes(boxes)
        return new

    # ------------------------------------------------------------------ losses
    def level_losses(self, out: LevelOutput, proposals: List[Instances], level: VotingLevel) -> Dict[str, Tensor]:
        """Losses of one level (docs/method.md section 2, losses); keys
        ``loss_local_{cls,centre,size,heatmap}_{level}``."""
        gt_classes, gt_boxes = _labels(proposals)
        num = len(gt_classes)
        fg = _foreground(gt_classes, self.num_classes)
        input_boxes = out.input_boxes[fg]
        target = box_deltas(input_boxes, gt_boxes[fg])
        pred_centre = box_deltas(input_boxes, out.pred_boxes[fg])[:, :2]
        grid_size = tuple(out.probabilities.shape[1:])
        gt_centres = (gt_boxes[fg, :2] + gt_boxes[fg, 2:]) / 2
        cells = image_to_grid(gt_centres, out.crop_boxes[fg], grid_size)
        heat_target = gaussian_heatmap_target(cells, grid_size, self.heatmap_sigma)
        w, beta = self.loss_weights, self.smooth_l1_beta
        losses = {
            "cls": cross_entropy(out.logits, gt_classes, reduction="mean"),
            "centre": _smooth_l1(pred_centre, target[:, :2], beta, num),
            "size": _smooth_l1(out.size_deltas[fg], target[:, 2:], beta, num),
            "heatmap": heatmap_loss(out.probabilities[fg], heat_target),
        }
        if out.borders is not None:
            losses["border"] = self._border_loss(out, fg, gt_boxes[fg], level)
        if w["box_giou"] > 0:
            # generalized-IoU loss of the level's own box, summed over the
            # foreground and divided by all sampled proposals, as the box terms
            losses["box_giou"] = giou_loss(out.pred_boxes[fg], gt_boxes[fg], reduction="sum") / max(num, 1)
        if out.iou_logits is not None:
            losses["iou"] = self._iou_loss(out, fg, gt_boxes[fg])
        self._log_level(level, out, gt_classes, fg)
        return {f"loss_local_{k}_{level.name}": v * w[k] for k, v in losses.items()}

    @staticmethod
    def _iou_loss(out: LevelOutput, fg: Tensor, gt_boxes: Tensor) -> Tensor:
        """IoU branch: binary cross-entropy of the predicted IoU (a logit)
        against the IoU of the level's own box (detached: the target does not
        move the box) with its true box, mean over the foreground (0 without)."""
        logits = out.iou_logits[fg]
        if not len(logits):
            return out.iou_logits.sum() * 0.0
        target = matched_pairwise_iou(Boxes(out.pred_boxes[fg].detach()), Boxes(gt_boxes))
        return F.binary_cross_entropy_with_logits(logits, target, reduction="mean")

    def _border_loss(self, out: LevelOutput, fg: Tensor, gt_boxes: Tensor, level: VotingLevel) -> Tensor:
        """Border heatmap loss: each voting axis' two border probabilities
        against a Gaussian (``heatmap_sigma`` of that axis, in cells) at the
        true borders, KL summed over the borders (:func:`heatmap_loss`), mean
        over the foreground, summed over the axes."""
        total = []
        crop_boxes = out.crop_boxes[fg]
        for axis, voted in out.borders.items():
            dim = 0 if axis == "x" else 1
            length = level.borders.length(axis)
            scale = (crop_boxes[:, 2 + dim] - crop_boxes[:, dim]) / length
            true_cells = (gt_boxes[:, [dim, dim + 2]] - crop_boxes[:, dim : dim + 1]) / scale[:, None]
            target = border_heatmap_target(true_cells, length, self.heatmap_sigma[dim])
            total.append(heatmap_loss(voted["probabilities"][fg], target))
        return sum(total)

    def _log_level(self, level: VotingLevel, out: LevelOutput, gt_classes: Tensor, fg: Tensor) -> None:
        """Foreground count, classification accuracy and temperature of one
        level, into detectron2's EventStorage (TensorBoard, metrics.json)."""
        storage = get_event_storage()
        correct = (out.logits.detach().argmax(dim=1) == gt_classes).float()
        storage.put_scalar(f"voting_{level.name}/num_fg_samples", float(fg.sum()))
        storage.put_scalar(f"voting_{level.name}/cls_accuracy", float(correct.mean()) if len(correct) else 0.0)
        primitives = level.primitives
        storage.put_scalar(
            f"voting_{level.name}/temperature",
            float(temperature(primitives.log_temperature.detach(), *primitives.log_temperature_range)),
        )
        if level.borders is not None:
            storage.put_scalar(f"voting_{level.name}/border_temperature", float(temperature_of(level.borders)))

    def losses(
        self, outputs: List[LevelOutput], level_proposals: List[List[Instances]], glob: Optional[ContextOutput]
    ) -> Dict[str, Tensor]:
        """Every loss of the head from :meth:`run_levels`' results and the
        context head's: the levels' (weighted by the local branch weight when
        the context branch runs), the context head's and the fused
        prediction's, both on the first level's proposals."""
        losses = {}
        for out, proposals, level in zip(outputs, level_proposals, self.levels):
            losses.update(self.level_losses(out, proposals, level))
        if glob is None:
            return losses
        w, proposals = self.branch_loss_weights, level_proposals[0]
        losses = {k: v * w["local"] for k, v in losses.items()}
        losses.update({k: v * w["global"] for k, v in self.context_head.losses(glob, proposals).items()})
        boxes, probs = self.fuse(outputs, glob)
        losses.update({k: v * w["fused"] for k, v in self._fused_losses(boxes, probs, proposals).items()})
        get_event_storage().put_scalar("voting/mu", float(self.mu.detach()))
        return losses

    def local_probabilities(self, outputs: List[LevelOutput]) -> Tensor:
        """The local branch's class probabilities, (R, C+1): the last level's
        (the paper's s_L); at inference with ``test_score`` "mean", the mean of
        every level's, as detectron2's Cascade R-CNN averages its stages."""
        if self.training or self.test_score == "last":
            return F.softmax(outputs[-1].logits, dim=1)
        return torch.stack([F.softmax(out.logits, dim=1) for out in outputs]).mean(dim=0)

    def fuse(self, outputs: List[LevelOutput], glob: ContextOutput) -> Tuple[Tensor, Tensor]:
        """Eq. 1 on the local branch's output (the last level's box,
        :meth:`local_probabilities`) and the context head's: (boxes,
        probabilities); with ``fuse_boxes`` False the box stays the local one."""
        last = outputs[-1]
        boxes, probs = fuse_predictions(
            self.mu, last.pred_boxes, self.local_probabilities(outputs), glob.pred_boxes, F.softmax(glob.logits, dim=1)
        )
        return (boxes if self.fuse_boxes else last.pred_boxes), probs

    def _fused_losses(self, boxes: Tensor, probs: Tensor, proposals: List[Instances]) -> Dict[str, Tensor]:
        """Cross-entropy of the fused probabilities and smooth-L1 of the fused
        box's deltas relative to the proposal (docs/method.md section 4, the fused loss);
        without box fusion the box term is left out (the local levels' losses train that box)."""
        gt_classes, gt_boxes = _labels(proposals)
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals])
        fg = _foreground(gt_classes, self.num_classes)
        log_probs = torch.log(probs.clamp_min(FUSED_PROB_EPS))
        pred = box_deltas(proposal_boxes[fg], boxes[fg])
        target = box_deltas(proposal_boxes[fg], gt_boxes[fg])
        losses = {"loss_fused_cls": F.nll_loss(log_probs, gt_classes) if len(gt_classes) else log_probs.sum()}
        if self.fuse_boxes:
            losses["loss_fused_box"] = _smooth_l1(pred, target, self.smooth_l1_beta, len(gt_classes))
        return losses

    # ------------------------------------------------------------------ inference
    def predict_instances(
        self, outputs: List[LevelOutput], glob: Optional[ContextOutput], proposals: List[Instances]
    ) -> List[Instances]:
        """Detections per image through detectron2's ``fast_rcnn_inference``;
        with ``return_intermediate`` or ``explain`` the per-branch boxes and
        scores (and the trace) of each detection's proposal are attached."""
        last = outputs[-1]
        if glob is None:
            boxes, probs = last.pred_boxes, self.local_probabilities(outputs)
        else:
            boxes, probs = self.fuse(outputs, glob)
        if last.iou_logits is not None:
            probs = iou_aware_probabilities(probs, last.iou_logits)
        num_per_image = [len(p) for p in proposals]
        instances, kept = fast_rcnn_inference(
            boxes.split(num_per_image),
            probs.split(num_per_image),
            [p.image_size for p in proposals],
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_detections_per_img,
        )
        if last.border_positions is not None:  # the final level's voted borders (x_left, y_top, x_right, y_bottom)
            for inst, idx, part in zip(instances, kept, last.border_positions.split(num_per_image)):
                inst.pred_borders = part[idx]
        if not (self.return_intermediate or self.explain):
            return instances
        extras = self._intermediate(outputs, glob, proposals)
        if self.explain:
            extras["proposal_index"] = torch.arange(len(boxes), device=boxes.device)
        for name, value in extras.items():
            for inst, idx, part in zip(instances, kept, value.split(num_per_image)):
                inst.set(name, part[idx])
        if self.explain:
            for inst in instances:
                self._attach_trace(inst, outputs)
        return instances

    def _intermediate(
        self, outputs: List[LevelOutput], glob: Optional[ContextOutput], proposals: List[Instances]
    ) -> Dict[str, Tensor]:
        """Per-proposal intermediate boxes and scores, for the explanations."""
        extras = {"proposal_boxes": cat([p.proposal_boxes.tensor for p in proposals])}
        for level, out in zip(self.level_names, outputs):
            extras[f"{level}_boxes"] = out.pred_boxes
        extras["local_boxes"] = outputs[-1].pred_boxes
        extras["local_probs"] = self.local_probabilities(outputs)
        if glob is not None:
            extras.update(
                global_boxes=glob.pred_boxes,
                global_probs=F.softmax(glob.logits, dim=1),
                context_boxes=glob.context_boxes,
                deformed_context_boxes=glob.deformed_context_boxes,
                mu=self.mu.expand(len(extras["proposal_boxes"])),
            )
        return extras

    def _attach_trace(self, result: Instances, outputs: List[LevelOutput]) -> None:
        """Set ``trace_<level>_<name>`` on the detections of one image from the
        levels' per-proposal outputs, for the proposals they came from."""
        for level, out in zip(self.levels, outputs):
            for name, value in level.trace(out.select(result.proposal_index), **self.explain_options).items():
                result.set(f"{TRACE_PREFIX}{level.name}_{name}", value)

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_templates_kmeans(self, features: Dict[str, Tensor], gt_boxes: List[Boxes], seed: int = 0) -> int:
        """Set every level's semantic templates to the spherical k-means of the
        ROI feature vectors gamma_i of the ground-truth crops (the
        compositional-voting initialisation; docs/method.md section 2,
        initialisation). Returns the number of crops used (0 leaves the
        templates unchanged)."""
        num = sum(len(b) for b in gt_boxes)
        if num == 0:
            return 0
        for level in self.levels:
            crops, _ = level.crop(features[level.name], gt_boxes)
            vectors = crops.permute(0, 2, 3, 1).reshape(-1, crops.shape[1])
            vectors = vectors[vectors.norm(dim=1) > 0]  # cells outside the fan carry nothing
            level.primitives.init_semantic_templates_kmeans(vectors, seed=seed)
        return num
