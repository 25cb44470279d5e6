"""The thickness check (benchmarks/thickness.py, tools/evaluate_thickness.py)
on drawn phantoms whose thickness is known to the pixel: a fake run folder with
the detections an evaluation writes, a caliper reference, and the tool end to end."""
import csv
import gzip
import json
import os

import cv2
import numpy as np
import pytest

from benchmarks import thickness as th

from .test_measurement import LINE_PX, phantom
from .helpers import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (inner top, inner bottom) of each drawn NT: thickness 10, 16 and 7 px
NTS = [(50, 60), (44, 60), (55, 62)]
SPACING = 0.1  # mm per pixel


def _fake_run(tmp_path, dataset="phantom", fold=0, box_pad=(2.0, 2.0)):
    """Images with drawn NTs, a run folder whose test evaluation detects each
    with a box padded by box_pad rows (top, bottom), and a caliper reference
    with marks drawn on the inner borders."""
    images, records, rows = tmp_path / "images", [], []
    images.mkdir(exist_ok=True)
    for i, (top, bottom) in enumerate(NTS):
        grey = phantom(top, bottom)
        bgr = np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)
        name = f"{i}.png"
        cv2.imwrite(str(images / name), bgr)
        gt = [30.0, top - LINE_PX - 2.0, 170.0, bottom + LINE_PX + 2.0]
        det = [30.0, top - box_pad[0], 170.0, bottom + box_pad[1]]
        records.append({"image_id": i, "file_name": str(images / name), "width": 200, "height": 120, "gt": [gt],
                        "boxes": [[0.0, 0.0, 20.0, 10.0], det], "scores": [0.1, 0.9]})  # top-1 is the second
        rows.append({"file_name": name, "located": 1, "style": "plus", "score": 2.0, "upper_x": 100.0,
                     "upper_y": top - 0.5, "lower_x": 100.0, "lower_y": bottom - 0.5,
                     "distance_px": float(bottom - top), "pixel_spacing_mm": SPACING, "spacing_source": "ocr"})
    folder = tmp_path / "runs" / "proposed" / f"fold{fold}" / "eval" / "inference" / f"{dataset}_fold{fold}_test"
    folder.mkdir(parents=True)
    with gzip.open(folder / "nt_detections.json.gz", "wt") as f:
        json.dump({"dataset": f"{dataset}_fold{fold}_test", "settings": {}, "images": records}, f)
    ref = tmp_path / "reference.csv"
    with open(ref, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return tmp_path / "runs", ref, images


def test_the_check_measures_each_top1_box_against_the_reference(tmp_path):
    runs, ref, images = _fake_run(tmp_path, box_pad=(2.0, 6.0))
    reference = th.read_reference(str(ref))
    records = th.split_records(str(runs / "proposed" / "fold0"), "phantom_fold0_test")
    rows = th.measure_images(records, reference, remove_marks=False, fold=0)
    assert [r["file_name"] for r in rows] == ["0.png", "1.png", "2.png"]
    for r, (top, bottom) in zip(rows, NTS):
        assert r["profile"] == pytest.approx(bottom - top, abs=0.3)  # the drawn inner borders
        assert r["box"] == pytest.approx(bottom - top + 8.0)  # the padded box: 2 above, 6 below
        assert r["reference_px"] == bottom - top and r["top1_iou"] > 0.3
    summary = th.summarise(rows)
    # the box baseline's bias is the padding, in px and (x spacing) in mm, with no spread
    assert summary["box"]["px"]["ba_bias"] == pytest.approx(8.0) and summary["box"]["px"]["ba_sd"] == pytest.approx(0.0)
    assert summary["box"]["mm"]["ba_bias"] == pytest.approx(0.8) and summary["box"]["mm"]["within_tolerance"] == 0.0
    assert summary["profile"]["mm"]["within_tolerance"] == 1.0 and abs(summary["profile"]["mm"]["ba_bias"]) < 0.03
    text = th.format_summary(summary, "phantoms")
    assert "| box | 3 (0) |" in text and "+8.00" in text


def test_the_tool_writes_tables_rows_and_the_plot(tmp_path):
    runs, ref, images = _fake_run(tmp_path)
    tool = load_tool("evaluate_thickness")
    out = tmp_path / "out"
    tool.main(["--runs", str(runs), "--dataset", "phantom", "--methods", "proposed", "--folds", "0", "1",
               "--reference", str(ref), "--out", str(out), "--keep-marks"])
    text = (out / "thickness.md").read_text()
    assert "(missing: [1])" in text and "| profile | 3 (0) |" in text
    with open(out / "thickness_phantom_proposed.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    image = cv2.imread(str(out / "bland_altman.png"))
    assert image is not None and image.std() > 10
    from voting_det import cli

    with pytest.raises(cli.UserError, match="no test evaluation of lcf"):
        tool.main(["--runs", str(runs), "--dataset", "phantom", "--methods", "lcf", "--reference", str(ref),
                   "--out", str(out)])
