"""The caliper flag (benchmarks.calipers) and tools/flag_calipers.py, on
synthetic images only (the real data is not on a user's machine).

The images mimic what the real screens show: a speckled grey background with a
dark, horizontal NT band between two bright lines; calipers as drawn by the
scanners (a coloured dotted line with crosses, slightly smeared like the JPEG
captures; or GE-style grey plus signs with a black outline); and overlays that
are not calipers (white text-like strokes, depth-scale dots, a coloured logo)
away from the NT.
"""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from benchmarks.calipers import (
    COLOUR_THRESHOLD,
    OUTLINE_THRESHOLD,
    PLUS_THRESHOLD,
    caliper_evidence,
    detect_calipers,
    flag_dataset,
    score_dataset,
)
from voting_det.data.spreadsheet import write_object_detection_xlsx

from .helpers import load_tool

H, W = 240, 320
NT_BOX = (100, 110, 220, 140)  # x0, y0, x1, y1 around the dark band
CALIPER_X = 160


def scan(seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB grey ultrasound-like image: smoothed speckle,
    horizontally stretched, with a dark NT band (rows 118-132) between two
    bright lines."""
    rng = np.random.default_rng(seed)
    speckle = ndi.gaussian_filter(rng.normal(0.0, 1.0, (H, W)), sigma=(1.5, 4.0))
    grey = 95.0 + 30.0 * speckle / speckle.std()
    grey[112:116] += 90.0  # skin line
    grey[118:133] = 12.0 + 4.0 * speckle[118:133] / speckle.std()  # translucency
    grey[134:138] += 80.0  # soft tissue line
    grey = ndi.gaussian_filter(grey, sigma=(1.0, 2.0))
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def draw_coloured_calipers(image: np.ndarray, x: int = CALIPER_X, top: int = 115, bottom: int = 135,
                           colour=(60, 200, 70)) -> np.ndarray:
    """A dotted vertical line with a cross at each end, in ``colour``, then a
    light blur of the colour (the captures' chroma is smeared)."""
    out = image.astype(np.float32)
    mark = np.zeros((H, W), np.float32)
    for y in (top, bottom):
        mark[y, x - 3:x + 4] = 1.0
        mark[y - 3:y + 4, x] = 1.0
    mark[top:bottom:3, x] = 1.0
    mark = np.clip(ndi.gaussian_filter(mark, 0.7) * 2.0, 0.0, 1.0)
    out = out * (1.0 - mark[:, :, None]) + np.asarray(colour, np.float32) * mark[:, :, None]
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_plus(image: np.ndarray, cx: int, cy: int, light: bool = True) -> np.ndarray:
    """GE-style caliper: a 5x5 plus sign (1-px arms) with a 1-px outline of the
    opposite brightness around it."""
    out = image.copy()
    inner, outer = (200, 0) if light else (0, 200)
    out[cy - 3:cy + 4, cx - 3:cx + 4] = np.where(
        _plus_mask(3, 1)[:, :, None], outer, out[cy - 3:cy + 4, cx - 3:cx + 4]
    )
    out[cy - 2:cy + 3, cx - 2:cx + 3] = np.where(
        _plus_mask(2, 0)[:, :, None], inner, out[cy - 2:cy + 3, cx - 2:cx + 3]
    )
    return out


def _plus_mask(radius: int, thickness: int) -> np.ndarray:
    """Plus sign of arm half-width ``thickness`` in a (2r+1)^2 square."""
    size = 2 * radius + 1
    m = np.zeros((size, size), bool)
    m[radius - thickness:radius + thickness + 1, :] = True
    m[:, radius - thickness:radius + thickness + 1] = True
    return m


def draw_outlined_plus(image: np.ndarray, cx: int, cy: int) -> np.ndarray:
    """GE-style caliper of the other kind: the black outline of a plus sign with
    2-px arms, its inside left as it was."""
    out = image.copy()
    inside = np.zeros((9, 9), bool)
    inside[1:8, 1:8] = _plus_mask(3, 1)
    outline = _plus_mask(4, 2) & ~inside
    region = out[cy - 4:cy + 5, cx - 4:cx + 5]
    region[outline] = 0
    return out


def draw_overlays(image: np.ndarray) -> np.ndarray:
    """Things that are not calipers, away from the NT: white text-like strokes
    on black (top right), depth-scale dots (left edge), a coloured logo (bottom
    right)."""
    out = image.copy()
    out[8:40, 230:312] = 0
    for k, x in enumerate(range(236, 306, 10)):  # "letters": bars and boxes
        out[12:24, x:x + 2] = 235
        if k % 2:
            out[12:14, x:x + 7] = 235
            out[22:24, x:x + 7] = 235
    out[28:30, 236:300] = 235
    for y in range(20, H - 20, 25):
        out[y:y + 2, 4:6] = 230
    out[210:230, 270:310] = (40, 90, 200)
    return out


def test_clean_scan_is_not_flagged():
    for seed in range(3):
        image = scan(seed)
        flag, score = detect_calipers(image, NT_BOX)
        assert not flag and score < 0.8, (seed, score)
        flag, score = detect_calipers(image)  # whole image, no overlays
        assert not flag, (seed, score)


@pytest.mark.parametrize("colour", [(60, 200, 70), (210, 200, 60), (220, 90, 160)])  # green, yellow, pink
def test_coloured_calipers_on_the_nt_are_flagged(colour):
    image = draw_coloured_calipers(scan(1), colour=colour)
    evidence = caliper_evidence(image, NT_BOX)
    assert evidence.calipers
    assert evidence.colour >= COLOUR_THRESHOLD
    assert detect_calipers(image, NT_BOX) == (True, pytest.approx(evidence.score))


@pytest.mark.parametrize("light", [True, False])
def test_plus_calipers_are_flagged(light):
    image = draw_plus(draw_plus(scan(2), CALIPER_X, 115, light), CALIPER_X, 136, light)
    evidence = caliper_evidence(image, NT_BOX)
    assert evidence.calipers and evidence.plus >= PLUS_THRESHOLD
    assert evidence.colour < COLOUR_THRESHOLD  # grey marks: found by shape, not colour


def test_outlined_plus_calipers_are_flagged():
    image = draw_outlined_plus(draw_outlined_plus(scan(3), CALIPER_X, 113), CALIPER_X, 136)
    evidence = caliper_evidence(image, NT_BOX)
    assert evidence.calipers and evidence.outline >= OUTLINE_THRESHOLD


def test_overlays_away_from_the_nt_are_not_flagged():
    image = draw_overlays(scan(4))
    flag, score = detect_calipers(image, NT_BOX)
    assert not flag and score < 0.8
    # ... but they are what a whole-image search would see:
    assert detect_calipers(image)[0]
    # and calipers are still found with the overlays present
    assert detect_calipers(draw_coloured_calipers(image), NT_BOX)[0]


def test_search_region_is_the_box_plus_margin():
    image = draw_coloured_calipers(scan(5), x=250)  # 30 px right of the box
    assert not detect_calipers(image, NT_BOX)[0]
    assert detect_calipers(image, NT_BOX, margin=40)[0]
    assert detect_calipers(image, None)[0]  # whole image
    assert caliper_evidence(image, NT_BOX).region == (84, 94, 236, 156)


def test_channel_order_and_grey_input():
    image = draw_coloured_calipers(scan(6))
    rgb = caliper_evidence(image, NT_BOX)
    bgr = caliper_evidence(np.ascontiguousarray(image[:, :, ::-1]), NT_BOX)
    assert rgb.score == pytest.approx(bgr.score) and rgb.colour == pytest.approx(bgr.colour)
    grey = caliper_evidence(image.mean(axis=2).astype(np.uint8), NT_BOX)
    assert grey.colour == 0.0
    plus = draw_plus(draw_plus(scan(6), CALIPER_X, 115), CALIPER_X, 136)[:, :, 0]
    assert detect_calipers(plus, NT_BOX)[0]
    # deterministic
    assert caliper_evidence(image, NT_BOX) == caliper_evidence(image.copy(), NT_BOX)


def test_bad_inputs():
    image = scan(0)
    with pytest.raises(ValueError, match="uint8"):
        detect_calipers(image.astype(np.float32), NT_BOX)
    with pytest.raises(ValueError, match="shape"):
        detect_calipers(image[:, :, :2], NT_BOX)
    with pytest.raises(ValueError, match="x0 < x1"):
        detect_calipers(image, (50, 50, 40, 60))
    with pytest.raises(ValueError, match="outside"):
        detect_calipers(image, (W + 100, 10, W + 200, 20))


# ------------------------------------------------------------ data set level


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A data folder like the real one: images/, ObjectDetection.xlsx (NT rows;
    one image without a row), and a hand-label CSV."""
    root = tmp_path_factory.mktemp("calipers")
    os.makedirs(root / "images")
    images = {
        "a.png": draw_coloured_calipers(scan(10)),
        "b.png": draw_plus(draw_plus(scan(11), CALIPER_X, 115), CALIPER_X, 136),
        "c.png": draw_overlays(scan(12)),
        "d.png": scan(13),  # no spreadsheet row: searched whole
    }
    for name, array in images.items():
        Image.fromarray(array).save(root / "images" / name)
    x0, y0, x1, y1 = NT_BOX
    rows = [(name, "NT", y0, x0, y1, x1) for name in ("a.png", "b.png", "c.png")]
    rows.append(("missing.png", "NT", y0, x0, y1, x1))
    write_object_detection_xlsx(str(root / "ObjectDetection.xlsx"), rows)
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "calipers", "note", "set", "split", "style", "box"])
        writer.writerow(["a.png", 1, "green", "random", "dev", "coloured", ""])
        writer.writerow(["b.png", 1, "plus", "random", "dev", "plus", ""])
        writer.writerow(["c.png", 0, "overlays only", "random", "dev", "", ""])
        writer.writerow(["a.png", 0, "control box", "control", "test", "", "10 150 90 200"])
    return root


def test_flag_calipers_tool(tiny_folder, tmp_path, capsys):
    tool = load_tool("flag_calipers")
    out = tmp_path / "flags.json"
    labels = tiny_folder / "labels.csv"
    assert tool.main(["--root", str(tiny_folder), "--out", str(out), "--check", str(labels)]) == 0
    flags = json.loads(out.read_text())
    assert sorted(flags) == ["images/a.png", "images/b.png", "images/c.png", "images/d.png"]
    assert [flags[f"images/{n}.png"]["calipers"] for n in "abcd"] == [True, True, False, False]
    assert flags["images/a.png"]["box"] == [float(v) for v in NT_BOX]
    assert flags["images/d.png"]["box"] is None
    assert set(flags["images/a.png"]) == {"calipers", "score", "colour", "plus", "outline", "box"}
    printed = capsys.readouterr().out
    assert "flagged 2" in printed and "disagreements: 0" in printed
    assert "split test" in printed and "split dev" in printed
    # --choose derives thresholds from the dev rows and still agrees
    assert tool.main(["--root", str(tiny_folder), "--check", str(labels), "--choose"]) == 0
    assert "disagreements: 0" in capsys.readouterr().out
    # a label naming an image that is not there is bad input
    bad = tmp_path / "bad.csv"
    bad.write_text("file_name,calipers,note\nnope.png,1,\n")
    assert tool.main(["--root", str(tiny_folder), "--check", str(bad)]) == 2


def test_score_dataset_reads_a_coco_file(tiny_folder, tmp_path):
    images = [
        {"id": 1, "file_name": "images/a.png", "width": W, "height": H},
        {"id": 2, "file_name": "images/c.png", "width": W, "height": H},
    ]
    x0, y0, x1, y1 = NT_BOX
    annotations = [
        {"id": k, "image_id": k, "bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": 1, "iscrowd": 0, "area": 1.0}
        for k in (1, 2)
    ]
    coco = tmp_path / "all.json"
    coco.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [],
                                "info": {"image_root": str(tiny_folder)}}))
    assert flag_dataset(str(coco)) == {"images/a.png": True, "images/c.png": False}
    scores = score_dataset(str(coco), str(tiny_folder))
    assert scores["images/a.png"]["box"] == [x0, y0, x1, y1]
