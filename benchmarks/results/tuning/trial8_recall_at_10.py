"""Trial 8, reported beside its rule: recall at 10 (a top-10 box with IoU >= 0.5)
and the AUC of the control and the GIoU arm, each seed's folds 1+2 validation
pooled, by benchmarks/recall_at_k.py's own computation.

    .venv/bin/python benchmarks/results/tuning/trial8_recall_at_10.py > benchmarks/results/tuning/trial8_recall_at_10.md
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

from benchmarks.recall_at_k import folder_figures  # noqa: E402

R = "benchmarks/results"
ARMS = {
    ("control", 0): [f"{R}/runs/cpu/nt_real/proposed_bv/fold{k}/eval/inference/nt_real_fold{k}_val" for k in (1, 2)],
    ("control", 1): [f"{R}/tuning/runs/trial7_s1/proposed_bv_seed1/fold{k}" for k in (1, 2)],
    ("GIoU 1.0", 0): [f"{R}/tuning/runs/trial8/proposed_bv_giou/fold{k}" for k in (1, 2)],
    ("GIoU 1.0", 1): [f"{R}/tuning/runs/trial8_s1/proposed_bv_giou_seed1/fold{k}" for k in (1, 2)],
}

print("| arm | seed | images | recall at 10 (%) | AUC |")
print("|---|---|---|---|---|")
for (arm, seed), folders in ARMS.items():
    n, recall, auc, _ = folder_figures(folders, k=10)
    print(f"| {arm} | {seed} | {n} | {recall:.1f} | {auc:.1f} |")
