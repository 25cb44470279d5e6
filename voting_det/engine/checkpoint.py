"""Checkpoints that cannot run code, cannot be half-written, and do not load
into a head of another shape silently.

- Reading: ``.pth`` files go through ``torch.load(weights_only=True)`` (tensors
  and plain containers only); pickles (``.pkl``, ``.pickle``: detectron2's model
  zoo format) are refused unless ``MODEL.CHECKPOINT.TRUST_PICKLE`` is set, since
  unpickling can execute code.
- Writing: to a temporary name, then renamed (``last_checkpoint`` too), so a
  crash mid-write leaves the previous checkpoint usable.
- Loading into a model: a parameter whose shape differs from the model's (a
  weights file of another architecture, e.g. K = 64 templates into a K = 128
  model) is an error naming the keys, unless ``MODEL.CHECKPOINT.SKIP_MISMATCHED``
  asks to leave those parameters at their initial values; missing and
  unexpected keys are reported by detectron2 as warnings.
"""
import os
import pickle

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..modeling.weights import PICKLE_SUFFIXES

__all__ = ["SafeCheckpointer", "UnsafeWeightsError"]


class UnsafeWeightsError(ValueError):
    """A weights file that could run code when read."""


def _safe_load(path: str, trust_pickle: bool):
    if path.endswith(PICKLE_SUFFIXES):
        if not trust_pickle:
            raise UnsafeWeightsError(
                f"{path}: a pickle file, which can run code when read; refused. Convert it to a .pth state dict, "
                "or set MODEL.CHECKPOINT.TRUST_PICKLE True if you trust where it comes from"
            )
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


class SafeCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` with the three rules above."""

    def __init__(self, model, save_dir: str = "", *, trust_pickle: bool = False, skip_mismatched: bool = False, **kw):
        super().__init__(model, save_dir, **kw)
        self.trust_pickle = trust_pickle
        self.skip_mismatched = skip_mismatched

    @classmethod
    def from_config(cls, cfg, model, save_dir: str = "", **kw) -> "SafeCheckpointer":
        c = cfg.MODEL.get("CHECKPOINT")
        return cls(model, save_dir, trust_pickle=bool(c and c.TRUST_PICKLE),
                   skip_mismatched=bool(c and c.SKIP_MISMATCHED), **kw)

    def load(self, path: str, *args, **kwargs):
        self._loading = path  # named by _load_model's error
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str):
        if filename.endswith(PICKLE_SUFFIXES) and not self.trust_pickle:
            _safe_load(filename, False)  # raises UnsafeWeightsError
        return super()._load_file(filename)  # .pth files through _torch_load below

    def _torch_load(self, f: str):
        return _safe_load(f, self.trust_pickle)

    def _load_model(self, checkpoint):
        own = self.model.state_dict()
        mismatched = [
            f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
            for k, v in checkpoint["model"].items()
            if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
        ]
        if mismatched and not self.skip_mismatched:
            shown = "\n  ".join(mismatched[:10]) + (f"\n  ... and {len(mismatched) - 10} more" if len(mismatched) > 10 else "")
            raise ValueError(
                f"the weights file {getattr(self, '_loading', '')} does not fit this model ({len(mismatched)} "
                "parameter(s) of another shape: another "
                f"architecture or config, e.g. MODEL.VOTING.NUM_PRIMITIVES):\n  {shown}\nLoad a file of this config, "
                "or set MODEL.CHECKPOINT.SKIP_MISMATCHED True to leave those parameters at their initial values"
            )
        return super()._load_model(checkpoint)

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
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
