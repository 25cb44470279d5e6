"""The one way voting_det builds a predictor: detectron2's ``DefaultPredictor``
(resizing, BGR/RGB handling, ``__call__`` on one image) whose weights are read
by :class:`~.checkpoint.SafeCheckpointer` (no code run, mismatched shapes
refused, earlier parameter names converted) instead of detectron2's own
checkpointer."""
import logging

from detectron2.engine import DefaultPredictor

from .checkpoint import SafeCheckpointer

__all__ = ["build_predictor"]

# Loggers of detectron2's and fvcore's checkpointers.
LOAD_LOGGERS = ("fvcore.common.checkpoint", "detectron2.checkpoint.detection_checkpoint")


def build_predictor(cfg) -> DefaultPredictor:
    """A ``DefaultPredictor`` for ``cfg`` with ``cfg.MODEL.WEIGHTS`` loaded safely."""
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
        predictor = DefaultPredictor(blank)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    predictor.cfg = cfg
    SafeCheckpointer.from_config(cfg, predictor.model).load(cfg.MODEL.WEIGHTS)
    return predictor
