"""The NT thickness check (tools/evaluate_thickness.py): the measurement of
:mod:`voting_det.measurement` on each test image's top-1 detection, against a
reference thickness.

- Real images: the sonographer's calipers (``caliper_reference.csv`` of
  tools/extract_caliper_reference.py: the two marks' centres, their distance
  in pixels, and the pixel spacing where the screen tells it). The marks are
  in the image, so the measurement runs on the image with the marks removed
  (inpainted, :func:`benchmarks.caliper_marks.remove_caliper_marks`) and, for
  comparison, on the image as it is.
- Synthetic images: the generator's own truth (``metadata.csv``:
  ``nt_thickness_px``, ``pixel_spacing_mm``).

The detections are a benchmark run's test-split evaluations
(``eval/inference/<dataset>_fold<k>_test/nt_detections.json``): every image is
measured by a model that did not train on it. Methods measured per image:
``profile`` (the intensity profile inside the top-1 box), ``box`` (the top-1
box's height, the naive baseline) and ``profile_gt_box`` (the profile inside
the annotated box: the measurement alone, without the detector's error).
"""
import csv
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from detectron2.structures import Boxes, pairwise_iou

from voting_det.data.image_io import read_scan
from voting_det.evaluation.agreement import agreement
from voting_det.evaluation.evaluator import load_records
from voting_det.measurement import NT_CUTOFF_MM, box_measurement, profile_measurement

__all__ = ["MEASURED", "TOLERANCE_MM", "HUMAN", "measure_images", "read_reference", "read_synthetic_truth",
           "summarise", "format_summary", "plot_bland_altman", "split_records"]

# The measurements compared, in table order.
MEASURED = ("profile", "box", "profile_gt_box")
# Within this many mm counts as agreeing (the and the literature's half millimetre).
TOLERANCE_MM = 0.5
# Human figures the table is read beside (Pandya et al. 1995; Pajkrt et al. 2000).
HUMAN = ("between observers: 95% of differences below 0.62 mm (Pandya et al., UOG 1995); "
         "between-operator SD 0.44-0.56 mm (Pajkrt et al., UOG 2000)")


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def read_reference(path: str) -> Dict[str, dict]:
    """The caliper reference CSV, by image file name (basename): ``located``
    (bool), ``marks`` (upper x, y, lower x, y or None), ``distance_px``,
    ``pixel_spacing_mm`` (NaN when unknown), ``spacing_source`` and the row."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            marks = [_float(row.get(k)) for k in ("upper_x", "upper_y", "lower_x", "lower_y")]
            out[os.path.basename(row["file_name"])] = {
                "located": row.get("located") == "1",
                "marks": marks if all(np.isfinite(marks)) else None,
                "style": row.get("style") or "",
                "score": _float(row.get("score")),
                "distance_px": _float(row.get("distance_px")),
                "pixel_spacing_mm": _float(row.get("pixel_spacing_mm")),
                "spacing_source": row.get("spacing_source") or "none",
            }
    return out


def read_synthetic_truth(metadata_csv: str) -> Dict[str, dict]:
    """The synthetic set's truth by file name: the thickness in pixels as the
    reference, its pixel spacing (every image's spacing is known)."""
    out = {}
    with open(metadata_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("has_nt") in ("1", "True", "true"):
                out[os.path.basename(row["fname"])] = {
                    "located": True, "marks": None, "style": "", "score": float("nan"),
                    "distance_px": _float(row["nt_thickness_px"]),
                    "pixel_spacing_mm": _float(row["pixel_spacing_mm"]), "spacing_source": "generator",
                }
    return out


def split_records(run_folder: str, split_name: str) -> List[dict]:
    """The per-image records (gt boxes, detections by score) of a run's
    evaluation of ``split_name`` (a registered data set name)."""
    path = os.path.join(run_folder, "eval", "inference", split_name, "nt_detections.json")
    _, _, records = load_records(path)
    return records


def _image_path(record: dict, image_dirs: Sequence[str]) -> str:
    name = record["file_name"]
    if os.path.isfile(name):
        return name
    for folder in image_dirs:
        candidate = os.path.join(folder, os.path.basename(name))
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{name}: the image of a detection record is not there, nor in {list(image_dirs)}; "
                            "give the folder holding the images with --images")


def _top1(record: dict) -> Optional[List[float]]:
    if not record.get("boxes"):
        return None
    return list(map(float, record["boxes"][int(np.argmax(record["scores"]))]))


def measure_images(records: Iterable[dict], reference: Dict[str, dict], image_dirs: Sequence[str] = (),
                   remove_marks: bool = True, fold: Optional[int] = None) -> List[dict]:
    """One row per record with a reference: the reference, the top-1 box and
    its IoU with the annotation, and each method of :data:`MEASURED` in
    pixels, on the image with the caliper marks removed (where the reference
    has their positions) and, as ``*_with_marks``, on the image as it is."""
    from .caliper_marks import CaliperMarks, remove_caliper_marks

    rows = []
    for record in records:
        name = os.path.basename(record["file_name"])
        ref = reference.get(name)
        if ref is None or not record.get("gt"):
            continue
        image = read_scan(_image_path(record, image_dirs))
        grey = image.astype(np.float64).mean(axis=2)
        clean = grey
        removed = False
        if remove_marks and ref["marks"] is not None:
            ux, uy, lx, ly = ref["marks"]
            marks = CaliperMarks((ux, uy), (lx, ly), ref["style"] or "coloured", ref["score"])
            clean = remove_caliper_marks(image, marks).astype(np.float64).mean(axis=2)
            removed = True
        gt = list(map(float, record["gt"][0]))
        top = _top1(record)
        row = {"file_name": name, "fold": fold, "reference_px": ref["distance_px"], "reference_located": ref["located"],
               "pixel_spacing_mm": ref["pixel_spacing_mm"], "spacing_source": ref["spacing_source"],
               "marks_removed": removed, "top1_iou": float(pairwise_iou(Boxes(torch.tensor([top])), Boxes(torch.tensor([gt])))[0, 0]) if top else 0.0,
               "top1_box": top, "gt_box": gt}
        for label, picture in (("", clean), ("_with_marks", grey)):
            row[f"profile{label}"] = profile_measurement(picture, top).thickness_px if top else float("nan")
            row[f"profile_gt_box{label}"] = profile_measurement(picture, gt).thickness_px
        row["box"] = box_measurement(top).thickness_px if top else float("nan")
        rows.append(row)
    return rows


def _mm(values: Sequence[float], spacing: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=float) * np.asarray(spacing, dtype=float)


def summarise(rows: Sequence[dict], methods: Sequence[str] = MEASURED) -> Dict[str, dict]:
    """Agreement with the reference per method and subset: ``px`` on every
    located reference; ``mm`` on those with a known spacing (and, when the
    rows carry several spacing sources, per source)."""
    located = [r for r in rows if r["reference_located"] and np.isfinite(r["reference_px"])]
    out: Dict[str, dict] = {}
    sources = sorted({r["spacing_source"] for r in located if np.isfinite(r["pixel_spacing_mm"])})
    for method in methods:
        res = {"px": agreement([r[method] for r in located], [r["reference_px"] for r in located])}
        subsets = {"mm": [r for r in located if np.isfinite(r["pixel_spacing_mm"])]}
        if len(sources) > 1:
            subsets.update({f"mm, spacing from {s}": [r for r in located if r["spacing_source"] == s
                                                      and np.isfinite(r["pixel_spacing_mm"])] for s in sources})
        for label, subset in subsets.items():
            spacing = [r["pixel_spacing_mm"] for r in subset]
            res[label] = agreement(_mm([r[method] for r in subset], spacing),
                                   _mm([r["reference_px"] for r in subset], spacing),
                                   tolerance=TOLERANCE_MM, cutoff=NT_CUTOFF_MM)
        out[method] = res
    return out


def _cell(value, digits=2, signed=False) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_summary(summary: Dict[str, dict], title: str) -> str:
    """The agreement as Markdown tables: pixels, then millimetres."""
    lines = [f"### {title}", "", "| method | n (missing) | MAE px | median AE px | bias px | 95% limits px | ICC |",
             "|---|---|---|---|---|---|---|"]
    for method, res in summary.items():
        a = res["px"]
        lines.append(f"| {method} | {a['n']} ({a['missing']}) | {_cell(a['mean_abs_error'])} | "
                     f"{_cell(a['median_abs_error'])} | {_cell(a['ba_bias'], signed=True)} | "
                     f"{_cell(a['ba_loa_low'], signed=True)} to {_cell(a['ba_loa_high'], signed=True)} | "
                     f"{_cell(a['icc_a1'])} |")
    lines += ["", "| method | subset | n (missing) | MAE mm | median AE mm | bias mm | 95% limits mm | ICC | "
              f"within {TOLERANCE_MM} mm | >= {NT_CUTOFF_MM} mm: cases, sensitivity / specificity |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for method, res in summary.items():
        for subset, a in res.items():
            if subset == "px":
                continue
            c = a["cutoff"]
            cut = (f"{c['positives']} of {c['positives'] + c['negatives']}: "
                   f"{_cell(c['sensitivity'])} / {_cell(c['specificity'])}")
            lines.append(f"| {method} | {subset} | {a['n']} ({a['missing']}) | {_cell(a['mean_abs_error'])} | "
                         f"{_cell(a['median_abs_error'])} | {_cell(a['ba_bias'], signed=True)} | "
                         f"{_cell(a['ba_loa_low'], signed=True)} to {_cell(a['ba_loa_high'], signed=True)} | "
                         f"{_cell(a['icc_a1'])} | {_cell(a.get('within_tolerance'))} | {cut} |")
    return "\n".join(lines)


def plot_bland_altman(panels: Sequence[dict], path: str) -> None:
    """Bland-Altman plots, one panel per ``{"title", "method", "reference",
    "groups" (optional labels per point), "unit"}``: the difference against the
    mean, the bias and the 95% limits, and the human +-0.62 mm band on mm panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.2 * len(panels), 5.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels):
        m, r = np.asarray(panel["method"], float), np.asarray(panel["reference"], float)
        keep = np.isfinite(m) & np.isfinite(r)
        groups = np.asarray(panel.get("groups") or [""] * len(m))[keep]
        m, r = m[keep], r[keep]
        mean, diff = (m + r) / 2, m - r
        for g in sorted(set(groups)):
            sel = groups == g
            ax.scatter(mean[sel], diff[sel], s=10, alpha=0.6, label=f"{g} ({sel.sum()})" if g else None)
        if diff.size >= 2:
            bias, sd = diff.mean(), diff.std(ddof=1)
            for y, style, label in ((bias, "-", f"bias {bias:+.2f}"), (bias - 1.96 * sd, "--", f"95% limits {bias - 1.96 * sd:+.2f}"),
                                    (bias + 1.96 * sd, "--", f"to {bias + 1.96 * sd:+.2f}")):
                ax.axhline(y, color="black", linestyle=style, linewidth=1, label=label)
        if panel["unit"] == "mm":
            ax.axhspan(-0.62, 0.62, color="tab:green", alpha=0.12, label="human: 95% of differences within 0.62 mm")
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xlabel(f"mean of method and reference ({panel['unit']})")
        ax.set_ylabel(f"method - reference ({panel['unit']})")
        ax.set_title(panel["title"], fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.savefig(path)
