"""Are the explanations about *this* image? (docs/interpretation.md,
"Explanations that are about this image"; ``tools/explanation_specificity.py``).

An explanation that names the same primitives for every image explains the
model, not the image. For the top detection of each image and each ranking
(c_k, alpha_k, the response mass and, with a reference, the contrastive score
of :mod:`voting_det.interpretation.reference`) we measure, per level:

- **between-image overlap**: the top-S primitives (S = 5) of two different
  images, |A and B| / S (and the Jaccard index |A and B| / |A or B|), averaged
  over all pairs of images;
- **within-image stability**: the same overlap between an image and itself
  shifted by a few pixels (and, on the synthetic set, re-rendered with new
  speckle) (:mod:`voting_det.interpretation.stability`);
- **chance**: the expected overlap of two random S-subsets of the K
  primitives, S / K for |A and B| / S (the expected |A and B| is S^2 / K);
- **tie rate**: the fraction of the K primitives tied at the top value of
  the ranking's score (the tie is broken by a second key, ``RANKING_KEYS``);
- **correlation**: the mean Pearson correlation of the score vectors of two
  images.

An explanation is image-specific when its between-image overlap is well below
its within-image stability and near chance. The **specificity index**
``(within - between) / (within - chance)`` says where it is: 1 = two images
share no more top primitives than chance allows, 0 = two different images
agree as much as an image agrees with itself shifted.
"""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from .deletion import available_rankings, deletion_test, ranking_order, summarise
from .stability import STABILITY_TOP, stability_test, summarise_stability, synthetic_with_new_speckle
from .trace import Explainer, explain_records, shift_offsets
from ..modeling import TRACE_PREFIX
from ..modeling.voting_level import RANKING_KEYS

__all__ = [
    "SPECIFIC_INDEX",
    "between_image_summary",
    "chance_jaccard",
    "chance_overlap",
    "compact_result",
    "format_specificity",
    "mean_pairwise_correlation",
    "pairwise_overlaps",
    "run_specificity",
    "specificity_index",
    "tie_rate",
    "top_sets",
]

# Specificity index from which a ranking's explanations are called image-specific.
SPECIFIC_INDEX = 0.5
# Order of the rankings in the tables.
TABLE_ORDER = ("contribution", "alpha", "contrastive", "response_mass")


def chance_overlap(top: int, num_primitives: int) -> float:
    """Expected |A and B| / S of two independent uniformly random S-subsets of
    K primitives, S = min(top, K): S / K (the expected |A and B| is S^2 / K)."""
    s = min(top, num_primitives)
    return s / num_primitives


def chance_jaccard(top: int, num_primitives: int) -> float:
    """Expected Jaccard index |A and B| / |A or B| of two random S-subsets of K
    (the intersection is hypergeometric)."""
    s, k = min(top, num_primitives), num_primitives
    total = math.comb(k, s)
    return sum(math.comb(s, i) * math.comb(k - s, s - i) / total * i / (2 * s - i) for i in range(0, s + 1))


def top_sets(orders: np.ndarray, top: int) -> np.ndarray:
    """Indicator matrix ``(N, K)`` of the top ``top`` of each row of ``orders``
    (``(N, K)`` primitive indices, best first)."""
    n, k = orders.shape
    chosen = np.zeros((n, k), dtype=np.float64)
    np.put_along_axis(chosen, orders[:, :min(top, k)], 1.0, axis=1)
    return chosen


def pairwise_overlaps(indicators: np.ndarray) -> Dict[str, float]:
    """Mean over all pairs of different rows of the indicator matrix ``(N, K)``
    of |A and B| / S (S = the set size, equal for all rows) and of the Jaccard
    index; None for fewer than 2 rows."""
    n = len(indicators)
    if n < 2:
        return {"overlap": None, "jaccard": None, "pairs": 0}
    size = indicators.sum(axis=1)
    inter = indicators @ indicators.T
    union = size[:, None] + size[None, :] - inter
    upper = np.triu_indices(n, k=1)
    return {"overlap": float((inter[upper] / size[upper[0]]).mean()),
            "jaccard": float((inter[upper] / union[upper]).mean()),
            "pairs": int(len(upper[0]))}


def tie_rate(scores: np.ndarray) -> float:
    """Fraction of the primitives (last axis) that share the top value, mean
    over the rows of ``scores`` ``(N, K)`` (or one row ``(K,)``)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    return float(np.mean((scores == scores.max(axis=1, keepdims=True)).mean(axis=1)))


def mean_pairwise_correlation(scores: np.ndarray) -> Optional[float]:
    """Mean Pearson correlation of the score vectors (rows of ``(N, K)``) of
    all pairs of different rows; constant rows (no correlation defined) are
    left out; None with fewer than 2 usable rows."""
    scores = np.asarray(scores, dtype=np.float64)
    centred = scores - scores.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1)
    usable = norm > 0
    if usable.sum() < 2:
        return None
    unit = centred[usable] / norm[usable, None]
    corr = unit @ unit.T
    upper = np.triu_indices(len(unit), k=1)
    return float(corr[upper].mean())


def specificity_index(between: Optional[float], within: Optional[float], chance: float) -> Optional[float]:
    """``(within - between) / (within - chance)``: 1 = the top primitives of two
    images overlap at chance, 0 = as much as an image's with its own shifted
    copy; None when undefined (within at or below chance, or missing)."""
    if between is None or within is None or within - chance <= 1e-9:
        return None
    return float((within - between) / (within - chance))


def _primary(ranking: str) -> str:
    return RANKING_KEYS[ranking][0]


def between_image_summary(per_image: List[Dict], num_primitives: Dict[str, int], top: int) -> Dict:
    """From each image's score vectors (``per_image[i][level][key]``, the trace
    fields of its top detection), per level and ranking: the between-image
    overlap and Jaccard of the top ``top``, the chance levels, the tie rate of
    the ranking's score and the mean between-image correlation of it."""
    out = {}
    for lvl, k in num_primitives.items():
        out[lvl] = {}
        names = [n for n in TABLE_ORDER if all(_primary(n) in img[lvl] for img in per_image)]
        for name in names:
            orders = np.stack([img[lvl]["orders"][name] for img in per_image])
            primary = np.stack([img[lvl][_primary(name)] for img in per_image])
            pairs = pairwise_overlaps(top_sets(orders, top))
            out[lvl][name] = {
                "between_overlap": pairs["overlap"],
                "between_jaccard": pairs["jaccard"],
                "pairs": pairs["pairs"],
                "chance_overlap": chance_overlap(top, k),
                "chance_jaccard": chance_jaccard(top, k),
                "tie_rate": tie_rate(primary),
                "tied_at_top_mean": tie_rate(primary) * k,
                "correlation": mean_pairwise_correlation(primary),
                "most_frequent_top": _most_frequent(orders, top),
            }
    return out


def _most_frequent(orders: np.ndarray, top: int, show: int = 5) -> List[List[float]]:
    """The primitives most often in the top ``top``: [k, fraction of images]."""
    counts = top_sets(orders, top).mean(axis=0)
    best = np.argsort(-counts, kind="stable")[:show]
    return [[int(k), float(counts[k])] for k in best]


def _scores_of(instances, levels: Sequence[str], detection: int = 0) -> Dict:
    """The score vectors of one detection and its order under each ranking."""
    result = {}
    for lvl in levels:
        fields = {}
        for key in ("alpha", "contributions", "response_mass", "peak_response", "contrastive"):
            name = f"{TRACE_PREFIX}{lvl}_{key}"
            if instances.has(name):
                fields[key] = instances.get(name)[detection].double().numpy()
        fields["orders"] = {name: ranking_order(instances, lvl, name, detection)
                            for name in available_rankings(instances, lvl)}
        result[lvl] = fields
    return result


def run_specificity(
    explainer: Explainer,
    records: Sequence[Dict],
    top: int = STABILITY_TOP,
    stability_images: int = 40,
    shift_px: int = 8,
    synthetic_seed: Optional[int] = None,
    speckle_draws: int = 0,
    deletion_images: int = 0,
    num_random: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> Dict:
    """The specificity measurement over ``records`` (top detection of each image).

    Between-image statistics use every image with a detection; the
    within-image stability uses the first ``stability_images`` of them (shifts
    of ``shift_px`` left, right, up, down; with ``synthetic_seed`` also
    ``speckle_draws`` new-speckle renderings); with ``deletion_images`` > 0
    the deletion test of the first that many measures each ranking's
    faithfulness (:func:`~voting_det.interpretation.deletion.deletion_test`).

    Returns a JSON-serialisable dict: ``settings``, ``model``, ``ranking``
    (the explainer's), ``images``, ``skipped``, ``between`` (per level and
    ranking), ``stability`` (summary and records), ``deletion`` (summary, or
    None), and ``table`` (per level and ranking: between, within per kind,
    chance, specificity index, tie rate, correlation, deletion area).
    """
    levels = explainer.levels
    ks = explainer.num_primitives
    shifts = shift_offsets(shift_px)
    per_image, stability, deletion, used, skipped = [], [], [], [], []
    for i, path, image, explanation in explain_records(explainer, records, "specificity", progress):
        if explanation is None:
            skipped.append(path)
            continue
        per_image.append(_scores_of(explanation.instances, levels))
        used.append(path)
        if len(used) <= stability_images:
            variants = []
            if synthetic_seed is not None and speckle_draws:
                variants = synthetic_with_new_speckle(path, synthetic_seed, range(1, speckle_draws + 1))
            for rec in stability_test(explainer, image, explanation, shifts, variants, top=top):
                rec["file"] = path
                stability.append(rec)
        if len(used) <= deletion_images:
            result = deletion_test(explainer, explanation, num_random, np.random.default_rng([seed, i]))
            result["file"] = path
            deletion.append(result)
    if len(per_image) < 2:
        raise ValueError(f"{len(per_image)} image(s) had a detection: the between-image overlap needs at least 2")
    between = between_image_summary(per_image, ks, top)
    stab = summarise_stability(stability, ks, top) if stability else {}
    deletion_summary = summarise(deletion, seed) if deletion else None
    table = _table(between, stab, deletion_summary)
    return {
        "settings": {"top": top, "num_images": len(records), "stability_images": stability_images,
                     "shift_px": shift_px, "synthetic_seed": synthetic_seed,
                     "speckle_draws": speckle_draws if synthetic_seed is not None else 0,
                     "deletion_images": deletion_images, "random_draws": num_random, "seed": seed,
                     "specific_index": SPECIFIC_INDEX},
        "model": {"levels": levels, "num_primitives": ks},
        "ranking": explainer.ranking,
        "images": used,
        "skipped": skipped,
        "between": between,
        "stability": {"summary": stab, "records": stability},
        "deletion": deletion_summary,
        "deletion_per_image": deletion,
        "table": table,
    }


def _table(between: Dict, stability: Dict, deletion: Optional[Dict]) -> Dict:
    """Per level and ranking, the figures of the summary table."""
    table = {}
    for lvl, rankings in between.items():
        table[lvl] = {}
        for name, b in rankings.items():
            row = {"between": b["between_overlap"], "chance": b["chance_overlap"], "tie_rate": b["tie_rate"],
                   "correlation": b["correlation"], "between_jaccard": b["between_jaccard"],
                   "chance_jaccard": b["chance_jaccard"]}
            for kind, s in stability.items():
                row[f"within_{kind}"] = s["mean_overlap"].get(lvl, {}).get(name)
            within = row.get("within_shift", row.get("within_speckle"))
            row["specificity_index"] = specificity_index(row["between"], within, row["chance"])
            if deletion is not None and name in deletion["area_vs_random"]:
                area = deletion["area_vs_random"][name]["local_box_shift"]
                row["deletion_area"], row["deletion_ci95"] = area["mean"], area["ci95"]
            table[lvl][name] = row
    return table


def compact_result(result: Dict) -> Dict:
    """The figures of :func:`run_specificity`'s result without the per-image
    records (a few kB, for a results folder): settings, model, ranking,
    command, the table, the between-image statistics, the stability summary
    and the deletion areas and mean curves."""
    deletion = result["deletion"]
    return {
        "settings": result["settings"], "model": result["model"], "ranking": result["ranking"],
        "command": result.get("command"), "num_images": len(result["images"]), "skipped": len(result["skipped"]),
        "table": result["table"], "between": result["between"], "stability": result["stability"]["summary"],
        "deletion": None if deletion is None else {k: deletion[k] for k in
                                                   ("sizes", "num_images", "area_vs_random", "most_faithful", "mu",
                                                    "curves")},
    }


def format_specificity(result: Dict) -> str:
    """The summary table as Markdown (one row per level and ranking)."""
    s = result["settings"]
    kinds = list(result["stability"]["summary"])
    deletion = result["deletion"]
    kept = ", ".join(f"{k}: {v['matched']} of {v['comparisons']} comparisons kept the top detection"
                     for k, v in result["stability"]["summary"].items()) or "not measured"
    lines = [f"Top-{s['top']} primitives of the top detection, {len(result['images'])} images "
             f"({len(result['skipped'])} without detection skipped); within-image stability on the first "
             f"{s['stability_images']} ({kept})"
             + (f"; deletion test on the first {deletion['num_images']}" if deletion else "") + ".", "",
             "Overlap = mean |A and B| / S over pairs; specificity index = (within - between) / (within - chance): "
             "1 = image-specific (two images share no more than chance), 0 = the same explanation for every "
             "image. Tie rate: fraction of the K primitives at the top score (1/K = no tie). Correlation: of the "
             "score vectors of two images. Deletion area: the local box's move (1 - IoU) when a ranking's top m "
             "primitives are deleted at every level at once, area vs random deletions (> 0: faithful; one "
             "figure per ranking, repeated on each level's row).", ""]
    header = (["level", "ranking", "between-image overlap"] + [f"within ({k})" for k in kinds]
              + ["chance", "specificity index", "tie rate", "correlation"]
              + (["deletion area, all levels at once [95% CI]"] if deletion else []))
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = lambda v, f="{:.2f}": "n/a" if v is None else f.format(v)  # noqa: E731
    for lvl, rankings in result["table"].items():
        for name, row in rankings.items():
            cells = [lvl, name, fmt(row["between"])] + [fmt(row.get(f"within_{k}")) for k in kinds]
            cells += [fmt(row["chance"]), fmt(row["specificity_index"]), fmt(row["tie_rate"]),
                      fmt(row["correlation"], "{:.3f}")]
            if deletion:
                ci = row.get("deletion_ci95") or [None, None]
                cells.append(f"{fmt(row.get('deletion_area'), '{:+.3f}')} [{fmt(ci[0], '{:+.3f}')}, "
                             f"{fmt(ci[1], '{:+.3f}')}]" if "deletion_area" in row else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
    ref = result["ranking"].get("reference")
    lines += ["", f"Ranking of the traces: {result['ranking']['rank_by']} (keys {result['ranking']['keys']}); "
              + (f"contrastive reference: {ref['file']} ({ref['num_images']} images of {ref['dataset']})"
                 if ref else "no contrastive reference")]
    for lvl, rankings in result["between"].items():
        lines.append(f"- {lvl}: most frequent top primitives: " + "; ".join(
            f"{name} " + ", ".join(f"{k} ({f:.0%})" for k, f in b["most_frequent_top"][:3])
            for name, b in rankings.items()))
    return "\n".join(lines)
