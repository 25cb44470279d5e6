"""Explanations that are about this image (docs/interpretation.md): the
specificity statistics against hand computation, the ranking's tie-break by a
second key, the contrastive ranking (vote share minus the stored training
mean), the reference file, and the panel's plain-language line. Tiny untrained
models only, no training."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from tests.helpers import load_tool
from tests.test_interpretation import tiny_cfg
from voting_det import add_voting_config
from voting_det.config import EXPLAIN_RANKINGS
from voting_det.interpretation import Explainer, image_trace, load_image, render_panel
from voting_det.interpretation.panel import explanation_line, peak_place
from voting_det.interpretation.reference import compute_reference, load_reference, save_reference
from voting_det.interpretation.specificity import (
    chance_jaccard,
    chance_overlap,
    mean_pairwise_correlation,
    pairwise_overlaps,
    run_specificity,
    specificity_index,
    tie_rate,
    top_sets,
)
from voting_det.modeling.voting_level import (
    VotingLevel,
    contrastive_scores,
    rank_primitives,
    vote_shares,
)

K = 4  # tests.test_interpretation's tiny model


# ------------------------------------------------------------------ the statistics by hand


def test_chance_levels_by_hand_and_by_enumeration():
    assert chance_overlap(5, 64) == pytest.approx(5 / 64)  # E|A and B| = 25 / 64, over S = 5
    assert chance_overlap(5, 4) == 1.0  # fewer primitives than S: the sets hold all of them
    assert chance_jaccard(1, 2) == pytest.approx(0.5)
    # K = 4, S = 2: |A and B| = 0, 1, 2 with probabilities 1/6, 4/6, 1/6 -> E J = 4/6 * 1/3 + 1/6 = 7/18
    assert chance_jaccard(2, 4) == pytest.approx(7 / 18)
    subsets = [set(c) for c in itertools.combinations(range(6), 2)]
    pairs = [(a, b) for a in subsets for b in subsets]
    assert np.mean([len(a & b) / 2 for a, b in pairs]) == pytest.approx(chance_overlap(2, 6))
    assert np.mean([len(a & b) / len(a | b) for a, b in pairs]) == pytest.approx(chance_jaccard(2, 6))


def test_between_image_overlap_tie_rate_and_correlation_by_hand():
    orders = np.array([[0, 1, 2, 3], [2, 1, 0, 3], [1, 0, 3, 2]])  # top-2 sets {0,1}, {1,2}, {0,1}
    indicators = top_sets(orders, 2)
    assert indicators.tolist() == [[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0]]
    pairs = pairwise_overlaps(indicators)
    # pairs: {0,1}{1,2}: 1/2, J 1/3; {0,1}{0,1}: 1, J 1; {1,2}{0,1}: 1/2, J 1/3
    assert pairs["pairs"] == 3
    assert pairs["overlap"] == pytest.approx(2 / 3)
    assert pairs["jaccard"] == pytest.approx(5 / 9)
    assert pairwise_overlaps(indicators[:1])["overlap"] is None
    # two of four tie at the top in the first row, one in the second
    assert tie_rate(np.array([[1.0, 1.0, 0.5, 0.2], [0.9, 0.1, 0.1, 0.1]])) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert tie_rate(np.array([0.3, 0.3, 0.3])) == 1.0
    # r = +1, -1, -1 for the pairs; the constant row has no correlation and is left out
    scores = np.array([[1.0, 2, 3], [2, 4, 6], [3, 2, 1], [5, 5, 5]])
    assert mean_pairwise_correlation(scores) == pytest.approx(-1 / 3)
    assert mean_pairwise_correlation(scores[3:]) is None
    assert specificity_index(0.2, 0.9, 0.1) == pytest.approx(0.7 / 0.8)
    assert specificity_index(0.9, 0.9, 0.1) == pytest.approx(0.0)
    assert specificity_index(0.1, 0.05, 0.1) is None  # within at chance: undefined


# ------------------------------------------------------------------ ranking: ties and the contrastive score


def test_rank_primitives_is_lexicographic():
    first = torch.tensor([[1.0, 1.0, 0.5, 1.0]])
    second = torch.tensor([[0.1, 0.3, 0.9, 0.2]])
    assert rank_primitives([first, second]).tolist() == [[1, 3, 0, 2]]
    assert rank_primitives([first, second], descending=False).tolist() == [[2, 0, 3, 1]]
    assert rank_primitives([first]).tolist() == [[0, 1, 3, 2]]  # one key: ties stay in index order


def saturated_level():
    """Three primitives on a 3 x 4 grid that each respond at every cell, with
    uniform 3 x 3 spatial templates: every Rs_k and Rc_k is positive
    everywhere, so alpha_k = 1 for all three (Eq. 3, tau = 0), while their
    responses, hence their votes c_k, are in the ratio 1 : 2 : 3."""
    level = VotingLevel(
        name="res4", in_channels=3, stride=1, num_classes=1, num_primitives=3, grid_size=(3, 4),
        spatial_template_size=(3, 3), crop_context=(1.0, 1.0), pooler_type="ROIAlignV2", sampling_ratio=0,
        log_temperature_init=0.0, log_temperature_range=(-3.0, 3.0), learn_temperature=False, fc_dims=[],
    )
    with torch.no_grad():
        level.primitives.semantic_templates.copy_(torch.eye(3))
        level.primitives.spatial_template_logits.zero_()
    feature = torch.tensor([1.0, 2.0, 3.0])[None, :, None, None].expand(1, 3, 3, 4).contiguous()
    return level, level(feature, [Boxes(torch.tensor([[0.0, 0.0, 4.0, 3.0]]))])


def test_alpha_ties_are_broken_by_the_vote_share_not_the_index():
    level, out = saturated_level()
    trace = level.trace(out, top=3, rank_by="alpha")
    assert trace["alpha"][0].tolist() == [1.0, 1.0, 1.0]  # all three tie at exactly 1
    shares = vote_shares(trace["contributions"])[0]
    assert shares.tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6], abs=1e-6)
    assert trace["top_primitives"].tolist() == [[2, 1, 0]]  # by the second key; the index order was [0, 1, 2]
    assert level.trace(out, top=3, rank_by="contribution")["top_primitives"].tolist() == [[2, 1, 0]]
    assert "contrastive" not in trace  # no reference: no contrastive field (the golden fields are unchanged)


def test_contrastive_ranking_is_the_share_minus_the_stored_mean():
    level, out = saturated_level()
    with pytest.raises(ValueError, match=r"MODEL\.EXPLAIN\.RANK_BY.*--write-reference"):
        level.trace(out, top=3, rank_by="contrastive")
    with pytest.raises(ValueError, match="K = 3"):
        level.set_explain_reference(torch.tensor([0.5, 0.5]))
    level.set_explain_reference(torch.tensor([0.05, 0.45, 0.5]))
    trace = level.trace(out, top=3, rank_by="contrastive")
    # shares 1/6, 2/6, 3/6 minus the mean shares 0.05, 0.45, 0.5
    expected = [1 / 6 - 0.05, 2 / 6 - 0.45, 3 / 6 - 0.5]
    assert trace["contrastive"][0].tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(trace["contrastive"], contrastive_scores(trace["contributions"], torch.tensor(
        [0.05, 0.45, 0.5])))
    assert trace["top_primitives"].tolist() == [[0, 2, 1]]
    # the other rankings are unchanged by the reference; removing it removes the field
    assert level.trace(out, top=3, rank_by="alpha")["top_primitives"].tolist() == [[2, 1, 0]]
    level.set_explain_reference(None)
    assert "contrastive" not in level.trace(out, top=3)


def test_default_ranking_is_the_contribution():
    cfg = get_cfg()
    add_voting_config(cfg)
    assert cfg.MODEL.EXPLAIN.RANK_BY == "contribution" and EXPLAIN_RANKINGS[0] == "contribution"
    assert "contrastive" in EXPLAIN_RANKINGS and cfg.MODEL.EXPLAIN.REFERENCE == ""


# ------------------------------------------------------------------ the plain-language line


def _line_trace(rank_by, contrastive=None):
    level = {
        "top_primitives": [3, 1, 0, 2],
        "contributions": [0.1, 0.2, 0.1, 0.3],
        "vote_at_centre": 1.0,
        "peak_points": [[-5.0, 30.0], [60.0, 30.0], [50.0, 90.0], [50.0, 19.0]],
    }
    if contrastive is not None:
        level["contrastive"] = contrastive
    return {"levels": ["res4"], "options": {"rank_by": rank_by},
            "detections": [{"box": [10.0, 20.0, 110.0, 40.0], "levels": {"res4": level}}]}


def test_peak_place_relative_to_the_box():
    box = [10.0, 20.0, 110.0, 40.0]  # 100 x 20 px
    assert peak_place([50, 19], box) == "on its upper edge"
    assert peak_place([50, 30], box) == "inside it"
    assert peak_place([50, 41], box) == "on its lower edge"
    assert peak_place([50, 5], box) == "above it"
    assert peak_place([50, 90], box) == "below it"
    assert peak_place([-5, 30], box) == "left of it"
    assert peak_place([130, 30], box) == "right of it"


def test_panel_line_names_the_top_primitives_and_where_they_matched():
    line = explanation_line(_line_trace("contribution"))
    # the first three by the ranking, their share 0.3 + 0.2 + 0.1 of Phi(x^) = 1, and where each peaks
    assert line == ("Primitives res4 3, 1, 0 (60% of the vote at the centre) placed the box; "
                    "they match best on its upper edge (3), inside it (1) and left of it (0).")
    line = explanation_line(_line_trace("contrastive", contrastive=[0.01, 0.05, -0.1, 0.04]))
    assert line.startswith("Compared with a typical image, primitives res4 3, 1, 0 (+10.0 points of the vote")
    assert explanation_line(_line_trace("alpha")).startswith("Highest trace-back score α: primitives res4 3, 1, 0")
    two = _line_trace("contribution")
    two["levels"] = ["res4", "res3"]
    two["detections"][0]["levels"]["res3"] = dict(two["detections"][0]["levels"]["res4"], top_primitives=[1, 2])
    assert explanation_line(two, per_level=2) == (
        "Primitives res4 3, 1 (50% of the vote at the centre) and res3 1, 2 (30%) placed the box; "
        "they match best on its upper edge (res4 3), inside it (res4 1; res3 1) and below it (res3 2).")


# ------------------------------------------------------------------ the reference and the measurement on a tiny model


@pytest.fixture(scope="module")
def tiny_weights(tiny_nt_set, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_spec")
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    DetectionCheckpointer(model, save_dir=str(folder)).save("model_final")
    return folder / "model_final.pth"


def test_reference_file_contrastive_traces_panel_and_specificity(tiny_nt_set, tiny_weights, tmp_path):
    records = DatasetCatalog.get(f"{tiny_nt_set[0]}_fold0_train")[:3]
    test_records = DatasetCatalog.get(f"{tiny_nt_set[0]}_fold0_test")[:3]
    cfg = tiny_cfg(**{"MODEL.WEIGHTS": str(tiny_weights), "TEST.DETECTIONS_PER_IMAGE": 1})
    with pytest.raises(FileNotFoundError, match=r"MODEL\.EXPLAIN\.REFERENCE.*--write-reference"):
        Explainer(tiny_cfg(**{"MODEL.WEIGHTS": str(tiny_weights), "MODEL.EXPLAIN.RANK_BY": "contrastive"}))
    explainer = Explainer(cfg, top_primitives=K)
    assert explainer.reference is None and explainer.ranking["rank_by"] == "contribution"
    reference = compute_reference(explainer, records, progress=False, dataset="train")
    for level in ("res4", "res3"):
        assert sum(reference["levels"][level]["mean_share"]) == pytest.approx(1.0, abs=1e-5)
    beside = tiny_weights.parent / "explain_reference.json"
    save_reference(str(beside), reference)
    try:
        # read from beside the weights; contrastive = share - mean, ranked by it
        contrastive = Explainer(tiny_cfg(**{"MODEL.WEIGHTS": str(tiny_weights), "MODEL.EXPLAIN.RANK_BY": "contrastive",
                                            "TEST.DETECTIONS_PER_IMAGE": 1}), top_primitives=K)
        assert contrastive.ranking["reference"]["file"] == str(beside)
        image = load_image(test_records[0]["file_name"])
        inst = contrastive(image).instances
        mean = torch.tensor(reference["levels"]["res3"]["mean_share"])
        assert torch.allclose(inst.trace_res3_contrastive[0], vote_shares(inst.trace_res3_contributions[0]) - mean,
                              atol=1e-6)
        assert inst.trace_res3_top_primitives[0].tolist() == rank_primitives(
            [inst.trace_res3_contrastive[0], inst.trace_res3_contributions[0], inst.trace_res3_peak_response[0]]
        ).tolist()
        trace = image_trace(contrastive(image), contrastive.levels, options={"rank_by": "contrastive"})
        fig = render_panel(image, trace)
        line = explanation_line(trace)
        top = [str(k) for k in trace["detections"][0]["levels"]["res4"]["top_primitives"][:3]]
        assert f"primitives res4 {', '.join(top)} (" in line
        assert line in [t.get_text() for sub in fig.subfigs for t in sub.texts]  # the top row's line
        # other weights: the reference is refused
        other = tmp_path / "other.pth"
        torch.save({"model": {}}, other)
        with pytest.raises(ValueError, match="other weights"):
            load_reference(str(beside), str(other))
    finally:
        beside.unlink()
    explainer.set_reference(reference, "in memory")
    result = run_specificity(explainer, test_records, top=2, stability_images=1, shift_px=4, deletion_images=1,
                             num_random=1, progress=False)
    json.dumps(result, allow_nan=False)
    for level in ("res4", "res3"):
        row = result["table"][level]["contrastive"]
        assert row["chance"] == pytest.approx(2 / K)
        assert 0.0 <= row["between"] <= 1.0 and 0.0 <= row["tie_rate"] <= 1.0
        assert set(result["table"][level]) == {"contribution", "alpha", "contrastive", "response_mass"}
    assert "contrastive" in result["deletion"]["area_vs_random"]


@pytest.mark.slow
def test_specificity_tool_writes_the_reference_json_and_summary(tiny_nt_set, tiny_weights, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(tiny_cfg().dump())
    reference = tmp_path / "reference.json"
    argv = ["--config-file", str(config), "--dataset", f"{tiny_nt_set[0]}_fold0_test", "--num-images", "3",
            "--reference-dataset", f"{tiny_nt_set[0]}_fold0_train", "--reference-images", "2", "--write-reference",
            "--reference", str(reference), "--stability-images", "1", "--shift-px", "4", "--deletion-images", "1",
            "--draws", "1", "--output", str(tmp_path / "out"), "--no-progress", "MODEL.WEIGHTS", str(tiny_weights)]
    load_tool("explanation_specificity").main(argv)
    assert json.loads(reference.read_text())["num_images"] == 2
    result = json.loads((tmp_path / "out" / "specificity.json").read_text())
    assert json.loads((tmp_path / "out" / "table.json").read_text())["table"] == result["table"]
    assert result["command"]["reference"] == str(reference)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| res3 | contrastive |" in summary and "specificity index" in summary
    with pytest.raises(FileExistsError):
        load_tool("explanation_specificity").main(argv)
    assert math.isfinite(result["table"]["res4"]["contribution"]["between"])
