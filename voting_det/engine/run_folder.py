"""Guards for output folders: a run continues only in a folder that holds the
same run, and never overwrites another run's outputs.

Configs are compared key by key, not as text: a key that a newer version of
voting_det added (with its default) is not a difference, so an interrupted run
can be resumed after an upgrade; a key whose value differs is.
"""
import os
from typing import Dict, List, Optional

import yaml

__all__ = ["INFERENCE_ONLY_KEYS", "NOT_OF_THE_RUN", "config_differences", "final_weights_written", "holds_a_run", "refuse_different_config", "refuse_other_run"]


def _flatten(d, prefix="") -> Dict[str, object]:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


# Settings read at inference only, which a trained model can be evaluated
# with either way: the border read-out window, the local score and a pinned fusion weight.
INFERENCE_ONLY_KEYS = ("MODEL.VOTING.BORDER_READOUT_WINDOW", "MODEL.VOTING.TEST_SCORE", "MODEL.CONTEXT.TEST_MU")
# Keys that do not change what a training run computes: where it writes, how
# weights files are read, what inference attaches to its detections
# (explanations, thickness measurements), and the inference-only settings.
NOT_OF_THE_RUN = ("OUTPUT_DIR", "MODEL.CHECKPOINT.", "MODEL.EXPLAIN.", "MODEL.MEASURE.") + INFERENCE_ONLY_KEYS


def config_differences(saved_text: str, current_text: str, ignore=NOT_OF_THE_RUN) -> List[str]:
    """Keys whose values differ between two config dumps (YAML), and keys the
    saved one has that the current one lacks; keys only in the current dump
    (newly added defaults) and keys starting with an ``ignore`` entry (by
    default :data:`NOT_OF_THE_RUN`) are not differences."""
    saved, current = _flatten(yaml.safe_load(saved_text)), _flatten(yaml.safe_load(current_text))
    out = []
    for key in sorted(saved):
        if key.startswith(tuple(ignore)):
            continue
        if key not in current:
            out.append(f"{key} (only in the saved config)")
        elif saved[key] != current[key]:
            out.append(f"{key}: {saved[key]!r} saved, {current[key]!r} now")
    return out


def holds_a_run(folder: str) -> bool:
    """Whether ``folder`` holds detectron2 checkpoints."""
    if not os.path.isdir(folder):
        return False
    return os.path.isfile(os.path.join(folder, "last_checkpoint")) or any(
        f.startswith("model_") and f.endswith(".pth") for f in os.listdir(folder)
    )


def final_weights_written(folder: str, name: str = "model_final.pth") -> bool:
    """Whether ``folder`` holds a finished training: its final weights exist and
    detectron2's checkpointer has tagged them in ``last_checkpoint``, which it
    writes after the weights, so final weights from a process killed between
    the two writes do not count (training then resumes from the last tagged
    checkpoint)."""
    weights, tag = os.path.join(folder, name), os.path.join(folder, "last_checkpoint")
    if not (os.path.isfile(weights) and os.path.isfile(tag)):
        return False
    with open(tag) as f:
        return f.read().strip() == name


def refuse_different_config(saved_text: str, current_text: str, where: str, what: Optional[str] = None) -> None:
    """Raise when the config dump ``saved_text`` (found at ``where``) is of
    another run than ``current_text``."""
    diffs = config_differences(saved_text, current_text)
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ValueError(
            f"{os.path.dirname(where)} holds a run with another config ({where}: {shown}); resuming would mix the "
            f"two runs. {what or 'Use another output folder, or move that one away'}; nothing was changed"
        )


def refuse_other_run(folder: str, current_text: str, saved_name: str = "config.yaml", what: Optional[str] = None) -> None:
    """Raise when ``folder/saved_name`` is the config of another run."""
    path = os.path.join(folder, saved_name)
    if os.path.isfile(path):
        with open(path) as f:
            refuse_different_config(f.read(), current_text, path, what)
