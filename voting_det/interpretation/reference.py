"""The reference of the contrastive ranking (``MODEL.EXPLAIN.RANK_BY
contrastive``, docs/interpretation.md "Explanations that are about this image").

The contrastive score of primitive k is this detection's vote share
c_k / Phi(x^) minus its mean share over the training images
(:func:`voting_det.modeling.voting_level.contrastive_scores`): what this image's
votes did beyond the typical image's. The means are computed once per model,
from the top detection of every training image (:func:`compute_reference`),
and stored as a small JSON file (:func:`save_reference`), by default
``explain_reference.json`` beside the weights (``MODEL.EXPLAIN.REFERENCE``
names another place). The file records the SHA-256 of the weights it was
computed with; :func:`load_reference` refuses it for other weights.
:class:`~voting_det.interpretation.trace.Explainer` reads it when it exists
(and requires it for the contrastive ranking).
"""
import hashlib
import os
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..config import EXPLAIN_REFERENCE_FILE
from ..modeling import TRACE_PREFIX
from ..modeling.voting_level import vote_shares

__all__ = ["REFERENCE_FORMAT", "apply_reference", "compute_reference", "file_sha256", "load_reference",
           "reference_path", "save_reference"]

REFERENCE_FORMAT = "voting_det.explain_reference/1"
_CHUNK = 1 << 20


def file_sha256(path: str) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def reference_path(cfg) -> str:
    """Where the reference of ``cfg``'s model is: ``MODEL.EXPLAIN.REFERENCE``,
    or ``explain_reference.json`` beside ``MODEL.WEIGHTS`` when that is ""."""
    if cfg.MODEL.EXPLAIN.REFERENCE:
        return cfg.MODEL.EXPLAIN.REFERENCE
    return os.path.join(os.path.dirname(os.path.abspath(cfg.MODEL.WEIGHTS or ".")), EXPLAIN_REFERENCE_FILE)


def compute_reference(explainer, records: Sequence[Dict], progress: bool = True, dataset: Optional[str] = None) -> Dict:
    """The mean vote share c_k / Phi(x^) of every primitive of every level over
    the top detection of each image of ``records`` (images without a detection
    are skipped). Returns the JSON-serialisable reference (:data:`REFERENCE_FORMAT`)."""
    from tqdm import tqdm

    from .trace import load_image

    sums = {lvl: np.zeros(k, dtype=np.float64) for lvl, k in explainer.num_primitives.items()}
    used = 0
    for record in tqdm(list(records), desc="reference", unit="image", disable=not progress):
        instances = explainer(load_image(record["file_name"])).instances
        if not len(instances):
            continue
        used += 1
        for lvl in sums:
            contributions = instances.get(f"{TRACE_PREFIX}{lvl}_contributions")[0]
            sums[lvl] += vote_shares(contributions).double().numpy()
    if not used:
        raise ValueError("no image had a detection: cannot compute the mean vote shares")
    weights = explainer.cfg.MODEL.WEIGHTS
    return {
        "format": REFERENCE_FORMAT,
        "what": "mean vote share c_k / Phi(x^) of each primitive over the top detection of each image",
        "dataset": dataset,
        "num_images": used,
        "weights": weights,
        "weights_sha256": file_sha256(weights) if weights and os.path.isfile(weights) else None,
        "levels": {lvl: {"num_primitives": int(len(s)), "mean_share": (s / used).tolist()} for lvl, s in sums.items()},
    }


def save_reference(path: str, reference: Dict, overwrite: bool = False) -> None:
    """Write a reference (refuses an existing file unless ``overwrite``)."""
    from .trace import save_json

    save_json(path, reference, overwrite=overwrite, indent=1)


def load_reference(path: str, weights: Optional[str] = None) -> Dict:
    """Read a reference; with ``weights`` (a file), refuse it (ValueError naming
    both) when it was computed with other weights."""
    from .trace import load_json

    reference = load_json(path)
    if reference.get("format") != REFERENCE_FORMAT:
        raise ValueError(f"{path}: not a contrastive reference ({REFERENCE_FORMAT}); "
                         "write one with tools/explanation_specificity.py --write-reference")
    expected = reference.get("weights_sha256")
    if weights and expected and os.path.isfile(weights) and file_sha256(weights) != expected:
        raise ValueError(f"config key MODEL.EXPLAIN.REFERENCE: {path} was computed for other weights "
                         f"({reference.get('weights')}), not {weights}; write it again for these weights with "
                         "tools/explanation_specificity.py --write-reference")
    return reference


def apply_reference(model, reference: Optional[Dict]) -> None:
    """Give every voting level of ``model`` its mean shares (None removes them);
    refuses a reference whose levels or K differ from the model's."""
    levels = model.roi_heads.levels
    if reference is None:
        for level in levels:
            level.set_explain_reference(None)
        return
    names = [level.name for level in levels]
    if sorted(reference["levels"]) != sorted(names):
        raise ValueError(f"the contrastive reference has levels {sorted(reference['levels'])}, the model {names}")
    for level in levels:
        level.set_explain_reference(torch.tensor(reference["levels"][level.name]["mean_share"]))
