"""The whole network (docs/method.md section 1) as a detectron2
meta-architecture: the backbones' features and the RPN proposals, then one
call of the ROI head (:class:`~voting_det.modeling.roi_heads.VotingROIHeads`),
which owns the local levels, the context head and the fusion of Eq. 1."""
import copy
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.backbone import Backbone, build_resnet_backbone
from torch import Tensor, nn

from ..config import refuse_untrusted_weights
from .roi_heads import CONTEXT_FEATURES, TRACE_PREFIX
from .voting_level import VotingLevel

__all__ = ["VotingRCNN", "refuse_partial_loads", "rescale_box_fields", "use_channels_last_stem"]

# Instance fields holding boxes in input-image coordinates (rescaled with pred_boxes).
INTERMEDIATE_BOX_FIELDS = (
    "pred_borders",
    "pred_calipers",
    "proposal_boxes",
    "local_boxes",
    "global_boxes",
    "context_boxes",
    "deformed_context_boxes",
)


# Shown of a long list of keys in an error message.
SHOWN_KEYS = 8


def _shown(keys: List[str]) -> str:
    return ", ".join(keys[:SHOWN_KEYS]) + (f", ... ({len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def refuse_partial_loads(module: nn.Module, incompatible) -> None:
    """``load_state_dict`` post-hook of :class:`VotingRCNN`: weights that leave
    any tensor of the model unfilled, or hold tensors it has no place for,
    are an error naming them, whatever loads them (detectron2's
    ``DefaultPredictor`` included: its checkpointer drops tensors of another
    shape with a warning, which makes them missing here). voting_det's
    checkpointer fills what ``MODEL.CHECKPOINT.ALLOW_MISSING`` /
    ``SKIP_MISMATCHED`` allow before loading."""
    missing, unexpected = list(incompatible.missing_keys), list(incompatible.unexpected_keys)
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's tensors are not in it or have another shape there ({_shown(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} of its tensors have no place in the model ({_shown(unexpected)})")
    raise ValueError(
        "the weights do not fit this model: " + "; ".join(parts) + ". Load the model_final.pth of a model trained "
        "with this config file; to start training from a part of a model, list the prefixes it may lack in "
        "MODEL.CHECKPOINT.ALLOW_MISSING"
    )


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


def rescale_box_fields(result, height: int, width: int, names) -> None:
    """Scale ``result``'s fields ``names`` that it has (XYXY boxes or (x, y)
    points in the network input's coordinates, last dimension 4 or 2) to a
    ``height`` x ``width`` output, as detectron2's ``detector_postprocess``
    scales ``pred_boxes``; call it before that function (it reads the input size)."""
    scale = result.pred_boxes.tensor.new_tensor([width / result.image_size[1], height / result.image_size[0]] * 2)
    for name in names:
        if result.has(name):
            value = result.get(name)
            result.set(name, value * scale[: value.shape[-1]])


@META_ARCH_REGISTRY.register()
class VotingRCNN(GeneralizedRCNN):
    """GeneralizedRCNN with the paper's second backbone.

    - ``backbone``: the local ResNet-18 (res2..res4), read by the RPN (coarse
      level) and by the ROI head's voting levels (res4, then res3);
    - ``context_backbone``: the context branch's own ResNet-18 (absent when
      ``MODEL.CONTEXT.ENABLED`` is False: LS / LCF); its map reaches the ROI
      head as ``features["context"]``;
    - ``roi_heads``: :class:`~voting_det.modeling.roi_heads.VotingROIHeads`.

    A one-value ``MODEL.PIXEL_MEAN`` makes a grey model: the 3 replicated BGR
    channels of the loaders are averaged in :meth:`preprocess_image` and both
    backbones take one channel.
    """

    @configurable
    def __init__(
        self,
        *,
        context_backbone: Optional[Backbone],
        context_feature: str,
        channels_last_stem: bool = False,
        share_context: bool = False,
        measure: Optional[Dict] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.share_context = share_context
        self.measure = dict(measure or {"method": "", "max_detections": 1, "pixel_spacing": 0.0, "cutoff_mm": 3.5})
        self.register_load_state_dict_post_hook(refuse_partial_loads)
        self.context_backbone = context_backbone
        self.context_feature = context_feature
        if channels_last_stem:
            for backbone in (self.backbone, context_backbone):
                if backbone is not None:
                    use_channels_last_stem(backbone)

    @classmethod
    def from_config(cls, cfg):
        # detectron2 builds the model before it reads MODEL.WEIGHTS (DefaultPredictor,
        # DefaultTrainer): an untrusted pickle is refused before any byte is read
        refuse_untrusted_weights(cfg.MODEL.WEIGHTS, cfg.MODEL.CHECKPOINT.TRUST_PICKLE)
        ret = super().from_config(cfg)
        c = cfg.MODEL.CONTEXT
        context_backbone = None
        if c.ENABLED and not c.SHARE_BACKBONE:
            context_cfg = copy.deepcopy(cfg)
            context_cfg.defrost()
            context_cfg.MODEL.RESNETS.OUT_FEATURES = [c.IN_FEATURE]
            context_backbone = build_resnet_backbone(context_cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        ret.update(
            context_backbone=context_backbone,
            context_feature=c.IN_FEATURE,
            share_context=bool(c.ENABLED and c.SHARE_BACKBONE),
            measure={
                "method": cfg.MODEL.MEASURE.METHOD,
                "max_detections": cfg.MODEL.MEASURE.MAX_DETECTIONS,
                "pixel_spacing": cfg.MODEL.MEASURE.PIXEL_SPACING,
                "cutoff_mm": cfg.MODEL.MEASURE.CUTOFF_MM,
            },
            channels_last_stem=cfg.MODEL.VOTING.CHANNELS_LAST_STEM,
        )
        return ret

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]):
        if self.pixel_mean.shape[0] == 1:
            batched_inputs = [{"image": x["image"].float().mean(dim=0, keepdim=True)} for x in batched_inputs]
        return super().preprocess_image(batched_inputs)

    def extract_features(self, images) -> Dict[str, Tensor]:
        """The local backbone's maps, and the context backbone's under
        :data:`~voting_det.modeling.roi_heads.CONTEXT_FEATURES`."""
        features = self.backbone(images.tensor)
        if self.context_backbone is not None:
            features[CONTEXT_FEATURES] = self.context_backbone(images.tensor)[self.context_feature]
        elif self.share_context:
            # MODEL.CONTEXT.SHARE_BACKBONE: one backbone for both branches
            features[CONTEXT_FEATURES] = features[self.context_feature]
        return features

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.extract_features(images)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        return {**proposal_losses, **detector_losses}

    def inference(self, batched_inputs, detected_instances=None, do_postprocess: bool = True):
        """detectron2's inference. With ``MODEL.VOTING.RETURN_INTERMEDIATE`` or
        ``MODEL.EXPLAIN.ENABLED`` every detection also carries the intermediate
        fields and, with the latter, its ``proposal_index`` (into the
        concatenated proposals of the batch) and its trace
        (``trace_<level>_<name>``, see :meth:`VotingLevel.trace`); box and
        point fields are scaled to the output size like ``pred_boxes``."""
        if detected_instances is not None:
            raise NotImplementedError("VotingRCNN predicts its own boxes; detected_instances is not supported")
        images = self.preprocess_image(batched_inputs)
        features = self.extract_features(images)
        proposals, _ = self.proposal_generator(images, features, None)
        results, _ = self.roi_heads(images, features, proposals, None)
        if self.measure["method"]:
            for result, inputs in zip(results, batched_inputs):
                self._measure(result, inputs["image"])
        if not do_postprocess:
            return results
        for result, inputs, size in zip(results, batched_inputs, images.image_sizes):
            self._rescale_intermediate(result, inputs.get("height", size[0]), inputs.get("width", size[1]))
        processed = self._postprocess(results, batched_inputs, images.image_sizes)
        if self.measure["method"]:
            for out, inputs in zip(processed, batched_inputs):
                self._thickness(out["instances"], inputs.get("pixel_spacing"))
        return processed

    def _measure(self, result, image: Tensor) -> None:
        """``pred_calipers`` (N, 2, 2) of the best ``MODEL.MEASURE.MAX_DETECTIONS``
        detections (NaN for the others), in the network input's coordinates,
        by ``MODEL.MEASURE.METHOD`` (voting_det.measurement) on the input image."""
        from ..measurement import border_measurement, box_measurement, profile_measurement

        method, count = self.measure["method"], min(len(result), self.measure["max_detections"])
        calipers = torch.full((len(result), 2, 2), float("nan"))
        boxes = result.pred_boxes.tensor.detach().cpu()
        grey = image.float().mean(dim=0).cpu().numpy() if method == "profile" and count else None
        borders = result.pred_borders.detach().cpu() if result.has("pred_borders") else None
        if method == "borders" and borders is None:
            raise ValueError("config key MODEL.MEASURE.METHOD: 'borders' needs a model with border votes along y "
                             "(MODEL.VOTING.BORDER_AXES); use 'profile' or 'box'")
        for i in range(count):
            box = boxes[i].tolist()
            if method == "profile":
                m = profile_measurement(grey, box)
            elif method == "borders":
                m = border_measurement(box, borders[i].tolist())
            else:
                m = box_measurement(box)
            calipers[i] = torch.as_tensor(m.calipers, dtype=torch.float32)
        result.pred_calipers = calipers.to(result.pred_boxes.device)

    def _thickness(self, instances, pixel_spacing: Optional[float]) -> None:
        """``pred_nt_thickness_px`` (the calipers' distance in output pixels),
        ``pred_nt_thickness_mm`` (NaN when the pixel spacing is unknown) and
        ``pred_nt_above_cutoff`` (thickness >= MODEL.MEASURE.CUTOFF_MM)."""
        calipers = instances.pred_calipers
        px = (calipers[:, 1] - calipers[:, 0]).norm(dim=1)
        spacing = float(pixel_spacing) if pixel_spacing is not None else float(self.measure["pixel_spacing"])
        mm = px * spacing if spacing > 0 else torch.full_like(px, float("nan"))
        instances.pred_nt_thickness_px = px
        instances.pred_nt_thickness_mm = mm
        instances.pred_nt_above_cutoff = mm >= self.measure["cutoff_mm"]

    def _rescale_intermediate(self, result, height: int, width: int) -> None:
        """Scale the intermediate box and point fields (trace fields included) to
        the output size, as detectron2's ``detector_postprocess`` does for
        ``pred_boxes``."""
        names = list(INTERMEDIATE_BOX_FIELDS) + [f"{level}_boxes" for level in self.roi_heads.level_names]
        names += [
            f"{TRACE_PREFIX}{level}_{name}" for level in self.roi_heads.level_names for name in VotingLevel.TRACE_IMAGE_FIELDS
        ]
        rescale_box_fields(result, height, width, names)
