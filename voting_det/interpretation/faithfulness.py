"""Are the explanations faithful? A deletion test and a stability check.

**Deletion test.** For the top detection of each image, the primitives are
ranked (per level) by the trace-back score alpha_k (Eq. 3, the paper's), by
their exact contribution c_k to the vote at the predicted centre, and by their
response mass sum Rs_k; the top m of a ranking (m = 1, 2, 4, ..., K, at every
level at once) are deleted *in the forward pass* (their response maps are
zeroed before they vote, :func:`voting_det.modeling.voting.mask_primitives`),
the local branch is run again on the same proposal, and we measure how far the
local box x_L and the fused box move (1 - IoU with the undeleted box, and the
centre shift in pixels) and how much the score of the detected class drops.
The same is done for m random primitives (several draws) and for the m
lowest-ranked by alpha (a control that should do nothing). A faithful ranking
moves the prediction more than random deletions do: its summary number is the
area between its curve and the random curve over log2 m, normalised to the
axis length (the mean vertical gap; > 0 = more than random).

The backbone, the RPN and the context branch do not read the primitives, so
they are computed once (:class:`~voting_det.interpretation.trace.Explainer`
keeps them) and only the local branch is re-run, all deletions of an image in
one batch; :class:`LocalIntervention` checks that its undeleted run reproduces
the model's own detection. The context box x_G is unaffected, so the fused box
moves by exactly mu times the local box's move: with mu near 0 it cannot move,
and the report says so.

**Stability.** The top primitives (by each ranking) of the top detection should
survive small shifts of the image and, on the synthetic set, a new speckle
draw of the same anatomy (:func:`synthetic_with_new_speckle`); we report the
overlap of the top-S sets (|A and B| / S, chance S / K) over the pairs whose
top detections match (IoU > 0.5 after undoing the shift).
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple
from unittest import mock

import cv2
import numpy as np
import torch
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from ..data import synthetic
from ..modeling.meta_arch import TRACE_PREFIX, fuse_predictions
from ..modeling.voting import trace_back
from .trace import Explainer, Explanation, load_image

__all__ = [
    "CONTROL",
    "METRICS",
    "RANDOM",
    "RANKINGS",
    "LocalIntervention",
    "deletion_sizes",
    "deletion_test",
    "format_summary",
    "plot_faithfulness",
    "run_faithfulness",
    "shift_image",
    "stability_test",
    "summarise",
    "synthetic_with_new_speckle",
]

# Rankings compared with random deletions, and the control (the m lowest by alpha).
RANKINGS = ("alpha", "contribution", "response_mass")
CONTROL = "lowest_alpha"
RANDOM = "random"
# What is measured after a deletion, relative to the undeleted run of the same proposal.
METRICS = {
    "local_box_shift": "local box x_L: 1 - IoU with the undeleted one",
    "local_centre_shift_px": "local box x_L: centre shift (image px)",
    "fused_box_shift": "fused box x: 1 - IoU with the undeleted one",
    "score_drop": "fused score of the detected class: before - after",
    "local_score_drop": "local score s_L of the detected class: before - after",
}
# The metric that decides "most faithful" (the primitives act on the local branch).
HEADLINE_METRIC = "local_box_shift"
DEFAULT_NUM_IMAGES = 40
DEFAULT_RANDOM_DRAWS = 5
DEFAULT_SHIFT_PX = 8
DEFAULT_SPECKLE_DRAWS = 2
# Size S of the top sets compared by the stability check.
STABILITY_TOP = 5
# Two top detections are the same object when their IoU exceeds this (METHOD.md 5).
MATCH_IOU = 0.5
# Below this mu the fused box moves by less than 5% of the local box's move.
MU_CANNOT_MOVE = 0.05
# Bootstrap resamples over images for the 95% interval of each area.
NUM_BOOTSTRAP = 1000
# Floor of the context branch's probabilities before their log (a probability of 0 stays ~0).
PROB_FLOOR = 1e-12
# Tolerance (image px) of the check that the intervention path reproduces the model's box.
REPRODUCTION_TOLERANCE_PX = 0.05


def deletion_sizes(num_primitives: int) -> List[int]:
    """m = 1, 2, 4, ... up to K, K included."""
    sizes, m = [], 1
    while m < num_primitives:
        sizes.append(m)
        m *= 2
    return sizes + [num_primitives]


def _trace(instances: Instances, level: str, name: str, detection: int = 0) -> torch.Tensor:
    return instances.get(f"{TRACE_PREFIX}{level}_{name}")[detection]


def _order(values: torch.Tensor, descending: bool = True) -> np.ndarray:
    """Indices sorted by value, ties in index order (a stable sort)."""
    return torch.sort(values, descending=descending, stable=True).indices.numpy()


class LocalIntervention:
    """Re-run the local branch on the proposal of one detection with primitives deleted.

    Args:
        explainer: the model.
        explanation: an image through it (keeps the backbone features and proposals).
        detection: which detection (0 = top-scoring).

    Raises:
        RuntimeError: the undeleted run does not reproduce the model's local box.
    """

    def __init__(self, explainer: Explainer, explanation: Explanation, detection: int = 0):
        self.model = explainer.model
        self.levels = explainer.levels
        self.features = explanation.features
        inst = explanation.instances
        self.instances = inst
        self.detection = detection
        self.proposal_index = int(inst.proposal_index[detection])
        self.proposal = explanation.proposals.proposal_boxes.tensor[self.proposal_index]
        self.input_size = explanation.input_size
        sx, sy = explanation.scale
        self.scale = torch.tensor([sx, sy, sx, sy])
        self.cls = int(inst.pred_classes[detection])
        self.mu = float(inst.mu[detection]) if inst.has("mu") else None
        if self.mu is not None:
            self.global_box = inst.global_boxes[detection]
            self.global_probs = inst.global_probs[detection]
        base = self.run({})
        expected = inst.local_boxes[detection]
        error = float((base["local_boxes"][0] - expected).abs().max())
        if error > REPRODUCTION_TOLERANCE_PX * max(1.0, float(self.scale.max())):
            raise RuntimeError(
                f"re-running the local branch on proposal {self.proposal_index} gave a local box "
                f"{error:.3f} px from the model's; the intervention would not measure this model"
            )
        self.baseline = {k: v[0] for k, v in base.items() if k != "stages"}
        self.baseline_stages = [{k: v[:1] for k, v in out.items()} for out in base["stages"]]

    @torch.no_grad()
    def run(self, masks: Dict[str, torch.Tensor]) -> Dict:
        """One row per mask row (``masks``: level -> ``(B, K)``, 1 kept, 0 deleted;
        an empty dict runs once with all primitives). Returns ``local_boxes``
        (B, 4) in image pixels, ``local_probs`` (B, C+1), the fused ``boxes`` and
        ``probs`` (= local without a context branch) and each level's ``stages``
        output."""
        rows = max([len(m) for m in masks.values()] + [1])
        device = self.proposal.device
        proposals = Instances(self.input_size, proposal_boxes=Boxes(self.proposal.expand(rows, 4).clone()))
        masks = {lvl: m.to(device) for lvl, m in masks.items()}
        stages = self.model.roi_heads.run_stages(self.features, [proposals], primitive_masks=masks)
        last = stages[-1]
        local_boxes = last["pred_boxes"].cpu() * self.scale
        local_logits = last["logits"].cpu()
        result = {"local_boxes": local_boxes, "local_probs": torch.softmax(local_logits, dim=1), "stages": stages}
        if self.mu is None:
            result.update(boxes=local_boxes, probs=result["local_probs"])
        else:
            # log-probabilities as logits: fuse_predictions' softmax gives the probabilities back
            global_logits = torch.log(self.global_probs.clamp_min(PROB_FLOOR)).expand(rows, -1)
            boxes, probs = fuse_predictions(
                torch.tensor(self.mu), local_boxes, local_logits, self.global_box.expand(rows, 4), global_logits
            )
            result.update(boxes=boxes, probs=probs)
        return result


def _measure(result: Dict, baseline: Dict, cls: int) -> Dict[str, np.ndarray]:
    """The metrics of every row of ``result`` relative to ``baseline``."""
    rows = len(result["local_boxes"])
    base_local = baseline["local_boxes"].expand(rows, 4)
    base_fused = baseline["boxes"].expand(rows, 4)
    centre = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
    return {
        "local_box_shift": (1 - matched_pairwise_iou(Boxes(result["local_boxes"]), Boxes(base_local))).numpy(),
        "local_centre_shift_px": (centre(result["local_boxes"]) - centre(base_local)).norm(dim=1).numpy(),
        "fused_box_shift": (1 - matched_pairwise_iou(Boxes(result["boxes"]), Boxes(base_fused))).numpy(),
        "score_drop": (baseline["probs"][cls] - result["probs"][:, cls]).numpy(),
        "local_score_drop": (baseline["local_probs"][cls] - result["local_probs"][:, cls]).numpy(),
    }


def _rankings(
    intervention: LocalIntervention, extra_taus: Sequence[float], normalize: bool
) -> Dict[str, Dict[str, np.ndarray]]:
    """Per ranking, per level, the primitives best first."""
    inst, det = intervention.instances, intervention.detection
    rankings: Dict[str, Dict[str, np.ndarray]] = {name: {} for name in RANKINGS}
    rankings[CONTROL] = {}
    for tau in extra_taus:
        rankings[f"alpha_tau{tau:g}"] = {}
    stages = intervention.model.roi_heads.stages
    for level, stage, out in zip(intervention.levels, stages, intervention.baseline_stages):
        alpha = _trace(inst, level, "alpha", det)
        rankings["alpha"][level] = _order(alpha)
        rankings["contribution"][level] = _order(_trace(inst, level, "contributions", det))
        rankings["response_mass"][level] = _order(_trace(inst, level, "response_mass", det))
        rankings[CONTROL][level] = _order(alpha, descending=False)
        for tau in extra_taus:
            with torch.no_grad():
                alpha_tau = trace_back(out["response_maps"], stage.primitives.spatial_templates(), out["vote_heatmap"],
                                       tau=tau, normalize=normalize)[0].cpu()
            rankings[f"alpha_tau{tau:g}"][level] = _order(alpha_tau)
    return rankings


def deletion_test(
    explainer: Explainer,
    explanation: Explanation,
    num_random: int = DEFAULT_RANDOM_DRAWS,
    rng: Optional[np.random.Generator] = None,
    extra_taus: Sequence[float] = (),
    detection: int = 0,
) -> Dict:
    """The deletion test on one detection.

    Returns:
        ``{"sizes": [m...], "curves": {ranking: {metric: [value per m]}},
        "random_draws": {metric: [[value per m] per draw]}, "mu", "alpha_ties"}``
        where ``curves[RANDOM]`` is the mean over the draws and
        ``alpha_ties[level]`` counts the primitives tied with the last one kept
        by the alpha ranking at m = 1 (alpha saturates at 1 for every primitive
        responding in every cell when tau = 0).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    intervention = LocalIntervention(explainer, explanation, detection)
    ks = explainer.num_primitives
    sizes = deletion_sizes(max(ks.values()))
    rankings = _rankings(intervention, extra_taus, bool(explainer.model.explain_options["normalize"]))
    for draw in range(num_random):
        rankings[f"{RANDOM}{draw}"] = {lvl: rng.permutation(k) for lvl, k in ks.items()}
    names = list(rankings)
    masks = {lvl: torch.ones(len(names) * len(sizes), k) for lvl, k in ks.items()}
    for i, name in enumerate(names):
        for j, m in enumerate(sizes):
            for lvl in ks:
                masks[lvl][i * len(sizes) + j, rankings[name][lvl][:m]] = 0
    measured = _measure(intervention.run(masks), intervention.baseline, intervention.cls)
    per_ranking = {
        name: {metric: values[i * len(sizes):(i + 1) * len(sizes)].tolist() for metric, values in measured.items()}
        for i, name in enumerate(names)
    }
    draws = {metric: [per_ranking[f"{RANDOM}{d}"][metric] for d in range(num_random)] for metric in METRICS}
    curves = {name: per_ranking[name] for name in names if not name.startswith(RANDOM)}
    if num_random:
        curves[RANDOM] = {metric: np.mean(draws[metric], axis=0).tolist() for metric in METRICS}
    ties = {}
    for lvl in ks:
        alpha = _trace(explanation.instances, lvl, "alpha", detection)
        ties[lvl] = int((alpha == alpha.max()).sum())
    return {"sizes": sizes, "curves": curves, "random_draws": draws, "mu": intervention.mu, "alpha_ties": ties}


def _area(curve: Sequence[float], reference: Sequence[float], sizes: Sequence[int]) -> float:
    """Mean gap between two curves over x = log2 m (trapezoid, normalised to the axis length)."""
    gap = np.asarray(curve, dtype=float) - np.asarray(reference, dtype=float)
    if len(gap) == 1:
        return float(gap[0])
    x = np.log2(np.asarray(sizes, dtype=float))
    return float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def _bootstrap_interval(values: np.ndarray, seed: int) -> Tuple[Optional[float], Optional[float]]:
    """95% percentile bootstrap interval of the mean; (None, None) for fewer than 2 values."""
    if len(values) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (NUM_BOOTSTRAP, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(per_image: List[Dict], seed: int = 0) -> Dict:
    """Mean curves over images and, per ranking and metric, the area between its
    curve and the random curve (mean over images with a 95% bootstrap interval).
    ``most_faithful[metric]`` is the ranking of :data:`RANKINGS` (or an extra
    alpha_tau ranking) with the largest mean area."""
    sizes = per_image[0]["sizes"]
    names = list(per_image[0]["curves"])
    curves = {
        name: {metric: np.mean([img["curves"][name][metric] for img in per_image], axis=0).tolist()
               for metric in METRICS}
        for name in names
    }
    areas = {}
    for name in names:
        if name == RANDOM:
            continue
        areas[name] = {}
        for metric in METRICS:
            values = np.array([_area(img["curves"][name][metric], img["curves"][RANDOM][metric], sizes)
                               for img in per_image])
            low, high = _bootstrap_interval(values, seed)
            areas[name][metric] = {"mean": float(values.mean()), "ci95": [low, high]}
    candidates = [n for n in names if n not in (RANDOM, CONTROL)]
    most = {metric: max(candidates, key=lambda n: areas[n][metric]["mean"]) for metric in METRICS}
    mus = [img["mu"] for img in per_image if img["mu"] is not None]
    return {"sizes": sizes, "num_images": len(per_image), "curves": curves, "area_vs_random": areas,
            "most_faithful": most, "mu": float(np.mean(mus)) if mus else None}


def shift_image(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The image moved by (dx, dy) whole pixels, black where nothing moved in."""
    h, w = image.shape[:2]
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def synthetic_with_new_speckle(path: str, seed: int, speckle_seeds: Sequence[int],
                               negative_fraction: float = 0.2) -> List[np.ndarray]:
    """The same synthetic image with new speckle (and tissue texture and noise):
    image ``<index>.png`` of a set made by ``generate_synthetic_nt(seed=seed)``
    is re-rendered with the image-formation step drawing its random fields from
    ``numpy.random.default_rng([seed, index, s])`` for each ``s``, everything
    else (anatomy, pose, distractors, scanner parameters, text) unchanged.

    The generator has no switch for this, so its image-formation step is
    wrapped while rendering: the original step still runs on the original
    random stream (so the drawing that follows is unchanged) and its result is
    replaced. Refuses (ValueError, naming the option) when re-rendering with
    the original stream does not reproduce the file byte for byte, i.e. when
    ``path`` is not image ``index`` of the set of that ``seed``.

    Returns one BGR image per speckle seed.
    """
    stem = os.path.splitext(os.path.basename(path))[0]
    if not stem.isdigit():
        raise ValueError(f"{path}: not a synthetic image (its name is not <index>.png)")
    index = int(stem)
    original = load_image(path)
    size = original.shape[:2]
    form_image = synthetic._form_image

    def render(speckle_seed: Optional[int]) -> np.ndarray:
        def replaced(canvas, rng, fan, params):
            image = form_image(canvas, rng, fan, params)
            if speckle_seed is None:
                return image
            return form_image(canvas, np.random.default_rng([seed, index, speckle_seed]), fan, params)

        with mock.patch.object(synthetic, "_form_image", replaced):
            grey, _ = synthetic.render_synthetic_nt(seed, index, size, negative_fraction)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)

    if not np.array_equal(render(None), original):
        raise ValueError(
            f"{path} is not image {index} of a synthetic set generated with seed {seed} at {size[0]}x{size[1]}: "
            f"pass the generator's --seed as --synthetic-seed, or leave --synthetic-seed out on other data"
        )
    return [render(s) for s in speckle_seeds]


def _top_sets(explanation: Explanation, levels: Sequence[str], top: int, detection: int = 0) -> Dict:
    inst = explanation.instances
    sets = {}
    for lvl in levels:
        sets[lvl] = {
            "alpha": set(_order(_trace(inst, lvl, "alpha", detection))[:top].tolist()),
            "contribution": set(_order(_trace(inst, lvl, "contributions", detection))[:top].tolist()),
            "response_mass": set(_order(_trace(inst, lvl, "response_mass", detection))[:top].tolist()),
        }
    return sets


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


def _summarise_stability(records: List[Dict], num_primitives: Dict[str, int], top: int) -> Dict:
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


def run_faithfulness(
    explainer: Explainer,
    records: Sequence[Dict],
    num_images: int = DEFAULT_NUM_IMAGES,
    num_random: int = DEFAULT_RANDOM_DRAWS,
    seed: int = 0,
    shift_px: int = DEFAULT_SHIFT_PX,
    synthetic_seed: Optional[int] = None,
    speckle_draws: int = DEFAULT_SPECKLE_DRAWS,
    extra_taus: Sequence[float] = (),
    progress: bool = True,
) -> Dict:
    """The deletion test and the stability check over the first ``num_images``
    images of ``records`` (detectron2 dataset dicts; only ``file_name`` is read).

    Returns a JSON-serialisable dict: ``settings``, ``model`` (levels, K, mu),
    ``images`` (file names used; images without a detection are listed under
    ``skipped``), ``per_image`` (each image's deletion curves), ``deletion``
    (:func:`summarise`), ``stability`` and ``notes`` (what mu and the alpha
    ties mean for this run).
    """
    chosen = list(records)[:num_images]
    shifts = [(shift_px, 0), (-shift_px, 0), (0, shift_px), (0, -shift_px)] if shift_px else []
    per_image, stability, used, skipped = [], [], [], []
    for i, record in enumerate(tqdm(chosen, desc="faithfulness", unit="image", disable=not progress)):
        path = record["file_name"]
        image = load_image(path)
        explanation = explainer(image)
        if not len(explanation.instances):
            skipped.append(path)
            continue
        result = deletion_test(explainer, explanation, num_random, np.random.default_rng([seed, i]), extra_taus)
        result["file"] = path
        per_image.append(result)
        used.append(path)
        variants = []
        if synthetic_seed is not None and speckle_draws:
            variants = synthetic_with_new_speckle(path, synthetic_seed, range(1, speckle_draws + 1))
        for rec in stability_test(explainer, image, explanation, shifts, variants):
            rec["file"] = path
            stability.append(rec)
    if not per_image:
        raise ValueError("no image had a detection: nothing to test")
    deletion = summarise(per_image, seed)
    ks = explainer.num_primitives
    notes = []
    mu = deletion["mu"]
    if mu is None:
        notes.append("no context branch: the fused box is the local box")
    elif mu < MU_CANNOT_MOVE:
        notes.append(f"mu = {mu:.3f} is near 0: the fused box cannot move (it moves by mu times the local box's "
                     f"move); only the local-box and local-score curves measure the explanation")
    else:
        notes.append(f"mu = {mu:.3f}: the context box x_G does not read the primitives, so the fused box moves "
                     f"by mu times the local box's move")
    ties = {lvl: float(np.mean([img["alpha_ties"][lvl] for img in per_image])) for lvl in ks}
    notes.append("alpha ties: on average " + ", ".join(f"{ties[lvl]:.1f} of {ks[lvl]} primitives at {lvl}"
                                                        for lvl in ks)
                 + " share the top alpha (ties are ranked in index order, i.e. arbitrarily)")
    return {
        "settings": {"num_images": num_images, "random_draws": num_random, "seed": seed, "shift_px": shift_px,
                     "synthetic_seed": synthetic_seed,
                     "speckle_draws": speckle_draws if synthetic_seed is not None else 0,
                     "extra_taus": list(extra_taus), "stability_top": STABILITY_TOP, "match_iou": MATCH_IOU,
                     "levels_deleted": "all levels at once, m per level"},
        "model": {"levels": explainer.levels, "num_primitives": ks, "mu": mu,
                  "trace_tau": explainer.model.explain_options["tau"],
                  "trace_normalize": explainer.model.explain_options["normalize"]},
        "metrics": METRICS,
        "images": used,
        "skipped": skipped,
        "per_image": per_image,
        "deletion": deletion,
        "alpha_ties_mean": ties,
        "stability": {"summary": _summarise_stability(stability, ks, STABILITY_TOP), "records": stability},
        "notes": notes,
    }


def format_summary(result: Dict) -> str:
    """The headline numbers as Markdown: one row per ranking, its area vs random
    (95% interval) for each metric; mu; the most faithful ranking; stability."""
    deletion = result["deletion"]
    lines = [f"Deletion test on {deletion['num_images']} images, m = {deletion['sizes']}, "
             f"{result['settings']['random_draws']} random draws; mu = "
             + ("none (no context branch)" if deletion["mu"] is None else f"{deletion['mu']:.3f}"),
             "",
             "Area between each ranking's curve and the random curve (mean over log2 m; > 0 = deleting its top "
             "primitives moves the prediction more than deleting random ones), mean over images [95% bootstrap "
             "interval]:", "",
             "| ranking | " + " | ".join(METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for name, areas in deletion["area_vs_random"].items():
        cells = [f"{a['mean']:+.3f} " + (f"[{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}]" if a["ci95"][0] is not None
                                        else "[no interval: 1 image]")
                 for a in (areas[m] for m in METRICS)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Most faithful ranking ({HEADLINE_METRIC}): **{deletion['most_faithful'][HEADLINE_METRIC]}**"
              + "; by metric: " + ", ".join(f"{m}: {r}" for m, r in deletion["most_faithful"].items())]
    lines += [""] + [f"- {note}" for note in result["notes"]]
    stab = result["stability"]["summary"]
    for kind, s in stab.items():
        lines.append(f"- stability, {kind}: {s['matched']} of {s['comparisons']} comparisons kept the same top "
                     f"detection; top-{result['settings']['stability_top']} overlap "
                     + "; ".join(f"{lvl}: " + ", ".join(f"{n} {v:.2f}" for n, v in ov.items())
                                 + f" (chance {s['chance'][lvl]:.2f})" for lvl, ov in s["mean_overlap"].items()))
    return "\n".join(lines)


def plot_faithfulness(result: Dict, path: str, title: Optional[str] = None) -> Figure:
    """Deletion curves (one panel per metric, x = m on a log2 axis; random with
    the spread of its draws) and the stability overlaps, as one PNG."""
    deletion = result["deletion"]
    sizes = deletion["sizes"]
    curves = deletion["curves"]
    fig = Figure(figsize=(15, 9.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3).ravel()
    styles = {"alpha": ("tab:blue", "-", "o"), "contribution": ("tab:red", "-", "s"),
              "response_mass": ("tab:green", "-", "^"), CONTROL: ("grey", "--", "v"), RANDOM: ("black", ":", None)}
    extra_colours = iter(["tab:purple", "tab:brown", "tab:olive", "tab:cyan"])
    for name in curves:
        if name not in styles:
            styles[name] = (next(extra_colours, "tab:pink"), "-", "d")
    labels = {RANDOM: "random primitives (mean of draws; band: 10-90% of the draws' means)",
              CONTROL: "lowest by alpha (control)"}
    per_image = result["per_image"]
    for ax, metric in zip(axes, METRICS):
        for name, values in curves.items():
            colour, ls, marker = styles[name]
            ax.plot(sizes, values[metric], color=colour, linestyle=ls, marker=marker, markersize=4,
                    label=labels.get(name, f"top by {name}"))
        draws = np.array([img["random_draws"][metric] for img in per_image])  # (images, draws, m)
        if draws.size:
            draw_means = draws.mean(axis=0)
            ax.fill_between(sizes, np.percentile(draw_means, 10, axis=0), np.percentile(draw_means, 90, axis=0),
                            color="black", alpha=0.12, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(m) for m in sizes], fontsize=8)
        ax.set_xlabel("m primitives deleted per level", fontsize=9)
        ax.set_title(METRICS[metric], fontsize=10)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    ax = axes[len(METRICS)]
    stab = result["stability"]["summary"]
    groups = [(kind, lvl) for kind, s in stab.items() for lvl in s["mean_overlap"]]
    rankings = list(RANKINGS)
    width = 0.8 / len(rankings)
    for j, name in enumerate(rankings):
        values = [stab[kind]["mean_overlap"][lvl][name] for kind, lvl in groups]
        ax.bar(np.arange(len(groups)) + (j - (len(rankings) - 1) / 2) * width, values, width=width,
               color=styles[name][0], label=f"top by {name}")
    for g, (kind, lvl) in enumerate(groups):
        ax.plot([g - 0.45, g + 0.45], [stab[kind]["chance"][lvl]] * 2, color="black", linewidth=1.5,
                label="chance S / K" if g == 0 else None)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([f"{kind}\n{lvl}" for kind, lvl in groups], fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("mean overlap |A and B| / S", fontsize=9)
    if groups:
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    matched = ", ".join(f"{kind} {s['matched']}/{s['comparisons']}" for kind, s in stab.items())
    matched = f"comparisons that kept the top detection: {matched}" if matched else "no comparison"
    ax.set_title(f"stability: overlap of the top-{result['settings']['stability_top']} primitives "
                 f"(shift {result['settings']['shift_px']} px)\n{matched}", fontsize=9)
    mu = deletion["mu"]
    fig.suptitle(title or (f"Deletion test on {deletion['num_images']} images; mu = "
                           + ("n/a (no context branch)" if mu is None else f"{mu:.2f}")
                           + f"; most faithful ranking: {deletion['most_faithful'][HEADLINE_METRIC]}"), fontsize=12)
    fig.savefig(path)
    return fig
