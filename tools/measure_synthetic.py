#!/usr/bin/env python
"""Measure how realistic and how hard a synthetic NT set is.

Compares a set written by ``tools/make_synthetic_nt.py`` with the real
"Dataset for Fetus Framework" NT part (Cui and Dong 2022, Mendeley Data,
doi:10.17632/n2rbrb9t4f.1, CC-BY-4.0) and writes
``<out>/synthetic_realism.json`` and ``<out>/synthetic_realism.md``:

1. Realism: two-sample Kolmogorov-Smirnov statistics (synthetic vs real) of the
   NT box geometry (width, height, aspect w/h, centre x/W and y/H, width/W,
   height/H) and of the grey levels inside the NT box, in a ring around it (the
   box enlarged 2x minus the box) and in the whole sector, with means and
   standard deviations. Pixel KS tests use a fixed-size random sample per set.
2. Difficulty: the share of positive synthetic images with an NT-like
   distractor near the neck (from metadata.csv), and the top-1 accuracy
   (IoU > 0.5 with the NT box, over images with an NT box) of two non-learned
   baselines on both sets: the constant mean box (fitted on the first half of
   the images, evaluated on the second half) and the darkest-band detector.

Usage::

    .venv/bin/python tools/measure_synthetic.py --synthetic /tmp/synthetic_nt \\
        [--real /path/to/fetus_framework_nt] [--out benchmarks/results] \\
        [--examples docs/images/synthetic_examples.png --examples-seed 0]

``--examples`` also draws a grid of synthetic images (rendered afresh from
``--examples-seed``) with the NT box in red, distractor boxes in yellow and
the other structures in green. Exit status: 0 when written; 2 for a user error
(one line naming the file).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import posixpath  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import ks_2samp  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # benchmarks/ is in the checkout, not in the installed package

from benchmarks.baselines_simple import (  # noqa: E402
    darkest_band_detector,
    estimate_fan_mask,
    fit_mean_box,
    mean_box_prediction,
)
from voting_det import cli  # noqa: E402
from voting_det.data.fetus_framework import ALL_FILE, convert_fetus_framework  # noqa: E402
from voting_det.data.synthetic import (  # noqa: E402
    METADATA_FILENAME,
    NEAR_NECK_BOX_WIDTHS,
    SPREADSHEET_FILENAME,
    render_synthetic_nt,
)
from voting_det.evaluation.metrics import box_iou  # noqa: E402

DEFAULT_REAL = os.path.join(REPO_ROOT, "..", "shared", "data", "fetus_framework_nt")
# Pixels sampled per set and region for the grey-level KS tests.
PIXEL_SAMPLE = 50000
IOU_THRESHOLD = 0.5
GEOMETRY = ("width_px", "height_px", "aspect_w_over_h", "centre_x_rel", "centre_y_rel", "width_rel", "height_rel")
REGIONS = ("inside_box", "ring_around_box", "sector")
# Example grid: tiles of positives and negatives, tile size (W, H), box
# colours (RGB) and the number of grey levels of the palette PNG (keeps it small).
EXAMPLE_POSITIVES, EXAMPLE_NEGATIVE_VIEWS, EXAMPLE_COLUMNS = 6, ("off_plane", "neck_out_of_view"), 4
EXAMPLE_RENDER_SIZE, EXAMPLE_TILE = (432, 576), (288, 216)
NT_COLOUR, DISTRACTOR_COLOUR, STRUCTURE_COLOUR, TEXT_COLOUR = (255, 0, 0), (255, 220, 0), (0, 200, 0), (255, 255, 255)
EXAMPLE_GREY_LEVELS = 64


def load_set(root: str):
    """Images with their NT box (or None) as dicts, read through the project's
    converter (so the real set gets the same row validation as training does):
    invalid rows (in the real copy: rows naming missing files) are skipped and
    counted, images without any row are left out."""
    with tempfile.TemporaryDirectory() as tmp:
        report = convert_fetus_framework(root, os.path.join(tmp, "coco"), skip_invalid=True, progress=False)
        with open(os.path.join(tmp, "coco", ALL_FILE)) as f:
            coco = json.load(f)
    boxes = {a["image_id"]: a["bbox"] for a in coco["annotations"]}
    entries = []
    for image in coco["images"]:
        box = boxes.get(image["id"])
        entries.append({
            "fname": posixpath.basename(image["file_name"]),
            "path": os.path.join(root, image["file_name"]),
            "nt": None if box is None else (box[0], box[1], box[0] + box[2], box[1] + box[3]),
        })
    return entries, report["rows_invalid"]


def measure(entries, rng: np.random.Generator):
    """Box geometry, pooled grey-level samples and baseline predictions."""
    geometry = {k: [] for k in GEOMETRY}
    pixels = {k: [] for k in REGIONS}
    sizes, boxes, band_boxes = [], [], []
    for e in entries:
        gray = cv2.imread(e["path"], cv2.IMREAD_GRAYSCALE)
        h, w = gray.shape
        e["size"] = (h, w)
        fan = estimate_fan_mask(gray)
        pixels["sector"].append(rng.choice(gray[fan], size=min(2000, int(fan.sum()))))
        band_boxes.append(darkest_band_detector(gray, fan)[0] if e["nt"] is not None else None)
        if e["nt"] is None:
            continue
        x0, y0, x1, y1 = e["nt"]
        bw, bh = x1 - x0, y1 - y0
        geometry["width_px"].append(bw)
        geometry["height_px"].append(bh)
        geometry["aspect_w_over_h"].append(bw / max(bh, 1.0))
        geometry["centre_x_rel"].append((x0 + x1) / 2 / w)
        geometry["centre_y_rel"].append((y0 + y1) / 2 / h)
        geometry["width_rel"].append(bw / w)
        geometry["height_rel"].append(bh / h)
        inside = np.zeros((h, w), bool)
        inside[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
        ring = np.zeros((h, w), bool)
        ring[max(0, int(y0 - bh / 2)) : int(y1 + bh / 2) + 1, max(0, int(x0 - bw / 2)) : int(x1 + bw / 2) + 1] = True
        ring &= ~inside
        pixels["inside_box"].append(gray[inside])
        pixels["ring_around_box"].append(gray[ring])
        sizes.append((h, w))
        boxes.append(e["nt"])
    pooled = {}
    for k, parts in pixels.items():
        allpix = np.concatenate(parts) if parts else np.zeros(0)
        pooled[k] = rng.choice(allpix, size=min(PIXEL_SAMPLE, len(allpix)), replace=False) if len(allpix) else allpix
    return geometry, pooled, sizes, boxes, band_boxes


def top1(predictions, truths) -> float:
    hits = [box_iou(p, t)[0, 0] > IOU_THRESHOLD for p, t in zip(predictions, truths)]
    return float(np.mean(hits)) if hits else float("nan")


def baselines(entries, sizes, boxes, band_boxes):
    """Top-1 of the mean box (first half -> second half) and of the darkest band."""
    positives = [e for e in entries if e["nt"] is not None]
    half = len(positives) // 2
    mean_rel = fit_mean_box(boxes[:half], sizes[:half])
    mean_pred = [mean_box_prediction(mean_rel, s) for s in sizes[half:]]
    band = [b for b in band_boxes if b is not None]
    return {
        "mean_box_top1": top1(mean_pred, boxes[half:]),
        "mean_box_rel_xyxy": [round(float(v), 4) for v in mean_rel],
        "mean_box_eval_images": len(boxes) - half,
        "darkest_band_top1": top1(band, boxes),
        "darkest_band_eval_images": len(boxes),
    }


def write_examples(path: str, seed: int) -> None:
    """A grid of rendered synthetic images with their boxes (the first
    positives and the first negative of each kind), as a small palette PNG
    (EXAMPLE_GREY_LEVELS greys plus the box colours)."""
    from PIL import Image

    colours = [NT_COLOUR, DISTRACTOR_COLOUR, STRUCTURE_COLOUR, TEXT_COLOUR]
    step = 256 // EXAMPLE_GREY_LEVELS
    tiles, positives, negative_views, index = [], 0, set(), 0
    while positives < EXAMPLE_POSITIVES or len(negative_views) < len(EXAMPLE_NEGATIVE_VIEWS):
        gray, ann = render_synthetic_nt(seed, index, EXAMPLE_RENDER_SIZE)
        index += 1
        view = ann["meta"]["view"]
        if ann["meta"]["has_nt"]:
            if positives == EXAMPLE_POSITIVES:
                continue
            positives += 1
        elif view in negative_views:
            continue
        else:
            negative_views.add(view)
        # Palette indices: greys first, then one index per colour, drawn on a
        # resized index image so that the box lines stay crisp.
        sy, sx = EXAMPLE_TILE[1] / gray.shape[0], EXAMPLE_TILE[0] / gray.shape[1]
        tile = (cv2.resize(gray, EXAMPLE_TILE, interpolation=cv2.INTER_AREA) // step).astype(np.uint8)
        boxes = [(1, b[1:], 1) for b in ann["distractors"]]
        boxes += [(0, b[1:], 2) if b[0] == "NT" else (2, b[1:], 1) for b in ann["boxes"]]
        for colour, (x0, y0, x1, y1), width in boxes:
            cv2.rectangle(tile, (int(x0 * sx), int(y0 * sy)), (int(x1 * sx), int(y1 * sy)),
                          EXAMPLE_GREY_LEVELS + colour, width)
        near = " + distractor near neck" if ann["meta"]["distractor_near_neck"] else ""
        label = f"#{index - 1} {view}{near}"
        cv2.rectangle(tile, (0, 0), (8 + 6 * len(label), 14), 0, -1)
        cv2.putText(tile, label, (3, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.33, EXAMPLE_GREY_LEVELS + 3, 1, cv2.LINE_8)
        tiles.append(tile)
    rows = [np.hstack(tiles[i : i + EXAMPLE_COLUMNS]) for i in range(0, len(tiles), EXAMPLE_COLUMNS)]
    image = Image.fromarray(np.vstack(rows))  # mode L; putpalette makes it P
    palette = [v for g in range(EXAMPLE_GREY_LEVELS) for v in (g * step + step // 2,) * 3]
    image.putpalette(palette + [v for c in colours for v in c])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path, optimize=True)


def describe(values) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "p5": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95))} if len(v) else {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/measure_synthetic.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", required=True, help="a set written by tools/make_synthetic_nt.py")
    parser.add_argument("--real", default=DEFAULT_REAL, help="the real NT set (default: %(default)s)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixel sampling")
    parser.add_argument("--examples", help="also write a grid of example images with boxes to this PNG")
    parser.add_argument("--examples-seed", type=int, default=0, help="synthetic seed of the example images")
    return parser


def main(argv=None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    for name in (SPREADSHEET_FILENAME, METADATA_FILENAME):
        cli.check_input(os.path.join(args.synthetic, name), "--synthetic", "a set written by tools/make_synthetic_nt.py")
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)

    syn_entries, syn_missing = load_set(args.synthetic)
    syn_geo, syn_pix, syn_sizes, syn_boxes, syn_band = measure(syn_entries, rng)
    with open(os.path.join(args.synthetic, METADATA_FILENAME), newline="") as f:
        meta = list(csv.DictReader(f))
    pos_meta = [m for m in meta if m["has_nt"] == "1"]
    result = {
        "synthetic": {
            "dir": args.synthetic,
            "images": len(syn_entries),
            "images_with_nt": len(syn_boxes),
            "negatives": len(syn_entries) - len(syn_boxes),
            "image_size_hw": list(syn_sizes[0]) if syn_sizes else None,
            "fraction_distractor_near_neck": float(np.mean([m["distractor_near_neck"] == "1" for m in pos_meta])),
            "near_neck_definition": f"an NT-like distractor centre within {NEAR_NECK_BOX_WIDTHS} NT-box widths "
                                    "of the NT-box centre",
            "mean_num_distractors": float(np.mean([int(m["num_distractors"]) for m in meta])),
            "nt_thickness_mm": describe([float(m["nt_thickness_mm"]) for m in pos_meta]),
            **baselines(syn_entries, syn_sizes, syn_boxes, syn_band),
            "geometry": {k: describe(v) for k, v in syn_geo.items()},
            "grey_levels": {k: describe(v) for k, v in syn_pix.items()},
        },
    }
    if os.path.isfile(os.path.join(args.real, SPREADSHEET_FILENAME)):
        real_entries, real_missing = load_set(args.real)
        real_geo, real_pix, real_sizes, real_boxes, real_band = measure(real_entries, rng)
        result["real"] = {
            "dir": os.path.relpath(args.real, REPO_ROOT),
            "images_with_nt": len(real_boxes),
            "rows_naming_missing_files": real_missing,
            "median_image_size_hw": [int(np.median([s[0] for s in real_sizes])),
                                     int(np.median([s[1] for s in real_sizes]))],
            **baselines(real_entries, real_sizes, real_boxes, real_band),
            "geometry": {k: describe(v) for k, v in real_geo.items()},
            "grey_levels": {k: describe(v) for k, v in real_pix.items()},
        }
        ks = {}
        for k in GEOMETRY:
            r = ks_2samp(syn_geo[k], real_geo[k])
            ks[k] = {"statistic": float(r.statistic), "pvalue": float(r.pvalue)}
        for k in REGIONS:
            r = ks_2samp(syn_pix[k], real_pix[k])
            ks[f"grey_{k}"] = {"statistic": float(r.statistic), "pvalue": float(r.pvalue)}
        result["ks_synthetic_vs_real"] = ks
    else:
        print(f"note: no real set at {args.real} ({SPREADSHEET_FILENAME} missing); real comparisons skipped")
    result["seconds"] = time.perf_counter() - start

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "synthetic_realism.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(args.out, "synthetic_realism.md"), "w") as f:
        f.write(to_markdown(result))
    if args.examples:
        write_examples(args.examples, args.examples_seed)
    print(to_markdown(result))
    return result


def to_markdown(result: dict) -> str:
    syn, real = result["synthetic"], result.get("real")
    out = ["# Synthetic NT set: realism and difficulty", ""]
    out.append(f"Synthetic: {syn['images']} images ({syn['images_with_nt']} with NT, {syn['negatives']} negatives), "
               f"size {syn['image_size_hw']} (H, W).")
    if real:
        out.append(f"Real: Dataset for Fetus Framework NT part (Cui and Dong 2022, CC-BY-4.0), "
                   f"{real['images_with_nt']} images with an NT box, median size {real['median_image_size_hw']}; "
                   f"{real['rows_naming_missing_files']} rows name missing files and are skipped.")
    out += ["", "## Realism: KS statistic synthetic vs real (0 = same distribution)", ""]
    if real:
        out += ["| quantity | KS stat | p-value | synthetic mean (std) | real mean (std) |",
                "|---|---|---|---|---|"]
        for k, v in result["ks_synthetic_vs_real"].items():
            grey = k.startswith("grey_")
            s = syn["grey_levels" if grey else "geometry"][k[5:] if grey else k]
            r = real["grey_levels" if grey else "geometry"][k[5:] if grey else k]
            out.append(f"| {k} | {v['statistic']:.3f} | {v['pvalue']:.2g} | {s['mean']:.3f} ({s['std']:.3f}) | "
                       f"{r['mean']:.3f} ({r['std']:.3f}) |")
        out += ["", "Box sizes in pixels depend on the image size; the relative rows compare shapes across sizes.",
                "Grey-level KS tests pool a random sample of pixels, so their p-values are tiny whenever the "
                "statistic is not ~0; read the statistic."]
    else:
        out.append("(no real set: skipped)")
    out += ["", "## Difficulty (top-1 = IoU > 0.5 with the NT box)", "",
            "| | synthetic | real |", "|---|---|---|"]
    rv = (lambda k, fmt: fmt.format(real[k]) if real else "-")
    out.append(f"| mean box (fit on first half, test on second half) | {syn['mean_box_top1']:.3f} | "
               f"{rv('mean_box_top1', '{:.3f}')} |")
    out.append(f"| darkest-band detector | {syn['darkest_band_top1']:.3f} | {rv('darkest_band_top1', '{:.3f}')} |")
    out.append(f"| positives with an NT-like distractor near the neck | {syn['fraction_distractor_near_neck']:.3f} | - |")
    out.append(f"| mean distractors per image | {syn['mean_num_distractors']:.2f} | - |")
    out += ["", f"Near the neck: {syn['near_neck_definition']}.",
            f"Synthetic NT thickness (mm): median {syn['nt_thickness_mm'].get('median', float('nan')):.2f}, "
            f"5-95% {syn['nt_thickness_mm'].get('p5', float('nan')):.2f}-"
            f"{syn['nt_thickness_mm'].get('p95', float('nan')):.2f}.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    cli.run_tool(main)
