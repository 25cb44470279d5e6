"""The registered components and the whole model on synthetic tensors (CPU,
small sizes): loss keys, finiteness, gradients to every learned part of the
paper, inference contract, edge cases, configs."""
import glob
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from voting_det import add_voting_config
from voting_det.config import merge_config_file, setup_cfg
from voting_det.modeling import fuse_predictions

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
H, W = 128, 192


def small_cfg(config="nt_voting.yaml", **overrides):
    cfg = get_cfg()
    add_voting_config(cfg)
    merge_config_file(cfg, os.path.join(CONFIG_DIR, config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VOTING.NUM_PRIMITIVES = 8
    cfg.MODEL.VOTING.GRID_SIZES = [[3, 8], [4, 12]]
    cfg.MODEL.VOTING.FC_DIMS = [32]
    cfg.MODEL.CONTEXT.FC_G1_DIMS = [16]
    cfg.MODEL.CONTEXT.FC_G2_DIMS = [16]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 20
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 10
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


def nt_instances(boxes):
    inst = Instances((H, W))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.zeros(len(inst.gt_boxes), dtype=torch.int64)
    return inst


def batch(with_negative=True):
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 255, (3, H, W), generator=g, dtype=torch.uint8) for _ in range(2)]
    targets = [nt_instances([[40.0, 90.0, 150.0, 104.0]]), nt_instances([] if with_negative else [[20.0, 60.0, 120.0, 70.0]])]
    return [{"image": im, "instances": t} for im, t in zip(images, targets)]


LOCAL_KEYS = {f"loss_local_{k}_{lvl}" for k in ("cls", "centre", "size", "heatmap") for lvl in ("res4", "res3")}
RPN_KEYS = {"loss_rpn_cls", "loss_rpn_loc"}
CONTEXT_KEYS = {"loss_global_cls", "loss_global_box", "loss_fused_cls", "loss_fused_box"}


@pytest.mark.parametrize(
    "config,expected",
    [
        ("nt_ls.yaml", RPN_KEYS | {k for k in LOCAL_KEYS if k.endswith("res4")}),
        ("nt_lcf.yaml", RPN_KEYS | LOCAL_KEYS),
        ("nt_voting.yaml", RPN_KEYS | LOCAL_KEYS | CONTEXT_KEYS),
    ],
)
def test_training_forward_gives_the_documented_finite_losses(config, expected):
    torch.manual_seed(0)
    model = build_model(small_cfg(config))
    model.train()
    with EventStorage():
        losses = model(batch())
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_every_learned_part_of_the_paper_gets_a_gradient():
    torch.manual_seed(0)
    model = build_model(small_cfg())
    model.train()
    with EventStorage():
        losses = model(batch(with_negative=False))
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    names = [
        "roi_heads.levels.0.primitives.semantic_templates",
        "roi_heads.levels.1.primitives.semantic_templates",
        "roi_heads.levels.0.primitives.spatial_template_logits",
        "roi_heads.levels.1.primitives.spatial_template_logits",
        "roi_heads.levels.0.primitives.log_temperature",
        "roi_heads.levels.1.primitives.log_temperature",
        "roi_heads.fusion_logit",
        "roi_heads.levels.0.fc.fc1.weight",  # FC_L
        "roi_heads.levels.1.size_pred.weight",
        "roi_heads.context_head.offset_pred.weight",  # FC_G1's last layer, through the box-differentiable sampler
        "roi_heads.context_head.fc_g2.fc1.weight",  # FC_G2
        "roi_heads.context_head.predictor.bbox_pred.weight",
        "backbone.stem.conv1.weight",
        "context_backbone.stem.conv1.weight",
    ]
    for name in names:
        grad = params[name].grad
        assert grad is not None and grad.norm() > 0, name
    # FC_G1's last layer starts at zero (the fixed layout), so its hidden layer
    # learns as soon as that layer has moved
    model.zero_grad()
    with torch.no_grad():
        model.roi_heads.context_head.offset_pred.weight.normal_(std=0.01)
    with EventStorage():
        sum(model(batch(with_negative=False)).values()).backward()
    assert params["roi_heads.context_head.fc_g1.fc1.weight"].grad.norm() > 0


def test_inference_gives_instances_inside_the_image_with_probabilities():
    torch.manual_seed(0)
    model = build_model(small_cfg(**{"MODEL.VOTING.RETURN_INTERMEDIATE": True}))
    model.eval()
    inputs = [{"image": b["image"], "height": 2 * H, "width": 2 * W} for b in batch()]
    with torch.no_grad():
        out = model(inputs)
    assert len(out) == 2
    inst = out[0]["instances"]
    assert inst.image_size == (2 * H, 2 * W) and 0 < len(inst) <= 10
    boxes = inst.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 2 * W).all() and (boxes[:, 3] <= 2 * H).all()
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
    assert (inst.pred_classes == 0).all()
    # intermediate boxes are in the output size too, and mu is the model's
    assert inst.context_boxes.shape == (len(inst), 4, 4)
    assert torch.allclose(inst.mu, torch.sigmoid(model.roi_heads.fusion_logit).expand(len(inst)))
    fused = inst.mu[:, None] * inst.local_boxes + (1 - inst.mu[:, None]) * inst.global_boxes
    limit = torch.tensor([2 * W, 2 * H, 2 * W, 2 * H], dtype=fused.dtype)
    assert torch.allclose(torch.minimum(fused.clamp(min=0), limit), boxes, atol=1e-3)  # detectron2 clips pred_boxes
    assert inst.proposal_boxes.max() <= 2 * W + 1e-3


def test_inference_with_zero_proposals_and_gray_one_channel_input():
    torch.manual_seed(0)
    model = build_model(small_cfg(**{"MODEL.RPN.POST_NMS_TOPK_TEST": 0}))
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.zeros(1, H, W, dtype=torch.uint8)}])
    assert len(out[0]["instances"]) == 0


def test_fusion_extremes():
    local_boxes, global_boxes = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[5.0, 5, 20, 20]])
    local_logits, global_logits = torch.tensor([[2.0, -1.0]]), torch.tensor([[-3.0, 1.0]])
    local_probs, global_probs = torch.softmax(local_logits, dim=1), torch.softmax(global_logits, dim=1)
    for mu, boxes, probs in ((1.0, local_boxes, local_probs), (0.0, global_boxes, global_probs)):
        b, p = fuse_predictions(torch.tensor(mu), local_boxes, local_probs, global_boxes, global_probs)
        assert torch.equal(b, boxes)
        assert torch.allclose(p, probs)
    b, p = fuse_predictions(torch.tensor(0.5), local_boxes, local_probs, global_boxes, global_probs)
    assert torch.allclose(b, torch.tensor([[2.5, 2.5, 15, 15]]))
    assert torch.allclose(p, (local_probs + global_probs) / 2) and torch.allclose(p.sum(dim=1), torch.ones(1))


@pytest.mark.parametrize("config", sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, "nt_*.yaml"))))
def test_every_config_parses_and_builds(config):
    cfg = setup_cfg(os.path.join(CONFIG_DIR, config), ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    if cfg.MODEL.META_ARCHITECTURE == "VotingRCNN":
        heads = model.roi_heads
        assert heads.level_names == list(cfg.MODEL.VOTING.LEVELS)
        grids = [tuple(g) for g in cfg.MODEL.VOTING.GRID_SIZES][: len(heads.levels)]  # one per level, in order
        assert [tuple(level.grid_size) for level in heads.levels] == grids
        assert all(level.primitives.semantic_templates.shape[0] == cfg.MODEL.VOTING.NUM_PRIMITIVES for level in heads.levels)
        assert (heads.context_head is not None) == cfg.MODEL.CONTEXT.ENABLED
        assert (model.context_backbone is not None) == (cfg.MODEL.CONTEXT.ENABLED and not cfg.MODEL.CONTEXT.SHARE_BACKBONE)
        assert all((level.borders is not None) == bool(cfg.MODEL.VOTING.BORDER_AXES) for level in heads.levels)
    with torch.no_grad():
        inst = model([{"image": batch()[0]["image"]}])[0]["instances"]
    assert inst.image_size == (H, W)
    boxes = inst.pred_boxes.tensor
    assert bool(((boxes[:, 0] >= 0) & (boxes[:, 2] <= W) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= H)).all())
    assert bool(((inst.scores >= 0) & (inst.scores <= 1)).all())
    assert len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("MODEL.VOTING.NUM_PRIMITIVES", 0, "MODEL.VOTING.NUM_PRIMITIVES"),
        ("MODEL.VOTING.LEVELS", ["res5"], "MODEL.VOTING.LEVELS"),
        ("MODEL.CONTEXT.NUM_BOXES", 3, "MODEL.CONTEXT.NUM_BOXES"),
        ("MODEL.VOTING.GRID_SIZES", [[3, 8]], "MODEL.VOTING.GRID_SIZES"),
        ("MODEL.RPN.IN_FEATURES", ["res3"], "MODEL.RPN.IN_FEATURES"),
        ("MODEL.RESNETS.OUT_FEATURES", ["res4"], "MODEL.RESNETS.OUT_FEATURES"),
        ("MODEL.CONTEXT.IN_FEATURE", "res5", "MODEL.CONTEXT.IN_FEATURE"),
        ("MODEL.CONTEXT.LAYOUT", [[0.0, -0.3, 0.4, 0.6]], "MODEL.CONTEXT.LAYOUT"),
        ("MODEL.VOTING.CROP_CONTEXT", (0.5, 3.0), "MODEL.VOTING.CROP_CONTEXT"),
        ("MODEL.VOTING.BORDER_AXES", ["z"], "MODEL.VOTING.BORDER_AXES"),
        ("MODEL.VOTING.BORDER_AXES", ["y", "y"], "MODEL.VOTING.BORDER_AXES"),
        ("MODEL.VOTING.BORDER_READOUT_WINDOW", -1, "MODEL.VOTING.BORDER_READOUT_WINDOW"),
        ("MODEL.VOTING.TEST_SCORE", "max", "MODEL.VOTING.TEST_SCORE"),
        ("MODEL.VOTING.REMATCH_IOU_PER_LEVEL", [0.6, 0.7], "MODEL.VOTING.REMATCH_IOU_PER_LEVEL"),  # 2 levels: one IoU
        ("MODEL.VOTING.REMATCH_IOU_PER_LEVEL", [1.2], "MODEL.VOTING.REMATCH_IOU_PER_LEVEL"),
        ("MODEL.VOTING.REMATCH_IOU", 0.0, "MODEL.VOTING.REMATCH_IOU"),
        ("MODEL.VOTING.LOSS_WEIGHT_IOU", -1.0, "MODEL.VOTING.LOSS_WEIGHT_IOU"),
        ("MODEL.VOTING.LOSS_WEIGHT_BOX_GIOU", -0.5, "MODEL.VOTING.LOSS_WEIGHT_BOX_GIOU"),
    ],
)
def test_bad_config_names_the_key(key, value, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build_model(small_cfg(**{key: value}))


def test_unknown_key_in_a_config_file_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f'_BASE_: "{os.path.abspath(os.path.join(CONFIG_DIR, "nt_lcf.yaml"))}"\nMODEL:\n  VOTING:\n    NUM_PRIMITIVS: 3\n')
    cfg = get_cfg()
    add_voting_config(cfg)
    with pytest.raises(KeyError, match="NUM_PRIMITIVS"):
        merge_config_file(cfg, str(path))


@pytest.mark.parametrize("test_mu,branch", [(1.0, "local_boxes"), (0.0, "global_boxes")])
def test_test_mu_evaluates_one_branch_alone(test_mu, branch):
    small = ["MODEL.DEVICE", "cpu", "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
             "MODEL.VOTING.RETURN_INTERMEDIATE", "True"]
    torch.manual_seed(0)
    model = build_model(setup_cfg(os.path.join(CONFIG_DIR, "nt_voting.yaml"), small + ["MODEL.CONTEXT.TEST_MU", str(test_mu)]))
    model.eval()
    with torch.no_grad():
        model.roi_heads.fusion_logit.fill_(0.3)  # a learned mu of sigmoid(0.3), not test_mu
        inst = model([{"image": batch()[0]["image"]}])[0]["instances"]
    assert len(inst) > 0
    expected = Boxes(inst.get(branch).clone())
    expected.clip(inst.image_size)  # detectron2's inference clips the output boxes, not the intermediate ones
    torch.testing.assert_close(inst.pred_boxes.tensor, expected.tensor)
    assert float(model.roi_heads.mu.detach()) == test_mu
    model.train()
    assert float(model.roi_heads.mu.detach()) == pytest.approx(float(torch.sigmoid(torch.tensor(0.3))))  # training uses the learned one


def test_the_meta_architecture_calls_the_roi_head_once_and_it_logs_each_level():
    """VotingRCNN computes features and proposals and calls roi_heads.forward
    once, in training (its losses are the model's non-RPN losses) and in
    inference (its Instances are the detections); the head logs per level the
    foreground count (checked against the labels it returns), the accuracy and
    the temperature, and mu."""
    torch.manual_seed(0)
    model = build_model(small_cfg("nt_voting.yaml"))
    calls = []
    model.roi_heads.register_forward_hook(lambda module, args, output: calls.append((module.training, output)))
    model.train()
    with EventStorage() as storage:
        losses = model(batch(with_negative=False))
    assert [training for training, _ in calls] == [True]
    proposals, head_losses = calls[0][1]
    assert set(losses) == RPN_KEYS | set(head_losses)
    assert all(torch.equal(losses[k], v) for k, v in head_losses.items())
    scalars = {k: v[0] for k, v in storage.latest().items()}
    num_fg = sum(int((p.gt_classes == 0).sum()) for p in proposals)
    assert num_fg > 0 and scalars["voting_res4/num_fg_samples"] == num_fg
    for key in ("voting_res3/num_fg_samples", "voting_res4/cls_accuracy", "voting_res3/cls_accuracy",
                "voting_res4/temperature", "voting_res3/temperature", "voting/mu", "fast_rcnn/cls_accuracy"):
        assert key in scalars, key
    assert scalars["voting/mu"] == pytest.approx(float(torch.sigmoid(model.roi_heads.fusion_logit)))
    assert 0.0 <= scalars["voting_res4/cls_accuracy"] <= 1.0

    calls.clear()
    model.eval()
    with torch.no_grad():
        out = model([{"image": x["image"]} for x in batch()])
    assert [training for training, _ in calls] == [False]
    head_instances, extra = calls[0][1]
    assert extra == {}
    for result, inst in zip(out, head_instances):
        assert torch.equal(result["instances"].scores, inst.scores)


def _iou(a, b):
    """IoU of two (x0, y0, x1, y1) boxes, by hand."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_rising_rematch_ious_label_each_later_level_at_its_own_threshold():
    """MODEL.VOTING.REMATCH_IOU_PER_LEVEL [0.6, 0.7] on three levels: a box
    is foreground for the second level from IoU 0.6 and for the third from
    0.7 (hand-made boxes at IoU 0.55, 0.65 and 0.75); [] keeps REMATCH_IOU
    (0.5) at both. In training each later level's labels follow its
    threshold on the previous level's boxes (IoU recomputed by hand)."""
    from detectron2.modeling.roi_heads import CascadeROIHeads

    gt = [40.0, 90.0, 140.0, 110.0]  # 100 x 20
    # boxes of the same height, shifted right: IoU = (100 - s) / (100 + s)
    shifts = [100 * (1 - t) / (1 + t) for t in (0.55, 0.65, 0.75)]
    boxes = [[gt[0] + s, gt[1], gt[2] + s, gt[3]] for s in shifts]
    assert [round(_iou(b, gt), 6) for b in boxes] == [0.55, 0.65, 0.75]
    grids = {"MODEL.VOTING.GRID_SIZES": [[3, 8], [4, 12], [4, 12]]}
    expected = {(): [[0, 0, 0], [0, 0, 0]], (0.6, 0.7): [[1, 0, 0], [1, 1, 0]]}  # class 0 = NT, 1 = background
    for ious, want in expected.items():
        cfg = small_cfg("nt_lcf_bv.yaml", **grids, **{"MODEL.VOTING.REMATCH_IOU_PER_LEVEL": list(ious)})
        torch.manual_seed(0)
        model = build_model(cfg).train()
        head = model.roi_heads
        for level in (1, 2):
            proposals = Instances((H, W))
            proposals.proposal_boxes = Boxes(torch.tensor(boxes))
            with EventStorage():
                labelled = CascadeROIHeads._match_and_label_boxes(head, [proposals], level, [nt_instances([gt])])
            assert labelled[0].gt_classes.tolist() == want[level - 1], (ious, level)

    # in training: each later level's labels against the previous level's boxes, from proposals
    # on the NT, 1 to 3.5 times its size (an untrained level shrinks its input box, so that the
    # previous level's boxes have IoUs on both sides of 0.6 and 0.7)
    cfg = small_cfg("nt_lcf_bv.yaml", **grids, **{"MODEL.VOTING.REMATCH_IOU_PER_LEVEL": [0.6, 0.7]})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    data = batch(with_negative=False)[:1]
    gt_box = data[0]["instances"].gt_boxes.tensor[0].tolist()
    cx, cy, w, h = (gt_box[0] + gt_box[2]) / 2, (gt_box[1] + gt_box[3]) / 2, gt_box[2] - gt_box[0], gt_box[3] - gt_box[1]
    scales = [(sw, sh) for sw in torch.linspace(1.0, 3.5, 26).tolist() for sh in (1.0, 1.4, 1.8)]
    proposals = Instances((H, W))
    proposals.proposal_boxes = Boxes(torch.tensor([[cx - sw * w / 2, cy - sh * h / 2, cx + sw * w / 2, cy + sh * h / 2]
                                                   for sw, sh in scales]))
    with torch.no_grad(), EventStorage():
        features = model.backbone(model.preprocess_image(data).tensor)
        outputs, level_proposals = model.roi_heads.run_levels(features, [proposals], [data[0]["instances"]])
    between = 0
    for level, threshold in ((1, 0.6), (2, 0.7)):
        ious = [_iou(b, gt_box) for b in outputs[level - 1].pred_boxes.tolist()]
        between += sum(0.5 <= iou < threshold for iou in ious)
        assert level_proposals[level][0].gt_classes.tolist() == [0 if iou >= threshold else 1 for iou in ious], level
    assert between >= 3, "no input box between 0.5 and the level's threshold: the check would not see 0.5"
