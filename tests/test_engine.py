"""The two-stage schedule, DefaultPredictor on a saved VotingRCNN checkpoint,
and the optimizer's parameter groups."""
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from voting_det import add_voting_config
from voting_det.config import merge_config_file
from voting_det.engine import Trainer
from voting_det.engine.two_stage import split_schedule, stage_configs, train_two_stage, trained_config

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


def test_trained_config_predicts_with_the_stage_own_final_model(tmp_path):
    """Stage 2's MODEL.WEIGHTS is stage 1's model (no context branch): inference
    after training (make demo's drawings and explanations) must load stage 2's
    own final model, which trained_config gives."""
    configs = [os.path.join(CONFIG_DIR, f) for f in ("nt_lcf.yaml", "nt_voting.yaml")]
    _, stage2 = stage_configs(*configs, str(tmp_path), ["SOLVER.MAX_ITER", "4", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(stage2)
    with torch.no_grad():
        model.roi_heads.fusion_logit.fill_(1.25)  # what stage 2 learned, in its own final model
    os.makedirs(stage2.OUTPUT_DIR)
    DetectionCheckpointer(model, save_dir=stage2.OUTPUT_DIR).save("model_final")
    trained = trained_config(stage2)
    assert trained.is_frozen() and stage2.MODEL.WEIGHTS != trained.MODEL.WEIGHTS
    assert trained.MODEL.WEIGHTS == os.path.join(stage2.OUTPUT_DIR, "model_final.pth")
    assert float(DefaultPredictor(trained).model.roi_heads.fusion_logit) == 1.25


def test_resuming_into_a_folder_of_another_run_is_refused(tmp_path):
    configs = [os.path.join(CONFIG_DIR, f) for f in ("nt_lcf.yaml", "nt_voting.yaml")]
    stage1, stage2 = stage_configs(*configs, str(tmp_path), ["SOLVER.MAX_ITER", "40"])
    os.makedirs(stage1.OUTPUT_DIR)
    with open(os.path.join(stage1.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(stage_configs(*configs, str(tmp_path), ["SOLVER.MAX_ITER", "1400"])[0].dump())
    with pytest.raises(ValueError, match="another config"):
        train_two_stage(stage1, stage2, resume=True)


def test_a_stage_counts_as_trained_only_when_its_final_weights_are_tagged(tmp_path, monkeypatch):
    """A stage whose model_final.pth exists but which detectron2's checkpointer
    has not tagged in last_checkpoint (a process killed between writing the
    final weights and their tag) is resumed and trained to the end, not taken as finished; a tagged
    one is loaded and only evaluated."""
    from voting_det.engine import two_stage

    calls = []

    class FakeTrainer:
        def __init__(self, cfg):
            self.cfg, self.model = cfg, object()
            self.checkpointer = self
            self._last_eval_results = {"trained": os.path.basename(cfg.OUTPUT_DIR)}

        def load(self, path):
            calls.append(("load", os.path.basename(self.cfg.OUTPUT_DIR), os.path.basename(path)))

        def resume_or_load(self, resume):
            calls.append(("resume", os.path.basename(self.cfg.OUTPUT_DIR), resume))

        def train(self):
            calls.append(("train", os.path.basename(self.cfg.OUTPUT_DIR)))

        @staticmethod
        def test(cfg, model):
            return {"evaluated": os.path.basename(cfg.OUTPUT_DIR)}

    monkeypatch.setattr(two_stage, "Trainer", FakeTrainer)
    configs = [os.path.join(CONFIG_DIR, f) for f in ("nt_lcf.yaml", "nt_voting.yaml")]
    stage1, stage2 = stage_configs(*configs, str(tmp_path), ["SOLVER.MAX_ITER", "40", "MODEL.DEVICE", "cpu"])
    for cfg, tag in ((stage1, "model_0000019.pth"), (stage2, "model_final.pth")):
        os.makedirs(cfg.OUTPUT_DIR)
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
        open(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), "wb").close()
        with open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"), "w") as f:
            f.write(tag)
    results = train_two_stage(stage1, stage2, resume=True)
    # stage 1's final weights are untagged: resumed from its last checkpoint and trained; stage 2's are tagged
    assert calls == [("resume", "stage1_lcf", True), ("train", "stage1_lcf"),
                     ("load", "stage2_voting", "model_final.pth")]
    assert results == {"stage1_lcf": {"trained": "stage1_lcf"}, "stage2_voting": {"evaluated": "stage2_voting"}}


def test_default_predictor_on_a_saved_checkpoint_any_size(tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg()
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model.pth")
    cfg.INPUT.MIN_SIZE_TEST = 160
    cfg.INPUT.MAX_SIZE_TEST = 400
    predictor = DefaultPredictor(cfg)
    assert torch.equal(predictor.model.roi_heads.fusion_logit, model.roi_heads.fusion_logit)
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
    for name in ("roi_heads.fusion_logit", "roi_heads.levels.0.primitives.semantic_templates",
                 "roi_heads.levels.1.primitives.spatial_template_logits", "roi_heads.levels.0.primitives.log_temperature"):
        group = group_of[id(names[name])]
        assert group["weight_decay"] == 0.0 and group["lr"] == pytest.approx(1e-2), name
    conv = group_of[id(names["backbone.res3.0.conv1.weight"])]
    assert conv["weight_decay"] == 1e-4 and conv["lr"] == pytest.approx(1e-4)
    cfg.SOLVER.OPTIMIZER = "RMSPROP"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        Trainer.build_optimizer(cfg, model)


def test_kmeans_initialisation_puts_templates_on_ground_truth_features(tiny_nt_set, tmp_path):
    """MODEL.VOTING.TEMPLATE_INIT kmeans: after Trainer.resume_or_load every
    semantic template is a unit vector lying on the ROI features of the
    ground-truth crops (each one's best cosine with them is high), unlike the
    random start."""
    prefix = tiny_nt_set[0]
    cfg = get_cfg()
    add_voting_config(cfg)
    merge_config_file(cfg, os.path.join(CONFIG_DIR, "nt_lcf_instant_test.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.VOTING.TEMPLATE_INIT", "kmeans", "MODEL.VOTING.KMEANS_NUM_IMAGES", 4,
        "MODEL.VOTING.NUM_PRIMITIVES", 8, "DATASETS.TRAIN", (f"{prefix}_fold0_train",),
        "DATASETS.TEST", (f"{prefix}_fold0_test",), "INPUT.MIN_SIZE_TEST", 144, "INPUT.MAX_SIZE_TEST", 192,
        "OUTPUT_DIR", str(tmp_path), "SEED", 0,
    ])
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    stage = trainer.model.roi_heads.levels[0]
    before = stage.primitives.semantic_templates.detach().clone()
    trainer.resume_or_load(resume=False)
    after = stage.primitives.semantic_templates.detach()
    assert not torch.allclose(before, after)
    assert torch.allclose(after.norm(dim=1), torch.ones(len(after)), atol=1e-5)
    # the features the templates were fit to, gathered independently here
    batches = [x for batch in trainer.build_test_loader(cfg, cfg.DATASETS.TRAIN[0]) for x in batch][:4]
    model = trainer.model.eval()
    with torch.no_grad():
        features = model.backbone(model.preprocess_image(batches).tensor)
        records = {r["image_id"]: r for r in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])}
        gt = []
        for b in batches:
            boxes = [a["bbox"] for a in records[b["image_id"]]["annotations"]]
            scale = b["image"].shape[1] / b["height"]
            gt.append(Boxes(torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32).reshape(-1, 4) * scale))
        crops, _ = stage.crop(features["res4"], gt)
    vectors = torch.nn.functional.normalize(crops.permute(0, 2, 3, 1).reshape(-1, crops.shape[1]), dim=1)
    best_after = (after @ vectors.T).max(dim=1).values
    best_before = (before @ vectors.T).max(dim=1).values
    assert best_after.min() > best_before.max()
