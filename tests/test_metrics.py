"""The NT metrics (docs/method.md section 5) against hand-computed cases and
independent references (sklearn's roc_auc_score, pairwise counting)."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Boxes, Instances
from sklearn.metrics import roc_auc_score

from voting_det.evaluation import NTEvaluator, SettingsMismatchError, check_same_settings, evaluate_records, load_records
from voting_det.evaluation import metrics as M

from .helpers import load_tool

GT = [10.0, 10.0, 30.0, 20.0]  # 20 x 10, centre (20, 15)


def rec(gt, dets, image_id=0, **extra):
    """dets: list of (box, score)."""
    r = {"image_id": image_id, "file_name": f"im{image_id}.png", "gt": gt,
         "boxes": [list(b) for b, _ in dets], "scores": [s for _, s in dets]}
    r.update(extra)
    return r


def test_box_iou_hand_computed():
    a = [[0, 0, 10, 10]]
    b = [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [3, 3, 3, 8]]
    np.testing.assert_allclose(M.box_iou(a, b), [[50 / 150, 1.0, 0.0, 0.0]])


def test_mann_whitney_auc_equals_sklearn_with_ties_and_missing():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = rng.integers(0, 5, rng.integers(1, 30)).astype(float)
        neg = rng.integers(0, 5, rng.integers(1, 30)).astype(float)
        pos[rng.random(len(pos)) < 0.2] = -np.inf  # missed structures
        neg[rng.random(len(neg)) < 0.2] = -np.inf  # empty slots
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        s = np.r_[pos, neg]
        s[np.isinf(s)] = -1e9
        assert M.mann_whitney_auc(pos, neg) == pytest.approx(roc_auc_score(y, s))


def test_one_to_one_matching_takes_the_highest_score():
    gt = [GT]
    boxes = [[10, 10, 30, 20], [11, 10, 30, 20], [100, 100, 120, 110]]  # sorted by score
    d2g, g2d = M.match_detections(gt, boxes)
    assert d2g.tolist() == [0, -1, -1] and g2d.tolist() == [0]
    # IoU must be strictly above 0.5: this box has IoU exactly 0.5
    half = [[10, 10, 30, 15]]
    assert M.box_iou(half, gt)[0, 0] == pytest.approx(0.5)
    assert M.match_detections(gt, half)[1].tolist() == [-1]


def test_top1_iou_centre_error_and_lenient_variants_hand_computed():
    records = [
        rec([GT], [([10, 10, 30, 20], 0.9)], 0),  # exact: IoU 1, error 0
        rec([GT], [([14, 10, 34, 20], 0.8)], 1),  # shifted 4 px: IoU 16*10/(24*10) = 2/3, error 4
        rec([GT], [([20, 10, 40, 20], 0.7), ([10, 10, 30, 20], 0.1)], 2),  # top-1 IoU 1/3: lenient only; centre (30,15) on the edge
        rec([GT], [([25, 15, 45, 25], 0.6)], 3),  # IoU 25/375; centre (35, 20) outside; error hypot(15, 5)
        rec([GT], [], 4),  # no detection: IoU 0, no centre error
    ]
    s = M.analyse(records)
    out = M.summarise(s)
    assert out["top1_acc"] == pytest.approx(100 * 2 / 5)
    assert out["top1_acc_iou_lenient"] == pytest.approx(100 * 3 / 5)
    assert out["top1_acc_centre_inside"] == pytest.approx(100 * 3 / 5)
    assert out["mean_iou"] == pytest.approx((1 + 2 / 3 + 1 / 3 + 25 / 375 + 0) / 5)
    errors = [0, 4, 10, np.hypot(15, 5)]
    assert out["centre_error_px_mean"] == pytest.approx(np.mean(errors))
    assert out["centre_error_px_median"] == pytest.approx(np.median(errors))
    assert out["num_without_detection"] == 1
    with_spacing = M.summarise(M.analyse([dict(r, pixel_spacing=0.1) for r in records]))
    assert with_spacing["centre_error_mm_mean"] == pytest.approx(0.1 * np.mean(errors))


def test_paper_style_sen_spe_auc_on_a_hand_made_set():
    far = [200, 200, 220, 210]
    records = [
        rec([GT], [([10, 10, 30, 20], 0.9), (far, 0.3)], 0),  # top-1 correct
        rec([GT], [(far, 0.8), ([10, 10, 30, 20], 0.6)], 1),  # top-1 wrong, found second
        rec([GT], [(far, 0.4)], 2),  # missed
        rec([], [(far, 0.5)], 3),  # negative image with a false positive
    ]
    out = M.summarise(M.analyse(records, top_n=2))
    # SEN: ground truths matched by their image's top-1: 1 of 3
    assert out["paper_sen"] == pytest.approx(100 / 3)
    # slots: 2 per image = 8; matched 2 -> 6 unmatched; top-1 unmatched in images 1, 2, 3
    assert out["paper_spe"] == pytest.approx(100 * (1 - 3 / 6))
    # positives: 0.9, 0.6, -inf (missed); negatives: 0.3, 0.8, 0.4, -inf, 0.5, -inf
    pos, neg = [0.9, 0.6, -1e9], [0.3, 0.8, 0.4, -1e9, 0.5, -1e9]
    auc = roc_auc_score(np.r_[np.ones(3), np.zeros(6)], np.r_[pos, neg])
    assert out["paper_auc"] == pytest.approx(100 * auc)


def test_lroc_auc_sen_spe_against_pairwise_counting():
    rng = np.random.default_rng(1)
    records = []
    for i in range(60):
        positive = i % 3 != 0
        score = float(rng.integers(1, 8)) / 10
        if positive:
            box = GT if rng.random() < 0.7 else [100, 100, 120, 110]
            dets = [(box, score)] if rng.random() < 0.9 else []
            records.append(rec([GT], dets, i))
        else:
            records.append(rec([], [([50, 50, 70, 60], score)] if rng.random() < 0.8 else [], i))
    s = M.analyse(records)
    out = M.summarise(s, threshold=0.35)
    found, neg = [], []
    for r in records:
        top = r["scores"][0] if r["scores"] else 0.0
        if r["gt"]:
            hit = bool(r["boxes"]) and M.box_iou(r["boxes"][:1], r["gt"])[0, 0] > 0.5
            found.append((hit, top))
        else:
            neg.append(top)
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) if hit else 0.0 for hit, p in found for n in neg]
    assert out["lroc_auc"] == pytest.approx(100 * np.mean(pairs))
    assert out["lroc_sen"] == pytest.approx(100 * np.mean([hit and p >= 0.35 for hit, p in found]))
    assert out["lroc_spe"] == pytest.approx(100 * np.mean([n < 0.35 for n in neg]))
    # the curve's trapezoid area (extended flat to x = 100%) is the same AUC
    x, y, _ = M.lroc_curve(s)
    area = np.trapz(y, x) + y[-1] * (100 - x[-1])
    assert area / 100 == pytest.approx(out["lroc_auc"])
    # the threshold chosen on a set maximises SEN + SPE there
    t = M.choose_threshold(s)
    best = M.summarise(s, threshold=t)
    for other in np.unique(s.top1_score):
        o = M.summarise(s, threshold=float(other))
        assert best["lroc_sen"] + best["lroc_spe"] >= o["lroc_sen"] + o["lroc_spe"] - 1e-9


def test_lroc_refused_without_negatives():
    s = M.analyse([rec([GT], [(GT, 0.9)], 0)])
    with pytest.raises(M.NoNegativesError, match="no negative|has none"):
        M.lroc_curve(s)
    out = M.summarise(s, threshold=0.5)
    assert "lroc_auc" not in out and "lroc_sen" not in out
    result = evaluate_records([rec([GT], [(GT, 0.9)], 0)], {"match_iou": 0.5, "paper_top_n": 10}, num_bootstrap=0)
    assert any("no negative images" in n for n in result["notes"])


def test_froc_hand_computed():
    far = [200, 200, 220, 210]
    records = [
        rec([GT], [([10, 10, 30, 20], 0.9), (far, 0.8)], 0),
        rec([GT], [(far, 0.7), ([10, 10, 30, 20], 0.2)], 1),
    ]
    fppi, sens = M.froc_curve(M.analyse(records))
    # cuts: 0.9 (TP) 0.8 (FP) 0.7 (FP) 0.2 (TP)
    np.testing.assert_allclose(fppi, [0, 0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(sens, [0, 50, 50, 50, 100])
    out = M.summarise(M.analyse(records))
    assert out["froc_sen@0.5fp"] == 50 and out["froc_sen@1fp"] == 100 and out["froc_sen@0.125fp"] == 50


HIGHER_IS_BETTER = ["top1_acc", "top1_acc_iou_lenient", "top1_acc_centre_inside", "mean_iou", "paper_auc",
                    "paper_sen", "paper_spe", "lroc_auc", "lroc_sen", "lroc_spe", "froc_mean"]


def _random_set(rng, n=30):
    records = []
    for i in range(n):
        gt = [] if rng.random() < 0.3 else [[float(rng.integers(0, 50)), 10.0, 0.0, 20.0]]
        if gt:
            gt[0][2] = gt[0][0] + 20
        dets = []
        for _ in range(rng.integers(0, 5)):
            if gt and rng.random() < 0.5:
                b = np.array(gt[0]) + rng.normal(0, 3, 4)
            else:
                b = np.array([100.0, 100, 120, 110]) + rng.normal(0, 20, 4)
            dets.append((b.tolist(), float(rng.random())))
        records.append(rec(gt, dets, i))
    return records


def test_junk_and_duplicate_boxes_cannot_raise_any_metric():
    """One-to-one matching and fixed top-N slots: adding low-score boxes away
    from the ground truth, or duplicates of existing boxes, never helps."""
    rng = np.random.default_rng(2)
    for trial in range(25):
        records = _random_set(rng)
        base = M.summarise(M.analyse(records), threshold=0.5)
        worse = []
        for r in records:
            r = dict(r, boxes=list(r["boxes"]), scores=list(r["scores"]))
            if r["scores"] and rng.random() < 0.7:
                if rng.random() < 0.5:  # junk below every score of the image, away from the structure
                    low = min(r["scores"])
                    for _ in range(rng.integers(1, 12)):
                        r["boxes"].append([300.0, 300, 330, 310])
                        r["scores"].append(low * rng.random())
                else:  # a duplicate of one of its boxes, at a lower score
                    j = int(rng.integers(0, len(r["boxes"])))
                    r["boxes"].append(list(r["boxes"][j]))
                    r["scores"].append(r["scores"][j] * 0.999)
            worse.append(r)
        after = M.summarise(M.analyse(worse), threshold=0.5)
        for key in HIGHER_IS_BETTER:
            if key in base and np.isfinite(base[key]):
                assert after[key] <= base[key] + 1e-9, (trial, key, base[key], after[key])


def test_bootstrap_intervals_and_paired_differences():
    rng = np.random.default_rng(3)
    s = M.analyse(_random_set(rng, 80))
    point = M.summarise(s, threshold=0.5)
    ci = M.bootstrap(s, num=200, threshold=0.5)
    for key in ("top1_acc", "paper_auc", "lroc_auc", "mean_iou"):
        lo, hi = ci[key]
        assert lo <= point[key] <= hi and hi > lo
    same = M.paired_bootstrap(s, s, num=50, threshold_a=0.5, threshold_b=0.5)
    assert same["top1_acc"]["diff"] == 0 and same["top1_acc"]["low"] == 0 == same["top1_acc"]["high"]


def test_settings_mismatch_is_refused_naming_the_key():
    a = {"INPUT.MIN_SIZE_TEST": 576, "TEST.DETECTIONS_PER_IMAGE": 10}
    assert check_same_settings({"x": a, "y": dict(a)}) == a
    with pytest.raises(SettingsMismatchError, match=r"TEST.DETECTIONS_PER_IMAGE: 10 in x but 100 in y"):
        check_same_settings({"x": a, "y": dict(a, **{"TEST.DETECTIONS_PER_IMAGE": 100})})


def test_evaluator_on_detectron2_instances(tmp_path):
    name = "voting_det_test_metrics_set"
    dicts = []
    for i in range(4):
        anns = [] if i == 3 else [{"bbox": [10, 10, 20, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}]
        dicts.append({"file_name": f"im{i}.png", "image_id": i, "height": 64, "width": 64, "annotations": anns})
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    ev = NTEvaluator(name, settings={"INPUT.MIN_SIZE_TEST": 64}, output_dir=str(tmp_path), distributed=False,
                     num_bootstrap=20)
    ev.reset()
    outs = []
    for i in range(4):
        inst = Instances((64, 64))
        boxes = {0: [[10, 10, 30, 20], [40, 40, 50, 50]], 1: [[40, 40, 50, 50], [10, 10, 30, 20]], 2: [], 3: [[5, 5, 9, 9]]}[i]
        scores = {0: [0.9, 0.1], 1: [0.8, 0.7], 2: [], 3: [0.6]}[i]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.tensor(scores, dtype=torch.float32)
        inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
        outs.append({"instances": inst})
    ev.process([{"image_id": i, "file_name": f"im{i}.png"} for i in range(2)], outs[:2])
    ev.process([{"image_id": i, "file_name": f"im{i}.png"} for i in range(2, 4)], outs[2:])
    result = ev.evaluate()["nt"]
    assert result["top1_acc"] == pytest.approx(100 / 3)
    assert result["num_negative_images"] == 1 and result["num_without_detection"] == 1
    for f in ("nt_detections.json", "nt_metrics.json", "nt_curves.json", "nt_top1.csv"):
        assert (tmp_path / f).is_file()
    dataset, settings, records = load_records(str(tmp_path / "nt_detections.json"))
    assert dataset == name and settings["INPUT.MIN_SIZE_TEST"] == 64
    again = evaluate_records(records, settings, num_bootstrap=0)["metrics"]
    assert again == pytest.approx(result, nan_ok=True)
    saved = json.loads((tmp_path / "nt_metrics.json").read_text())
    assert saved["settings"]["paper_top_n"] == 10 and "top1_acc" in saved["ci95"]
    rows = (tmp_path / "nt_top1.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[1].split(",")[-1] == "1"
    DatasetCatalog.remove(name)


def test_top1_outcomes_sort_each_failure_kind_by_hand():
    from benchmarks.tables import top1_outcomes

    gt = [[100, 100, 300, 140]]  # 200 x 40
    records = [
        rec(gt, [([100, 100, 300, 140], 0.9)], 0),  # the NT itself
        rec(gt, [([100, 100, 300, 180], 0.9)], 1),  # IoU 0.5 exactly: not > 0.5, but > 0.3
        rec(gt, [([150, 110, 250, 300], 0.9)], 2),  # centre (200, 205) outside, IoU 3000 / 24000 = 0.125
        rec(gt, [([180, 60, 220, 180], 0.9)], 3),  # centre (200, 120) inside, IoU 1600 / 11200
        rec(gt, [([500, 500, 600, 540], 0.9)], 4),  # far away
        rec(gt, [], 5),  # nothing
        rec([], [([0, 0, 10, 10], 0.9)], 6),  # a negative image: not an outcome
    ]
    outcomes = top1_outcomes(M.analyse(records))
    assert list(outcomes) == ["correct", "loose", "elsewhere", "centre_inside", "elsewhere", "none"]


def test_top1_size_ratios_by_hand():
    gt = [[0, 0, 200, 40]]
    records = [rec(gt, [([0, 0, 100, 10], 0.2), ([0, 0, 100, 20], 0.9)]),  # the top-1 is the 0.9 box
               rec(gt, []), rec([], [([0, 0, 5, 5], 0.5)])]
    stats = M.analyse(records)
    ratios = stats.top1_size_ratio[stats.positive]
    assert ratios.shape == (2, 2)
    np.testing.assert_allclose(ratios[0], [0.5, 0.5])
    assert np.isnan(ratios[1]).all()


def test_compare_evals_tool_pairs_images_and_refuses_other_images(tmp_path, capsys):
    tool = load_tool("compare_evals")
    gt = [[100, 100, 300, 140]]
    settings = {"match_iou": 0.5, "paper_top_n": 10}
    good = [rec(gt, [([100, 100, 300, 140], 0.9)], i) for i in range(4)]
    half = good[:2] + [rec(gt, [([500, 500, 600, 540], 0.9)], i) for i in (2, 3)]
    for name, records in (("a", good), ("b", half), ("c", good[:3])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "nt_detections.json").write_text(json.dumps({"dataset": "d", "settings": settings, "images": records}))
    out = tmp_path / "cmp.md"
    assert tool.main([f"A={tmp_path / 'a'}", f"B={tmp_path / 'b'}", "--num-bootstrap", "50", "--out", str(out)]) == 0
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| B |"))
    assert "| 50.0 [" in row and "| -50.0 [" in row  # top-1 accuracy and its paired difference to A
    assert tool.main([f"A={tmp_path / 'a'}", f"C={tmp_path / 'c'}"]) == 2
    assert "other images" in capsys.readouterr().err
    # a benchmark archive's gzipped copy reads the same
    import gzip

    (tmp_path / "bz").mkdir()
    with gzip.open(tmp_path / "bz" / "nt_detections.json.gz", "wt") as f:
        f.write((tmp_path / "b" / "nt_detections.json").read_text())
    out_gz = tmp_path / "cmp_gz.md"
    assert tool.main([f"A={tmp_path / 'a'}", f"B={tmp_path / 'bz'}", "--num-bootstrap", "50", "--out", str(out_gz)]) == 0
    assert out_gz.read_text().replace("bz", "b") == text.replace(str(out), str(out_gz))


def test_align_records_reorders_to_the_reference_and_names_missing_images():
    gt = [[100, 100, 300, 140]]
    a = [rec(gt, [([100, 100, 300, 140], 0.9)], i) for i in range(4)]
    b = [rec(gt, [([100, 100, 300, 140], 0.1 * i)], i) for i in (2, 0, 3, 1)]
    aligned = M.align_records(a, b)
    assert [r["image_id"] for r in aligned] == [r["image_id"] for r in a]
    assert [r is b[k] for r, k in zip(aligned, (1, 3, 0, 2))] == [True] * 4
    with pytest.raises(ValueError, match="1 only in the first"):
        M.align_records(a, b[:3])
    with pytest.raises(ValueError, match="listed twice"):
        M.align_records(a, b + [b[0]])


def test_compare_evals_pools_folders_of_different_images(tmp_path, capsys):
    """Two validation splits pooled (FOLDER:FOLDER): the pooled top-1 accuracy
    counts every image once; pooling one image twice or pooling evaluations
    made with other settings is refused."""
    tool = load_tool("compare_evals")
    gt = [[100, 100, 300, 140]]
    settings = {"match_iou": 0.5, "paper_top_n": 10}
    hit = lambda i: rec(gt, [([100, 100, 300, 140], 0.9)], i)  # noqa: E731
    miss = lambda i: rec(gt, [([500, 500, 600, 540], 0.9)], i)  # noqa: E731
    folders = {"a1": [hit(0), hit(1), hit(2)], "a2": [hit(10), miss(11)],  # A: 4 of 5
               "b1": [hit(0), miss(1), miss(2)], "b2": [hit(10), hit(11)],  # B: 3 of 5
               "dup": [hit(2)]}
    for name, records in folders.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "nt_detections.json").write_text(json.dumps({"dataset": name, "settings": settings, "images": records}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "nt_detections.json").write_text(json.dumps(
        {"dataset": "other", "settings": dict(settings, match_iou=0.3), "images": [hit(10), hit(11)]}))
    d = lambda *names: os.pathsep.join(str(tmp_path / n) for n in names)  # noqa: E731
    out = tmp_path / "pooled.md"
    assert tool.main([f"A={d('a1', 'a2')}", f"B={d('b2', 'b1')}", "--num-bootstrap", "50", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# 5 images")
    assert "| 80.0 [" in next(line for line in text.splitlines() if line.startswith("| A |"))
    row = next(line for line in text.splitlines() if line.startswith("| B |"))
    assert "| 60.0 [" in row and "| -20.0 [" in row
    assert tool.main([f"A={d('a1', 'dup')}", f"B={d('b1', 'b2')}"]) == 2
    err = capsys.readouterr().err
    assert "more than once" in err and str(tmp_path / "dup") in err
    assert tool.main([f"A={d('a1')}{os.pathsep}", f"B={d('b1')}"]) == 2  # an empty folder entry
    assert "missing" in capsys.readouterr().err
    assert tool.main([f"A={d('a1', 'other')}", f"B={d('b1', 'b2')}"]) == 2
    assert "match_iou" in capsys.readouterr().err


def test_compare_evals_per_folder_ids_pairs_overlapping_splits_folder_by_folder(tmp_path, capsys):
    """Validation splits of different folds overlap: image 2 is in both folds'
    splits, evaluated by each fold's own model. Refused by default; with
    --per-folder-ids it counts once per folder, paired with the same folder
    position of the other argument (hand count: A 3 of 4, B 1 of 4)."""
    tool = load_tool("compare_evals")
    gt = [[100, 100, 300, 140]]
    settings = {"match_iou": 0.5, "paper_top_n": 10}
    hit = lambda i: rec(gt, [([100, 100, 300, 140], 0.9)], i)  # noqa: E731
    miss = lambda i: rec(gt, [([500, 500, 600, 540], 0.9)], i)  # noqa: E731
    folders = {"a_f1": [hit(1), hit(2)], "a_f2": [miss(2), hit(3)],
               "b_f1": [miss(1), hit(2)], "b_f2": [miss(2), miss(3)]}
    for name, records in folders.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "nt_detections.json").write_text(json.dumps({"dataset": name, "settings": settings, "images": records}))
    d = lambda *names: os.pathsep.join(str(tmp_path / n) for n in names)  # noqa: E731
    args = [f"A={d('a_f1', 'a_f2')}", f"B={d('b_f1', 'b_f2')}", "--num-bootstrap", "50"]
    assert tool.main(args) == 2
    assert "--per-folder-ids" in capsys.readouterr().err
    out = tmp_path / "per_folder.md"
    assert tool.main(args + ["--per-folder-ids", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# 4 images (image ids counted once per pooled folder")
    assert "--per-folder-ids --num-bootstrap 50`" in next(line for line in text.splitlines() if line.startswith("Command:"))
    assert "| 75.0 [" in next(line for line in text.splitlines() if line.startswith("| A |"))
    row = next(line for line in text.splitlines() if line.startswith("| B |"))
    # image 2 of fold 2 is a miss for both, image 2 of fold 1 a hit for both: pairing by folder, not by id
    assert "| 25.0 [" in row and "| -50.0 [" in row
    # folders listed in another order pair fold 1's images with fold 2's: refused, as other images
    assert tool.main([f"A={d('a_f1', 'a_f2')}", f"B={d('b_f2', 'b_f1')}", "--per-folder-ids"]) == 2
    assert "other images" in capsys.readouterr().err
