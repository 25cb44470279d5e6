"""The NT localisation metrics of docs/method.md section 5, as pure numpy functions
over per-image records, so that they can be recomputed (bootstrap, paired
differences, tables) from the detection files an evaluation writes.

A *record* is one test image::

    {"image_id": ..., "file_name": ..., "gt": [[x0, y0, x1, y1], ...],
     "boxes": [[x0, y0, x1, y1], ...], "scores": [...]}

boxes in image pixels (XYXY, continuous coordinates as in detectron2), and the
detections in any order (they are sorted by score here). An image without
ground truth is a *negative* image.

Matching: a detection matches a ground-truth box when IoU > ``iou`` (0.5);
detections are taken in decreasing score, each takes the unmatched ground
truth it overlaps most, so every ground truth is matched to at most one
detection, the highest-scoring one. Duplicates of a matched box are therefore
unmatched (false positives).

Paper-style AUC / SEN / SPE (the paper's reading): every image contributes
exactly ``top_n`` detection *slots* (its top-``top_n`` detections, missing ones
filled with empty slots of score -inf), so that adding or removing low-score
boxes cannot change the pool. Positives are the ground truths, each with the
score of its matched slot, or -inf when no slot matched it (a missed
structure counts as a miss); negatives are the unmatched slots. AUC is the ROC
AUC of these scores (ties count one half); SEN is the share of ground truths
whose matched detection is its image's top-1; SPE is the share of unmatched
slots that are not an image's top-1 detection.

LROC (sets with negative images): each image is represented by its top-1
detection (score 0 if none); a positive image is *found* at threshold t when its
top-1 scores >= t and matches; a negative image is a false positive when its
top-1 scores >= t. AUC over (false-positive fraction of negatives, found
fraction of positives), which equals the probability that a random positive is
found with a score above a random negative's (ties one half).

Rates are returned in percent, IoU in [0, 1], centre errors in pixels (and mm
when the records carry ``pixel_spacing``, mm per pixel).
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "FROC_RATES",
    "NoNegativesError",
    "ImageStats",
    "align_records",
    "analyse",
    "box_iou",
    "bootstrap",
    "choose_threshold",
    "froc_curve",
    "lroc_curve",
    "mann_whitney_auc",
    "match_detections",
    "paired_bootstrap",
    "paper_roc_curve",
    "summarise",
]

# false positives per image at which FROC sensitivities are read (docs/method.md section 5)
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)


class NoNegativesError(ValueError):
    """LROC (and its SEN / SPE) needs images without the structure."""


def box_iou(a, b) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of XYXY boxes; zero-area boxes give 0."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def _sorted_detections(record):
    boxes = np.asarray(record.get("boxes", []), dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(record.get("scores", []), dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(
            f"record of image {record.get('image_id')!r} ({record.get('file_name')}) has "
            f"{len(boxes)} boxes but {len(scores)} scores"
        )
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def match_detections(gt, boxes, iou: float = 0.5):
    """One-to-one matching of detections (already sorted by decreasing score)
    to ground truths. Returns ``(det_to_gt, gt_to_det)``: for each detection the
    index of the ground truth it matched, else -1; for each ground truth the
    index of its detection, else -1."""
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    det_to_gt = np.full(len(boxes), -1, dtype=np.int64)
    gt_to_det = np.full(len(gt), -1, dtype=np.int64)
    if len(gt) == 0 or len(boxes) == 0:
        return det_to_gt, gt_to_det
    ious = box_iou(boxes, gt)
    for d in range(len(boxes)):
        candidates = np.where((ious[d] > iou) & (gt_to_det < 0))[0]
        if len(candidates):
            g = candidates[np.argmax(ious[d, candidates])]
            det_to_gt[d], gt_to_det[g] = g, d
    return det_to_gt, gt_to_det


class ImageStats:
    """Per-image quantities every metric is computed from (computed once, then
    resampled by the bootstrap). Arrays are indexed by image; the flat arrays
    (``*_flat``) hold several values per image, owned through ``*_owner``."""

    def __init__(self, n_images: int):
        self.n = n_images

    def take(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Concatenation of flat array ``name`` over images ``idx`` (with repeats)."""
        values = getattr(self, name + "_flat")
        start, end = getattr(self, name + "_start"), getattr(self, name + "_end")
        if len(idx) == 0:
            return values[:0]
        return np.concatenate([values[start[i]:end[i]] for i in idx])


def _flat(stats: ImageStats, name: str, per_image: List[np.ndarray], dtype) -> None:
    lengths = np.array([len(v) for v in per_image], dtype=np.int64)
    end = np.cumsum(lengths)
    setattr(stats, name + "_flat", np.concatenate(per_image).astype(dtype) if per_image else np.zeros(0, dtype))
    setattr(stats, name + "_start", end - lengths)
    setattr(stats, name + "_end", end)


def analyse(records: Sequence[dict], iou: float = 0.5, lenient_iou: float = 0.3, top_n: int = 10) -> ImageStats:
    """Match every image once and keep what the metrics need."""
    n = len(records)
    s = ImageStats(n)
    s.iou_threshold, s.lenient_iou, s.top_n = iou, lenient_iou, top_n
    s.n_gt = np.zeros(n, dtype=np.int64)
    s.has_det = np.zeros(n, dtype=bool)
    s.top1_score = np.zeros(n)  # 0 when no detection (LROC's convention)
    s.top1_iou = np.zeros(n)  # best IoU of the top-1 box with a ground truth; 0 if none
    s.top1_match = np.zeros(n, dtype=bool)  # top-1 matched (one-to-one, IoU > iou)
    s.top1_lenient = np.zeros(n, dtype=bool)  # top-1 IoU > lenient_iou
    s.top1_inside = np.zeros(n, dtype=bool)  # top-1 centre inside a ground-truth box
    s.centre_error = np.full(n, np.nan)  # px, to the ground truth the top-1 overlaps most
    s.centre_error_mm = np.full(n, np.nan)
    s.gt_is_top1 = np.zeros(n, dtype=np.int64)  # ground truths matched by the image's top-1
    s.top1_unmatched = np.zeros(n, dtype=np.int64)  # 1 when the top-1 detection is unmatched
    s.gt_size = np.full((n, 2), np.nan)  # (height, width) of the image's first ground truth
    s.top1_size_ratio = np.full((n, 2), np.nan)  # top-1 (height, width) over the ground truth it overlaps most
    pos_scores, neg_scores, froc_scores, froc_tp = [], [], [], []
    for i, r in enumerate(records):
        gt = np.asarray(r.get("gt", []), dtype=np.float64).reshape(-1, 4)
        boxes, scores = _sorted_detections(r)
        s.n_gt[i] = len(gt)
        if len(gt):
            s.gt_size[i] = gt[0, 3] - gt[0, 1], gt[0, 2] - gt[0, 0]
        # all detections (FROC); greedy matching in score order is prefix-consistent,
        # so the top-N slots (paper-style) are matched by the first N of it
        det_to_gt, _ = match_detections(gt, boxes, iou)
        froc_scores.append(scores)
        froc_tp.append(det_to_gt >= 0)
        k = min(top_n, len(boxes))
        d2g = det_to_gt[:k]
        g2d = np.full(len(gt), -1, dtype=np.int64)
        g2d[d2g[d2g >= 0]] = np.flatnonzero(d2g >= 0)
        pos_scores.append(np.where(g2d >= 0, scores[:k][np.clip(g2d, 0, None)] if k else -np.inf, -np.inf))
        neg_scores.append(np.concatenate([scores[:k][d2g < 0], np.full(top_n - k, -np.inf)]))
        if len(boxes):
            s.has_det[i] = True
            s.top1_score[i] = scores[0]
            s.top1_match[i] = det_to_gt[0] >= 0
            s.gt_is_top1[i] = int(d2g[0] >= 0)
            s.top1_unmatched[i] = int(d2g[0] < 0)
            if len(gt):
                ious = box_iou(boxes[:1], gt)[0]
                g = int(np.argmax(ious))
                s.top1_iou[i] = ious[g]
                s.top1_lenient[i] = ious[g] > lenient_iou
                cx, cy = (boxes[0, 0] + boxes[0, 2]) / 2, (boxes[0, 1] + boxes[0, 3]) / 2
                s.top1_inside[i] = bool(np.any((gt[:, 0] <= cx) & (cx <= gt[:, 2]) & (gt[:, 1] <= cy) & (cy <= gt[:, 3])))
                gx, gy = (gt[g, 0] + gt[g, 2]) / 2, (gt[g, 1] + gt[g, 3]) / 2
                s.top1_size_ratio[i] = ((boxes[0, 3] - boxes[0, 1]) / (gt[g, 3] - gt[g, 1]),
                                        (boxes[0, 2] - boxes[0, 0]) / (gt[g, 2] - gt[g, 0]))
                s.centre_error[i] = float(np.hypot(cx - gx, cy - gy))
                if r.get("pixel_spacing"):
                    s.centre_error_mm[i] = s.centre_error[i] * float(r["pixel_spacing"])
    _flat(s, "pos", pos_scores, np.float64)
    _flat(s, "neg", neg_scores, np.float64)
    _flat(s, "froc_score", froc_scores, np.float64)
    _flat(s, "froc_tp", froc_tp, bool)
    s.positive = s.n_gt > 0
    return s


def mann_whitney_auc(pos, neg) -> float:
    """P(pos > neg) + 0.5 P(pos = neg): the ROC AUC (sklearn's
    ``roc_auc_score`` on the same scores); -inf scores allowed."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    not_above = np.searchsorted(neg_sorted, pos, side="right")
    return float((below + 0.5 * (not_above - below)).sum() / (len(pos) * len(neg)))


def _percent(num, den) -> float:
    return float(100.0 * num / den) if den else float("nan")


def froc_curve(stats: ImageStats, idx: Optional[np.ndarray] = None):
    """FROC points over all detections: ``(fp_per_image, sensitivity%)`` at
    each distinct score, in decreasing score."""
    idx = np.arange(stats.n) if idx is None else idx
    scores = stats.take("froc_score", idx)
    tp = stats.take("froc_tp", idx)
    n_gt = stats.n_gt[idx].sum()
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    last = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, bool)  # cut between distinct scores
    fppi = np.r_[0.0, cfp[last] / max(len(idx), 1)]
    sens = np.r_[0.0, 100.0 * ctp[last] / n_gt] if n_gt else np.r_[0.0, np.full(last.sum(), np.nan)]
    return fppi, sens


def _froc_at(fppi, sens, rates=FROC_RATES):
    return [float(np.max(sens[fppi <= r])) for r in rates]


def lroc_curve(stats: ImageStats, idx: Optional[np.ndarray] = None):
    """LROC points ``(fp_fraction%, found_fraction%, threshold)`` for every
    distinct top-1 score, from the highest threshold to 0 (plus the origin)."""
    idx = np.arange(stats.n) if idx is None else idx
    pos, neg = idx[stats.positive[idx]], idx[~stats.positive[idx]]
    if len(neg) == 0:
        raise NoNegativesError(
            "LROC needs negative images (without the structure); this set has none, so LROC AUC, SEN "
            "and SPE are not defined: report top-1 accuracy, FROC and the paper-style numbers instead"
        )
    thresholds = np.unique(stats.top1_score[idx])[::-1]
    found_scores = np.sort(stats.top1_score[pos][stats.top1_match[pos]])
    neg_scores = np.sort(stats.top1_score[neg])
    found = len(found_scores) - np.searchsorted(found_scores, thresholds, side="left")
    fp = len(neg_scores) - np.searchsorted(neg_scores, thresholds, side="left")
    x = np.r_[0.0, 100.0 * fp / len(neg)]
    y = np.r_[0.0, 100.0 * found / max(len(pos), 1)]
    return x, y, np.r_[np.inf, thresholds]


def paper_roc_curve(stats: ImageStats, idx: Optional[np.ndarray] = None):
    """ROC points ``(fpr%, tpr%)`` of the paper-style pool."""
    idx = np.arange(stats.n) if idx is None else idx
    pos, neg = stats.take("pos", idx), stats.take("neg", idx)
    thresholds = np.unique(np.r_[pos, neg])[::-1]
    pos_s, neg_s = np.sort(pos), np.sort(neg)
    tpr = (len(pos_s) - np.searchsorted(pos_s, thresholds, side="left")) / max(len(pos_s), 1)
    fpr = (len(neg_s) - np.searchsorted(neg_s, thresholds, side="left")) / max(len(neg_s), 1)
    return np.r_[0.0, 100 * fpr], np.r_[0.0, 100 * tpr]


def choose_threshold(stats: ImageStats) -> float:
    """The top-1 score threshold maximising SEN + SPE (Youden's J) of the
    LROC reading; chosen on a validation split and then applied to the test
    split. Raises :class:`NoNegativesError` on a set without negatives."""
    x, y, t = lroc_curve(stats)
    j = y - x
    best = int(np.argmax(j[1:])) + 1  # skip the origin (threshold +inf)
    return float(t[best])


def summarise(stats: ImageStats, idx: Optional[np.ndarray] = None, threshold: Optional[float] = None) -> Dict[str, float]:
    """Every scalar metric over images ``idx`` (all by default, repeats allowed).
    ``threshold`` sets the LROC SEN / SPE operating point."""
    idx = np.arange(stats.n) if idx is None else np.asarray(idx)
    pos = idx[stats.positive[idx]]
    out: Dict[str, float] = {
        "num_images": float(len(idx)),
        "num_positive_images": float(len(pos)),
        "num_negative_images": float(len(idx) - len(pos)),
        "num_without_detection": float((~stats.has_det[idx]).sum()),
        "top1_acc": _percent(stats.top1_match[pos].sum(), len(pos)),
        "top1_acc_iou_lenient": _percent(stats.top1_lenient[pos].sum(), len(pos)),
        "top1_acc_centre_inside": _percent(stats.top1_inside[pos].sum(), len(pos)),
        "mean_iou": float(stats.top1_iou[pos].mean()) if len(pos) else float("nan"),
        "centre_error_px_mean": float(np.nanmean(stats.centre_error[pos])) if np.isfinite(stats.centre_error[pos]).any() else float("nan"),
        "centre_error_px_median": float(np.nanmedian(stats.centre_error[pos])) if np.isfinite(stats.centre_error[pos]).any() else float("nan"),
    }
    if np.isfinite(stats.centre_error_mm[pos]).any():
        out["centre_error_mm_mean"] = float(np.nanmean(stats.centre_error_mm[pos]))
    fppi, sens = froc_curve(stats, idx)
    at = _froc_at(fppi, sens)
    for rate, value in zip(FROC_RATES, at):
        out[f"froc_sen@{rate:g}fp"] = value
    out["froc_mean"] = float(np.mean(at))
    pool_pos, pool_neg = stats.take("pos", idx), stats.take("neg", idx)
    out["paper_auc"] = 100.0 * mann_whitney_auc(pool_pos, pool_neg)
    out["paper_sen"] = _percent(stats.gt_is_top1[idx].sum(), stats.n_gt[idx].sum())
    out["paper_spe"] = 100.0 - _percent(stats.top1_unmatched[idx].sum(), len(pool_neg))
    if len(idx) - len(pos) > 0:
        neg = idx[~stats.positive[idx]]
        found = np.where(stats.top1_match[pos], stats.top1_score[pos], -np.inf)
        out["lroc_auc"] = 100.0 * mann_whitney_auc(found, stats.top1_score[neg])
        if threshold is not None:
            out["lroc_threshold"] = float(threshold)
            out["lroc_sen"] = _percent((found >= threshold).sum(), len(pos))
            out["lroc_spe"] = _percent((stats.top1_score[neg] < threshold).sum(), len(neg))
    return out


def bootstrap(stats: ImageStats, num: int = 1000, seed: int = 0, threshold: Optional[float] = None, level: float = 0.95):
    """Percentile intervals over images: ``{metric: (low, high)}``."""
    rng = np.random.default_rng(seed)
    samples: Dict[str, List[float]] = {}
    for _ in range(num):
        idx = rng.integers(0, stats.n, stats.n)
        for key, value in summarise(stats, idx, threshold).items():
            samples.setdefault(key, []).append(value)
    tail = 100 * (1 - level) / 2
    return {
        key: (float(np.nanpercentile(v, tail)), float(np.nanpercentile(v, 100 - tail)))
        for key, v in samples.items()
        if not key.startswith("num_") and np.isfinite(v).any()
    }


def align_records(reference: Sequence[dict], records: Sequence[dict]) -> List[dict]:
    """``records`` reordered to the image order of ``reference``, so that two
    evaluations of the same images can be compared pairwise (``paired_bootstrap``).
    Raises ValueError naming a few images that only one of them has."""
    by_id = {str(r["image_id"]): r for r in records}
    ref_ids = [str(r["image_id"]) for r in reference]
    only_ref, only_other = sorted(set(ref_ids) - set(by_id)), sorted(set(by_id) - set(ref_ids))
    if only_ref or only_other or len(by_id) != len(records) or len(set(ref_ids)) != len(ref_ids):
        raise ValueError(
            f"not the same images: {len(only_ref)} only in the first (e.g. {only_ref[:3]}), "
            f"{len(only_other)} only in the second (e.g. {only_other[:3]}), or an image listed twice")
    return [by_id[i] for i in ref_ids]


def paired_bootstrap(a: ImageStats, b: ImageStats, num: int = 1000, seed: int = 0, level: float = 0.95,
                     threshold_a: Optional[float] = None, threshold_b: Optional[float] = None):
    """Difference ``a - b`` of every metric on the same resampled images (the
    two stats must be of the same images in the same order): ``{metric:
    {"diff", "low", "high", "p_le_0"}}``, ``p_le_0`` the share of resamples in
    which a is not better than b."""
    if a.n != b.n:
        raise ValueError(f"paired bootstrap needs the same images: {a.n} vs {b.n}")
    base_a, base_b = summarise(a, threshold=threshold_a), summarise(b, threshold=threshold_b)
    rng = np.random.default_rng(seed)
    diffs: Dict[str, List[float]] = {}
    for _ in range(num):
        idx = rng.integers(0, a.n, a.n)
        sa, sb = summarise(a, idx, threshold_a), summarise(b, idx, threshold_b)
        for key in sa:
            if key in sb and not key.startswith("num_"):
                diffs.setdefault(key, []).append(sa[key] - sb[key])
    tail = 100 * (1 - level) / 2
    out = {}
    for key, v in diffs.items():
        v = np.asarray(v)
        if not np.isfinite(v).any():
            continue
        out[key] = {
            "diff": base_a[key] - base_b[key],
            "low": float(np.nanpercentile(v, tail)),
            "high": float(np.nanpercentile(v, 100 - tail)),
            "p_le_0": float(np.mean(v[np.isfinite(v)] <= 0)),
        }
    return out
