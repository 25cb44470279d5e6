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

from detectron2.engine import DefaultPredictor

from .checkpoint import SafeCheckpointer

__all__ = ["Predictor", "build_predictor"]

# Loggers of detectron2's and fvcore's checkpointers.
LOAD_LOGGERS = ("fvcore.common.checkpoint", "detectron2.checkpoint.detection_checkpoint")


class Predictor(DefaultPredictor):
    """detectron2's ``DefaultPredictor`` whose call takes the pixel spacing too."""

    def __call__(self, original_image, pixel_spacing: Optional[float] = None):
        """``DefaultPredictor.__call__``; with ``pixel_spacing`` (mm per pixel)
        the model's input dict carries it as ``pixel_spacing``."""
        if pixel_spacing is None:
            return super().__call__(original_image)
        model = self.model
        # DefaultPredictor's own preprocessing, the key added to the one input dict it builds
        self.model = lambda inputs: model([dict(d, pixel_spacing=float(pixel_spacing)) for d in inputs])
        try:
            return super().__call__(original_image)
        finally:
            self.model = model


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
