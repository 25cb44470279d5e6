"""Exploration: per detection of a Table 1 Proposed-BV model on a validation split,
the score parts, the last level's border-vote confidence and the levels' agreement."""
import json, sys, cv2, torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultPredictor
import voting_det  # noqa
from voting_det.config import setup_cfg
from voting_det.modeling import roi_heads as rh
from detectron2.structures import pairwise_iou, Boxes

fold, root, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
orig_inter = rh.VotingROIHeads._intermediate
def inter(self, outputs, glob, proposals):
    ex = orig_inter(self, outputs, glob, proposals)
    last = outputs[-1]
    conf = []
    for axis in ("y", "x"):
        p = last.borders[axis]["probabilities"]  # (R, 2, L)
        m = p.argmax(-1, keepdim=True)
        idx = torch.cat([(m + d).clamp(0, p.shape[-1] - 1) for d in (-1, 0, 1)], -1)
        conf.append(p.gather(-1, idx).sum(-1))  # mass within +-1 cell of the peak, (R, 2)
    ex["border_conf"] = torch.cat(conf, 1)  # y_top, y_bottom, x_left, x_right
    prev = outputs[-2].pred_boxes
    ex["agree"] = torch.diag(pairwise_iou(Boxes(prev), Boxes(last.pred_boxes))) if len(prev) else prev[:, 0]
    ex["cls_levels"] = torch.stack([F.softmax(o.logits, 1)[:, 0] for o in outputs], 1)
    return ex
rh.VotingROIHeads._intermediate = inter
cfg = setup_cfg(f"{root}/fold{fold}/stage2_voting/config.yaml",
                ["MODEL.WEIGHTS", f"{root}/fold{fold}/stage2_voting/model_final.pth", "MODEL.VOTING.RETURN_INTERMEDIATE", "True",
                 "MODEL.DEVICE", "cpu"])
pred = DefaultPredictor(cfg)
rows = []
for d in DatasetCatalog.get(f"nt_real_fold{fold}_val"):
    inst = pred(cv2.imread(d["file_name"]))["instances"]
    g = [a["bbox"] for a in d["annotations"]]
    rows.append({"file": d["file_name"], "gt": [[x, y, x + w, y + h] for x, y, w, h in g] if g and d["annotations"][0].get("bbox_mode", 1) == 1 else g,
                 "boxes": inst.pred_boxes.tensor.tolist(), "scores": inst.scores.tolist(),
                 "local": inst.local_probs[:, 0].tolist(), "global": inst.global_probs[:, 0].tolist(),
                 "border_conf": inst.border_conf.tolist(), "agree": inst.agree.tolist(), "cls_levels": inst.cls_levels.tolist()})
json.dump(rows, open(out_path, "w"))
print("done", len(rows))
