"""Border votes (docs/method.md section 2b): the 1-D vote against a loop
reference, the soft-argmax on drawn phantoms, the box size a level takes from
its borders, the loss's learning signal, and the context options that go with
them (one backbone, score-only fusion)."""
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from voting_det.config import setup_cfg
from voting_det.modeling.borders import (
    BorderVoting,
    border_contributions,
    border_heatmap_target,
    border_operator,
    border_templates,
    border_vote,
    border_votes_per_primitive,
    local_positions,
    profiles,
    soft_argmax_1d,
)
from voting_det.modeling.roi_heads import CONTEXT_FEATURES
from voting_det.modeling.voting_level import VotingLevel

from .test_model import CONFIG_DIR, batch, small_cfg


def reference_vote(r, d):
    """Psi_b(j) = 1/K sum_k sum_i r_k(i) d_k^b(j - i + L - 1), by loops."""
    rows, k, length = r.shape
    out = np.zeros((rows, d.shape[1], length))
    for n in range(rows):
        for b in range(d.shape[1]):
            for j in range(length):
                out[n, b, j] = sum(r[n, kk, i] * d[kk, b, j - i + length - 1] for kk in range(k) for i in range(length))
    return out / k


def test_border_vote_matches_the_loop_reference():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(3, 4, 7, generator=g, dtype=torch.float64)
    d = border_templates(torch.randn(4, 2, 13, generator=g, dtype=torch.float64))
    got = border_vote(r, border_operator(d))
    np.testing.assert_allclose(got.numpy(), reference_vote(r.numpy(), d.numpy()), rtol=1e-10, atol=1e-12)
    # the per-primitive votes average to the vote
    torch.testing.assert_close(border_votes_per_primitive(r, border_operator(d)).mean(dim=1), got)


def test_profiles_average_the_other_axis():
    Rs = torch.rand(2, 3, 5, 9)
    torch.testing.assert_close(profiles(Rs, "y"), Rs.mean(dim=3))
    torch.testing.assert_close(profiles(Rs, "x"), Rs.mean(dim=2))


def delta_templates(k, length, low_shift, high_shift, sharpness=30.0):
    """Templates that send all of a primitive's vote low_shift / high_shift cells away."""
    logits = torch.full((k, 2, 2 * length - 1), -sharpness)
    logits[:, 0, length - 1 + low_shift] = sharpness
    logits[:, 1, length - 1 + high_shift] = sharpness
    return logits


def test_a_drawn_band_puts_the_borders_where_its_templates_send_them():
    """One primitive responds on row 5 of a 12-row grid (a drawn horizontal
    band); its templates send the upper border 2 rows up and the lower one 3
    down; at the lowest temperature the soft-argmax lands on rows 3 and 8
    (cell centres 3.5 and 8.5)."""
    m, n, k = 12, 10, 1
    module = BorderVoting(k, (m, n), ["y"], crop_context=(1.5, 3.0), log_temperature_init=-3.0)
    with torch.no_grad():
        module.logits("y").copy_(delta_templates(k, m, -2, +3))
    Rs = torch.zeros(1, k, m, n)
    Rs[0, 0, 5, 2:8] = 1.0
    out = module(Rs)["y"]
    torch.testing.assert_close(out["positions"], torch.tensor([[3.5, 8.5]]), atol=0.05, rtol=0)
    assert out["probabilities"].shape == (1, 2, m)
    torch.testing.assert_close(out["probabilities"].sum(dim=-1), torch.ones(1, 2))


def test_soft_argmax_1d_finds_a_peak_between_cells():
    Psi = torch.zeros(1, 1, 9)
    Psi[0, 0, 3] = Psi[0, 0, 4] = 1.0  # a plateau on cells 3 and 4: centre 4.0 in cell units
    _, positions = soft_argmax_1d(Psi, torch.tensor(-3.0))
    assert float(positions) == pytest.approx(4.0, abs=1e-3)


def test_the_local_read_out_takes_the_mass_near_the_peak_only():
    """Hand-computed: p = (0.2, 0, 0, 0.1, 0.5, 0.2, 0, 0) on 8 cells. The
    whole-axis soft-argmax is sum p (j + 1/2) = 3.8, pulled toward the far
    mass at cell 0; within 1 cell of the peak (cell 4) the read-out is
    (0.1 * 3.5 + 0.5 * 4.5 + 0.2 * 5.5) / 0.8 = 4.625."""
    p = torch.tensor([[[0.2, 0.0, 0.0, 0.1, 0.5, 0.2, 0.0, 0.0]]])
    centres = np.arange(8) + 0.5
    assert float((p[0, 0].numpy() * centres).sum()) == pytest.approx(3.8)
    assert float(local_positions(p, 1)) == pytest.approx((0.1 * 3.5 + 0.5 * 4.5 + 0.2 * 5.5) / 0.8)
    # a window covering the axis is the whole-axis mean again; at the axis' end the window is cut
    assert float(local_positions(p, 8)) == pytest.approx(3.8)
    q = torch.tensor([[[0.6, 0.3, 0.0, 0.1]]])
    assert float(local_positions(q, 1)) == pytest.approx((0.6 * 0.5 + 0.3 * 1.5) / 0.9)
    with pytest.raises(ValueError, match="window"):
        local_positions(p, 0)


def test_the_read_out_window_acts_at_inference_only():
    """A band at row 5 whose templates send most of the upper border's vote 2
    rows up and some 5 rows down: at inference with a window the border is
    read at its peak, in training (and without a window) by the whole-axis
    soft-argmax, which the far vote pulls down."""
    m, n, k = 12, 10, 1
    module = BorderVoting(k, (m, n), ["y"], crop_context=(1.5, 3.0), log_temperature_init=0.0, readout_window=1)
    logits = delta_templates(k, m, -2, +3)
    logits[:, 0, m - 1 + 5] = 29.0  # a second, smaller vote of the upper border's template
    with torch.no_grad():
        module.logits("y").copy_(logits)
    Rs = torch.zeros(1, k, m, n)
    Rs[0, 0, 5, 2:8] = 1.0
    module.train()
    soft = module(Rs)["y"]
    module.eval()
    local = module(Rs)["y"]
    torch.testing.assert_close(local["probabilities"], soft["probabilities"])
    p = soft["probabilities"][0, 0].detach().numpy()
    centres = np.arange(m) + 0.5
    assert float(soft["positions"][0, 0]) == pytest.approx(float((p * centres).sum()), abs=1e-5)
    assert float(local["positions"][0, 0]) == pytest.approx(3.5, abs=0.05)  # the peak, row 3
    assert float(soft["positions"][0, 0]) > 4.0  # pulled toward the far vote at row 10
    with pytest.raises(ValueError, match="read-out window"):
        BorderVoting(k, (m, n), ["y"], crop_context=(1.5, 3.0), readout_window=-1)


def test_border_target_and_contributions():
    target = border_heatmap_target(torch.tensor([[2.5, 6.0]]), 8, 1.0)
    torch.testing.assert_close(target.sum(-1), torch.ones(1, 2))
    assert int(target[0, 0].argmax()) == 2 and int(target[0, 1].argmax()) in (5, 6)
    g = torch.Generator().manual_seed(1)
    per_primitive = torch.rand(2, 3, 2, 8, generator=g)
    positions = torch.tensor([[2.0, 6.3], [0.2, 7.9]])
    got = border_contributions(per_primitive, positions)  # (R, B, K)
    centres = np.arange(8) + 0.5
    for r in range(2):
        for b in range(2):
            for k in range(3):
                # np.interp holds the end values beyond the outer cell centres, as the clamp does
                want = np.interp(float(positions[r, b]), centres, per_primitive[r, k, b].numpy())
                assert float(got[r, b, k]) == pytest.approx(want, abs=1e-6)


def test_the_initial_borders_lie_near_the_input_box():
    """Untrained: uniform responses vote for borders inside the crop, low before
    high, around the input box (the middle third of a crop of context 3)."""
    m, n, k = 12, 24, 4
    module = BorderVoting(k, (m, n), ["y", "x"], crop_context=(1.5, 3.0))
    out = module(torch.full((1, k, m, n), 0.5))
    low, high = out["y"]["positions"][0].tolist()
    assert 0 < low < m / 2 < high < m
    low, high = out["x"]["positions"][0].tolist()
    assert 0 < low < n / 2 < high < n


def level_with_borders(axes=("y",), m=12, n=16):
    torch.manual_seed(0)
    return VotingLevel(name="res3", in_channels=8, stride=8, num_classes=1, num_primitives=4, grid_size=(m, n),
                       spatial_template_size=None, crop_context=(1.5, 3.0), pooler_type="ROIAlignV2",
                       sampling_ratio=0, log_temperature_init=0.0, log_temperature_range=(-3.0, 3.0),
                       learn_temperature=True, fc_dims=[16], border_axes=axes)


def test_a_level_takes_the_box_height_from_its_borders_and_the_width_from_fc():
    level = level_with_borders(("y",))
    feature = torch.rand(1, 8, 20, 30)
    box = torch.tensor([[40.0, 60.0, 160.0, 80.0]])
    with torch.no_grad():
        out = level(feature, [Boxes(box)])
    borders = out.border_positions[0]
    assert torch.isnan(borders[[0, 2]]).all() and not torch.isnan(borders[[1, 3]]).any()
    height = out.pred_boxes[0, 3] - out.pred_boxes[0, 1]
    assert float(height) == pytest.approx(float(borders[3] - borders[1]), rel=1e-5)
    width = out.pred_boxes[0, 2] - out.pred_boxes[0, 0]
    assert float(width) == pytest.approx(120.0 * float(torch.exp(out.size_deltas[0, 0])), rel=1e-5)
    # the borders in the image: crop y0 + cells * crop height / M
    crop = out.crop_boxes[0]
    cells = out.borders["y"]["positions"][0]
    torch.testing.assert_close(borders[[1, 3]], crop[1] + cells * (crop[3] - crop[1]) / 12)
    trace = level.trace(out, top=2, rank_by="contribution")
    assert trace["border_contributions"].shape == (1, 4, 4)
    assert (trace["border_top_primitives"][0, [0, 2]] == -1).all()
    assert (trace["border_top_primitives"][0, [1, 3]] >= 0).all()
    # a primitive's share: the contributions average to the border vote there
    psi = out.borders["y"]["heatmaps"][0]
    for b, pos in enumerate(cells.tolist()):
        want = np.interp(pos, np.arange(12) + 0.5, psi[b].detach().numpy())
        assert float(trace["border_contributions"][0, 1 + 2 * b].mean()) == pytest.approx(want, rel=1e-4)


def test_the_border_loss_teaches_the_borders():
    """Trained on one drawn band (rows 4-7 respond), the border templates learn
    to put the borders at given true rows; the loss falls and the positions
    reach the targets within a third of a cell."""
    m, n, k = 12, 16, 3
    torch.manual_seed(0)
    module = BorderVoting(k, (m, n), ["y"], crop_context=(1.5, 3.0))
    Rs = torch.zeros(1, k, m, n)
    Rs[0, :, 4:8, 3:13] = torch.tensor([1.0, 0.5, 0.2])[:, None, None]
    true = torch.tensor([[2.7, 9.2]])
    target = border_heatmap_target(true, m, 1.0)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    losses = []
    for _ in range(150):
        p = module(Rs)["y"]["probabilities"]
        loss = (torch.xlogy(target, target) - torch.xlogy(target, p + 1e-6)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0]
    torch.testing.assert_close(module(Rs)["y"]["positions"], true, atol=0.34, rtol=0)


def test_training_a_border_model_gives_border_losses_and_gradients():
    cfg = small_cfg("nt_lcf.yaml", **{"MODEL.VOTING.BORDER_AXES": ["y", "x"]})
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage() as storage:
        losses = model(batch(with_negative=False))
    for level in ("res4", "res3"):
        assert torch.isfinite(losses[f"loss_local_border_{level}"]) and float(losses[f"loss_local_border_{level}"]) > 0
        assert f"voting_{level}/border_temperature" in storage.latest()
    sum(losses.values()).backward()
    for level in model.roi_heads.levels:
        for axis in ("x", "y"):
            grad = level.borders.logits(axis).grad
            assert grad is not None and float(grad.abs().sum()) > 0


def test_the_box_giou_term_matches_torchvision_and_is_off_by_default():
    """MODEL.VOTING.LOSS_WEIGHT_BOX_GIOU: 0 leaves the term out (the paper's
    losses, unchanged); w > 0 adds, per level, w x torchvision's generalized-IoU
    loss of that level's foreground boxes, summed and divided by the sampled
    proposals, and its gradient reaches the border templates."""
    from torchvision.ops import generalized_box_iou_loss

    off = small_cfg("nt_lcf.yaml", **{"MODEL.VOTING.BORDER_AXES": ["y", "x"]})
    torch.manual_seed(0)
    model = build_model(off).train()
    with EventStorage():
        assert not any("giou" in k for k in model(batch(with_negative=False)))

    cfg = small_cfg("nt_lcf.yaml", **{"MODEL.VOTING.BORDER_AXES": ["y", "x"], "MODEL.VOTING.LOSS_WEIGHT_BOX_GIOU": 2.0})
    torch.manual_seed(0)
    model = build_model(cfg).train()
    seen = {}
    original = model.roi_heads.losses

    def spy(outputs, level_proposals, glob):
        seen["args"] = (outputs, level_proposals)
        return original(outputs, level_proposals, glob)

    model.roi_heads.losses = spy
    with EventStorage():
        losses = model(batch(with_negative=False))
    outputs, level_proposals = seen["args"]
    for out, proposals, level in zip(outputs, level_proposals, ("res4", "res3")):
        gt_classes = torch.cat([p.gt_classes for p in proposals])
        gt_boxes = torch.cat([p.gt_boxes.tensor for p in proposals])
        fg = gt_classes == 0
        assert fg.any()
        want = 2.0 * generalized_box_iou_loss(out.pred_boxes[fg], gt_boxes[fg], reduction="sum") / len(gt_classes)
        torch.testing.assert_close(losses[f"loss_local_box_giou_{level}"], want, rtol=1e-5, atol=1e-6)
    model.zero_grad()
    losses["loss_local_box_giou_res3"].backward()
    assert float(model.roi_heads.levels[1].borders.logits("y").grad.abs().sum()) > 0


def test_the_border_templates_get_the_voting_learning_rate_and_no_weight_decay():
    from voting_det.engine.trainer import Trainer

    cfg = small_cfg("nt_lcf.yaml", **{"MODEL.VOTING.BORDER_AXES": ["y", "x"], "SOLVER.BASE_LR": 1e-4,
                                      "SOLVER.VOTING_LR_FACTOR": 100.0, "SOLVER.WEIGHT_DECAY": 1e-4})
    model = build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for level in model.roi_heads.levels:
        for param in [level.borders.logits("x"), level.borders.logits("y"), level.borders.log_temperature]:
            assert group_of[id(param)]["lr"] == pytest.approx(1e-2) and group_of[id(param)]["weight_decay"] == 0.0
    assert group_of[id(model.roi_heads.levels[0].size_pred.weight)]["lr"] == pytest.approx(1e-4)


def test_one_backbone_feeds_the_context_head_the_local_map():
    cfg = small_cfg("nt_voting.yaml", **{"MODEL.CONTEXT.SHARE_BACKBONE": True})
    model = build_model(cfg).eval()
    assert model.context_backbone is None
    assert not any(name.startswith("context_backbone.") for name in model.state_dict())
    images = model.preprocess_image([{"image": batch()[0]["image"]}])
    features = model.extract_features(images)
    assert features[CONTEXT_FEATURES] is features["res4"]
    bad = small_cfg("nt_voting.yaml", **{"MODEL.CONTEXT.SHARE_BACKBONE": True, "MODEL.CONTEXT.INIT_FROM_LOCAL": True})
    with pytest.raises(ValueError, match=r"MODEL\.CONTEXT\.SHARE_BACKBONE"):
        build_model(bad)


def test_without_box_fusion_the_box_is_the_local_one_and_the_score_is_fused():
    cfg = setup_cfg(os.path.join(CONFIG_DIR, "nt_voting.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
                     "MODEL.VOTING.RETURN_INTERMEDIATE", "True", "MODEL.CONTEXT.FUSE_BOXES", "False"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.roi_heads.fusion_logit.fill_(0.3)
        inst = model([{"image": batch()[0]["image"]}])[0]["instances"]
    assert len(inst) > 0
    expected = Boxes(inst.local_boxes.clone())
    expected.clip(inst.image_size)
    torch.testing.assert_close(inst.pred_boxes.tensor, expected.tensor)
    mu = float(torch.sigmoid(torch.tensor(0.3)))
    fused = mu * inst.local_probs[:, 0] + (1 - mu) * inst.global_probs[:, 0]
    torch.testing.assert_close(inst.scores, fused)
    model.train()
    with EventStorage():
        losses = model(batch(with_negative=False))
    assert "loss_fused_cls" in losses and "loss_fused_box" not in losses


def test_the_mean_score_averages_the_levels_class_probabilities():
    """MODEL.VOTING.TEST_SCORE "mean": each detection's local score is the
    mean of the levels' softmax (recomputed here in numpy from the levels'
    own logits), fused with the context score by Eq. 1; the boxes are those of
    "last". Training is unchanged."""
    opts = ["MODEL.DEVICE", "cpu", "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
            "MODEL.VOTING.RETURN_INTERMEDIATE", "True"]
    results, losses = {}, {}
    for score in ("last", "mean"):
        torch.manual_seed(0)
        model = build_model(setup_cfg(os.path.join(CONFIG_DIR, "nt_voting.yaml"), opts + ["MODEL.VOTING.TEST_SCORE", score]))
        with EventStorage():
            torch.manual_seed(1)
            losses[score] = {k: v.item() for k, v in model(batch(with_negative=False)).items()}
        model.eval()
        levels = []
        hooks = [level.register_forward_hook(lambda mod, args, out: levels.append(out)) for level in model.roi_heads.levels]
        with torch.no_grad():
            model.roi_heads.fusion_logit.fill_(0.3)
            results[score] = (model([{"image": batch()[0]["image"]}])[0]["instances"], levels)
        for hook in hooks:
            hook.remove()
    assert losses["mean"] == losses["last"]  # training does not read it
    mu = 1 / (1 + np.exp(-0.3))
    for score, inst_levels in results.items():
        inst, levels = inst_levels
        assert len(inst) > 0 and len(levels) == 2
        last_boxes = levels[-1].pred_boxes.numpy()
        fg = [np.exp(o.logits.numpy()) / np.exp(o.logits.numpy()).sum(axis=1, keepdims=True) for o in levels]
        fg = [p[:, 0] for p in fg]
        assert np.abs(fg[0] - fg[1]).max() > 1e-3  # the two levels disagree, so the two scores differ
        for i in range(len(inst)):
            distance = np.abs(last_boxes - inst.local_boxes[i].numpy()).sum(axis=1)
            row = int(distance.argmin())  # the detection's proposal
            assert distance[row] < 1e-3
            local = (fg[0][row] + fg[1][row]) / 2 if score == "mean" else fg[1][row]
            assert inst.local_probs[i, 0].item() == pytest.approx(local, abs=1e-5)
            assert inst.scores[i].item() == pytest.approx(mu * local + (1 - mu) * inst.global_probs[i, 0].item(), abs=1e-5)


def test_the_speed_benchmark_times_a_one_backbone_model():
    import sys

    sys.path.insert(0, os.path.dirname(CONFIG_DIR))
    from benchmarks.speed import HEAD_PREFIX, timed_components

    model = build_model(small_cfg("nt_voting.yaml", **{"MODEL.CONTEXT.SHARE_BACKBONE": True}))
    parts = timed_components(model)
    assert "context backbone" not in parts and f"{HEAD_PREFIX}context" in parts
    assert parts["backbone"] is model.backbone
