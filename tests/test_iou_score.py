"""IoU-aware scoring (MODEL.VOTING.LOSS_WEIGHT_IOU, docs/method.md section 2b,
tuning trial 13): off by default and then absent from the weights; on, each
level's loss is binary cross-entropy of its predicted IoU against the IoU of
its own box with the true box (computed here by hand, numpy), the target
never moves the box, and each detection's score is sqrt(class probability x
the last level's predicted IoU)."""
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from voting_det.modeling.roi_heads import iou_aware_probabilities

from .test_model import batch, small_cfg


def _numpy_iou(a, b):
    """IoU of matched rows of two (N, 4) XYXY arrays, by hand."""
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _numpy_bce(logits, target):
    p = 1.0 / (1.0 + np.exp(-logits))
    return float(np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p))))


def _spy(model, name):
    """Record the arguments of ``model.roi_heads.<name>`` on each call."""
    seen, original = {}, getattr(model.roi_heads, name)

    def spy(*args, **kwargs):
        seen["args"] = args
        seen["result"] = original(*args, **kwargs)
        return seen["result"]

    setattr(model.roi_heads, name, spy)
    return seen


def test_off_by_default_no_branch_no_loss():
    cfg = small_cfg("nt_lcf.yaml")
    assert cfg.MODEL.VOTING.LOSS_WEIGHT_IOU == 0.0
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert not any("iou_pred" in name for name in model.state_dict())
    with EventStorage():
        assert not any("loss_local_iou" in k for k in model(batch(with_negative=False)))


def test_the_loss_is_bce_against_each_levels_own_iou_and_does_not_move_the_box():
    cfg = small_cfg("nt_lcf.yaml", **{"MODEL.VOTING.LOSS_WEIGHT_IOU": 2.0})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert all(level.iou_pred is not None for level in model.roi_heads.levels)
    seen = _spy(model, "losses")
    with EventStorage():
        losses = model(batch(with_negative=False))
    outputs, level_proposals, _ = seen["args"]
    for out, proposals, level in zip(outputs, level_proposals, ("res4", "res3")):
        gt_classes = torch.cat([p.gt_classes for p in proposals]).numpy()
        gt_boxes = torch.cat([p.gt_boxes.tensor for p in proposals]).numpy()
        fg = gt_classes == 0
        assert fg.sum() >= 2
        target = _numpy_iou(out.pred_boxes.detach().numpy()[fg], gt_boxes[fg])
        assert target.min() < target.max()  # a real spread of IoUs, not one value
        want = 2.0 * _numpy_bce(out.iou_logits.detach().numpy()[fg].astype(np.float64), target)
        np.testing.assert_allclose(float(losses[f"loss_local_iou_{level}"].detach()), want, rtol=1e-4)
    # the target is detached: the IoU loss trains the IoU layer, never the box's size layer
    model.zero_grad()
    losses["loss_local_iou_res3"].backward()
    level = model.roi_heads.levels[1]
    assert float(level.iou_pred.weight.grad.abs().sum()) > 0
    assert level.size_pred.weight.grad is None or float(level.size_pred.weight.grad.abs().sum()) == 0.0


def test_iou_aware_probabilities_is_the_geometric_mean():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.0, 1.0]])
    logits = torch.tensor([0.0, 2.0, -1.0])
    got = iou_aware_probabilities(probs, logits).numpy()
    iou = 1 / (1 + np.exp(-logits.numpy()))
    np.testing.assert_allclose(got[:, 0], np.sqrt(probs.numpy()[:, 0] * iou), rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], probs.numpy()[:, 1])  # background column kept


def test_detection_scores_are_the_probability_times_the_last_levels_iou():
    """Every proposal survives (no NMS, no threshold, room for all): the
    detections' scores are exactly the set sqrt(p_NT x sigmoid(iou logit of
    the last level)) over the proposals, computed from the levels' outputs."""
    cfg = small_cfg("nt_lcf.yaml", **{"MODEL.VOTING.LOSS_WEIGHT_IOU": 1.0, "MODEL.ROI_HEADS.NMS_THRESH_TEST": 1.0,
                                      "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0, "TEST.DETECTIONS_PER_IMAGE": 1000})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # a spread of predicted IoUs, not the initial ~0.5 for every box
        model.roi_heads.levels[-1].iou_pred.bias.fill_(0.3)
        model.roi_heads.levels[-1].iou_pred.weight.normal_(std=20.0)
    seen = _spy(model, "run_levels")
    image = batch()[0]["image"]
    with torch.no_grad():
        inst = model([{"image": image}])[0]["instances"]
    outputs, _ = seen["result"]
    last = outputs[-1]
    p_nt = F.softmax(last.logits, dim=1)[:, 0].numpy()
    iou = 1 / (1 + np.exp(-last.iou_logits.numpy()))
    want = np.sort(np.sqrt(p_nt * iou))
    assert iou.std() > 0.01
    got = np.sort(inst.scores.numpy())
    assert len(got) == len(want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # and not the class probability alone
    assert not np.allclose(got, np.sort(p_nt), atol=1e-4)
