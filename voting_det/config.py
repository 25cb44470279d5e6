"""Config keys added by voting_det.

``add_voting_config(cfg)`` adds voting_det's own nodes to a detectron2 config
(made by ``detectron2.config.get_cfg()``); it never changes an existing key's
default, so a config without voting_det keys behaves as detectron2 does.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_voting_config"]


def add_voting_config(cfg: CN) -> None:
    """Add voting_det's keys to ``cfg`` in place (idempotent)."""
    if "ULTRASOUND" in cfg.INPUT:
        return
    cfg.INPUT.ULTRASOUND = CN()
    # Probability of a horizontal flip in training (a fetus faces either way).
    cfg.INPUT.ULTRASOUND.HFLIP_PROB = 0.5
    # Range of the random brightness factor in training; (1.0, 1.0) disables it.
    cfg.INPUT.ULTRASOUND.BRIGHTNESS = (0.8, 1.2)
    # Range of the random contrast factor in training; (1.0, 1.0) disables it.
    cfg.INPUT.ULTRASOUND.CONTRAST = (0.8, 1.2)
    # Std of multiplicative unit-mean gamma speckle added in training; 0 disables it.
    cfg.INPUT.ULTRASOUND.SPECKLE_SIGMA = 0.0

    # Optimiser of voting_det.engine.Trainer: "SGD" (detectron2's) or "ADAM" (the paper's).
    cfg.SOLVER.OPTIMIZER = "SGD"
