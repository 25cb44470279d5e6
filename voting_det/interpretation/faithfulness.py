"""Are the explanations faithful? A deletion test and a stability check, run
over a data set by :func:`run_faithfulness` (``tools/faithfulness.py``).

- :mod:`.deletion`: the top-m primitives of a ranking (alpha_k, c_k, response
  mass) are deleted in the forward pass of the local branch and the move of
  the boxes and the score drop are compared with random deletions and with the
  m lowest by alpha (:func:`deletion_test`, :func:`summarise`);
- :mod:`.stability`: overlap of the top primitives under shifts of the image
  and, on the synthetic set, a new speckle draw of the same anatomy
  (:func:`stability_test`, :func:`synthetic_with_new_speckle`);
- :mod:`.faithfulness_report`: the Markdown summary and the figure
  (:func:`format_summary`, :func:`plot_faithfulness`).

The names of those modules are importable from here too.
"""
from typing import Dict, Optional, Sequence

import numpy as np

from .deletion import (
    CONTROL,
    DEFAULT_RANDOM_DRAWS,
    HEADLINE_METRIC,
    METRICS,
    RANDOM,
    RANKINGS,
    LocalIntervention,
    deletion_sizes,
    deletion_test,
    measured_metrics,
    summarise,
)
from .faithfulness_report import format_summary, plot_faithfulness
from .stability import (
    DEFAULT_SHIFT_PX,
    DEFAULT_SPECKLE_DRAWS,
    MATCH_IOU,
    STABILITY_TOP,
    shift_image,
    stability_test,
    summarise_stability,
    synthetic_with_new_speckle,
)
from .trace import Explainer, explain_records, shift_offsets

__all__ = [
    "CONTROL",
    "DEFAULT_NUM_IMAGES",
    "DEFAULT_RANDOM_DRAWS",
    "DEFAULT_SHIFT_PX",
    "DEFAULT_SPECKLE_DRAWS",
    "HEADLINE_METRIC",
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

DEFAULT_NUM_IMAGES = 40
# Below this mu the fused box moves by less than 5% of the local box's move.
MU_CANNOT_MOVE = 0.05


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
    shifts = shift_offsets(shift_px)
    per_image, stability, used, skipped = [], [], [], []
    for i, path, image, explanation in explain_records(explainer, chosen, "faithfulness", progress):
        if explanation is None:
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
                 + " share the top alpha (ties are ranked by their vote share c_k)")
    return {
        "settings": {"num_images": num_images, "random_draws": num_random, "seed": seed, "shift_px": shift_px,
                     "synthetic_seed": synthetic_seed,
                     "speckle_draws": speckle_draws if synthetic_seed is not None else 0,
                     "extra_taus": list(extra_taus), "stability_top": STABILITY_TOP, "match_iou": MATCH_IOU,
                     "levels_deleted": "all levels at once, m per level"},
        "model": {"levels": explainer.levels, "num_primitives": ks, "mu": mu,
                  "trace_tau": explainer.model.roi_heads.explain_options["tau"],
                  "trace_normalize": explainer.model.roi_heads.explain_options["normalize"]},
        "metrics": measured_metrics(per_image[0]),
        "images": used,
        "skipped": skipped,
        "per_image": per_image,
        "deletion": deletion,
        "alpha_ties_mean": ties,
        "stability": {"summary": summarise_stability(stability, ks, STABILITY_TOP), "records": stability},
        "notes": notes,
    }

