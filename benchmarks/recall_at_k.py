"""Where the paper-style AUC is lost (README, Table 1): for each row's pooled
test folds, the share of ground truths that some top-k box hits (IoU >= 0.5,
"recall at k"; a miss is an unfound positive of the AUC, scored minus
infinity), the AUC, and the AUC over the found ones only.

    .venv/bin/python -m benchmarks.recall_at_k > benchmarks/results/table1_cpu_real/recall_at_10.md
"""
import gzip
import json
import sys

import numpy as np

from voting_det.evaluation.metrics import box_iou, mann_whitney_auc

ROOT = "benchmarks/results/runs/cpu/nt_real"
ROWS = ("proposed_bv", "fpn_R18", "fpn_R50", "proposed", "lcf", "ls")


def row_figures(method: str, split: str = "test", k: int = 10):
    pos, neg, found = [], [], []
    for fold in (0, 1, 2):
        path = f"{ROOT}/{method}/fold{fold}/eval/inference/nt_real_fold{fold}_{split}/nt_detections.json.gz"
        with gzip.open(path) as f:
            images = json.load(f)["images"]
        for im in images:
            scores = np.asarray(im["scores"], dtype=float)
            order = np.argsort(-scores)[:k]
            boxes = np.asarray(im["boxes"], dtype=float).reshape(-1, 4)[order]
            scores = scores[order]
            iou = box_iou(np.asarray(im["gt"], dtype=float), boxes)[0] if len(boxes) else np.zeros(0)
            hits = np.flatnonzero(iou >= 0.5)
            if len(hits):
                pos.append(scores[hits[0]])
                neg.extend(np.delete(scores, hits[0]))
            else:
                pos.append(-np.inf)
                neg.extend(scores)
            neg.extend([-np.inf] * (k - len(scores)))
            found.append(len(hits) > 0)
    pos, neg = np.asarray(pos), np.asarray(neg)
    return len(pos), 100 * np.mean(found), 100 * mann_whitney_auc(pos, neg), 100 * mann_whitney_auc(pos[np.isfinite(pos)], neg)


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
