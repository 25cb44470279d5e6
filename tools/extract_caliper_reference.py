#!/usr/bin/env python
"""Extract the sonographers' caliper reference from the real NT images (issue 22).

For every annotated image of a COCO file written by
``tools/convert_fetus_framework.py`` (default: the real set,
``$DETECTRON2_DATASETS/nt_real/all.json``) this locates the two caliper marks on
the NT (``benchmarks.caliper_marks.locate_caliper_marks``), reads the on-screen
distance text by OCR where the ``tesseract`` program is installed (e.g. GE's
"Dist 0.174 cm"), finds the depth-scale marks at the image edge, and writes one
CSV row per image: the marks, their distance in pixels, the millimetres read,
the pixel spacing and where it came from (``ocr``: the read distance divided by
the marks' distance; ``depth_scale``: 5 mm between the scale's marks; ``none``).
A Markdown summary (counts, the spacing per screen type, the agreement of the
two spacing sources where both exist) and, optionally, contact sheets of crops
with the located marks drawn (for checking by eye; they show the images, so
they go to ``output/``, never to the repository).

Example (the committed reference; about 20-40 min on one CPU thread, OCR is
most of it)::

    OMP_NUM_THREADS=1 OMP_THREAD_LIMIT=1 .venv/bin/python tools/extract_caliper_reference.py \\
        --out benchmarks/results/thickness/caliper_reference.csv \\
        --eye-check benchmarks/results/thickness/caliper_eye_check.csv \\
        --controls benchmarks/results/caliper_labels.csv --sheets output/caliper_check

Without ``tesseract`` (Debian: ``apt-get install tesseract-ocr``) the tool
says so, leaves ``ocr_text`` empty and uses the depth scale alone.

Exit status: 0 on success, 2 on bad input (one ``error:`` line naming the
file), 1 when no image could be processed.
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.caliper_marks import (  # noqa: E402
    depth_scale_spacing,
    locate_caliper_marks,
    read_distance_text,
    tesseract_available,
)
from benchmarks.calipers import DEFAULT_MARGIN, caliper_evidence, read_image  # noqa: E402
from voting_det import cli  # noqa: E402
from voting_det.utils import natural_key  # noqa: E402

COLUMNS = [
    "file_name", "image_id", "fold", "width", "height",
    "box_x0", "box_y0", "box_x1", "box_y1",
    "flagged", "flag_score",
    "located", "style", "score", "upper_x", "upper_y", "lower_x", "lower_y", "distance_px",
    "ocr_text", "ocr_mm",
    "depth_side", "depth_step_px", "depth_mm_per_px",
    "pixel_spacing_mm", "spacing_source", "thickness_mm",
]
# An OCR distance is taken as the NT measurement only in this range (mm).
PLAUSIBLE_MM = (0.3, 15.0)


def default_coco() -> str:
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    return os.path.join(root, "nt_real", "all.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/extract_caliper_reference.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco", default=default_coco(),
                        help="COCO file of the converted real set (default: $DETECTRON2_DATASETS/nt_real/all.json)")
    parser.add_argument("--root", help="image folder (default: the one the converter recorded in the COCO file)")
    parser.add_argument("--out", default="benchmarks/results/thickness/caliper_reference.csv",
                        help="the CSV to write (one row per annotated image)")
    parser.add_argument("--summary", help="the Markdown summary (default: --out with .md)")
    parser.add_argument("--sheets", default="",
                        help="folder for contact sheets of the located marks (e.g. output/caliper_check; "
                             "they show the images: never commit them); empty: none")
    parser.add_argument("--eye-check", metavar="CSV",
                        help="by-eye verdicts on the sheets (file_name, verdict right/wrong/ambiguous, note) to "
                             "summarise in the Markdown")
    parser.add_argument("--controls", metavar="CSV",
                        help="hand labels with caliper-free control boxes (benchmarks/results/caliper_labels.csv: "
                             "rows with calipers 0 and a box): count the confident pairs found there (false pairs)")
    parser.add_argument("--margin", type=int, default=DEFAULT_MARGIN, help="pixels added around the NT box")
    parser.add_argument("--no-ocr", action="store_true", help="do not read the on-screen text")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (a quick check)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return cli.parse_args(build_parser(), argv)


# ------------------------------------------------------------------ reading


def load_coco(path: str, root: Optional[str]):
    cli.check_input(path, "--coco", "a COCO file written by tools/convert_fetus_framework.py")
    try:
        with open(path) as f:
            coco = json.load(f)
        images, annotations = coco["images"], coco["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise cli.UserError(f"--coco {path}: not a COCO file ({e}); give one written by "
                            "tools/convert_fetus_framework.py") from None
    if root is None:
        from voting_det.data.datasets import _image_root_of

        root = _image_root_of(path, coco.get("info", {}))
    if not os.path.isdir(root):
        raise cli.MissingFileError(f"--root {root}: not a folder; give the image folder")
    boxes: Dict[object, List[List[float]]] = defaultdict(list)
    for a in annotations:
        x, y, w, h = a["bbox"]
        boxes[a["image_id"]].append([x, y, x + w, y + h])
    records = [r for r in images if boxes.get(r["id"])]
    records.sort(key=lambda r: natural_key(r["file_name"]))
    return records, boxes, root


# --------------------------------------------------------------- measuring


def measure(image: np.ndarray, box: List[float], margin: int, ocr: bool) -> dict:
    row: dict = {}
    evidence = caliper_evidence(image, box, margin)
    row["flagged"] = int(evidence.calipers)
    row["flag_score"] = round(evidence.score, 3)
    marks = locate_caliper_marks(image, box, margin, min_score=0.0)
    if marks is not None:
        row.update(
            located=int(marks.score >= 1.0), style=marks.style, score=round(marks.score, 3),
            upper_x=round(marks.upper[0], 2), upper_y=round(marks.upper[1], 2),
            lower_x=round(marks.lower[0], 2), lower_y=round(marks.lower[1], 2),
            distance_px=round(marks.distance_px, 2),
        )
    else:
        row["located"] = 0
    if ocr:
        reading = read_distance_text(image)
        if reading is not None:
            row["ocr_text"] = reading.text.replace("\n", " ")
            row["ocr_mm"] = round(reading.mm, 4)
    scale = depth_scale_spacing(image)
    if scale is not None:
        row.update(depth_side=scale.side, depth_step_px=round(scale.step_px, 2),
                   depth_mm_per_px=round(scale.mm_per_px, 5))
    # the spacing: OCR first (the scanner's own number for these very marks), then the depth scale
    row["spacing_source"] = "none"
    mm = row.get("ocr_mm")
    if row["located"] and mm is not None and PLAUSIBLE_MM[0] <= mm <= PLAUSIBLE_MM[1] and row["distance_px"] > 0:
        row["pixel_spacing_mm"] = round(mm / row["distance_px"], 5)
        row["spacing_source"] = "ocr"
    elif scale is not None:
        row["pixel_spacing_mm"] = round(scale.mm_per_px, 5)
        row["spacing_source"] = "depth_scale"
    if row["located"] and row.get("pixel_spacing_mm"):
        row["thickness_mm"] = round(row["distance_px"] * row["pixel_spacing_mm"], 3)
    return row


# ---------------------------------------------------------------- the sheets


def tile(image: np.ndarray, row: dict, zoom: int = 4, size=(36, 96)) -> np.ndarray:
    """A crop (columns x rows = ``size``) around the marks (or the box centre),
    twice: colour-boosted (the marks' faint tint x4) and plain with the marks
    drawn as red crosshairs (gap in the middle: the mark stays visible)."""
    import cv2

    width, height = size
    if row.get("upper_x") not in (None, ""):
        cx = (row["upper_x"] + row["lower_x"]) / 2.0
        cy = (row["upper_y"] + row["lower_y"]) / 2.0
    else:
        cx = (row["box_x0"] + row["box_x1"]) / 2.0
        cy = (row["box_y0"] + row["box_y1"]) / 2.0
    x0 = int(round(cx)) - width // 2
    y0 = int(round(cy)) - height // 2
    bgr = image[:, :, ::-1].astype(np.float32)
    padded = np.zeros((height, width, 3), np.float32)
    ys0, xs0 = max(0, y0), max(0, x0)
    ys1, xs1 = min(image.shape[0], y0 + height), min(image.shape[1], x0 + width)
    if ys1 > ys0 and xs1 > xs0:
        padded[ys0 - y0:ys1 - y0, xs0 - x0:xs1 - x0] = bgr[ys0:ys1, xs0:xs1]
    grey = padded.mean(axis=2, keepdims=True)
    boosted = np.clip(grey + (padded - grey) * 4.0, 0, 255).astype(np.uint8)
    plain = padded.astype(np.uint8)
    big = [cv2.resize(p, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST) for p in (boosted, plain)]
    if row.get("upper_x") not in (None, ""):
        for px, py in ((row["upper_x"], row["upper_y"]), (row["lower_x"], row["lower_y"])):
            u = int(round((px - x0 + 0.5) * zoom))
            v = int(round((py - y0 + 0.5) * zoom))
            for a, b in (((u - 14, v), (u - 5, v)), ((u + 5, v), (u + 14, v)), ((u, v - 14), (u, v - 5)),
                         ((u, v + 5), (u, v + 14))):
                cv2.line(big[1], a, b, (0, 0, 255), 1)
    out = np.hstack([big[0], np.full((big[0].shape[0], 3, 3), 255, np.uint8), big[1]])
    label = f"{os.path.basename(row['file_name'])} " + (
        f"{row['style'][0]} {row['score']:.1f} d{row['distance_px']:.1f}" if row.get("style") else "none"
    )
    cv2.putText(out, label, (2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 255, 255), 1)
    return out


def write_sheets(folder: str, tiles: List[tuple], per_row: int = 6, rows: int = 3) -> List[str]:
    """Contact sheets of (group, file_name, tile) sorted by group, then name."""
    import cv2

    os.makedirs(folder, exist_ok=True)
    for old in os.listdir(folder):  # this tool's own earlier sheets only
        if re.fullmatch(r"(located_\w+|not_located)_\d{3}\.png", old):
            os.remove(os.path.join(folder, old))
    written, index = [], []
    by_group: Dict[str, list] = defaultdict(list)
    for group, name, t in tiles:
        by_group[group].append((name, t))
    for group in sorted(by_group):
        items = sorted(by_group[group], key=lambda it: natural_key(it[0]))
        per_sheet = per_row * rows
        for s in range(0, len(items), per_sheet):
            chunk = items[s:s + per_sheet]
            blank = np.zeros_like(chunk[0][1])
            cells = [t for _, t in chunk] + [blank] * (per_sheet - len(chunk))
            lines = []
            for r in range(rows):
                line = cells[r * per_row:(r + 1) * per_row]
                lines.append(np.hstack([np.pad(c, ((0, 4), (0, 4), (0, 0)), constant_values=255) for c in line]))
            path = os.path.join(folder, f"{group}_{s // per_sheet:03d}.png")
            cv2.imwrite(path, np.vstack(lines))
            written.append(path)
            index.extend((os.path.basename(path), k, name) for k, (name, _) in enumerate(chunk))
    with open(os.path.join(folder, "index.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sheet", "position", "file_name"])
        w.writerows(index)
    return written


# ------------------------------------------------------------------- summary


def read_eye_check(path: str) -> List[dict]:
    cli.check_input(path, "--eye-check", "a CSV with file_name, verdict, note")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"file_name", "verdict"} - set(reader.fieldnames or [])
        if missing:
            raise cli.UserError(f"--eye-check {path}: missing column(s) {sorted(missing)}; "
                                "give file_name, verdict, note")
        rows = list(reader)
    for number, row in enumerate(rows, start=2):
        if row["verdict"].strip() not in ("right", "wrong", "ambiguous"):
            raise cli.UserError(f"--eye-check {path}:{number}: verdict must be right, wrong or ambiguous, "
                                f"got {row['verdict']!r}")
    return rows


def check_controls(path: str, root: str, margin: int) -> dict:
    """The locator on the caliper-free control boxes of a hand-label CSV
    (rows with ``calipers`` 0 and a ``box``): how many give a confident pair."""
    cli.check_input(path, "--controls", "the hand-label CSV (benchmarks/results/caliper_labels.csv)")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if str(r.get("calipers", "")).strip() == "0" and (r.get("box") or "").strip()]
    folder = os.path.join(root, "Train & Val") if os.path.isdir(os.path.join(root, "Train & Val")) else root
    found: Counter = Counter()
    names = []
    for r in rows:
        box = [float(v) for v in r["box"].split()]
        marks = locate_caliper_marks(read_image(os.path.join(folder, r["file_name"])), box, margin)
        if marks is not None:
            found[marks.style] += 1
            names.append(r["file_name"])
    return {"boxes": len(rows), "pairs": dict(found), "names": names}


def spacing_table(rows: List[dict]) -> List[str]:
    """The pixel spacing per screen type (GE 640x450 captures vs the others) and source."""
    out = ["| screens | source | images | spacing mm/px: median | 5th-95th percentile |", "|---|---|---|---|---|"]
    groups = defaultdict(list)
    for r in rows:
        if r.get("pixel_spacing_mm") not in (None, ""):
            kind = "640x450 (GE LOGIQ-like)" if (r["width"], r["height"]) == (640, 450) else "other sizes"
            groups[(kind, r["spacing_source"])].append(float(r["pixel_spacing_mm"]))
    for (kind, source), values in sorted(groups.items()):
        v = np.array(values)
        out.append(f"| {kind} | {source} | {len(v)} | {np.median(v):.4f} | "
                   f"{np.percentile(v, 5):.4f}-{np.percentile(v, 95):.4f} |")
    return out


def summary(rows: List[dict], args, command: str, seconds: float, ocr_used: bool,
            eye: Optional[List[dict]], controls: Optional[dict] = None) -> str:
    n = len(rows)
    flagged = [r for r in rows if r["flagged"]]
    located = [r for r in rows if r["located"]]
    doubtful = [r for r in rows if not r["located"] and r.get("style")]
    styles = Counter(r["style"] for r in located)
    ocr = [r for r in rows if r.get("ocr_mm") not in (None, "")]
    ocr_plausible = [r for r in ocr if PLAUSIBLE_MM[0] <= float(r["ocr_mm"]) <= PLAUSIBLE_MM[1]]
    scale = [r for r in rows if r.get("depth_mm_per_px") not in (None, "")]
    sources = Counter(r["spacing_source"] for r in rows)
    mm_known = [r for r in rows if r.get("thickness_mm") not in (None, "")]
    lines = [
        "# Sonographers' caliper reference on the real NT images",
        "",
        "Made by `tools/extract_caliper_reference.py` (`benchmarks/caliper_marks.py`); the rows are in",
        f"[{os.path.basename(args.out)}]({os.path.basename(args.out)}) (no image data: positions and numbers only).",
        "Data: the public \"Dataset for Fetus Framework\" (Cui and Dong 2022, doi:10.17632/n2rbrb9t4f.1, CC-BY-4.0),",
        "NT part, development copy.",
        "",
        "Command (" + (f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s") +
        " on one CPU thread beside two trainings" + ("" if ocr_used else "; OCR not used") + "):",
        "",
        "```",
        command,
        "```",
        "",
        "## Counts",
        "",
        f"- annotated images: {n}; flagged as carrying calipers (`benchmarks.calipers`): {len(flagged)}",
        f"- marks located (a pair with score >= 1): **{len(located)}** ("
        + ", ".join(f"{k} {v}" for k, v in sorted(styles.items())) + ")",
        f"  - of the flagged images: {sum(1 for r in flagged if r['located'])}; flagged but not located: "
        f"{sum(1 for r in flagged if not r['located'])}",
        f"  - of the {n - len(flagged)} unflagged: {sum(1 for r in rows if not r['flagged'] and r['located'])} located",
        f"- a doubtful pair only (score < 1, written with `located` 0): {len(doubtful)}; no pair at all: "
        f"{n - len(located) - len(doubtful)}",
        f"- on-screen distance read by OCR: {len(ocr)} images ({len(ocr_plausible)} in "
        f"{PLAUSIBLE_MM[0]}-{PLAUSIBLE_MM[1]} mm)" + ("" if ocr_used else " (OCR not run)"),
        f"- depth-scale marks found: {len(scale)} images",
        f"- pixel spacing known: {n - sources.get('none', 0)} images (ocr {sources.get('ocr', 0)}, depth scale "
        f"{sources.get('depth_scale', 0)}); none: {sources.get('none', 0)}",
        f"- sonographer's thickness in mm known (marks located and spacing known): **{len(mm_known)}**",
        "",
        "## Pixel spacing",
        "",
        "- OCR: Tesseract (Debian `tesseract-ocr`) on the light-on-dark text lines (light strokes next to dark ones, "
        "at least two characters, on a dark panel), each upscaled x3, inverted and Otsu-binarised, all lines of an "
        "image in one call (`--psm 6`); a line counts when `parse_distance_text` finds a label (Dist, D, D1, NT, L), "
        "a number and cm/mm in it. The read-out is the distance between these very marks, so the spacing is "
        "`ocr_mm / distance_px` (only for located marks and 0.3-15 mm).",
        "- Depth scale: a column of small light marks at regular intervals within 60 px of the left edge (GE "
        "Voluson-like screens) or 100 px of the right edge (GE LOGIQ-like 640x450 screens), at least 5, with at "
        "most a quarter of the places empty; 5 mm between neighbouring marks. That 5 mm is checked below on the "
        "images that carry both sources; on the other screens it is an assumption (no read-out to check it "
        "against), supported only by the thickness it gives (typical first-trimester NT, median ~1.5-2 mm).",
        "",
    ]
    lines += spacing_table(rows)
    both = [r for r in rows if r["spacing_source"] == "ocr" and r.get("depth_mm_per_px") not in (None, "")]
    lines += ["", "Validation of the depth scale (5 mm between its marks) on the images with an OCR spacing:", ""]
    if both:
        ratio = np.array([float(r["depth_mm_per_px"]) / float(r["pixel_spacing_mm"]) for r in both])
        lines.append(f"- {len(both)} images carry both; depth-scale spacing / OCR spacing: median "
                     f"{np.median(ratio):.3f}, 5th-95th percentile {np.percentile(ratio, 5):.3f}-"
                     f"{np.percentile(ratio, 95):.3f}; within 5%: {int((np.abs(ratio - 1) <= 0.05).sum())}")
        far = [(r["file_name"], float(r["depth_mm_per_px"]) / float(r["pixel_spacing_mm"]))
               for r in both if abs(float(r["depth_mm_per_px"]) / float(r["pixel_spacing_mm"]) - 1) > 0.05]
        if far:
            lines.append("- off by more than 5%: " + ", ".join(f"{os.path.basename(f)} ({v:.2f})" for f, v in far))
    else:
        lines.append("- no image carries both")
    sizes = Counter("640x450" if (r["width"], r["height"]) == (640, 450) else "other sizes" for r in ocr)
    totals = Counter("640x450" if (r["width"], r["height"]) == (640, 450) else "other sizes" for r in rows)
    by_screen = ", ".join(f"{k} {sizes.get(k, 0)} of {v}" for k, v in sorted(totals.items()))
    lines += ["", f"OCR readings by screen: {by_screen}."]
    if mm_known:
        t = np.array([float(r["thickness_mm"]) for r in mm_known])
        lines += ["", f"Sonographer's thickness (mm) where known: median {np.median(t):.2f}, 5th-95th percentile "
                      f"{np.percentile(t, 5):.2f}-{np.percentile(t, 95):.2f}, >= 3.5 mm: {int((t >= 3.5).sum())}"]
        for source in ("ocr", "depth_scale"):
            part = np.array([float(r["thickness_mm"]) for r in mm_known if r["spacing_source"] == source])
            if part.size:
                lines.append(f"- spacing from {source}: {part.size} images, median {np.median(part):.2f} mm, "
                             f"5th-95th percentile {np.percentile(part, 5):.2f}-{np.percentile(part, 95):.2f}")
    lines += ["", "## How it was checked", "",
              "- Drawn marks (`tests/test_caliper_marks.py`, synthetic, JPEG-compressed with noise): plus marks found "
              "within 1.5 px (the outline-only plus on a bright line's edge within 2 px), coloured crosses' column "
              "within 1.5 px and their rows within 3 px; no pair on unmarked scans; the colour and plus cues fall below "
              "the flag's thresholds after `remove_caliper_marks`, and no pixel outside the mask changes."]
    if controls is not None:
        pairs = controls["pairs"]
        lines.append(f"- Caliper-free control boxes of the hand labels ({controls['boxes']} boxes, "
                     "`benchmarks/results/caliper_labels.csv`, above/below or away from the NT, a third with overlays): "
                     f"a confident pair in {sum(pairs.values())} ("
                     + (", ".join(f"{k} {v}" for k, v in sorted(pairs.items())) or "none") + ")"
                     + (": " + ", ".join(controls["names"]) if controls["names"] else "") + ".")
    lines += ["", "Where the located marks lie in the NT box (median; the box height h as drawn by the annotators):", ""]
    for style in sorted(styles):
        part = [r for r in located if r["style"] == style]
        h = np.array([r["box_y1"] - r["box_y0"] for r in part], float)
        d = np.array([r["distance_px"] for r in part], float)
        up = np.array([r["upper_y"] - r["box_y0"] for r in part], float)
        low = np.array([r["box_y1"] - r["lower_y"] for r in part], float)
        lines.append(f"- {style}: distance / h {np.median(d / h):.2f} (10th-90th percentile "
                     f"{np.percentile(d / h, 10):.2f}-{np.percentile(d / h, 90):.2f}); upper mark {np.median(up):.1f} px "
                     f"below the box top, lower mark {np.median(low):.1f} px above its bottom; distance > 1.05 h: "
                     f"{int((d > 1.05 * h).sum())} of {len(part)}")
    lines += [
        "",
        "The two styles come from different scanners (and perhaps annotators): the plus-style pairs sit well inside "
        "their boxes, the coloured ones at the boxes' edges. On the contact sheets the coloured style's lower point "
        "often lies inside the lower echogenic line rather than on its inner border, so part of the difference may be "
        "the method reaching past the crosses (a few px, which would make these distances too long); the plus-style "
        "subset, whose marks are crisp and whose millimetres come from the scanner's own read-out, is the firmest "
        "reference.",
        "",
        "## Known failure kinds and limits",
        "",
        "- Coloured style, rows: the crosses sit on the edge of an echogenic line, where their luma can match the "
        "background and JPEG spreads their colour over 16 x 16 chroma blocks; the method takes the ends of the luma "
        "line that has colour beside it, refined by a cross fit within 2 px. Where the dotted line fades, the extent "
        "stops early (a point in the middle of the line); where tissue beside the smeared colour looks like the line, "
        "it runs on (a point a few px into the tissue above the cross); a short coloured blob can be taken for the "
        "whole pair (distances of 7-9 px). Even when right, these rows are uncertain by about 2-3 px (synthetic "
        "marks: within 3 px).",
        "- Coloured style, not located: the colour along the found line is below the flag's colour threshold "
        "(`score` < 1): faint marks, often still at the right place (such doubtful pairs are written with `located` 0 "
        "and their positions); a few images have no line the method can find in the box.",
        "- Plus style: crisp marks, centres sub-pixel; the outline-only plus on a bright line's edge leans up to "
        "~2 px toward the bright side. The \"Dist\" read-out's own plus sign is excluded with the text lines.",
        "- Depth scale: found on the left edge of most GE Voluson-like screens; the right-edge scale of the LOGIQ-like "
        "screens is found on few of them and not reliably (every second mark, or the zoom box's ticks); the 5 mm "
        "per mark is confirmed only on those few.",
        "- The reference is the sonographer's marks as drawn, not the anatomy: where the sonographer measured off "
        "the NT's maximum, the reference says so too.",
    ]
    if eye:
        verdicts = Counter(r["verdict"].strip() for r in eye)
        by_style = defaultdict(Counter)
        style_of = {os.path.basename(r["file_name"]): r.get("style") or "none" for r in rows}
        for r in eye:
            by_style[style_of.get(os.path.basename(r["file_name"]), "?")][r["verdict"].strip()] += 1
        lines += ["", "## By-eye check", "",
                  f"{len(eye)} images viewed on the contact sheets (crops x4, colour boosted x4 beside the plain crop "
                  "with the located marks drawn): " + ", ".join(f"{k} {verdicts.get(k, 0)}"
                                                                for k in ("right", "wrong", "ambiguous")) + "."]
        for style in sorted(by_style):
            c = by_style[style]
            lines.append(f"- {style}: " + ", ".join(f"{k} {c.get(k, 0)}" for k in ("right", "wrong", "ambiguous")))
        notes = [r for r in eye if r["verdict"].strip() != "right" and (r.get("note") or "").strip()]
        if notes:
            lines += ["", "Not right:", ""]
            lines += [f"- {r['file_name']} ({r['verdict'].strip()}): {r['note'].strip()}" for r in notes]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- main


def main(argv=None) -> int:
    return cli.exit_code(_extract, argv)


def _extract(argv) -> int:
    args = parse_args(argv)
    records, boxes, root = load_coco(args.coco, args.root)
    eye = read_eye_check(args.eye_check) if args.eye_check else None
    if args.controls:
        cli.check_input(args.controls, "--controls", "the hand-label CSV (benchmarks/results/caliper_labels.csv)")
    if args.limit:
        records = records[:args.limit]
    ocr_used = not args.no_ocr and tesseract_available()
    if not args.no_ocr and not ocr_used:
        print("note: tesseract is not installed (Debian: apt-get install tesseract-ocr): no OCR; the spacing comes "
              "from the depth scale alone", file=sys.stderr)
    print(f"{len(records)} annotated images below {root}; OCR {'on' if ocr_used else 'off'}")
    start = time.time()
    rows, tiles = [], []
    for k, record in enumerate(records, start=1):
        path = os.path.join(root, record["file_name"])
        try:
            image = read_image(path)
        except OSError as e:
            print(f"  skipped {record['file_name']}: {e}", file=sys.stderr)
            continue
        # the box whose marks are clearest (the set has one NT box per image)
        best = None
        for box in boxes[record["id"]]:
            found = measure(image, box, args.margin, ocr_used)
            if best is None or found.get("score", -1) > best[1].get("score", -1):
                best = (box, found)
        box, found = best
        row = {
            "file_name": os.path.basename(record["file_name"]), "image_id": record["id"],
            "fold": record.get("fold", ""), "width": image.shape[1], "height": image.shape[0],
            "box_x0": box[0], "box_y0": box[1], "box_x1": box[2], "box_y1": box[3],
        }
        row.update(found)
        rows.append(row)
        if args.sheets:
            group = ("located_" + row["style"]) if row["located"] else "not_located"
            tiles.append((group, row["file_name"], tile(image, row)))
        if k % 50 == 0:
            print(f"  {k}/{len(records)} images, {time.time() - start:.0f} s", file=sys.stderr)
    if not rows:
        raise cli.NothingProcessedError(f"--coco {args.coco}: no image could be read below {root}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})
    command = "OMP_NUM_THREADS=1 OMP_THREAD_LIMIT=1 .venv/bin/python tools/extract_caliper_reference.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    controls = check_controls(args.controls, root, args.margin) if args.controls else None
    text = summary(rows, args, command, time.time() - start, ocr_used, eye, controls)
    summary_path = args.summary or os.path.splitext(args.out)[0] + ".md"
    with open(summary_path, "w") as f:
        f.write(text)
    print(f"wrote {args.out} and {summary_path}")
    if args.sheets:
        written = write_sheets(args.sheets, tiles)
        print(f"wrote {len(written)} contact sheets to {args.sheets}")
    print(text)
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
