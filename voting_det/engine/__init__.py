"""Training: a DefaultTrainer subclass wiring voting_det's data and evaluation."""
from .trainer import Trainer, build_nt_evaluator, detectron2_has_compiled_ops

__all__ = ["Trainer", "build_nt_evaluator", "detectron2_has_compiled_ops"]
