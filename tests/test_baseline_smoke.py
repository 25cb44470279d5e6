"""detectron2's built-in Faster R-CNN (R18-FPN, GroupNorm, from scratch) trains on
a registered NT fold through voting_det's Trainer and is scored by COCOEvaluator."""
import json
import os

import pytest
import torch
from detectron2.config import get_cfg

from voting_det import add_voting_config
from voting_det.config import merge_config_file
from voting_det.engine import Trainer

SMOKE_ITERS = 3


CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "nt_fpn_R18_instant_test.yaml")


def _r18_fpn_gn_cfg(prefix, output_dir):
    """configs/nt_fpn_R18_instant_test.yaml: detectron2's own FPN config (via a
    model_zoo:// base), depth 18, GroupNorm, from scratch, on the tiny fold."""
    cfg = get_cfg()
    add_voting_config(cfg)
    merge_config_file(cfg, CONFIG)
    cfg.merge_from_list(
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
        ]
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
    # An untrained detector scores in [0, 100] (COCO's -1 means "no ground truth")
    assert all(0.0 <= bbox[k] <= 100.0 or bbox[k] != bbox[k] for k in ("AP", "AP50"))
    with open(os.path.join(coco_dir, "fold0_test.json")) as f:
        num_test = len(json.load(f)["images"])
    predictions = torch.load(os.path.join(tmp_path, "inference", f"{prefix}_fold0_test", "instances_predictions.pth"),
                             weights_only=False)
    assert len(predictions) == num_test
