"""The deletion test of the explanations' faithfulness (see
:mod:`voting_det.interpretation.faithfulness` for the whole measurement).

For the top detection of an image, the primitives are ranked (per level) by
the trace-back score alpha_k (Eq. 3, the paper's), by their exact
contribution c_k to the vote at the predicted centre, by their response
mass sum Rs_k and, when the model has a contrastive reference, by the
contrastive score (vote share minus its training mean); ties of each ranking
are broken as the trace breaks them (``RANKING_KEYS``); the top m of a ranking (m = 1, 2, 4, ..., K, at every level at
once) are deleted *in the forward pass* (their response maps are zeroed before
they vote, :func:`voting_det.modeling.voting.mask_primitives`), the local
branch is run again on the same proposal, and we measure how far the local box
x_L and the fused box move (1 - IoU with the undeleted box, and the centre
shift in pixels) and how much the score of the detected class drops. A model
with border votes (docs/method.md section 2b) adds a ranking by each
primitive's votes at each level's voted borders (``BORDER_RANKING``: the
trace's ``border_contributions`` summed over the borders) and a metric, how far the
final level's voted borders move (mean over the voting borders, image px). The same
is done for m random primitives (several draws) and for the m lowest-ranked by
alpha (a control that should do nothing). A faithful ranking moves the
prediction more than random deletions do: its summary number is the area
between its curve and the random curve over log2 m, normalised to the axis
length (the mean vertical gap; > 0 = more than random).

The backbone, the RPN and the context branch do not read the primitives, so
they are computed once (:class:`~voting_det.interpretation.trace.Explainer`
keeps them) and only the local branch is re-run, all deletions of an image in
one batch; :class:`LocalIntervention` checks that its undeleted run reproduces
the model's own detection. The context box x_G is unaffected, so the fused box
moves by exactly mu times the local box's move.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou

from ..modeling.roi_heads import TRACE_PREFIX, fuse_predictions
from ..modeling.trace_back import trace_back
from ..modeling.voting_level import RANKING_KEYS, rank_primitives
from .trace import Explainer, Explanation

__all__ = ["BORDER_METRICS", "BORDER_RANKING", "CONTRASTIVE", "CONTROL", "HEADLINE_METRIC", "METRICS", "RANDOM", "RANKINGS", "LocalIntervention",
           "available_rankings", "deletion_sizes", "deletion_test", "measured_metrics", "ranking_order", "summarise"]

# Rankings compared with random deletions, and the control (the m lowest by alpha).
# CONTRASTIVE joins them when the traces carry it (a model with a contrastive reference).
RANKINGS = ("alpha", "contribution", "response_mass")
CONTRASTIVE = "contrastive"
CONTROL = "lowest_alpha"
RANDOM = "random"
# What is measured after a deletion, relative to the undeleted run of the same proposal.
METRICS = {
    "local_box_shift": "local box x_L: 1 - IoU with the undeleted one",
    "local_centre_shift_px": "local box x_L: centre shift (image px)",
    "fused_box_shift": "fused box x: 1 - IoU with the undeleted one",
    "score_drop": "fused score of the detected class: before - after",
    "local_score_drop": "local score s_L (MODEL.VOTING.TEST_SCORE) of the detected class: before - after",
}
# With border votes: the ranking by the votes at the borders, and the borders' move.
BORDER_RANKING = "border"
BORDER_METRICS = {"border_shift_px": "final level's voted borders: mean move (image px)"}
# The metric that decides "most faithful" (the primitives act on the local branch).
HEADLINE_METRIC = "local_box_shift"
DEFAULT_RANDOM_DRAWS = 5
# Bootstrap resamples over images for the 95% interval of each area.
NUM_BOOTSTRAP = 1000
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


def ranking_order(instances: Instances, level: str, ranking: str, detection: int = 0,
                  descending: bool = True) -> np.ndarray:
    """The primitives of ``level`` of one detection, best first by ``ranking``
    (a key of ``RANKING_KEYS``, or :data:`BORDER_RANKING`: the sum of the
    primitive's votes at the level's voted borders), ties broken by its next
    keys exactly as :meth:`~voting_det.modeling.voting_level.VotingLevel.trace`
    breaks them (the border ranking's ties as the contribution ranking's);
    ``descending=False``: worst first."""
    if ranking == BORDER_RANKING:
        votes = _trace(instances, level, "border_contributions", detection).nan_to_num(0.0).sum(dim=0)
        keys = [votes] + [_trace(instances, level, key, detection) for key in RANKING_KEYS["contribution"]]
    else:
        keys = [_trace(instances, level, key, detection) for key in RANKING_KEYS[ranking]]
    return rank_primitives(keys, descending=descending).numpy()


def available_rankings(instances: Instances, level: str) -> tuple:
    """:data:`RANKINGS`, plus :data:`CONTRASTIVE` when the traces carry it and
    :data:`BORDER_RANKING` when the level votes for borders."""
    has = instances.has(f"{TRACE_PREFIX}{level}_{CONTRASTIVE}")
    borders = instances.has(f"{TRACE_PREFIX}{level}_border_contributions")
    return RANKINGS + ((CONTRASTIVE,) if has else ()) + ((BORDER_RANKING,) if borders else ())


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
        self.baseline = {k: v[0] for k, v in base.items() if k != "levels"}
        self.baseline_levels = [out.select(slice(0, 1)) for out in base["levels"]]

    @torch.no_grad()
    def run(self, masks: Dict[str, torch.Tensor]) -> Dict:
        """One row per mask row (``masks``: level -> ``(B, K)``, 1 kept, 0 deleted;
        an empty dict runs once with all primitives). Returns ``local_boxes``
        (B, 4) in image pixels, ``local_probs`` (B, C+1), the fused ``boxes`` and
        ``probs`` (= local without a context branch), ``levels``, each
        level's :class:`~voting_det.modeling.voting_level.LevelOutput`, and,
        with border votes, ``border_positions`` (B, 4) of the final level in
        image pixels (NaN on an axis that does not vote)."""
        rows = max([len(m) for m in masks.values()] + [1])
        device = self.proposal.device
        proposals = Instances(self.input_size, proposal_boxes=Boxes(self.proposal.expand(rows, 4).clone()))
        masks = {lvl: m.to(device) for lvl, m in masks.items()}
        levels, _ = self.model.roi_heads.run_levels(self.features, [proposals], primitive_masks=masks)
        last = levels[-1]
        local_boxes = last.pred_boxes.cpu() * self.scale
        local_probs = self.model.roi_heads.local_probabilities(levels).cpu()  # the model's own local score
        result = {"local_boxes": local_boxes, "local_probs": local_probs, "levels": levels}
        if last.border_positions is not None:
            result["border_positions"] = last.border_positions.cpu() * self.scale
        if self.mu is None:
            result.update(boxes=local_boxes, probs=result["local_probs"])
        else:
            boxes, probs = fuse_predictions(
                torch.tensor(self.mu), local_boxes, local_probs, self.global_box.expand(rows, 4),
                self.global_probs.expand(rows, -1),
            )
            result.update(boxes=boxes, probs=probs)
        return result


def _measure(result: Dict, baseline: Dict, cls: int) -> Dict[str, np.ndarray]:
    """The metrics of every row of ``result`` relative to ``baseline``."""
    rows = len(result["local_boxes"])
    base_local = baseline["local_boxes"].expand(rows, 4)
    base_fused = baseline["boxes"].expand(rows, 4)
    centre = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
    out = {
        "local_box_shift": (1 - matched_pairwise_iou(Boxes(result["local_boxes"]), Boxes(base_local))).numpy(),
        "local_centre_shift_px": (centre(result["local_boxes"]) - centre(base_local)).norm(dim=1).numpy(),
        "fused_box_shift": (1 - matched_pairwise_iou(Boxes(result["boxes"]), Boxes(base_fused))).numpy(),
        "score_drop": (baseline["probs"][cls] - result["probs"][:, cls]).numpy(),
        "local_score_drop": (baseline["local_probs"][cls] - result["local_probs"][:, cls]).numpy(),
    }
    if "border_positions" in result:
        moved = (result["border_positions"] - baseline["border_positions"]).abs()
        voting = ~baseline["border_positions"].isnan()
        out["border_shift_px"] = moved[:, voting].mean(dim=1).numpy()
    return out


def _rankings(
    intervention: LocalIntervention, extra_taus: Sequence[float], normalize: bool
) -> Dict[str, Dict[str, np.ndarray]]:
    """Per ranking, per level, the primitives best first."""
    inst, det = intervention.instances, intervention.detection
    names = available_rankings(inst, intervention.levels[0])
    rankings: Dict[str, Dict[str, np.ndarray]] = {name: {} for name in names}
    rankings[CONTROL] = {}
    for tau in extra_taus:
        rankings[f"alpha_tau{tau:g}"] = {}
    modules = intervention.model.roi_heads.levels
    for level, module, out in zip(intervention.levels, modules, intervention.baseline_levels):
        for name in names:
            rankings[name][level] = ranking_order(inst, level, name, det)
        rankings[CONTROL][level] = ranking_order(inst, level, "alpha", det, descending=False)
        for tau in extra_taus:
            with torch.no_grad():
                alpha_tau = trace_back(out.response_maps, module.primitives.spatial_templates(), out.vote_heatmap,
                                       tau=tau, normalize=normalize)[0].cpu()
            ties = [_trace(inst, level, key, det) for key in RANKING_KEYS["alpha"][1:]]
            rankings[f"alpha_tau{tau:g}"][level] = rank_primitives([alpha_tau] + ties).numpy()
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
    rankings = _rankings(intervention, extra_taus, bool(explainer.model.roi_heads.explain_options["normalize"]))
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
    draws = {metric: [per_ranking[f"{RANDOM}{d}"][metric] for d in range(num_random)] for metric in measured}
    curves = {name: per_ranking[name] for name in names if not name.startswith(RANDOM)}
    if num_random:
        curves[RANDOM] = {metric: np.mean(draws[metric], axis=0).tolist() for metric in measured}
    ties = {}
    for lvl in ks:
        alpha = _trace(explanation.instances, lvl, "alpha", detection)
        ties[lvl] = int((alpha == alpha.max()).sum())
    return {"sizes": sizes, "curves": curves, "random_draws": draws, "mu": intervention.mu, "alpha_ties": ties}


def measured_metrics(result: Dict) -> Dict[str, str]:
    """The metrics a :func:`deletion_test` result holds, with their
    descriptions: :data:`METRICS`, and :data:`BORDER_METRICS` for a model
    with border votes."""
    present = next(iter(result["curves"].values()))
    return {m: d for m, d in {**METRICS, **BORDER_METRICS}.items() if m in present}


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
    metrics = measured_metrics(per_image[0])
    curves = {
        name: {metric: np.mean([img["curves"][name][metric] for img in per_image], axis=0).tolist()
               for metric in metrics}
        for name in names
    }
    areas = {}
    for name in names:
        if name == RANDOM:
            continue
        areas[name] = {}
        for metric in metrics:
            values = np.array([_area(img["curves"][name][metric], img["curves"][RANDOM][metric], sizes)
                               for img in per_image])
            low, high = _bootstrap_interval(values, seed)
            areas[name][metric] = {"mean": float(values.mean()), "ci95": [low, high]}
    candidates = [n for n in names if n not in (RANDOM, CONTROL)]
    most = {metric: max(candidates, key=lambda n: areas[n][metric]["mean"]) for metric in metrics}
    mus = [img["mu"] for img in per_image if img["mu"] is not None]
    return {"sizes": sizes, "num_images": len(per_image), "curves": curves, "area_vs_random": areas,
            "most_faithful": most, "mu": float(np.mean(mus)) if mus else None}

