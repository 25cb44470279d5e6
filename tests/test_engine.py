"""The two-stage schedule, DefaultPredictor on a saved VotingRCNN checkpoint,
and the optimizer's parameter groups."""
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from voting_det.engine import Trainer
from voting_det.engine.two_stage import split_schedule, stage_configs, train_two_stage

from .test_model import CONFIG_DIR, small_cfg


def test_split_schedule_by_hand():
    # 6000 iterations with a step at 4000, half each: 3000 + 3000, steps at 2000 in each
    assert split_schedule(6000, (4000,), 0.5) == ((3000, (2000,)), (3000, (2000,)))
    # a quarter for stage 1: 250 iterations (step 4000/6000*250 = 167), 750 for stage 2 (step 500)
    assert split_schedule(1000, (), 0.25) == ((250, ()), (750, ()))
    assert split_schedule(6000, (4000,), 0.25) == ((1500, (1000,)), (4500, (3000,)))
    with pytest.raises(ValueError, match="fraction"):
        split_schedule(100, (), 1.0)


def test_stage_configs_chain_the_stages(tmp_path):
    stage1, stage2 = stage_configs(
        os.path.join(CONFIG_DIR, "nt_lcf.yaml"),
        os.path.join(CONFIG_DIR, "nt_voting.yaml"),
        str(tmp_path),
        ["SOLVER.MAX_ITER", "100", "SOLVER.STEPS", "(80,)", "DATASETS.TRAIN", "('nt_fold1_train',)"],
    )
    assert not stage1.MODEL.CONTEXT.ENABLED and stage2.MODEL.CONTEXT.ENABLED
    assert stage1.SOLVER.MAX_ITER + stage2.SOLVER.MAX_ITER == 100
    assert stage1.SOLVER.STEPS == (40,) and stage2.SOLVER.STEPS == (40,)
    assert stage2.MODEL.WEIGHTS == os.path.join(stage1.OUTPUT_DIR, "model_final.pth")
    assert stage1.DATASETS.TRAIN == stage2.DATASETS.TRAIN == ("nt_fold1_train",)
    assert stage1.MODEL.DEVICE == "cpu" or torch.cuda.is_available()


def test_resuming_into_a_folder_of_another_run_is_refused(tmp_path):
    configs = [os.path.join(CONFIG_DIR, f) for f in ("nt_lcf.yaml", "nt_voting.yaml")]
    stage1, stage2 = stage_configs(*configs, str(tmp_path), ["SOLVER.MAX_ITER", "40"])
    os.makedirs(stage1.OUTPUT_DIR)
    with open(os.path.join(stage1.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(stage_configs(*configs, str(tmp_path), ["SOLVER.MAX_ITER", "1400"])[0].dump())
    with pytest.raises(ValueError, match="another config"):
        train_two_stage(stage1, stage2, resume=True)


def test_default_predictor_on_a_saved_checkpoint_any_size(tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg()
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model.pth")
    cfg.INPUT.MIN_SIZE_TEST = 160
    cfg.INPUT.MAX_SIZE_TEST = 400
    predictor = DefaultPredictor(cfg)
    assert torch.equal(predictor.model.fusion_logit, model.fusion_logit)
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, size=(171, 333), dtype=np.uint8)
    image = np.repeat(grey[:, :, None], 3, axis=2)  # a grey scan as cv2.imread returns it
    instances = predictor(image)["instances"]
    assert instances.image_size == (171, 333) and len(instances) > 0
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 2] <= 333).all() and (boxes[:, 3] <= 171).all() and (boxes >= 0).all()


def test_optimizer_groups_give_the_paper_parameters_no_decay_and_their_factor():
    cfg = small_cfg()
    cfg.SOLVER.OPTIMIZER = "ADAM"
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.VOTING_LR_FACTOR = 100.0
    model = build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.Adam)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    for name in ("fusion_logit", "roi_heads.stages.0.primitives.semantic_templates",
                 "roi_heads.stages.1.primitives.spatial_template_logits", "roi_heads.stages.0.primitives.log_temperature"):
        group = group_of[id(names[name])]
        assert group["weight_decay"] == 0.0 and group["lr"] == pytest.approx(1e-2), name
    conv = group_of[id(names["backbone.res3.0.conv1.weight"])]
    assert conv["weight_decay"] == 1e-4 and conv["lr"] == pytest.approx(1e-4)
    cfg.SOLVER.OPTIMIZER = "RMSPROP"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        Trainer.build_optimizer(cfg, model)
