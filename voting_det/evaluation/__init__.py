"""Evaluation: the NT metrics of docs/method.md section 5 and their evaluator."""
from .evaluator import (
    NTEvaluator,
    SettingsMismatchError,
    check_same_settings,
    evaluate_records,
    load_records,
    records_from_dataset,
    test_settings,
)
from . import metrics

__all__ = [
    "NTEvaluator",
    "SettingsMismatchError",
    "check_same_settings",
    "evaluate_records",
    "load_records",
    "metrics",
    "records_from_dataset",
    "test_settings",
]
