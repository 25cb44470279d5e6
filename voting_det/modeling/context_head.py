"""The context branch (METHOD.md section 3, paper Eq. 4 and 5).

Around each proposal centre, O context boxes are laid out in units of the
image; FC_G1 reads the union box and moves each box (deformable step, Eq. 4);
the deformed boxes are sampled with a bilinear sampler that is differentiable in
the box (detectron2's ROIAlign gives no box gradient, so FC_G1 would never
learn otherwise), and FC_G2 gives the class logits and Box2BoxTransform deltas
relative to the proposal (Eq. 5).
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, Instances
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from .context import context_layout, deform_boxes, place_context_boxes, sample_boxes_bilinear, union_box
from .local_head import mlp, smooth_l1_mean

__all__ = ["CONTEXT_HEAD_REGISTRY", "ContextHead", "build_context_head"]

CONTEXT_HEAD_REGISTRY = Registry("CONTEXT_HEAD")
CONTEXT_HEAD_REGISTRY.__doc__ = """
Registry for context heads: given the context backbone's feature map and the
proposals, predict class logits and boxes from the image context (Eq. 4, 5).
The registered object is called with `cfg, input_shape` (a ShapeSpec).
"""


def build_context_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Build ``cfg.MODEL.CONTEXT.NAME`` from :data:`CONTEXT_HEAD_REGISTRY`."""
    return CONTEXT_HEAD_REGISTRY.get(cfg.MODEL.CONTEXT.NAME)(cfg, input_shape)


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
        self.fc_g1, dim = mlp(channels * union_resolution[0] * union_resolution[1], fc_g1_dims)
        self.offset_pred = nn.Linear(dim, num_boxes * 2)
        nn.init.zeros_(self.offset_pred.weight)  # starts at the fixed layout
        nn.init.zeros_(self.offset_pred.bias)
        self.fc_g2, dim = mlp(num_boxes * channels * box_resolution[0] * box_resolution[1], fc_g2_dims)
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)
        self.box2box_transform = box2box_transform
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weights = dict(loss_weights)

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

    def forward(self, feature: Tensor, proposals: List[Instances]) -> Dict[str, Tensor]:
        """Global predictions for every proposal of every image.

        Args:
            feature: ``(B, C, H, W)`` context feature map (Gamma_G).
            proposals: per image, Instances with ``proposal_boxes``.

        Returns:
            dict of per-proposal tensors: ``context_boxes`` x_o and
            ``deformed_context_boxes`` x_o' ``(R, O, 4)``, ``offsets``
            ``(R, O, 2)``, ``logits`` ``(R, C+1)``, ``deltas`` ``(R, 4)`` and
            ``pred_boxes`` x_G ``(R, 4)``.
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
        batch_index = torch.repeat_interleave(
            torch.arange(len(proposals), device=feature.device),
            torch.tensor(num_per_image, device=feature.device) * num_boxes,
        )
        crops = sample_boxes_bilinear(
            feature, deformed.reshape(-1, 4), batch_index, self.box_resolution, self.spatial_scale
        )
        hidden = self.fc_g2(crops.reshape(-1, num_boxes, *crops.shape[1:]))  # Eq. 5: the O crops concatenated
        deltas = self.bbox_pred(hidden)
        return {
            "context_boxes": context_boxes,
            "deformed_context_boxes": deformed,
            "offsets": offsets,
            "logits": self.cls_score(hidden),
            "deltas": deltas,
            "pred_boxes": self.box2box_transform.apply_deltas(deltas, proposal_boxes),
        }

    def losses(self, out: Dict[str, Tensor], proposals: List[Instances], gt_classes: Tensor, gt_boxes: Tensor):
        """Cross-entropy and smooth-L1 on Box2BoxTransform deltas relative to the
        proposals, keys ``loss_global_{cls,box}``."""
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals])
        fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
        target = self.box2box_transform.get_deltas(proposal_boxes[fg], gt_boxes[fg])
        num = len(gt_classes)
        losses = {
            "cls": F.cross_entropy(out["logits"], gt_classes) if num else out["logits"].sum(),
            "box": smooth_l1_mean(out["deltas"][fg], target, self.smooth_l1_beta, num),
        }
        return {f"loss_global_{k}": v * self.loss_weights[k] for k, v in losses.items()}
