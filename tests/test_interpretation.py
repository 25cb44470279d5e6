"""Explanations (voting_det.interpretation, the trace mode of VotingRCNN and the
three tools) on crafted inputs and a tiny untrained model: the trace against
hand computation, JSON round trip, the intervention of the deletion test,
panels, atlas and faithfulness outputs, errors that name what to fix."""
import dataclasses
import json
import math
import os
import re

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from PIL import Image

from voting_det import add_voting_config
from voting_det.config import merge_config_file
from voting_det.interpretation import Explainer, image_trace, load_image, render_panel
from voting_det.interpretation.atlas import receptive_field
from voting_det.interpretation.faithfulness import (
    CONTROL,
    RANDOM,
    LocalIntervention,
    deletion_sizes,
    deletion_test,
    synthetic_with_new_speckle,
)
from voting_det.modeling import VotingLevel
from voting_det.modeling import enlarge_boxes, mask_primitives, trace_back

from .helpers import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")
K = 4
TINY_SEED = 3  # the generator seed of conftest's tiny_nt_set


def tiny_cfg(test_set="tiny_nt_fold0_test", **overrides):
    cfg = get_cfg()
    add_voting_config(cfg)
    merge_config_file(cfg, os.path.join(CONFIG_DIR, "nt_voting.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VOTING.NUM_PRIMITIVES = K
    cfg.MODEL.VOTING.GRID_SIZES = [[3, 8], [4, 12]]
    cfg.MODEL.VOTING.FC_DIMS = [16]
    cfg.MODEL.CONTEXT.FC_G1_DIMS = [8]
    cfg.MODEL.CONTEXT.FC_G2_DIMS = [8]
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 8
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 256
    cfg.DATASETS.TEST = (test_set,)
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


@pytest.fixture(scope="module")
def tiny_model(tiny_nt_set, tmp_path_factory):
    """A tiny untrained Proposed model saved as config + checkpoint: (config path, weights path)."""
    folder = tmp_path_factory.mktemp("tiny_model")
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(folder)).save("model")
    config = folder / "config.yaml"
    config.write_text(cfg.dump())
    return str(config), str(folder / "model.pth")


@pytest.fixture(scope="module")
def explainer(tiny_model):
    config, weights = tiny_model
    cfg = tiny_cfg(**{"MODEL.WEIGHTS": weights})
    return Explainer(cfg, top_primitives=K)


@pytest.fixture(scope="module")
def test_image(tiny_nt_set):
    return DatasetCatalog.get(f"{tiny_nt_set[0]}_fold0_test")[0]


# ------------------------------------------------------------------ the trace against hand computation


def hand_level():
    """A one-primitive level on a 3 x 4 grid whose crop reads a crafted feature
    map cell for cell, with the voting unit tests' hand case: Rs = 1.0 at
    (1, 0) and 0.5 at (1, 3); D_k = 0.25 at the centre, 0.75 one cell right."""
    stage = VotingLevel(
        name="res4", in_channels=2, stride=1, num_classes=1, num_primitives=1, grid_size=(3, 4), spatial_template_size=(3, 3),
        crop_context=(1.0, 1.0), pooler_type="ROIAlignV2", sampling_ratio=0, log_temperature_init=0.0,
        log_temperature_range=(-3.0, 3.0), learn_temperature=False, fc_dims=[],
    )
    D = torch.zeros(1, 3, 3)
    D[0, 1, 1], D[0, 1, 2] = 0.25, 0.75
    with torch.no_grad():
        stage.primitives.semantic_templates.copy_(torch.tensor([[1.0, 0.0]]))
        stage.primitives.spatial_template_logits.copy_(torch.log(D))  # softmax of log D = D (zeros stay 0)
    feature = torch.zeros(1, 2, 3, 4)
    feature[0, 1] = 1.0  # orthogonal to v: no response
    feature[0, :, 1, 0] = torch.tensor([1.0, 0.0])  # cos 1
    feature[0, :, 1, 3] = torch.tensor([0.5, math.sqrt(0.75)])  # cos 0.5
    return stage, feature, D


def test_stage_trace_matches_hand_computation():
    stage, feature, D = hand_level()
    out = stage(feature, [Boxes(torch.tensor([[0.0, 0.0, 4.0, 3.0]]))])
    trace = stage.trace(out, top=1)
    expected_rs = torch.zeros(3, 4)
    expected_rs[1, 0], expected_rs[1, 3] = 1.0, 0.5
    assert torch.allclose(out.response_maps[0, 0], expected_rs, atol=1e-6)
    expected_phi = torch.zeros(3, 4)
    expected_phi[1, 0], expected_phi[1, 1], expected_phi[1, 3] = 0.25, 0.75, 0.125
    assert torch.allclose(trace["vote_heatmap"][0], expected_phi, atol=1e-6)
    expected_rc = torch.zeros(3, 4)
    expected_rc[1] = torch.tensor([0.625, 0.1875, 0.09375, 0.03125])
    assert torch.allclose(trace["reconstructions"][0, 0], expected_rc, atol=1e-6)
    assert trace["alpha"][0, 0].item() == pytest.approx(23 / 26, rel=1e-5)  # the unit test's hand value
    assert stage.trace(out, top=1, tau=0.1)["alpha"][0, 0].item() == pytest.approx(2 / 3, rel=1e-5)
    assert torch.allclose(trace["primitive_votes"][0, 0], expected_phi, atol=1e-6)  # K = 1: Phi_1 = Phi
    assert torch.allclose(trace["spatial_templates"][0, 0], D, atol=1e-7)
    assert trace["top_primitives"].tolist() == [[0]]
    # soft-argmax by hand (numpy), T = 1: p = softmax((Phi - mean) / std)
    phi = expected_phi.numpy().astype(np.float64).ravel()
    p = np.exp((phi - phi.mean()) / phi.std())
    p /= p.sum()
    rows, cols = np.divmod(np.arange(12), 4)
    centre = np.array([(p * (cols + 0.5)).sum(), (p * (rows + 0.5)).sum()])
    assert np.allclose(trace["centre_cells"][0].numpy(), centre, atol=1e-5)
    assert np.allclose(trace["centres"][0].numpy(), centre, atol=1e-5)  # crop = the grid, 1 px per cell
    # c_k at the continuous centre: the bilinear interpolation of Phi there, by hand
    x, y = centre - 0.5
    c0, r0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - c0, y - r0
    grid = expected_phi.numpy()
    phi_at = ((1 - fx) * (1 - fy) * grid[r0, c0] + fx * (1 - fy) * grid[r0, c0 + 1]
              + (1 - fx) * fy * grid[r0 + 1, c0] + fx * fy * grid[r0 + 1, c0 + 1])
    assert trace["vote_at_centre"][0].item() == pytest.approx(phi_at, rel=1e-5)
    assert trace["contributions"][0].sum().item() == pytest.approx(phi_at, rel=1e-5)
    # the strongest response is at cell (row 1, col 0): centre (0.5, 1.5) in image pixels
    assert trace["peak_response"][0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert trace["peak_points"][0, 0].tolist() == pytest.approx([0.5, 1.5])
    assert trace["response_mass"][0, 0].item() == pytest.approx(1.5, abs=1e-6)
    assert trace["crop_boxes"][0].tolist() == pytest.approx([0.0, 0.0, 4.0, 3.0])


def test_deleting_a_primitive_zeroes_its_vote_and_all_deleted_gives_no_nan():
    stage, feature, _ = hand_level()
    boxes = [Boxes(torch.tensor([[0.0, 0.0, 4.0, 3.0]] * 2))]
    out = stage(feature, boxes, primitive_mask=torch.tensor([[1.0], [0.0]]))
    assert out.response_maps[0].sum() > 0 and out.response_maps[1].sum() == 0
    assert out.vote_heatmap[1].abs().sum() == 0
    assert all(torch.isfinite(v).all() for v in vars(out).values() if isinstance(v, torch.Tensor))
    # with every response gone, p is uniform and the centre is the crop centre
    assert out.centres[1].tolist() == pytest.approx([2.0, 1.5], abs=1e-5)
    trace = stage.trace(out, top=1)
    assert all(torch.isfinite(v).all() for v in trace.values())
    assert trace["alpha"][1, 0] == 0 and trace["contributions"][1, 0] == 0
    with pytest.raises(ValueError, match=r"\(K,\) = \(1,\)"):
        mask_primitives(out.response_maps, torch.ones(3))


# ------------------------------------------------------------------ the trace mode of the whole model


def _model_inputs(height, width):
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 255, (3, 128, 192), generator=g, dtype=torch.uint8)
    return [{"image": image, "height": height, "width": width}]


def test_trace_mode_is_off_by_default_and_does_not_change_the_predictions():
    torch.manual_seed(0)
    plain = build_model(tiny_cfg()).eval()
    traced = build_model(tiny_cfg(**{"MODEL.EXPLAIN.ENABLED": True, "MODEL.EXPLAIN.TOP_PRIMITIVES": K})).eval()
    traced.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a = plain(_model_inputs(256, 384))[0]["instances"]
        b = traced(_model_inputs(256, 384))[0]["instances"]
    assert not any(name.startswith("trace_") for name in a.get_fields())
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    # the trace, in the output size (2x the input), against independent recomputation
    assert len(b) > 0
    levels = ["res4", "res3"]
    for level in levels:
        get = lambda name: b.get(f"trace_{level}_{name}")  # noqa: E731
        assert get("alpha").shape == (len(b), K)
        assert torch.allclose(get("primitive_votes").mean(dim=1), get("vote_heatmap"), atol=1e-6)  # Phi = mean_k Phi_k
        assert torch.allclose(get("contributions").sum(dim=1), get("vote_at_centre"), atol=1e-6)
        for i in range(len(b)):  # Eq. 3 from the kept maps (all K, in each detection's own order)
            recomputed = trace_back(get("response_maps")[i:i + 1], get("spatial_templates")[i],
                                    get("vote_heatmap")[i:i + 1])
            assert torch.allclose(recomputed[0], get("alpha")[i, get("top_primitives")[i]], atol=1e-5)
        assert torch.allclose(get("crop_boxes"), enlarge_boxes(get("input_boxes"), 1.5, 3.0), atol=1e-3)
        assert torch.allclose(get("boxes"), b.get(f"{level}_boxes"), atol=1e-4)
        centres = (get("boxes")[:, :2] + get("boxes")[:, 2:]) / 2
        assert torch.allclose(centres, get("centres"), atol=1e-3)  # x_L is centred on the soft-argmax
        assert (get("peak_points")[..., 0] >= get("crop_boxes")[:, None, 0] - 1e-3).all()
    assert torch.allclose(b.trace_res3_input_boxes, b.res4_boxes, atol=1e-3)  # coarse to fine
    assert torch.allclose(b.trace_res4_input_boxes, b.proposal_boxes, atol=1e-3)
    assert torch.allclose(b.local_boxes, b.trace_res3_boxes)


def test_bad_explain_keys_are_named():
    with pytest.raises(ValueError, match=r"MODEL\.EXPLAIN\.RANK_BY"):
        build_model(tiny_cfg(**{"MODEL.EXPLAIN.RANK_BY": "beta"}))
    with pytest.raises(ValueError, match=r"MODEL\.EXPLAIN\.TOP_PRIMITIVES"):
        build_model(tiny_cfg(**{"MODEL.EXPLAIN.TOP_PRIMITIVES": 0}))


def test_json_trace_round_trips_and_matches_the_instances(explainer, test_image):
    image = load_image(test_image["file_name"])
    explanation = explainer(image[:, :, 0])  # a grey 2-D array works too
    trace = image_trace(explanation, explainer.levels, file="x.png", max_detections=2, class_names=["NT"],
                        options=explainer.model.roi_heads.explain_options)
    text = json.dumps(trace, allow_nan=False)
    assert json.loads(text) == trace
    det = trace["detections"][0]
    inst = explanation.instances
    assert det["box"] == pytest.approx(inst.pred_boxes.tensor[0].tolist(), rel=1e-5)
    assert det["mu"] == pytest.approx(0.5)  # FUSION_INIT 0
    assert np.asarray(det["context_boxes"]).shape == (4, 4)
    res3 = det["levels"]["res3"]
    assert np.allclose(res3["response_maps"], inst.trace_res3_response_maps[0].numpy(), rtol=1e-5, atol=1e-7)
    assert trace["image_size"] == list(image.shape[:2])


def test_an_image_without_detection_gives_an_empty_trace(tiny_model, test_image):
    """Trace mode with every box under the score threshold: the reconstruction of
    zero boxes is empty (it used to fail on an ambiguous reshape), the trace has
    no detection and is valid JSON."""
    _, weights = tiny_model
    cfg = tiny_cfg(**{"MODEL.WEIGHTS": weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 1.0})
    nothing = Explainer(cfg, top_primitives=K)
    explanation = nothing(load_image(test_image["file_name"]))
    assert len(explanation.instances) == 0
    trace = image_trace(explanation, nothing.levels, file="x.png")
    assert trace["detections"] == []
    assert json.loads(json.dumps(trace, allow_nan=False)) == trace


# ------------------------------------------------------------------ the deletion test's intervention


def test_intervention_equals_the_models_own_forward_with_the_mask(explainer, test_image):
    image = load_image(test_image["file_name"])
    explanation = explainer(image)
    intervention = LocalIntervention(explainer, explanation)  # checks that no deletion reproduces the model
    model = explainer.model
    deleted = torch.tensor([1.0, 0.0, 1.0, 0.0])
    masks = {"res4": deleted, "res3": torch.tensor([0.0, 1.0, 1.0, 1.0])}
    batched = intervention.run({lvl: m[None] for lvl, m in masks.items()})
    with torch.no_grad():
        levels, _ = model.roi_heads.run_levels(explanation.features, [explanation.proposals], primitive_masks=masks)
    sx, sy = explanation.scale
    full = levels[-1].pred_boxes[intervention.proposal_index] * torch.tensor([sx, sy, sx, sy])
    assert torch.allclose(batched["local_boxes"][0], full, atol=1e-3)
    assert not torch.allclose(batched["local_boxes"][0], intervention.baseline["local_boxes"], atol=1e-3)
    # the fused box moves by exactly mu times the local box's move
    move = batched["boxes"][0] - intervention.baseline["boxes"]
    assert torch.allclose(move, intervention.mu * (batched["local_boxes"][0] - intervention.baseline["local_boxes"]),
                          atol=1e-3)
    # all deleted gives finite outputs at every level, for every proposal
    with torch.no_grad():
        levels, _ = model.roi_heads.run_levels(explanation.features, [explanation.proposals],
                                               primitive_masks={"res4": torch.zeros(K), "res3": torch.zeros(K)})
    assert all(torch.isfinite(getattr(out, f.name)).all() for out in levels for f in dataclasses.fields(out)
               if getattr(out, f.name) is not None)


def test_deletion_test_curves(explainer, test_image):
    explanation = explainer(load_image(test_image["file_name"]))
    result = deletion_test(explainer, explanation, num_random=2, rng=np.random.default_rng(0), extra_taus=(0.5,))
    assert result["sizes"] == deletion_sizes(K) == [1, 2, 4]
    assert set(result["curves"]) == {"alpha", "contribution", "response_mass", CONTROL, "alpha_tau0.5", RANDOM}
    last = {name: c["local_box_shift"][-1] for name, c in result["curves"].items()}
    assert max(last.values()) - min(last.values()) < 1e-6  # m = K deletes everything whatever the ranking
    for curves in result["curves"].values():
        for values in curves.values():
            assert len(values) == 3 and all(np.isfinite(values))
    json.dumps(result, allow_nan=False)


def test_new_speckle_keeps_the_anatomy_and_checks_the_seed(tiny_nt_set):
    record = DatasetCatalog.get(f"{tiny_nt_set[0]}_fold0_test")[0]
    original = load_image(record["file_name"])
    (variant,) = synthetic_with_new_speckle(record["file_name"], TINY_SEED, [1])
    assert variant.shape == original.shape and not np.array_equal(variant, original)
    # same scene: the large-scale picture agrees, the fine texture does not
    blur = lambda im: cv2.GaussianBlur(im[:, :, 0].astype(np.float32), (0, 0), 6)  # noqa: E731
    assert np.corrcoef(blur(variant).ravel(), blur(original).ravel())[0, 1] > 0.8
    with pytest.raises(ValueError, match="--synthetic-seed"):
        synthetic_with_new_speckle(record["file_name"], TINY_SEED + 1, [1])


def test_receptive_field_of_resnet18_by_hand(explainer):
    # stem 7x7/2 + max-pool 3x3/2 (11 px, stride 4); res2 4 convs 3x3 (+32 = 43);
    # res3 4 convs, the first /2 (+8 +3*16 = 99, stride 8); res4 likewise (+16 +3*32 = 211, stride 16)
    assert receptive_field(explainer.model.backbone, "res3") == (99, 8)
    assert receptive_field(explainer.model.backbone, "res4") == (211, 16)


# ------------------------------------------------------------------ the tools


def _not_blank(path, width=None):
    image = np.asarray(Image.open(path).convert("RGB"))
    if width is not None:
        assert image.shape[1] == width
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 200
    return image


@pytest.mark.slow
def test_explain_tool_panel_json_any_input_and_no_overwrite(tiny_model, tiny_nt_set, tmp_path):
    config, weights = tiny_model
    explain = load_tool("explain")
    out = tmp_path / "explained"
    argv = ["--config-file", config, "--dataset", f"{tiny_nt_set[0]}_fold0_test", "--num-images", "1",
            "--output", str(out), "--top", "1", "--no-progress", "MODEL.WEIGHTS", weights]
    explain.main(argv)
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].with_suffix(".json").is_file()
    panel = _not_blank(pngs[0], width=1500)
    assert panel.shape[0] > 1500  # whole image, bars and two levels of maps
    trace = json.loads(pngs[0].with_suffix(".json").read_text())
    assert trace["format"] == "voting_det.trace/1"
    assert len(trace["detections"][0]["levels"]["res3"]["top_primitives"]) == 1
    with pytest.raises(FileExistsError, match="--overwrite"):
        explain.main(argv)
    # a folder: a grey single-channel image of an odd size, and a file that is not an image (skipped)
    grey = tmp_path / "in" / "scan.png"
    grey.parent.mkdir()
    cv2.imwrite(str(grey), np.random.default_rng(0).integers(0, 255, (101, 157), dtype=np.uint8))
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    explain.main(["--config-file", config, "--input", str(grey.parent), "--output", str(tmp_path / "grey"),
                  "--top", "1", "--detections", "1", "MODEL.WEIGHTS", weights])
    assert sorted(p.name for p in (tmp_path / "grey").iterdir()) == ["scan.json", "scan.png"]
    with pytest.raises(KeyError, match="--dataset no_such_set"):
        explain.main(["--config-file", config, "--dataset", "no_such_set", "--output", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        explain.main(["--config-file", config, "--input", str(grey), "--output", str(tmp_path / "y"),
                      "MODEL.WEIGHTS", str(tmp_path / "missing.pth")])
    with pytest.raises(FileNotFoundError, match="--config-file"):
        explain.main(["--config-file", str(tmp_path / "no.yaml"), "--input", str(grey), "--output", str(tmp_path)])


def test_explainer_refuses_other_architectures():
    cfg = get_cfg()
    add_voting_config(cfg)
    merge_config_file(cfg, os.path.join(CONFIG_DIR, "nt_fpn_R18.yaml"))
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE"):
        Explainer(cfg)


def test_panel_of_a_model_without_context_branch(tiny_nt_set, test_image):
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"MODEL.CONTEXT.ENABLED": False, "MODEL.VOTING.LEVELS": ["res4"]})
    explainer = Explainer(cfg, top_primitives=1)
    image = load_image(test_image["file_name"])
    trace = image_trace(explainer(image), explainer.levels, options=explainer.model.roi_heads.explain_options)
    assert trace["detections"][0]["global"] is None and trace["detections"][0]["mu"] is None
    fig = render_panel(image, trace)
    assert len(fig.axes) > 8


def test_panel_and_line_of_a_border_voting_model(tiny_nt_set, test_image, tmp_path):
    """A Proposed-BV-like model (border votes on both axes, one backbone, the
    score-only fusion): the trace carries each detection's voted borders and the
    primitives that voted most for each; the panel draws them (dotted lines
    across the final level's box) and its line names them."""
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"MODEL.VOTING.BORDER_AXES": ["y", "x"], "MODEL.CONTEXT.SHARE_BACKBONE": True,
                      "MODEL.CONTEXT.FUSE_BOXES": False})
    explainer = Explainer(cfg, top_primitives=2)
    image = load_image(test_image["file_name"])
    trace = image_trace(explainer(image), explainer.levels, options=explainer.model.roi_heads.explain_options)
    det = trace["detections"][0]
    last = det["levels"]["res3"]
    left, top, right, bottom = last["border_positions"]
    assert left < right and top < bottom
    order = np.asarray(last["border_top_primitives"])
    assert order.shape == (4, 2) and ((order >= 0) & (order < K)).all()
    contributions = np.asarray(last["border_contributions"])  # (4 borders, K)
    for b in range(4):  # the ranking is the contributions' order, largest first
        assert contributions[b, order[b, 0]] == contributions[b].max()
    fig = render_panel(image, trace)
    dotted = [line for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == ":"]
    horizontal = sorted(float(line.get_ydata()[0]) for line in dotted if line.get_ydata()[0] == line.get_ydata()[1])
    vertical = sorted(float(line.get_xdata()[0]) for line in dotted if line.get_xdata()[0] == line.get_xdata()[1])
    assert horizontal == pytest.approx([top, bottom], abs=1e-3) and vertical == pytest.approx([left, right], abs=1e-3)
    from voting_det.interpretation.panel import explanation_line
    line = explanation_line(trace)
    assert "upper border " + ", ".join(str(k) for k in order[1]) in line
    assert "lower border " + ", ".join(str(k) for k in order[3]) in line
    # the thickness measurement: its calipers drawn as + markers, its value written
    assert det["thickness_px"] is not None and len(det["calipers"]) == 2
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("NT ") and "px" in t for t in texts)
    fig.savefig(tmp_path / "panel.png")
    _not_blank(tmp_path / "panel.png")


def test_deletion_test_of_a_border_voting_model_ranks_and_measures_the_borders(tiny_nt_set, test_image, tmp_path):
    """With border votes (read at their peaks), the deletion test adds the
    ranking by the votes at the borders and the borders' move: the ranking is
    the order of the summed border contributions (numpy's), deleting all K
    primitives moves the borders the same whatever the ranking, and the report
    and figure carry the extra metric."""
    from voting_det.interpretation.deletion import BORDER_RANKING, ranking_order, summarise
    from voting_det.interpretation.faithfulness import run_faithfulness
    from voting_det.interpretation.faithfulness_report import format_summary, plot_faithfulness

    torch.manual_seed(0)
    cfg = tiny_cfg(**{"MODEL.VOTING.BORDER_AXES": ["y", "x"], "MODEL.CONTEXT.SHARE_BACKBONE": True,
                      "MODEL.CONTEXT.FUSE_BOXES": False, "MODEL.VOTING.BORDER_READOUT_WINDOW": 1})
    explainer = Explainer(cfg, top_primitives=K)
    explanation = explainer(load_image(test_image["file_name"]))
    inst = explanation.instances
    for level in explainer.levels:
        votes = inst.get(f"trace_{level}_border_contributions")[0].numpy()  # (4 borders, K)
        want = np.argsort(-np.nan_to_num(votes).sum(axis=0), kind="stable")
        got = ranking_order(inst, level, BORDER_RANKING)
        totals = np.nan_to_num(votes).sum(axis=0)
        np.testing.assert_allclose(totals[got], totals[want])  # the same order up to exact ties
    result = deletion_test(explainer, explanation, num_random=2, rng=np.random.default_rng(0))
    assert BORDER_RANKING in result["curves"]
    moves = {name: c["border_shift_px"] for name, c in result["curves"].items()}
    assert all(len(v) == len(result["sizes"]) and np.isfinite(v).all() for v in moves.values())
    last = [v[-1] for v in moves.values()]
    assert max(last) - min(last) < 1e-6 and last[0] > 0  # all K deleted: the borders moved, the same for all
    assert "border_shift_px" in summarise([result])["area_vs_random"][BORDER_RANKING]
    # the whole measurement, its report and its figure
    whole = run_faithfulness(explainer, [test_image], num_images=1, num_random=2, progress=False)
    assert "border_shift_px" in whole["metrics"]
    report = format_summary(whole)
    assert "border_shift_px" in report and f"| {BORDER_RANKING} |" in report
    plot_faithfulness(whole, str(tmp_path / "faithfulness.png"))
    _not_blank(tmp_path / "faithfulness.png")


@pytest.mark.slow
def test_atlas_tool_writes_linked_pages(tiny_model, tiny_nt_set, tmp_path):
    config, weights = tiny_model
    out = tmp_path / "atlas"
    load_tool("primitive_atlas").main(["--config-file", config, "--dataset", f"{tiny_nt_set[0]}_fold0_test",
                                   "--num-images", "2", "--patches", "2", "--summary-primitives", "1",
                                   "--rank-by", "share", "--output", str(out), "--no-progress",
                                   "MODEL.WEIGHTS", weights])
    index = (out / "index.html").read_text()
    links = set(re.findall(r"(?:href|src)='([^']+)'", index))
    assert {f"res3/primitive_{k:03d}.png" for k in range(K)} <= links
    for link in links:
        assert (out / link).is_file(), link
    assert "Sorted by mean vote share" in index
    _not_blank(out / "summary.png")
    data = json.loads((out / "atlas.json").read_text())
    assert len(data["images"]) == 2 and data["receptive_field"] == {"res4": 211, "res3": 99}


@pytest.mark.slow
def test_faithfulness_tool_writes_json_png_and_summary(tiny_model, tiny_nt_set, tmp_path):
    config, weights = tiny_model
    out = tmp_path / "faith"
    argv = ["--config-file", config, "--dataset", f"{tiny_nt_set[0]}_fold0_test", "--num-images", "1",
            "--draws", "2", "--shift-px", "4", "--synthetic-seed", str(TINY_SEED), "--speckle-draws", "1",
            "--output", str(out), "--no-progress", "MODEL.WEIGHTS", weights]
    load_tool("faithfulness").main(argv)
    result = json.loads((out / "faithfulness.json").read_text())
    deletion = result["deletion"]
    assert deletion["mu"] == pytest.approx(0.5) and deletion["num_images"] == 1
    assert set(deletion["area_vs_random"]) == {"alpha", "contribution", "response_mass", CONTROL, "alpha_tau0.5"}
    assert deletion["most_faithful"]["local_box_shift"] in {"alpha", "contribution", "response_mass", "alpha_tau0.5"}
    stability = result["stability"]["summary"]
    assert stability["shift"]["comparisons"] == 4 and stability["speckle"]["comparisons"] == 1
    assert stability["shift"]["chance"] == {"res4": 1.0, "res3": 1.0}  # K = 4 < 5: the top sets hold all 4
    for record in result["stability"]["records"]:
        for overlaps in (record["overlap"] or {}).values():
            assert all(0.0 <= v <= 1.0 for v in overlaps.values())
    assert "mu = 0.500" in (out / "summary.md").read_text()
    _not_blank(out / "faithfulness.png")
    with pytest.raises(FileExistsError):
        load_tool("faithfulness").main(argv)
