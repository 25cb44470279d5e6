"""The context branch's head (docs/method.md section 3, paper Eq. 4 and 5).

Around each proposal centre, O context boxes are laid out in units of the
image; FC_G1 reads the union box and moves each box (deformable step, Eq. 4);
the deformed boxes are sampled with a bilinear sampler that is differentiable in
the box (detectron2's ROIAlign gives no box gradient, so FC_G1 would never
learn otherwise), and FC_G2 gives the class logits and Box2BoxTransform deltas
relative to the proposal (Eq. 5), through detectron2's class-agnostic
``FastRCNNOutputLayers``, whose losses it uses.
"""
import dataclasses
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from .context import context_layout, deform_boxes, place_context_boxes, sample_boxes_bilinear, union_box
from .voting_level import fc_head

__all__ = ["CONTEXT_HEAD_REGISTRY", "ContextHead", "ContextOutput", "build_context_head"]

CONTEXT_HEAD_REGISTRY = Registry("CONTEXT_HEAD")
CONTEXT_HEAD_REGISTRY.__doc__ = """
Registry for context heads: given the context backbone's feature map and the
proposals, predict class logits and boxes from the image context (Eq. 4, 5).
The registered object is called with `cfg, input_shape` (a ShapeSpec).
"""


def build_context_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Build ``cfg.MODEL.CONTEXT.NAME`` from :data:`CONTEXT_HEAD_REGISTRY`."""
    return CONTEXT_HEAD_REGISTRY.get(cfg.MODEL.CONTEXT.NAME)(cfg, input_shape)


@dataclasses.dataclass
class ContextOutput:
    """What the context head computes for R proposals (all rows aligned)."""

    context_boxes: Tensor  # (R, O, 4) x_o, the fixed layout around each proposal centre
    deformed_context_boxes: Tensor  # (R, O, 4) x_o' after FC_G1's offsets (Eq. 4)
    offsets: Tensor  # (R, O, 2) FC_G1's offsets
    logits: Tensor  # (R, C+1) FC_G2's class scores (Eq. 5)
    deltas: Tensor  # (R, 4) Box2BoxTransform deltas relative to the proposal
    pred_boxes: Tensor  # (R, 4) x_G, image XYXY


@CONTEXT_HEAD_REGISTRY.register()
class ContextHead(nn.Module):
    """Deformable context boxes (Eq. 4) and the global prediction (Eq. 5)."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: ShapeSpec,
        num_classes: int,
        layout: Tensor,
        union_resolution: Tuple[int, int],
        union_sampling_ratio: int,
        box_resolution: Tuple[int, int],
        deform_gamma: float,
        fc_g1_dims: Sequence[int],
        fc_g2_dims: Sequence[int],
        box2box_transform: Box2BoxTransform,
        smooth_l1_beta: float,
        loss_weights: Dict[str, float],
    ):
        super().__init__()
        channels, stride = input_shape.channels, input_shape.stride
        self.num_classes = num_classes
        self.register_buffer("layout", layout, persistent=False)
        num_boxes = layout.shape[0]
        self.spatial_scale = 1.0 / stride
        self.box_resolution = tuple(box_resolution)
        self.deform_gamma = deform_gamma
        self.union_pooler = ROIPooler(
            tuple(union_resolution), (self.spatial_scale,), union_sampling_ratio, "ROIAlignV2"
        )
        u_h, u_w = union_resolution
        self.fc_g1, dim = fc_head(ShapeSpec(channels=channels, height=u_h, width=u_w), fc_g1_dims)
        self.offset_pred = nn.Linear(dim, num_boxes * 2)
        nn.init.zeros_(self.offset_pred.weight)  # starts at the fixed layout
        nn.init.zeros_(self.offset_pred.bias)
        b_h, b_w = box_resolution
        self.fc_g2, dim = fc_head(ShapeSpec(channels=num_boxes * channels, height=b_h, width=b_w), fc_g2_dims)
        # class scores and class-agnostic deltas, their init and losses: detectron2's
        self.predictor = FastRCNNOutputLayers(
            dim,
            box2box_transform=box2box_transform,
            num_classes=num_classes,
            cls_agnostic_bbox_reg=True,
            smooth_l1_beta=smooth_l1_beta,
            loss_weight={"loss_cls": loss_weights["cls"], "loss_box_reg": loss_weights["box"]},
        )

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        c = cfg.MODEL.CONTEXT
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "layout": context_layout(c.NUM_BOXES, c.LAYOUT or None),
            "union_resolution": tuple(c.UNION_POOLER_RESOLUTION),
            "union_sampling_ratio": c.UNION_POOLER_SAMPLING_RATIO,
            "box_resolution": tuple(c.BOX_POOLER_RESOLUTION),
            "deform_gamma": c.DEFORM_GAMMA,
            "fc_g1_dims": c.FC_G1_DIMS,
            "fc_g2_dims": c.FC_G2_DIMS,
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
            "smooth_l1_beta": cfg.MODEL.VOTING.SMOOTH_L1_BETA,
            "loss_weights": {"cls": c.LOSS_WEIGHT_CLS, "box": c.LOSS_WEIGHT_BOX},
        }

    def forward(self, feature: Tensor, proposals: List[Instances]) -> ContextOutput:
        """Global predictions for every proposal of every image.

        Args:
            feature: ``(B, C, H, W)`` context feature map (Gamma_G).
            proposals: per image, Instances with ``proposal_boxes``.

        Returns:
            a :class:`ContextOutput`, one row per proposal.
        """
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals])
        num_per_image = [len(p) for p in proposals]
        num_boxes = self.layout.shape[0]
        centres = (proposal_boxes[:, :2] + proposal_boxes[:, 2:]) / 2
        # the layout is in units of each image's own size: one call per image
        context_boxes = cat(
            [place_context_boxes(c, p.image_size, self.layout) for c, p in zip(centres.split(num_per_image), proposals)]
        )
        unions = union_box(context_boxes)
        pooled = self.union_pooler([feature], [Boxes(u) for u in unions.split(num_per_image)])
        offsets = self.offset_pred(self.fc_g1(pooled)).view(-1, num_boxes, 2)
        deformed = deform_boxes(context_boxes, offsets, self.deform_gamma)
        # the image of each of the R x O boxes, from the proposals' own rows (no Python count: a
        # graph traced for export, tools/export_model.py, keeps the proposal count dynamic)
        batch_index = cat(
            [torch.full_like(c[:, 0], i, dtype=torch.long) for i, c in enumerate(centres.split(num_per_image))]
        )[:, None].expand(-1, num_boxes).reshape(-1)
        crops = sample_boxes_bilinear(
            feature, deformed.reshape(-1, 4), batch_index, self.box_resolution, self.spatial_scale
        )
        hidden = self.fc_g2(crops.reshape(-1, num_boxes, *crops.shape[1:]))  # Eq. 5: the O crops concatenated
        logits, deltas = self.predictor(hidden)
        return ContextOutput(
            context_boxes=context_boxes,
            deformed_context_boxes=deformed,
            offsets=offsets,
            logits=logits,
            deltas=deltas,
            pred_boxes=self.predictor.box2box_transform.apply_deltas(deltas, proposal_boxes),
        )

    def losses(self, out: ContextOutput, proposals: List[Instances]) -> Dict[str, Tensor]:
        """detectron2's Fast R-CNN losses on the labelled ``proposals``
        (``gt_classes``, ``gt_boxes``): cross-entropy, and smooth-L1 on the
        deltas relative to the proposals; keys ``loss_global_{cls,box}``."""
        losses = self.predictor.losses((out.logits, out.deltas), proposals)
        return {"loss_global_cls": losses["loss_cls"], "loss_global_box": losses["loss_box_reg"]}
