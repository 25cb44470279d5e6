"""Trial 11 (benchmarks/results/tuning/README.md): the NMS survivors of a
Proposed-BV model re-ranked by the fused score with the levels' mean class
probability. Runs the model once on a fold's validation split (detectron2's
DefaultPredictor, the run's own saved config and test settings, one thread)
and writes both arms from that one run, for tools/compare_evals.py:
OUT/last/nt_detections.json (the detections as the model gives them) and
OUT/rerank/nt_detections.json (the same boxes, re-scored and re-ordered). It
counts the images whose detections differ from the committed evaluation's
(float rounding with another thread count can change a near-tie in the RPN
or NMS), and says so:

    python benchmarks/results/tuning/trial11_rerank.py RUN_FOLDER FOLD COMMITTED_DETECTIONS OUT

RUN_FOLDER: a benchmark run (stage2_voting/config.yaml, model_final.pth);
COMMITTED_DETECTIONS: that run's nt_detections.json(.gz) of nt_real_fold{FOLD}_val.
"""
import gzip
import json
import os
import sys

import cv2
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultPredictor

import voting_det  # noqa: F401  (registers the data sets and the model)
from voting_det.config import setup_cfg
from voting_det.modeling import roi_heads

run, fold, committed_path, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
original = roi_heads.VotingROIHeads._intermediate


def with_level_probs(self, outputs, glob, proposals):
    extras = original(self, outputs, glob, proposals)
    extras["mean_probs"] = torch.stack([F.softmax(o.logits, dim=1) for o in outputs]).mean(dim=0)
    return extras


roi_heads.VotingROIHeads._intermediate = with_level_probs
cfg = setup_cfg(os.path.join(run, "stage2_voting", "config.yaml"),
                ["MODEL.WEIGHTS", os.path.join(run, "stage2_voting", "model_final.pth"),
                 "MODEL.VOTING.RETURN_INTERMEDIATE", "True", "MODEL.VOTING.BORDER_READOUT_WINDOW", "1",
                 "MODEL.DEVICE", "cpu"])
predictor = DefaultPredictor(cfg)
opener = gzip.open if committed_path.endswith(".gz") else open
committed = json.load(opener(committed_path, "rt"))
by_file = {im["file_name"]: im for im in committed["images"]}
last = {"dataset": committed["dataset"], "settings": committed["settings"], "images": []}
rerank = {"dataset": committed["dataset"], "settings": committed["settings"], "images": []}
differing = []
for d in DatasetCatalog.get(f"nt_real_fold{fold}_val"):
    inst = predictor(cv2.imread(d["file_name"]))["instances"]
    im = by_file[d["file_name"]]
    boxes = inst.pred_boxes.tensor
    same = len(boxes) == len(im["boxes"]) and torch.allclose(boxes, torch.tensor(im["boxes"]), atol=0.05) \
        and torch.allclose(inst.scores, torch.tensor(im["scores"]), atol=1e-5)
    if not same:
        differing.append(os.path.basename(d["file_name"]))
    mine = {k: im[k] for k in ("image_id", "file_name", "width", "height", "gt")}
    last["images"].append(dict(mine, boxes=boxes.tolist(), scores=[round(float(v), 6) for v in inst.scores]))
    rescored = inst.mu * inst.mean_probs[:, 0] + (1 - inst.mu) * inst.global_probs[:, 0]
    order = rescored.argsort(descending=True).tolist()
    rerank["images"].append(dict(mine, boxes=[boxes[i].tolist() for i in order],
                                 scores=[round(float(rescored[i]), 6) for i in order]))
for name, data in (("last", last), ("rerank", rerank)):
    os.makedirs(os.path.join(out_dir, name), exist_ok=True)
    with open(os.path.join(out_dir, name, "nt_detections.json"), "w") as f:
        json.dump(data, f)
print(f"fold {fold}: {len(last['images'])} images; {len(differing)} differ from the committed evaluation "
      f"{differing} -> {out_dir}/last, {out_dir}/rerank")
