"""detectron2's built-in Faster R-CNN (R18-FPN, GroupNorm, from scratch) trains on
a registered NT fold through voting_det's Trainer and is scored by COCOEvaluator."""
import json
import os

import numpy as np
import pytest
import torch

from voting_det.config import setup_cfg
from voting_det.engine import Trainer
from voting_det.evaluation.metrics import box_iou

SMOKE_ITERS = 3


CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "nt_fpn_R18_instant_test.yaml")


def _r18_fpn_gn_cfg(prefix, output_dir):
    """configs/nt_fpn_R18_instant_test.yaml: detectron2's own FPN config (via a
    model_zoo:// base), depth 18, GroupNorm, from scratch, on the tiny fold."""
    cfg = setup_cfg(
        CONFIG,
        [
            "MODEL.DEVICE", "cpu",
            "DATASETS.TRAIN", (f"{prefix}_fold0_train",),
            "DATASETS.TEST", (f"{prefix}_fold0_test",),
            "INPUT.MIN_SIZE_TRAIN", (144,),
            "INPUT.MAX_SIZE_TRAIN", 192,
            "INPUT.MIN_SIZE_TEST", 144,
            "INPUT.MAX_SIZE_TEST", 192,
            "SOLVER.MAX_ITER", SMOKE_ITERS,
            "OUTPUT_DIR", str(output_dir),
            "SEED", 1,
        ],
    )
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" and cfg.MODEL.RESNETS.NORM == "GN"
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.WEIGHTS == ""
    return cfg


@pytest.mark.slow
def test_builtin_faster_rcnn_trains_and_evaluates(tiny_nt_set, tmp_path):
    prefix, _, coco_dir = tiny_nt_set
    torch.manual_seed(0)
    cfg = _r18_fpn_gn_cfg(prefix, tmp_path)
    trainer = Trainer(cfg)
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == SMOKE_ITERS  # detectron2 counts past the last iteration
    changed = [k for k, v in trainer.model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any("backbone.bottom_up" in k for k in changed) and any("roi_heads.box_predictor" in k for k in changed)

    results = Trainer.test(cfg, trainer.model)
    bbox = results["bbox"]
    assert {"AP", "AP50", "AP75"} <= set(bbox)
    # SCORE_THRESH_TEST 0 (Base-NT-Common): every test image has detections, so
    # COCO's AP is a number (NaN would mean no detection at all), and a stricter
    # IoU threshold never scores higher (one NT per image)
    assert all(np.isfinite(bbox[k]) for k in ("AP", "AP50", "AP75")), bbox
    assert 0.0 <= bbox["AP75"] <= bbox["AP50"] <= 100.0 and 0.0 <= bbox["AP"] <= bbox["AP50"]
    with open(os.path.join(coco_dir, "fold0_test.json")) as f:
        test_json = json.load(f)
    predictions = torch.load(os.path.join(tmp_path, "inference", f"{prefix}_fold0_test", "instances_predictions.pth"),
                             weights_only=False)
    assert len(predictions) == len(test_json["images"])
    assert all(1 <= len(p["instances"]) <= cfg.TEST.DETECTIONS_PER_IMAGE for p in predictions)
    # by hand: AP50 > 0 exactly when some detection overlaps its image's NT with IoU >= 0.5
    xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]  # noqa: E731
    gt = {}
    for a in test_json["annotations"]:
        gt.setdefault(a["image_id"], []).append(xyxy(a["bbox"]))
    best = max(box_iou([xyxy(d["bbox"]) for d in p["instances"]], gt[p["image_id"]]).max()
               for p in predictions if p["image_id"] in gt)
    assert (bbox["AP50"] > 0) == (best >= 0.5), (bbox, best)
