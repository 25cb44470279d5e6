"""voting_det's one checkpointer: weights that cannot run code, cannot be
half-written, and do not load into a model of another shape silently.

- Reading (:func:`read_weights`, the one reader of weight files): ``.pth``
  files go through ``torch.load(weights_only=True)`` (tensors and plain
  containers only); pickles (``.pkl``, ``.pickle``: detectron2's model-zoo
  format) are refused unless ``MODEL.CHECKPOINT.TRUST_PICKLE`` is set, since
  unpickling can execute code.
- Converting (:meth:`SafeCheckpointer._load_model`, as DensePose's
  checkpointer does): parameter names of earlier versions (the context head
  and mu on the meta-architecture, "stages" for levels, plain FC layers) are
  renamed; with ``MODEL.CONTEXT.INIT_FROM_LOCAL`` a file without a context
  backbone (a stage-1 LCF model) gives it a copy of its local backbone;
  pretrained ResNets (:meth:`SafeCheckpointer.load_pretrained_backbones`) are
  renamed and their RGB stem summed into a grey one
  (:mod:`.backbone_weights`).
- Loading into a model: a parameter whose shape differs from the model's (a
  weights file of another architecture, e.g. K = 64 templates into a K = 128
  model) is an error naming the keys, unless ``MODEL.CHECKPOINT.SKIP_MISMATCHED``
  asks to leave those parameters at their initial values.
- Writing: to a temporary name, then renamed (``last_checkpoint`` too), so a
  crash mid-write leaves the previous checkpoint usable; ``model_final.pth``
  holds the weights (and the iteration) without the optimizer's state.
"""
import logging
import os
import pickle
import re
from typing import Dict, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import Tensor

from ..config import PICKLE_SUFFIXES, UnsafeWeightsError, refuse_untrusted_weights

__all__ = ["SafeCheckpointer", "UnsafeWeightsError", "read_weights", "rename_legacy_keys"]

logger = logging.getLogger(__name__)
# Parameter names of checkpoints written before the ROI head owned the
# prediction -> today's, applied in order.
LEGACY_RENAMES = (
    (re.compile(r"^context_head\.(cls_score|bbox_pred)\."), r"roi_heads.context_head.predictor.\1."),
    (re.compile(r"^context_head\."), "roi_heads.context_head."),
    (re.compile(r"^fusion_logit$"), "roi_heads.fusion_logit"),
    (re.compile(r"^roi_heads\.stages\."), "roi_heads.levels."),
    (re.compile(r"\.(fc|fc_g1|fc_g2)\.1\."), r".\1.fc1."),
    (re.compile(r"\.(fc|fc_g1|fc_g2)\.3\."), r".\1.fc2."),
)
LOCAL_BACKBONE, CONTEXT_BACKBONE = "backbone.", "context_backbone."
# Name of the checkpoint detectron2's trainer writes at the end (weights only here).
FINAL_MODEL = "model_final"


def read_weights(path: str, trust_pickle: bool = False):
    """The contents of a weights file, read without running code unless
    ``trust_pickle`` (see the module docstring)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} not found")
    refuse_untrusted_weights(path, trust_pickle)
    if path.lower().endswith(PICKLE_SUFFIXES):
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeWeightsError(
            f"{path}: holds objects other than tensors and plain containers, which torch.load(weights_only=True) "
            f"refuses ({str(e).splitlines()[0]}); re-save its state dict, or set MODEL.CHECKPOINT.TRUST_PICKLE True "
            "if you trust where it comes from"
        ) from e


def rename_legacy_keys(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``state_dict`` with names of earlier voting_det versions renamed."""
    renamed = {}
    for name, value in state_dict.items():
        for pattern, new in LEGACY_RENAMES:
            name = pattern.sub(new, name)
        renamed[name] = value
    return renamed


class SafeCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` with the rules above."""

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        trust_pickle: bool = False,
        skip_mismatched: bool = False,
        allow_missing: Sequence[str] = (),
        context_init_from_local: bool = False,
        **kw,
    ):
        super().__init__(model, save_dir, **kw)
        self.trust_pickle = trust_pickle
        self.skip_mismatched = skip_mismatched
        self.allow_missing = tuple(allow_missing)
        self.context_init_from_local = context_init_from_local

    @classmethod
    def from_config(cls, cfg, model, save_dir: str = "", **kw) -> "SafeCheckpointer":
        c = cfg.MODEL.get("CHECKPOINT")
        context = cfg.MODEL.get("CONTEXT")
        options = dict(
            trust_pickle=bool(c and c.TRUST_PICKLE),
            skip_mismatched=bool(c and c.SKIP_MISMATCHED),
            allow_missing=tuple(c.ALLOW_MISSING) if c else (),
            context_init_from_local=bool(context and context.ENABLED and context.INIT_FROM_LOCAL),
        )
        options.update(kw)  # explicit arguments win over the config
        return cls(model, save_dir, **options)

    def load(self, path: str, *args, **kwargs):
        self._loading = path  # named by _load_model's error
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str):
        refuse_untrusted_weights(filename, self.trust_pickle)
        return super()._load_file(filename)  # .pth files through _torch_load below

    def _torch_load(self, f: str):
        return read_weights(f, self.trust_pickle)

    def _load_model(self, checkpoint):
        checkpoint["model"] = self._convert(checkpoint["model"])
        own = self.model.state_dict()
        state = checkpoint["model"]
        mismatched_keys = [k for k, v in state.items()
                           if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
        mismatched = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                      for k in mismatched_keys]
        if mismatched and not self.skip_mismatched:
            shown = "\n  ".join(mismatched[:10]) + (f"\n  ... and {len(mismatched) - 10} more" if len(mismatched) > 10 else "")
            raise ValueError(
                f"the weights file {getattr(self, '_loading', '')} does not fit this model ({len(mismatched)} "
                "parameter(s) of another shape: another "
                f"architecture or config, e.g. MODEL.VOTING.NUM_PRIMITIVES):\n  {shown}\nLoad a file of this config, "
                "or set MODEL.CHECKPOINT.SKIP_MISMATCHED True to leave those parameters at their initial values"
            )
        # what the config allows to stay as it is loads as the model's own value
        kept = mismatched_keys + [k for k in own if k not in state and k.startswith(self.allow_missing)]
        if kept:
            logger.warning("%d tensor(s) keep their initial values (MODEL.CHECKPOINT.SKIP_MISMATCHED / ALLOW_MISSING): "
                           "%s", len(kept), ", ".join(kept[:8]) + (" ..." if len(kept) > 8 else ""))
        checkpoint["model"] = {**state, **{k: own[k] for k in kept}}
        return super()._load_model(checkpoint)

    def _convert(self, state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Legacy names renamed; the context backbone filled from the local one
        when asked (``MODEL.CONTEXT.INIT_FROM_LOCAL``) and the file has none."""
        state_dict = rename_legacy_keys(state_dict)
        context = getattr(self.model, "context_backbone", None)
        if not (self.context_init_from_local and context is not None):
            return state_dict
        if any(k.startswith(CONTEXT_BACKBONE) for k in state_dict) or not any(
            k.startswith(LOCAL_BACKBONE) for k in state_dict
        ):
            return state_dict
        wanted = list(context.state_dict())  # the context backbone's own keys only
        copies = {CONTEXT_BACKBONE + k: state_dict[LOCAL_BACKBONE + k].clone() for k in wanted
                  if LOCAL_BACKBONE + k in state_dict}
        left = [k for k in wanted if LOCAL_BACKBONE + k not in state_dict]
        if left:
            logger.warning("MODEL.CONTEXT.INIT_FROM_LOCAL: the loaded local backbone lacks %d of the context "
                           "backbone's tensors (%s), which keep their initialisation", len(left), ", ".join(left[:5]))
        logger.info("context backbone initialised from the loaded local backbone (%d tensors, "
                    "MODEL.CONTEXT.INIT_FROM_LOCAL)", len(copies))
        return {**state_dict, **copies}

    def load_pretrained_backbones(self, cfg) -> None:
        """Fill the local and the context backbone from
        ``MODEL.VOTING.PRETRAINED_BACKBONE`` / ``MODEL.CONTEXT.PRETRAINED_BACKBONE``
        (torchvision, detectron2 or Detectron files; names converted, an RGB
        stem summed into a grey one). Empty keys are skipped."""
        from .backbone_weights import load_pretrained_backbone  # it reads through read_weights

        for attribute, path in (("backbone", cfg.MODEL.VOTING.PRETRAINED_BACKBONE),
                                ("context_backbone", cfg.MODEL.CONTEXT.PRETRAINED_BACKBONE)):
            backbone = getattr(self.model, attribute, None)
            if backbone is not None and path:
                report = load_pretrained_backbone(backbone, path, trust_pickle=self.trust_pickle)
                logger.info("%s: loaded %d tensors from %s (unused: %d, adapted: %s)", attribute,
                            report["loaded"], path, len(report["unused"]), report["adapted"])

    def save(self, name: str, **kwargs) -> None:
        """Write ``name``.pth atomically. The final model holds the weights
        and its iteration only (a tenth of a checkpoint that also carries
        Adam's moments): resuming a finished run finds it finished."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        if name != FINAL_MODEL:
            for key, obj in self.checkpointables.items():
                data[key] = obj.state_dict()
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", save_file)
        with open(save_file + ".tmp", "wb") as f:
            torch.save(data, f)
        os.replace(save_file + ".tmp", save_file)
        self.tag_last_checkpoint(os.path.basename(save_file))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        with open(path + ".tmp", "w") as f:
            f.write(last_filename_basename)
        os.replace(path + ".tmp", path)
