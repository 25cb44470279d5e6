"""Batch inference: the prediction table (voting_det.inference) with a scripted
predictor, and tools/predict.py end to end with a tiny random detectron2 model."""
import csv
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from voting_det.inference import (
    PREDICTION_FIELDS,
    UNREADABLE_IMAGE,
    NotAPredictionFileError,
    detection_rows,
    list_images,
    predict_images,
    read_predictions,
)

from .helpers import run_tool_output

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREDICT = os.path.join(REPO, "tools", "predict.py")
IMAGE_SHAPE = (48, 64)  # H, W
DETECTIONS_PER_IMAGE = 5


def _instances(boxes, scores, classes, shape=IMAGE_SHAPE):
    inst = Instances(shape)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _write_images(folder, names):
    """Tiny images: ``*.grey.png`` 1-channel, ``*.bad.png`` not an image, others 3-channel."""
    rng = np.random.default_rng(0)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".bad.png"):
            path.write_bytes(b"this is not an image")
        elif name.endswith(".grey.png"):
            cv2.imwrite(str(path), rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8))
        else:
            cv2.imwrite(str(path), rng.integers(0, 256, IMAGE_SHAPE + (3,), dtype=np.uint8))


def _rows_by_file(rows):
    by_file = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row)
    return by_file


def test_list_images_recursive_natural_order(tmp_path):
    _write_images(tmp_path, ["img10.png", "img2.jpg", "sub/img1.TIF", "a.bad.png"])
    (tmp_path / "notes.txt").write_text("not an image")
    root, files = list_images(str(tmp_path))
    assert root == str(tmp_path)
    assert files == ["a.bad.png", "img2.jpg", "img10.png", "sub/img1.TIF"]
    assert list_images(str(tmp_path / "img2.jpg"))[1] == ["img2.jpg"]


def test_detection_rows_ranked_named_and_thresholded():
    inst = _instances([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], [0.2, 0.9, 0.5], [0, 1, 0])
    rows = detection_rows("a.png", 48, 64, inst, class_names=["NT", "head"], score_thresh=0.3)
    assert [(r["rank"], r["score"], r["class"]) for r in rows] == [(1, 0.9, "head"), (2, 0.5, "NT")]
    assert [rows[0][k] for k in ("x0", "y0", "x1", "y1")] == [5, 6, 7, 8]
    assert rows[0]["image_height"] == 48 and rows[0]["image_width"] == 64 and rows[0]["error"] is None
    # unknown names: the class id
    assert detection_rows("a.png", 48, 64, inst)[0]["class"] == 1


def test_image_without_detection_gets_one_rank_zero_row():
    rows = detection_rows("a.png", 48, 64, _instances([], [], []))
    assert len(rows) == 1 and rows[0]["rank"] == 0
    assert all(rows[0][k] is None for k in ("score", "class", "x0", "y0", "x1", "y1"))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_appends_only_new_images(tmp_path, suffix):
    images = tmp_path / "images"
    _write_images(images, ["b.png", "a.bad.png"])
    calls = []

    def predictor(image):
        calls.append(image.shape)
        return {"instances": _instances([[1, 1, 5, 5], [2, 2, 9, 9]], [0.3, 0.7], [0, 0], image.shape[:2])}

    out = str(tmp_path / f"pred{suffix}")
    first = predict_images(predictor, str(images), out, class_names=["NT"], progress=False)
    assert first == {"images": 2, "skipped": 0, "processed": 1, "errors": 1, "detections": 2, "predicted": 1}
    assert calls == [IMAGE_SHAPE + (3,)]

    again = predict_images(predictor, str(images), out, progress=False)
    assert again["skipped"] == 2 and again["processed"] == 0 and len(calls) == 1
    assert again["predicted"] == 1  # b.png's rows of the first run; a.bad.png has only an error row

    _write_images(images, ["c.grey.png"])
    third = predict_images(predictor, str(images), out, progress=False)
    assert third["processed"] == 1 and len(calls) == 2 and calls[-1] == IMAGE_SHAPE + (3,)

    by_file = _rows_by_file(read_predictions(out))
    assert list(by_file) == ["a.bad.png", "b.png", "c.grey.png"]
    assert by_file["a.bad.png"][0]["error"] == UNREADABLE_IMAGE
    assert [(r["rank"], r["score"]) for r in by_file["b.png"]] == [(1, 0.7), (2, 0.3)]


@pytest.mark.parametrize("name,content", [("user.csv", "id,value\n1,2\n"), ("user.json", '{"a": 1}\n')])
def test_foreign_output_file_is_refused_and_untouched(tmp_path, name, content):
    _write_images(tmp_path / "images", ["b.png"])
    out = tmp_path / name
    out.write_text(content)
    with pytest.raises(NotAPredictionFileError, match="tools/predict.py"):
        predict_images(lambda image: None, str(tmp_path / "images"), str(out), progress=False)
    assert out.read_text() == content


def test_incomplete_last_line_is_dropped_and_image_redone(tmp_path):
    _write_images(tmp_path / "images", ["a.png", "b.png"])
    out = tmp_path / "pred.csv"
    header = ",".join(PREDICTION_FIELDS)
    empty = "," * (len(PREDICTION_FIELDS) - 4)  # the fields after file, height, width, rank 0
    out.write_text(f"{header}\na.png,48,64,0{empty}\nb.png,48,6")

    def predictor(image):
        return {"instances": _instances([], [], [], image.shape[:2])}

    summary = predict_images(predictor, str(tmp_path / "images"), str(out), progress=False)
    assert summary["skipped"] == 1 and summary["processed"] == 1
    assert out.read_text() == f"{header}\na.png,48,64,0{empty}\nb.png,48,64,0{empty}\n"


@pytest.fixture(scope="module")
def tiny_model_config(tmp_path_factory):
    """A random R18-FPN Faster R-CNN (GroupNorm) saved with its config YAML."""
    folder = tmp_path_factory.mktemp("tiny_model")
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.RESNETS.NORM", "GN",
        "MODEL.FPN.NORM", "GN",
        "MODEL.ROI_HEADS.NUM_CLASSES", 1,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
        "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
        "TEST.DETECTIONS_PER_IMAGE", DETECTIONS_PER_IMAGE,
        "INPUT.MIN_SIZE_TEST", 64,
        "INPUT.MAX_SIZE_TEST", 96,
        "DATASETS.TEST", (),
    ])
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(folder)).save("model")
    config_file = folder / "config.yaml"
    config_file.write_text(cfg.dump())
    return str(config_file), str(folder / "model.pth")


def _run_predict(config_file, weights, images, output):
    result = subprocess.run(
        [sys.executable, PREDICT, "--config-file", config_file, "--input", str(images), "--output", str(output),
         "--no-progress", "MODEL.WEIGHTS", weights],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_predict_cli_rows_resume_and_new_image(tiny_model_config, tmp_path, capsys):
    config_file, weights = tiny_model_config
    images, output = tmp_path / "images", tmp_path / "predictions.csv"
    _write_images(images, ["scan1.grey.png", "sub/scan2.png", "scan3.bad.png"])

    first = _run_predict(config_file, weights, images, output)
    assert "scan3.bad.png" in first.stderr
    # the model ran: none of the known third-party messages, no "from scratch" before the weights load
    for noise in ("Warning", "warnings.warn", "is_fx_tracing", "meshgrid", "No checkpoint found"):
        assert noise not in first.stderr, first.stderr
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    by_file = _rows_by_file(rows)
    assert set(by_file) == {"scan1.grey.png", "sub/scan2.png", "scan3.bad.png"}
    assert by_file["scan3.bad.png"][0]["error"] and by_file["scan3.bad.png"][0]["x0"] == ""
    height, width = IMAGE_SHAPE
    for file in ("scan1.grey.png", "sub/scan2.png"):
        image_rows = by_file[file]
        assert 1 <= len(image_rows) <= DETECTIONS_PER_IMAGE
        assert [int(r["rank"]) for r in image_rows] == list(range(1, len(image_rows) + 1))
        scores = [float(r["score"]) for r in image_rows]
        assert scores == sorted(scores, reverse=True)
        for r in image_rows:
            assert (int(r["image_height"]), int(r["image_width"])) == IMAGE_SHAPE and r["error"] == ""
            x0, y0, x1, y1 = (float(r[k]) for k in ("x0", "y0", "x1", "y1"))
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height

    # the resumed runs: the tool by its guard in this process (the first run checked the process's own output)
    argv = ["--config-file", config_file, "--input", images, "--output", output, "--no-progress", "MODEL.WEIGHTS", weights]
    content = output.read_text()
    code, stdout, _ = run_tool_output(capsys, "predict", *argv)
    assert code == 0 and output.read_text() == content
    assert "0 processed, 3 already in" in stdout

    _write_images(images, ["scan4.png"])
    code, stdout, _ = run_tool_output(capsys, "predict", *argv)
    assert code == 0 and "1 processed, 3 already in" in stdout
    assert output.read_text().startswith(content)
    new_rows = _rows_by_file(read_predictions(str(output)))
    assert list(new_rows)[-1] == "scan4.png" and len(new_rows) == 4
