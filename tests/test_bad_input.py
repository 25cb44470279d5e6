"""Bad input gets one clear error naming the file, row or key (issue 7):
broken and unusual image files, malformed COCO files and boxes, empty sets,
unknown or invalid config keys, weights of another architecture or of an
unsafe kind; fuzzing of the spreadsheet reader and the predictor's input."""
import json
import os
import pickle
import string
import subprocess
import sys

import cv2
import numpy as np
import openpyxl
import pytest
import torch
from detectron2.data import DatasetCatalog, get_detection_dataset_dicts
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from voting_det.data.datasets import load_nt_coco_json
from voting_det.data.image_io import ImageReadError, read_scan
from voting_det.data.mapper import build_ultrasound_mapper
from voting_det.data.spreadsheet import SPREADSHEET_COLUMNS, SpreadsheetError, read_object_detection_xlsx
from voting_det.engine.checkpoint import SafeCheckpointer, UnsafeWeightsError
from voting_det.inference import predict_images

from .test_model import small_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return str(path)


def test_broken_files_are_named_with_what_to_do(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    good = _png(tmp_path / "good.png", np.full((40, 60, 3), 90, np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(open(good, "rb").read()[:60])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = {str(tmp_path / "missing.png"): "no such file", str(empty): "empty", str(truncated): "not a readable image",
             str(text): "not a readable image"}
    for path, what in cases.items():
        with pytest.raises(ImageReadError, match=what) as e:
            read_scan(path, where="image_id 7")
        assert path in str(e.value) and "image_id 7" in str(e.value)
    # through the mapper: the data set entry is named
    cfg = small_cfg()
    mapper = build_ultrasound_mapper(cfg, is_train=False)
    with pytest.raises(ImageReadError, match=r"empty.png \(image_id 3\): the file is empty"):
        mapper({"file_name": str(empty), "image_id": 3, "height": 40, "width": 60})


def test_16_bit_rgba_palette_grey_and_tiny_images_are_read_like_predict_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (30, 50), dtype=np.uint8)
    sixteen = grey8.astype(np.uint16) * 257 + 100  # full 16-bit range
    p16 = str(tmp_path / "sixteen.png")
    cv2.imwrite(p16, sixteen)
    out = read_scan(p16)
    assert out.shape == (30, 50, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0], (sixteen >> 8).astype(np.uint8))  # not saturated to 255
    rgb = np.stack([grey8, grey8 // 2, 255 - grey8], axis=2)
    rgba = _png(tmp_path / "rgba.png", np.dstack([rgb, np.full((30, 50), 128, np.uint8)]))
    np.testing.assert_array_equal(read_scan(rgba, "RGB"), rgb)
    palette = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_scan(str(tmp_path / "palette.png"), "RGB"), np.asarray(palette.convert("RGB")))
    grey = _png(tmp_path / "grey.png", grey8)
    assert (read_scan(grey)[:, :, 0] == grey8).all() and (read_scan(grey)[:, :, 2] == grey8).all()
    # every one of them goes through the training mapper
    cfg = small_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 128
    mapper = build_ultrasound_mapper(cfg, is_train=True)
    for i, path in enumerate([p16, rgba, str(tmp_path / "palette.png"), grey]):
        ann = [{"bbox": [5, 5, 20, 6], "bbox_mode": 1, "category_id": 0}]
        d = mapper({"file_name": path, "image_id": i, "height": 30, "width": 50, "annotations": ann})
        assert d["image"].shape[0] == 3 and len(d["instances"]) == 1


def test_the_model_predicts_on_images_smaller_than_its_grid_and_very_large_ones(tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 160, 400
    predictor = DefaultPredictor(cfg)
    for h, w in ((9, 13), (1, 1), (2400, 3600)):
        image = np.random.default_rng(h).integers(0, 255, (h, w, 3), dtype=np.uint8)
        inst = predictor(image)["instances"]
        boxes = inst.pred_boxes.tensor
        assert inst.image_size == (h, w)
        assert torch.isfinite(boxes).all() and (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all()


def _coco(tmp_path, images, annotations, name="set.json", **extra):
    (tmp_path / "img").mkdir(exist_ok=True)
    data = {"info": {"image_root": "img"}, "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "NT"}]}
    data.update(extra)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_malformed_coco_files_and_bad_boxes_are_refused_naming_them(tmp_path):
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"broken.json: not valid JSON"):
        load_nt_coco_json(str(bad_json))
    not_coco = tmp_path / "list.json"
    not_coco.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list.json: not a COCO detection file"):
        load_nt_coco_json(str(not_coco))
    images = [{"id": 1, "file_name": "a.png", "width": 100, "height": 50},
              {"id": 2, "file_name": "b.png", "width": 100, "height": 50}]
    no_bbox = _coco(tmp_path, images, [{"id": 1, "image_id": 1, "category_id": 1}], "nobbox.json")
    with pytest.raises(ValueError, match=r"(?s)nobbox.json: 1 bad box.*annotation 0, bbox None: needs a bbox of 4 numbers"):
        load_nt_coco_json(no_bbox)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 5], "area": 0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, -4, 5], "area": 0, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [90, 10, 30, 5], "area": 150, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 5], "area": 150, "iscrowd": 0},
    ]
    bad = _coco(tmp_path, images, anns, "boxes.json")
    with pytest.raises(ValueError) as e:
        load_nt_coco_json(bad)
    msg = str(e.value)
    assert "boxes.json: 3 bad box(es)" in msg and "image 1 (a.png), annotation 0" in msg
    assert "width and height must be > 0" in msg and "outside the 100x50 image" in msg and "annotation 1" in msg
    # a good file loads; an empty one is an empty set that detectron2 names
    good = _coco(tmp_path, images, anns[3:], "good.json")
    assert len(load_nt_coco_json(good)) == 2
    empty = _coco(tmp_path, [], [], "empty.json")
    DatasetCatalog.register("voting_det_test_empty", lambda: load_nt_coco_json(empty))
    try:
        with pytest.raises(AssertionError, match="voting_det_test_empty"):
            get_detection_dataset_dicts(["voting_det_test_empty"])
    finally:
        DatasetCatalog.remove("voting_det_test_empty")


@pytest.mark.slow
def test_unknown_and_invalid_config_keys_are_named_before_anything_runs(tmp_path):
    base = [sys.executable, os.path.join(ROOT, "tools/train_net.py"), "--config-file", os.path.join(ROOT, "configs/nt_ls.yaml"),
            "OUTPUT_DIR", str(tmp_path / "out")]
    for opts, expected in ((["MODEL.VOTING.NUM_PRIMITIVEZ", "4"], "MODEL.VOTING.NUM_PRIMITIVEZ"),
                           (["MODEL.VOTING.NUM_PRIMITIVES", "0"], "MODEL.VOTING.NUM_PRIMITIVES")):
        proc = subprocess.run(base + opts, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()


class _RunsCode:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_weights_of_another_architecture_or_unsafe_kind_are_refused(tmp_path):
    torch.manual_seed(0)
    small = build_model(small_cfg())
    SafeCheckpointer(small, str(tmp_path)).save("k8")
    other = build_model(small_cfg(**{"MODEL.VOTING.NUM_PRIMITIVES": 16}))
    with pytest.raises(ValueError, match=r"(?s)k8\.pth does not fit.*semantic_templates: \(8, 256\) in the file, \(16, 256\) in the model.*SKIP_MISMATCHED"):
        SafeCheckpointer(other).load(str(tmp_path / "k8.pth"))
    before = other.roi_heads.levels[0].primitives.semantic_templates.detach().clone()
    SafeCheckpointer(other, skip_mismatched=True).load(str(tmp_path / "k8.pth"))  # the rest loads
    assert torch.equal(other.roi_heads.levels[0].primitives.semantic_templates, before)
    assert torch.equal(other.proposal_generator.rpn_head.conv.weight, small.proposal_generator.rpn_head.conv.weight)
    # a pickle and a .pth holding an arbitrary object are refused: reading them could run code
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump({"model": {}}, f)
    with pytest.raises(UnsafeWeightsError, match="pickle file.*TRUST_PICKLE"):
        SafeCheckpointer(small).load(str(tmp_path / "model.pkl"))
    marker = tmp_path / "code_ran"
    torch.save({"model": small.state_dict(), "extra": _RunsCode(str(marker))}, tmp_path / "objects.pth")
    with pytest.raises(UnsafeWeightsError, match="weights_only=True"):
        SafeCheckpointer(small).load(str(tmp_path / "objects.pth"))
    assert not marker.exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_fuzz_spreadsheet_reader_refuses_random_bytes_naming_the_file(tmp_path, data):
    path = tmp_path / "ObjectDetection.xlsx"
    path.write_bytes(data)  # never a zip holding a workbook
    with pytest.raises(SpreadsheetError) as e:
        read_object_detection_xlsx(str(path))
    assert str(path) in str(e.value)


CELL = st.one_of(
    st.none(),
    st.integers(-10**6, 10**6),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False).map(lambda x: round(x, 3)),  # xlsx keeps ~15 digits
    st.text(alphabet=string.ascii_letters + string.digits + " ._-", max_size=8),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.permutations(list(SPREADSHEET_COLUMNS)), st.lists(st.lists(CELL, min_size=6, max_size=6), max_size=5))
def test_fuzz_spreadsheet_cells_read_back_by_column_name_with_their_row_numbers(tmp_path, order, rows):
    """Any cell values, columns in any order: every row that is not blank
    comes back with its sheet row number and its values under the right
    column names, as written (the reference is the generated data)."""
    path = tmp_path / "cells.xlsx"
    workbook = openpyxl.Workbook()
    workbook.active.append(order)
    for row in rows:
        workbook.active.append(row)
    workbook.save(path)
    expected = [
        (number, *(row[order.index(c)] for c in SPREADSHEET_COLUMNS))
        for number, row in enumerate(rows, start=2)
        if not all(v is None or (isinstance(v, str) and not v.strip()) for v in row)
    ]
    got = [tuple(r) for r in read_object_detection_xlsx(str(path))]
    normalise = lambda r: tuple(None if isinstance(v, str) and not v else v for v in r)  # noqa: E731 openpyxl stores "" as empty
    assert [normalise(r) for r in got] == [normalise(r) for r in expected]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=3))
def test_fuzz_predictor_input_records_unreadable_files_as_error_rows(tmp_path, blobs):
    folder = tmp_path / f"in{abs(hash(tuple(blobs))) % 10**9}"
    folder.mkdir()
    for i, blob in enumerate(blobs):
        (folder / f"{i}.png").write_bytes(blob)

    def predictor(image):  # any image that reads must reach the model as HxWx3 uint8
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        from detectron2.structures import Boxes, Instances

        inst = Instances(image.shape[:2])
        inst.pred_boxes, inst.scores = Boxes(torch.zeros(0, 4)), torch.zeros(0)
        inst.pred_classes = torch.zeros(0, dtype=torch.int64)
        return {"instances": inst}

    out = folder / "pred.csv"
    summary = predict_images(predictor, str(folder), str(out), progress=False)
    assert summary["images"] == len(blobs) and summary["processed"] + summary["errors"] == len(blobs)
