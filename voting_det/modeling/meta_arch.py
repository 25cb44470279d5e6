"""The whole network (METHOD.md section 1): local branch, context branch and
the learned fusion of Eq. 1, as a detectron2 meta-architecture."""
import copy
import logging
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.backbone import Backbone, build_resnet_backbone
from torch import Tensor, nn

from ..config import validate_explain_config, validate_voting_config
from .context_head import build_context_head
from .local_head import box_deltas, smooth_l1_mean
from .weights import load_pretrained_backbone

__all__ = ["TRACE_PREFIX", "VotingRCNN", "fuse_predictions", "use_channels_last_stem"]

logger = logging.getLogger(__name__)

# Floor of the fused probability inside the log of the fused cross-entropy.
FUSED_PROB_EPS = 1e-6
# Instance fields holding boxes in input-image coordinates (rescaled with pred_boxes).
INTERMEDIATE_BOX_FIELDS = (
    "proposal_boxes",
    "local_boxes",
    "global_boxes",
    "context_boxes",
    "deformed_context_boxes",
)
# Instance fields of the trace mode (MODEL.EXPLAIN.ENABLED): trace_<level>_<name>
# for every entry of VotingStage.trace.
TRACE_PREFIX = "trace_"


def _channels_last_input(module, inputs):
    return tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)


def _contiguous_output(module, inputs, output):
    return output.contiguous()


def use_channels_last_stem(backbone: nn.Module) -> bool:
    """Make a detectron2 ResNet's ``stem`` compute in channels-last memory
    format (weights and input) and hand a contiguous map to the stages, through
    forward hooks, so parameter names and checkpoints are unchanged. Returns
    False (and does nothing) for a backbone without a ``stem``."""
    stem = getattr(backbone, "stem", None)
    if stem is None:
        return False
    stem.to(memory_format=torch.channels_last)
    stem.register_forward_pre_hook(_channels_last_input)
    stem.register_forward_hook(_contiguous_output)
    return True


def fuse_predictions(mu: Tensor, local_boxes: Tensor, local_logits: Tensor, global_boxes: Tensor, global_logits: Tensor):
    """Eq. 1: ``x = mu x_L + (1 - mu) x_G`` and ``s = mu s_L + (1 - mu) s_G``,
    scores fused as probabilities. Returns (boxes, probabilities)."""
    boxes = mu * local_boxes + (1 - mu) * global_boxes
    probs = mu * F.softmax(local_logits, dim=1) + (1 - mu) * F.softmax(global_logits, dim=1)
    return boxes, probs


@META_ARCH_REGISTRY.register()
class VotingRCNN(GeneralizedRCNN):
    """GeneralizedRCNN with the paper's two branches.

    - ``backbone``: the local ResNet-18 (res2..res4), read by the RPN (coarse
      level) and by :class:`VotingROIHeads` (res4, then res3);
    - ``context_backbone`` and ``context_head``: the context branch (absent
      when ``MODEL.CONTEXT.ENABLED`` is False: LS / LCF);
    - ``fusion_logit`` m, mu = sigmoid(m) (Eq. 1).

    A one-value ``MODEL.PIXEL_MEAN`` makes a grey model: the 3 replicated BGR
    channels of the loaders are averaged in :meth:`preprocess_image` and both
    backbones take one channel.
    """

    @configurable
    def __init__(
        self,
        *,
        context_backbone: Optional[Backbone],
        context_head: Optional[nn.Module],
        context_feature: str,
        fusion_init: float,
        branch_loss_weights: Dict[str, float],
        return_intermediate: bool,
        explain: bool = False,
        explain_top_primitives: int = 5,
        explain_rank_by: str = "alpha",
        trace_tau: float = 0.0,
        trace_normalize: bool = False,
        channels_last_stem: bool = False,
        test_mu: float = -1.0,
        context_init_from_local: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if channels_last_stem:
            for backbone in (self.backbone, context_backbone):
                if backbone is not None:
                    use_channels_last_stem(backbone)
        if (context_backbone is None) != (context_head is None):
            raise ValueError("context_backbone and context_head must be given together")
        self.context_backbone = context_backbone
        self.context_head = context_head
        self.context_feature = context_feature
        self.fusion_logit = nn.Parameter(torch.tensor(float(fusion_init))) if context_head is not None else None
        self.branch_loss_weights = dict(branch_loss_weights)
        self.return_intermediate = return_intermediate
        self.test_mu = test_mu
        self.context_init_from_local = context_init_from_local
        self.explain = explain
        self.explain_options = {
            "top": explain_top_primitives,
            "rank_by": explain_rank_by,
            "tau": trace_tau,
            "normalize": trace_normalize,
        }

    @classmethod
    def from_config(cls, cfg):
        validate_voting_config(cfg)
        validate_explain_config(cfg)
        ret = super().from_config(cfg)
        c = cfg.MODEL.CONTEXT
        context_backbone = context_head = None
        if c.ENABLED:
            context_cfg = copy.deepcopy(cfg)
            context_cfg.defrost()
            context_cfg.MODEL.RESNETS.OUT_FEATURES = [c.IN_FEATURE]
            context_backbone = build_resnet_backbone(context_cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
            context_head = build_context_head(cfg, context_backbone.output_shape()[c.IN_FEATURE])
        for backbone, path in ((ret["backbone"], cfg.MODEL.VOTING.PRETRAINED_BACKBONE), (context_backbone, c.PRETRAINED_BACKBONE)):
            if backbone is not None and path:
                report = load_pretrained_backbone(backbone, path, trust_pickle=cfg.MODEL.CHECKPOINT.TRUST_PICKLE)
                logger.info("loaded %d tensors from %s (unused: %d, adapted: %s)",
                            report["loaded"], path, len(report["unused"]), report["adapted"])
        ret.update(
            context_backbone=context_backbone,
            context_head=context_head,
            context_feature=c.IN_FEATURE,
            fusion_init=c.FUSION_INIT,
            branch_loss_weights={"fused": c.LOSS_WEIGHT_FUSED, "local": c.LOSS_WEIGHT_LOCAL, "global": c.LOSS_WEIGHT_GLOBAL},
            return_intermediate=cfg.MODEL.VOTING.RETURN_INTERMEDIATE,
            explain=cfg.MODEL.EXPLAIN.ENABLED,
            explain_top_primitives=cfg.MODEL.EXPLAIN.TOP_PRIMITIVES,
            explain_rank_by=cfg.MODEL.EXPLAIN.RANK_BY,
            trace_tau=cfg.MODEL.VOTING.TRACE_TAU,
            trace_normalize=cfg.MODEL.VOTING.TRACE_NORMALIZE,
            channels_last_stem=cfg.MODEL.VOTING.CHANNELS_LAST_STEM,
            test_mu=c.TEST_MU,
            context_init_from_local=c.INIT_FROM_LOCAL,
        )
        return ret

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # MODEL.CONTEXT.INIT_FROM_LOCAL: weights without a context backbone (a
        # stage-1 LCF model) give it a copy of their local backbone. Runs before
        # the children load (torch loads a module, then its children, from the
        # same dict), so the copies load as if they were in the file.
        if self.context_backbone is not None and self.context_init_from_local:
            src, dst = prefix + "backbone.", prefix + "context_backbone."
            if not any(k.startswith(dst) for k in state_dict) and any(k.startswith(src) for k in state_dict):
                wanted = list(self.context_backbone.state_dict())  # the context backbone's own keys only
                copies = {dst + k: state_dict[src + k].clone() for k in wanted if src + k in state_dict}
                state_dict.update(copies)
                left = [k for k in wanted if src + k not in state_dict]
                if left:
                    logger.warning("MODEL.CONTEXT.INIT_FROM_LOCAL: the loaded local backbone lacks %d of the context "
                                   "backbone's tensors (%s), which keep their initialisation", len(left),
                                   ", ".join(left[:5]))
                logger.info("context backbone initialised from the loaded local backbone (%d tensors, "
                            "MODEL.CONTEXT.INIT_FROM_LOCAL)", len(copies))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def mu(self) -> Optional[Tensor]:
        """The fusion weight mu = sigmoid(m), or None without the context branch;
        at inference ``MODEL.CONTEXT.TEST_MU`` (when not -1) replaces it."""
        if self.fusion_logit is None:
            return None
        if not self.training and self.test_mu >= 0:
            return self.fusion_logit.new_tensor(self.test_mu)
        return torch.sigmoid(self.fusion_logit)

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]):
        if self.pixel_mean.shape[0] == 1:
            batched_inputs = [{"image": x["image"].float().mean(dim=0, keepdim=True)} for x in batched_inputs]
        return super().preprocess_image(batched_inputs)

    def _branches(self, images, features, proposals, targets=None, primitive_masks=None):
        """Local stages, and (when enabled) context head and fusion, per proposal."""
        local = self.roi_heads.run_stages(features, proposals, targets, primitive_masks)
        result = {"local": local, "boxes": local[-1]["pred_boxes"], "probs": F.softmax(local[-1]["logits"], dim=1)}
        if self.context_head is not None:
            context_features = self.context_backbone(images.tensor)[self.context_feature]
            glob = self.context_head(context_features, proposals)
            boxes, probs = fuse_predictions(
                self.mu, local[-1]["pred_boxes"], local[-1]["logits"], glob["pred_boxes"], glob["logits"]
            )
            result.update(glob=glob, boxes=boxes, probs=probs)
        return result

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        proposals, losses = self.proposal_generator(images, features, gt_instances)
        proposals = self.roi_heads.label_and_sample_proposals(proposals, gt_instances)
        out = self._branches(images, features, proposals, gt_instances)
        local_losses = self.roi_heads.losses(out["local"])
        if self.context_head is None:
            losses.update(local_losses)
            return losses
        gt_classes, gt_boxes = out["local"][0]["gt_classes"], out["local"][0]["gt_boxes"]
        w = self.branch_loss_weights
        losses.update({k: v * w["local"] for k, v in local_losses.items()})
        global_losses = self.context_head.losses(out["glob"], proposals, gt_classes, gt_boxes)
        losses.update({k: v * w["global"] for k, v in global_losses.items()})
        losses.update({k: v * w["fused"] for k, v in self._fused_losses(out, proposals, gt_classes, gt_boxes).items()})
        return losses

    def _fused_losses(self, out, proposals, gt_classes: Tensor, gt_boxes: Tensor) -> Dict[str, Tensor]:
        """Cross-entropy of the fused probabilities and smooth-L1 of the fused
        box's deltas relative to the proposal (METHOD.md 4: the fused loss)."""
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals])
        fg = (gt_classes >= 0) & (gt_classes < self.roi_heads.num_classes)
        num = len(gt_classes)
        log_probs = torch.log(out["probs"].clamp_min(FUSED_PROB_EPS))
        pred = box_deltas(proposal_boxes[fg], out["boxes"][fg])
        target = box_deltas(proposal_boxes[fg], gt_boxes[fg])
        return {
            "loss_fused_cls": F.nll_loss(log_probs, gt_classes) if num else log_probs.sum(),
            "loss_fused_box": smooth_l1_mean(pred, target, self.roi_heads.smooth_l1_beta, num),
        }

    def inference(
        self,
        batched_inputs,
        detected_instances=None,
        do_postprocess: bool = True,
        primitive_masks: Optional[Dict[str, Tensor]] = None,
    ):
        """detectron2's inference; ``primitive_masks`` (level -> ``(K,)`` mask, 0 =
        deleted) removes primitives from the local branch (the deletion test).
        With ``MODEL.EXPLAIN.ENABLED`` every detection also carries the
        intermediate fields, its ``proposal_index`` (into the concatenated
        proposals of the batch) and its trace (``trace_<level>_<name>``, see
        :meth:`VotingStage.trace`)."""
        if detected_instances is not None:
            raise NotImplementedError("VotingRCNN predicts its own boxes; detected_instances is not supported")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, _ = self.proposal_generator(images, features, None)
        out = self._branches(images, features, proposals, primitive_masks=primitive_masks)
        extras = self._intermediate(out, proposals) if self.return_intermediate or self.explain else {}
        if self.explain:
            extras["proposal_index"] = torch.arange(len(out["boxes"]), device=out["boxes"].device)
        results = self.roi_heads.predict_instances(out["boxes"], out["probs"], proposals, extras)
        if self.explain:
            for result in results:
                self._attach_trace(result, out["local"])
        if not do_postprocess:
            return results
        for result, inputs, size in zip(results, batched_inputs, images.image_sizes):
            self._rescale_intermediate(result, inputs.get("height", size[0]), inputs.get("width", size[1]))
        return self._postprocess(results, batched_inputs, images.image_sizes)

    def _intermediate(self, out, proposals) -> Dict[str, Tensor]:
        """Per-proposal intermediate boxes and scores, for the explanations."""
        local = out["local"]
        extras = {"proposal_boxes": cat([p.proposal_boxes.tensor for p in proposals])}
        for level, stage_out in zip(self.roi_heads.levels, local):
            extras[f"{level}_boxes"] = stage_out["pred_boxes"]
        extras["local_boxes"] = local[-1]["pred_boxes"]
        extras["local_probs"] = F.softmax(local[-1]["logits"], dim=1)
        if "glob" in out:
            glob = out["glob"]
            extras.update(
                global_boxes=glob["pred_boxes"],
                global_probs=F.softmax(glob["logits"], dim=1),
                context_boxes=glob["context_boxes"],
                deformed_context_boxes=glob["deformed_context_boxes"],
                mu=self.mu.expand(len(extras["proposal_boxes"])),
            )
        return extras

    def _attach_trace(self, result, local: List[Dict[str, Tensor]]) -> None:
        """Set ``trace_<level>_<name>`` on the detections of one image from the
        levels' per-proposal outputs, for the proposals they came from."""
        index = result.proposal_index
        for level, stage, stage_out in zip(self.roi_heads.levels, self.roi_heads.stages, local):
            selected = {name: value[index] for name, value in stage_out.items()}
            for name, value in stage.trace(selected, **self.explain_options).items():
                result.set(f"{TRACE_PREFIX}{level}_{name}", value)

    def _rescale_intermediate(self, result, height: int, width: int) -> None:
        """Scale the intermediate box and point fields (trace fields included) to
        the output size, as detectron2's ``detector_postprocess`` does for
        ``pred_boxes``."""
        scale = result.pred_boxes.tensor.new_tensor([width / result.image_size[1], height / result.image_size[0]] * 2)
        names = list(INTERMEDIATE_BOX_FIELDS) + [f"{level}_boxes" for level in self.roi_heads.levels]
        names += [
            f"{TRACE_PREFIX}{level}_{name}"
            for level, stage in zip(self.roi_heads.levels, self.roi_heads.stages)
            for name in stage.TRACE_IMAGE_FIELDS
        ]
        for name in names:
            if result.has(name):
                value = result.get(name)
                result.set(name, value * scale[: value.shape[-1]])
