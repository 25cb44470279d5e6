"""Trial 8, reported beside its rule: recall at 10 (a top-10 box with IoU >= 0.5)
of the control and the GIoU arm, each seed's folds 1+2 validation pooled, from
the evaluator's own per-image slots (as benchmarks/recall_at_k.py does for
Table 1).

    .venv/bin/python benchmarks/results/tuning/trial8_recall_at_10.py > benchmarks/results/tuning/trial8_recall_at_10.md
"""
import numpy as np

from voting_det.evaluation.evaluator import load_records
from voting_det.evaluation.metrics import analyse, mann_whitney_auc

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
    records = []
    for folder in folders:
        records += load_records(f"{folder}/nt_detections.json.gz")[2]
    stats = analyse(records, top_n=10)
    pos, neg = stats.pos_flat, stats.neg_flat
    print(f"| {arm} | {seed} | {len(records)} | {100 * np.isfinite(pos).mean():.1f} | {100 * mann_whitney_auc(pos, neg):.1f} |")
