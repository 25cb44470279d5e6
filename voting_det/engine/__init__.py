"""Training (a DefaultTrainer subclass wiring voting_det's data and evaluation),
the checkpointer, and the predictor built on it."""
from .predictor import build_predictor
from .trainer import Trainer, build_nt_evaluator, detectron2_has_compiled_ops

__all__ = ["Trainer", "build_nt_evaluator", "build_predictor", "detectron2_has_compiled_ops"]
