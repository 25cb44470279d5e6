"""The one way voting_det builds a predictor: detectron2's ``DefaultPredictor``
(resizing, BGR/RGB handling, ``__call__`` on one image) whose weights are read
by :class:`~.checkpoint.SafeCheckpointer` (no code run, mismatched shapes
refused, earlier parameter names converted) instead of detectron2's own
checkpointer.

Its ``__call__`` also takes the image's pixel spacing (mm per pixel, e.g. read
from a DICOM file), passed to the model as the input dict's ``pixel_spacing``:
it wins over ``MODEL.MEASURE.PIXEL_SPACING`` in voting_det's measurement."""
import logging
from typing import Optional

import torch

from detectron2.engine import DefaultPredictor

from .checkpoint import SafeCheckpointer

__all__ = ["Predictor", "build_predictor", "model_input"]


def model_input(original_image, resize, input_format: str = "BGR") -> torch.Tensor:
    """What ``DefaultPredictor`` gives the model: ``original_image`` ``(H, W, 3)``
    uint8 BGR, channels flipped for an RGB model, resized by ``resize`` (a
    detectron2 ``ResizeShortestEdge``); ``(3, h, w)`` float32."""
    if input_format == "RGB":
        original_image = original_image[:, :, ::-1]
    image = resize.get_transform(original_image).apply_image(original_image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))

# Loggers of detectron2's and fvcore's checkpointers.
LOAD_LOGGERS = ("fvcore.common.checkpoint", "detectron2.checkpoint.detection_checkpoint")


class Predictor(DefaultPredictor):
    """detectron2's ``DefaultPredictor`` whose call takes the pixel spacing too."""

    def __call__(self, original_image, pixel_spacing: Optional[float] = None):
        """``DefaultPredictor.__call__`` (the same preprocessing: BGR/RGB,
        ``INPUT.MIN_SIZE_TEST`` resize); with ``pixel_spacing`` (mm per pixel)
        the model's input dict also carries it as ``pixel_spacing``. Nothing of
        the predictor is changed during a call, so calls from several threads
        (the viewer's server) do not interfere."""
        with torch.no_grad():
            height, width = original_image.shape[:2]
            inputs = {"image": model_input(original_image, self.aug, self.input_format), "height": height, "width": width}
            if pixel_spacing is not None:
                inputs["pixel_spacing"] = float(pixel_spacing)
            return self.model([inputs])[0]


def build_predictor(cfg) -> Predictor:
    """A ``DefaultPredictor`` for ``cfg`` with ``cfg.MODEL.WEIGHTS`` loaded safely
    (a :class:`Predictor`: its call also takes ``pixel_spacing``)."""
    blank = cfg.clone()
    blank.defrost()
    blank.MODEL.WEIGHTS = ""
    blank.freeze()
    # DefaultPredictor "loads" the blank weights and logs that it reads "" and
    # starts from scratch, before the real weights are read below: not shown
    loggers = [logging.getLogger(name) for name in LOAD_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        predictor = Predictor(blank)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    predictor.cfg = cfg
    SafeCheckpointer.from_config(cfg, predictor.model).load(cfg.MODEL.WEIGHTS)
    return predictor
