"""The spreadsheet -> COCO converter, on tiny hand-made data sets in tmp_path."""
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from voting_det.data.fetus_framework import (
    AMBIGUOUS_FILE,
    BAD_COORDINATE,
    BOX_OUTSIDE_IMAGE,
    DUPLICATE_ROW,
    EMPTY_BOX,
    MISSING_FILE,
    UNKNOWN_STRUCTURE,
    UNREADABLE_IMAGE,
    ConversionError,
    convert_fetus_framework,
)
from voting_det.data.spreadsheet import write_object_detection_xlsx

CLI = Path(__file__).resolve().parents[1] / "tools" / "convert_fetus_framework.py"
H, W = 60, 80
SUB = "Train & Val"
FOLDS = 3
SPLIT_NAMES = [f"fold{k}_{s}" for k in range(FOLDS) for s in ("train", "val", "test")]


def _pattern(seed):
    """A smooth random grey image; different seeds give far-apart pHashes."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (W, H), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def _save(path, grey):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.dstack([grey] * 3))


def _make_set(root, bad=False):
    """Write images and ObjectDetection.xlsx under ``root``; return the rows.

    Clean part: 12 positives (p*), a near-duplicate trio of positives (d0; d1 =
    d0 + noise; d2 = d0 shifted 1 px), 6 negatives (n*, palate rows only), 2
    unannotated images (u*). ``bad`` adds one planted problem of each kind.
    """
    images = root / SUB
    rows = []
    for i in range(12):
        _save(images / f"p{i}.png", _pattern(i))
        rows.append((f"p{i}.png", "NT", 20 + i, 5 + i, 30 + i, 60 + i))
    rows[0] = ("p0.png", "NT", 0, 0, H, W)  # touching every border: valid
    rows[1] = ("p1.png", "nt", 21, 6, 31, 61)  # structure names are case-insensitive
    base = _pattern(100)
    noisy = np.clip(base + np.random.default_rng(0).normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    for name, grey in (("d0", base), ("d1", noisy), ("d2", np.roll(base, 1, axis=1))):
        _save(images / f"{name}.png", grey)
        rows.append((f"{name}.png", "NT", 10, 10, 20, 50))
    for i in range(6):
        _save(images / f"n{i}.png", _pattern(200 + i))
        rows.append((f"n{i}.png", "palate", 5, 5, 15, 15))
    for i in range(2):
        _save(images / f"u{i}.png", _pattern(300 + i))
    if bad:
        (images / "zero.png").write_bytes(b"")
        _save(images / "full.png", _pattern(400))
        data = (images / "full.png").read_bytes()
        (images / "trunc.png").write_bytes(data[: len(data) // 2])
        (images / "full.png").unlink()
        for name, seed in (("nonnum", 401), ("frac", 402), ("empty", 403), ("out", 404), ("unknown", 405)):
            _save(images / f"{name}.png", _pattern(seed))
        _save(images / "two.png", _pattern(406))
        _save(root / "other" / "amb.png", _pattern(407))
        _save(images / "amb.png", _pattern(408))
        rows += [
            ("nothere.png", "NT", 10, 10, 20, 20),
            ("zero.png", "NT", 10, 10, 20, 20),
            ("trunc.png", "NT", 10, 10, 20, 20),
            ("nonnum.png", "NT", "abc", 10, 20, 20),
            ("frac.png", "NT", 10, 3.5, 20, 20),
            ("empty.png", "NT", 10, 40, 20, 40),
            ("out.png", "NT", 10, 10, 20, W + 1),
            ("unknown.png", "N T", 10, 10, 20, 20),
            ("p2.png", "NT", 22, 7, 32, 62),  # duplicate of p2's row: p2 stays
            ("two.png", "NT", 10, 10, 20, 20),
            ("two.png", "NT", 10, 10, 20, None),  # one of two NT boxes is bad: image dropped
            ("n5.png", "palate", 15, 5, 15, 15),  # bad box of another structure: n5 stays negative
            ("amb.png", "NT", 10, 10, 20, 20),
        ]
    write_object_detection_xlsx(str(root / "ObjectDetection.xlsx"), rows)
    return rows


def _row_number(rows, fname, nth=0):
    return [i + 2 for i, r in enumerate(rows) if r[0] == fname][nth]


def _digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def _load(out, name):
    with open(Path(out) / f"{name}.json") as f:
        return json.load(f)


def _convert(root, out, **kwargs):
    return convert_fetus_framework(str(root), str(out), progress=False, **kwargs)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A clean set converted with default settings: (root, rows, out, report)."""
    root = tmp_path_factory.mktemp("clean") / "src"
    rows = _make_set(root)
    out = root.parent / "coco"
    report = _convert(root, out)
    return root, rows, out, report


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "src"
    return root, _make_set(root, bad=True)


def test_every_problem_is_reported_with_its_row(bad, tmp_path):
    root, rows = bad
    before = _digest(root)
    with pytest.raises(ConversionError) as info:
        _convert(root, tmp_path / "out")
    found = Counter((p.row, p.fname, p.kind) for p in info.value.problems)
    expected = Counter(
        [
            (_row_number(rows, "nothere.png"), "nothere.png", MISSING_FILE),
            (_row_number(rows, "zero.png"), "zero.png", UNREADABLE_IMAGE),
            (_row_number(rows, "trunc.png"), "trunc.png", UNREADABLE_IMAGE),
            (_row_number(rows, "nonnum.png"), "nonnum.png", BAD_COORDINATE),
            (_row_number(rows, "frac.png"), "frac.png", BAD_COORDINATE),
            (_row_number(rows, "empty.png"), "empty.png", EMPTY_BOX),
            (_row_number(rows, "out.png"), "out.png", BOX_OUTSIDE_IMAGE),
            (_row_number(rows, "unknown.png"), "unknown.png", UNKNOWN_STRUCTURE),
            (_row_number(rows, "p2.png", 1), "p2.png", DUPLICATE_ROW),
            (_row_number(rows, "two.png", 1), "two.png", BAD_COORDINATE),
            (_row_number(rows, "n5.png", 1), "n5.png", EMPTY_BOX),
            (_row_number(rows, "amb.png"), "amb.png", AMBIGUOUS_FILE),
        ]
    )
    assert found == expected
    message = str(info.value)
    assert f"row {_row_number(rows, 'unknown.png')} (unknown.png): unknown_structure" in message
    assert "'N T'" in message and "'abc'" in message and "3.5" in message
    assert not (tmp_path / "out").exists()
    assert _digest(root) == before


def test_skip_invalid_drops_exactly_the_bad_rows_and_spoiled_images(bad, tmp_path):
    root, rows = bad
    before = _digest(root)
    report = _convert(root, tmp_path / "out", skip_invalid=True)
    coco = _load(tmp_path / "out", "all")
    names = {im["file_name"].split("/")[-1] for im in coco["images"]}
    clean_names = {f"p{i}.png" for i in range(12)} | {"d0.png", "d1.png", "d2.png"} | {f"n{i}.png" for i in range(6)}
    assert names == clean_names
    negatives = {im["file_name"].split("/")[-1] for im in coco["images"] if im["negative"]}
    assert negatives == {f"n{i}.png" for i in range(6)}
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    p2 = next(im["id"] for im in coco["images"] if im["file_name"] == f"{SUB}/p2.png")
    assert per_image[p2] == 1  # the duplicate row is dropped, its first occurrence kept
    dropped = {d["file_name"] for d in report["dropped_images"]}
    assert dropped == {
        f"{SUB}/{n}.png" for n in ("zero", "trunc", "nonnum", "frac", "empty", "out", "unknown", "two", "amb")
    } | {"other/amb.png"}
    assert report["problems_by_kind"][BAD_COORDINATE]["count"] == 3
    assert report["problems_by_kind"][UNREADABLE_IMAGE]["rows"] == sorted(
        [_row_number(rows, "zero.png"), _row_number(rows, "trunc.png")]
    )
    assert _digest(root) == before


@pytest.mark.slow
def test_cli_lists_problems_exits_nonzero_and_writes_nothing(bad, tmp_path):
    root, rows = bad
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(CLI), "--root", str(root), "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    first, *problems = [line for line in result.stderr.splitlines() if line.strip()]
    assert first.startswith("error: ") and "ObjectDetection.xlsx" in first and "--skip-invalid" in first, first
    assert problems and all(line.startswith("  row ") for line in problems), result.stderr  # one line per problem
    for fname in ("nothere.png", "zero.png", "trunc.png", "nonnum.png", "out.png", "unknown.png", "amb.png"):
        assert f"row {_row_number(rows, fname)} ({fname})" in result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no staging folder left


def test_coco_boxes_are_the_spreadsheet_corners(clean):
    root, rows, out, _ = clean
    coco = COCO(str(out / "all.json"))
    by_name = {im["file_name"]: im for im in coco.dataset["images"]}
    # hand-checked: x = w_min, y = h_min, w = w_max - w_min, h = h_max - h_min
    expected = {"p0.png": [0.0, 0.0, 80.0, 60.0], "p1.png": [6.0, 21.0, 55.0, 10.0], "p5.png": [10.0, 25.0, 55.0, 10.0]}
    for fname, bbox in expected.items():
        image = by_name[f"{SUB}/{fname}"]
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert ann["bbox"] == bbox
        assert ann["area"] == bbox[2] * bbox[3]
        assert ann["iscrowd"] == 0 and ann["category_id"] == 1
        assert (image["height"], image["width"]) == (H, W)
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "NT", "supercategory": "fetus"}]
    assert coco.dataset["info"]["image_root"] == str(root)


def test_detectron2_reads_the_output(clean):
    pytest.importorskip("detectron2")
    from detectron2.data.datasets import load_coco_json
    from detectron2.structures import BoxMode

    root, rows, out, _ = clean
    dicts = load_coco_json(str(out / "all.json"), str(root))
    record = next(d for d in dicts if d["file_name"].endswith("p1.png"))
    assert os.path.isfile(record["file_name"])
    (ann,) = record["annotations"]
    xyxy = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
    assert xyxy == [6.0, 21.0, 61.0, 31.0]  # w_min, h_min, w_max, h_max of row ("p1.png", "nt", 21, 6, 31, 61)
    negatives = [d for d in dicts if "/n" in d["file_name"]]
    assert len(negatives) == 6 and all(d["annotations"] == [] for d in negatives)


def test_negatives_kept_unannotated_skipped_by_default(clean):
    _, _, out, report = clean
    coco = _load(out, "all")
    names = {im["file_name"] for im in coco["images"]}
    assert not {f"{SUB}/u0.png", f"{SUB}/u1.png"} & names
    assert report["unannotated"] == {"count": 2, "included": False, "files": [f"{SUB}/u0.png", f"{SUB}/u1.png"]}
    assert (report["images"], report["positives"], report["negatives"]) == (21, 15, 6)


def test_unannotated_included_as_negatives_on_request(clean, tmp_path):
    root = clean[0]
    report = _convert(root, tmp_path / "out", include_unannotated=True)
    coco = _load(tmp_path / "out", "all")
    flags = {im["file_name"]: (im["negative"], im["annotated"]) for im in coco["images"]}
    assert flags[f"{SUB}/u0.png"] == (True, False)
    assert flags[f"{SUB}/n0.png"] == (True, True)
    assert (report["images"], report["negatives"]) == (23, 8)


def test_folds_partition_the_set_and_keep_near_duplicates_together(clean):
    _, _, out, report = clean
    everything = {im["id"]: im for im in _load(out, "all")["images"]}
    tests = [{im["id"] for im in _load(out, f"fold{k}_test")["images"]} for k in range(FOLDS)]
    assert sorted(i for t in tests for i in t) == sorted(everything)
    for k in range(FOLDS):
        parts = [{im["id"] for im in _load(out, f"fold{k}_{s}")["images"]} for s in ("train", "val", "test")]
        assert sum(map(len, parts)) == len(everything) and set().union(*parts) == set(everything)
        assert all(everything[i]["fold"] == k for i in parts[2])
        assert parts[1], "validation split is empty"
    trio = [im for im in everything.values() if im["file_name"].split("/")[-1] in ("d0.png", "d1.png", "d2.png")]
    assert len({im["group"] for im in trio}) == 1 and len({im["fold"] for im in trio}) == 1
    assert report["near_duplicates"]["groups"] == len(everything) - 2
    assert report["near_duplicates"]["group_sizes"] == {"1": 18, "3": 1}


def test_folds_are_stratified(clean):
    _, _, out, report = clean
    largest_group = 3
    positives = [f["test"]["positives"] for f in report["per_fold"]]
    negatives = [f["test"]["negatives"] for f in report["per_fold"]]
    assert max(positives) - min(positives) <= largest_group
    assert max(negatives) - min(negatives) <= 1  # negatives are all singletons
    recount = Counter(im["fold"] for im in _load(out, "all")["images"] if not im["negative"])
    assert [recount[k] for k in range(FOLDS)] == positives


def test_same_seed_same_bytes_other_seed_other_folds(clean, tmp_path):
    root, _, out, _ = clean
    # two runs into sibling folders (the JSON records the image folder relative to its own)
    _convert(root, tmp_path / "again")
    _convert(root, tmp_path / "again2")
    assert _digest(tmp_path / "again") == _digest(tmp_path / "again2")
    _convert(root, tmp_path / "seed1", seed=1)
    folds = [[im["fold"] for im in _load(o, "all")["images"]] for o in (out, tmp_path / "seed1")]
    assert folds[0] != folds[1]


def test_several_structures_become_categories_in_the_given_order(clean, tmp_path):
    root = clean[0]
    report = _convert(root, tmp_path / "out", structures=("Palate", "NT"))
    coco = _load(tmp_path / "out", "all")
    assert [c["name"] for c in coco["categories"]] == ["palate", "NT"]
    category = {a["image_id"]: a["category_id"] for a in coco["annotations"]}
    for image in coco["images"]:
        name = image["file_name"].split("/")[-1]
        assert category[image["id"]] == (1 if name.startswith("n") else 2)
    assert report["negatives"] == 0


def test_refuses_non_empty_output_unless_overwrite(clean, tmp_path):
    root, _, out, _ = clean
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        _convert(root, target)
    with pytest.raises(FileExistsError, match="did not write"):
        _convert(root, target, overwrite=True)  # never deletes what it did not write
    assert (target / "notes.txt").read_text() == "mine"

    previous = tmp_path / "previous"
    _convert(root, previous)
    with pytest.raises(FileExistsError):
        _convert(root, previous, seed=1)
    _convert(root, previous, seed=1, overwrite=True)
    assert _load(previous, "all")["info"]["seed"] == 1
    assert sorted(p.name for p in previous.iterdir()) == sorted(
        ["all.json", "conversion_report.json"] + [f"{n}.json" for n in SPLIT_NAMES]
    )
    with pytest.raises(ValueError, match="overlaps"):
        _convert(root, root / "coco")
