"""The stability check of the explanations (see
:mod:`voting_det.interpretation.faithfulness` for the whole measurement).

The top primitives (by each ranking) of the top detection should survive small
shifts of the image and, on the synthetic set, a new speckle draw of the same
anatomy (:func:`synthetic_with_new_speckle`); we report the overlap of the
top-S sets (|A and B| / S, chance S / K) over the pairs whose top detections
match (IoU > 0.5 after undoing the shift).
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.structures import Boxes, pairwise_iou

from ..data.synthetic import render_synthetic_nt
from .deletion import available_rankings, ranking_order
from .trace import Explainer, Explanation, load_image

__all__ = ["MATCH_IOU", "STABILITY_TOP", "shift_image", "stability_test", "summarise_stability",
           "synthetic_with_new_speckle"]

DEFAULT_SHIFT_PX = 8
DEFAULT_SPECKLE_DRAWS = 2
# Size S of the top sets compared by the stability check.
STABILITY_TOP = 5
# Two top detections are the same object when their IoU exceeds this (docs/method.md section 5).
MATCH_IOU = 0.5


def shift_image(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The image moved by (dx, dy) whole pixels, black where nothing moved in."""
    h, w = image.shape[:2]
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def synthetic_with_new_speckle(path: str, seed: int, speckle_seeds: Sequence[int],
                               negative_fraction: float = 0.2) -> List[np.ndarray]:
    """The same synthetic image with new speckle (and tissue texture and noise):
    image ``<index>.png`` of a set made by ``generate_synthetic_nt(seed=seed)``
    is re-rendered with the image formation drawing its random fields from
    ``numpy.random.default_rng([seed, index, s])`` for each ``s``, everything
    else (anatomy, pose, distractors, scanner parameters, text) unchanged.

    The generator does this itself (``render_synthetic_nt(...,
    speckle_seed=s)``). Refuses (ValueError, naming the option) when
    re-rendering without a speckle seed does not reproduce the file byte for
    byte, i.e. when ``path`` is not image ``index`` of the set of that ``seed``.

    Returns one BGR image per speckle seed.
    """
    stem = os.path.splitext(os.path.basename(path))[0]
    if not stem.isdigit():
        raise ValueError(f"{path}: not a synthetic image (its name is not <index>.png)")
    index = int(stem)
    original = load_image(path)
    size = original.shape[:2]

    def render(speckle_seed: Optional[int]) -> np.ndarray:
        grey, _ = render_synthetic_nt(seed, index, size, negative_fraction, speckle_seed=speckle_seed)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)

    if not np.array_equal(render(None), original):
        raise ValueError(
            f"{path} is not image {index} of a synthetic set generated with seed {seed} at {size[0]}x{size[1]}: "
            f"pass the generator's --seed as --synthetic-seed, or leave --synthetic-seed out on other data"
        )
    return [render(s) for s in speckle_seeds]


def _top_sets(explanation: Explanation, levels: Sequence[str], top: int, detection: int = 0) -> Dict:
    """Per level, per ranking (:func:`~.deletion.available_rankings`), the set of
    the top ``top`` primitives of one detection, ties broken as the trace does."""
    inst = explanation.instances
    return {lvl: {name: set(ranking_order(inst, lvl, name, detection)[:top].tolist())
                  for name in available_rankings(inst, lvl)} for lvl in levels}


def stability_test(
    explainer: Explainer,
    image: np.ndarray,
    explanation: Explanation,
    shifts: Sequence[Tuple[int, int]] = (),
    variants: Sequence[np.ndarray] = (),
    top: int = STABILITY_TOP,
) -> List[Dict]:
    """Overlap of the top-``top`` primitives of the top detection with those of
    the shifted images (``shifts``: (dx, dy) in image px) and of ``variants``
    (the same anatomy, e.g. new speckle). One record per comparison:
    ``kind`` ("shift" / "speckle"), ``shift``, ``iou`` of the top boxes (after
    undoing the shift), ``matched`` (iou > 0.5) and ``overlap[level][ranking]``
    = |A and B| / S with S = min(top, K) (null when unmatched or when either
    has no detection)."""
    levels = explainer.levels
    reference = _top_sets(explanation, levels, top)
    box = explanation.instances.pred_boxes.tensor[0]
    records = []
    jobs = [("shift", (dx, dy), shift_image(image, dx, dy)) for dx, dy in shifts]
    jobs += [("speckle", (0, 0), v) for v in variants]
    for kind, (dx, dy), moved in jobs:
        other = explainer(moved)
        record = {"kind": kind, "shift": [dx, dy], "iou": 0.0, "matched": False, "overlap": None}
        if len(other.instances):
            back = other.instances.pred_boxes.tensor[0] - torch.tensor([dx, dy, dx, dy], dtype=box.dtype)
            iou = float(pairwise_iou(Boxes(back[None]), Boxes(box[None]))[0, 0])
            record.update(iou=iou, matched=iou > MATCH_IOU)
            if record["matched"]:
                sets = _top_sets(other, levels, top)
                # S = min(top, K): with fewer primitives than top, the sets hold all of them
                record["overlap"] = {lvl: {name: len(reference[lvl][name] & sets[lvl][name]) / len(reference[lvl][name])
                                           for name in reference[lvl]} for lvl in levels}
        records.append(record)
    return records


def summarise_stability(records: List[Dict], num_primitives: Dict[str, int], top: int) -> Dict:
    """Per kind of comparison ("shift", "speckle"): how many :func:`stability_test`
    records there are, how many kept the top detection, their mean top-``top``
    overlap per level and ranking, and its chance level min(top, K) / K."""
    out = {}
    for kind in ("shift", "speckle"):
        chosen = [r for r in records if r["kind"] == kind]
        if not chosen:
            continue
        matched = [r for r in chosen if r["matched"]]
        overlap = {}
        if matched:
            for lvl in matched[0]["overlap"]:
                overlap[lvl] = {name: float(np.mean([r["overlap"][lvl][name] for r in matched]))
                                for name in matched[0]["overlap"][lvl]}
        out[kind] = {"comparisons": len(chosen), "matched": len(matched),
                     "mean_overlap": overlap,
                     "chance": {lvl: min(top, k) / k for lvl, k in num_primitives.items()}}
    return out

