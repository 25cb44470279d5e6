"""Where the paper-style AUC is lost (README, Table 1): for each row's pooled
test folds, the share of ground truths that some top-k box hits (IoU >= 0.5,
"recall at k"; a miss is an unfound positive of the AUC, scored minus
infinity), the AUC, and the AUC over the found ones only.

    .venv/bin/python -m benchmarks.recall_at_k > benchmarks/results/table1_cpu_real/recall_at_10.md
"""
import sys

import numpy as np

from voting_det.evaluation.evaluator import load_records
from voting_det.evaluation.metrics import analyse, mann_whitney_auc

ROOT = "benchmarks/results/runs/cpu/nt_real"
ROWS = ("proposed_bv", "fpn_R18", "fpn_R50", "proposed", "lcf", "ls")


def row_figures(method: str, split: str = "test", k: int = 10):
    """(images, recall at k in %, AUC, AUC over the found only) of a row's three
    folds pooled (:func:`folder_figures`)."""
    return folder_figures([f"{ROOT}/{method}/fold{fold}/eval/inference/nt_real_fold{fold}_{split}" for fold in (0, 1, 2)], k)


def folder_figures(folders, k: int = 10):
    """(images, recall at k in %, AUC, AUC over the found only) of the
    evaluations in ``folders`` pooled, from the evaluator's own per-image slots
    (``metrics.analyse``: a ground truth's matched top-k score, minus infinity
    when none hits)."""
    records = []
    for folder in folders:
        records += load_records(f"{folder}/nt_detections.json")[2]
    stats = analyse(records, top_n=k)
    pos, neg = stats.pos_flat, stats.neg_flat
    found = np.isfinite(pos)
    return len(records), 100 * found.mean(), 100 * mann_whitney_auc(pos, neg), 100 * mann_whitney_auc(pos[found], neg)


def main(argv=None):
    print("# Recall at 10 and the paper-style AUC, Table 1 test folds pooled (716 images)\n")
    print(f"Command: `python -m benchmarks.recall_at_k` (detections: `{ROOT}/<row>/fold*/eval/inference/*_test`)\n")
    print("| row | images | recall at 10 (%) | AUC | AUC over the found only |")
    print("|---|---|---|---|---|")
    for method in ROWS:
        n, recall, auc, auc_found = row_figures(method)
        print(f"| {method} | {n} | {recall:.1f} | {auc:.1f} | {auc_found:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
