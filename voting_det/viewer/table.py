"""Caliper corrections and the viewer's table (CSV).

The table has one row per uploaded file: the columns of ``tools/predict.py``'s
table (:data:`voting_det.inference.PREDICTION_FIELDS`, the top detection's row
made by :func:`voting_det.inference.detection_rows`), then :data:`EXTRA_FIELDS`:

- ``pixel_spacing_mm``: mm per pixel along y used for the mm values (empty: unknown);
- ``corrected``: 1 when the calipers were dragged on the page, else 0. Then
  ``thickness_px``, ``thickness_mm``, ``above_cutoff`` and ``caliper_*`` hold
  the corrected values, and the ``model_*`` columns the model's own;
- ``model_thickness_px`` ... ``model_caliper_lower_y``: the model's values
  (the same as the main columns when ``corrected`` is 0).

A corrected thickness is the distance between the two dragged points: in
pixels, ``hypot(dx, dy)``; in mm, ``hypot(dx * sx, dy * sy)`` with the
spacings along x and y (a DICOM file's own, else the one spacing for both).
"""
import csv
import io
import math
from typing import Dict, Iterable, Optional, Sequence

from ..inference import BOX_DECIMALS, CALIPER_FIELDS, MM_DECIMALS, PREDICTION_FIELDS
from .analysis import Item

__all__ = ["CSV_FIELDS", "EXTRA_FIELDS", "MODEL_FIELDS", "correct", "csv_text", "measurement", "table_row"]

MEASURED_FIELDS = ("thickness_px", "thickness_mm", "above_cutoff") + CALIPER_FIELDS
MODEL_FIELDS = tuple(f"model_{f}" for f in MEASURED_FIELDS)
EXTRA_FIELDS = ("pixel_spacing_mm", "corrected") + MODEL_FIELDS
CSV_FIELDS = PREDICTION_FIELDS + EXTRA_FIELDS


def correct(upper: Sequence[float], lower: Sequence[float], spacing_xy: Optional[Sequence[float]],
            cutoff_mm: float) -> Dict:
    """The measurement of two caliper points ``(x, y)`` (image pixels): the
    upper one is the one nearer the top of the image."""
    (ux, uy), (lx, ly) = sorted(([float(upper[0]), float(upper[1])], [float(lower[0]), float(lower[1])]),
                                key=lambda p: p[1])
    px = math.hypot(lx - ux, ly - uy)
    mm = math.hypot((lx - ux) * spacing_xy[0], (ly - uy) * spacing_xy[1]) if spacing_xy else None
    return {
        "thickness_px": round(px, BOX_DECIMALS),
        "thickness_mm": round(mm, MM_DECIMALS) if mm is not None else None,
        "above_cutoff": int(mm >= cutoff_mm) if mm is not None else None,
        **{k: round(v, BOX_DECIMALS) for k, v in zip(CALIPER_FIELDS, (ux, uy, lx, ly))},
    }


def measurement(item: Item) -> Dict:
    """The current measurement (corrected, else the model's): thickness
    (px, mm), above_cutoff, calipers ``[[ux, uy], [lx, ly]]`` or None, corrected."""
    source = item.correction or item.row
    calipers = [source.get(k) for k in CALIPER_FIELDS]
    return {
        "thickness_px": source.get("thickness_px"),
        "thickness_mm": source.get("thickness_mm"),
        "above_cutoff": source.get("above_cutoff"),
        "calipers": None if any(v is None for v in calipers) else [calipers[:2], calipers[2:]],
        "corrected": item.correction is not None,
    }


def table_row(item: Item) -> Dict:
    """The item's row of the table (:data:`CSV_FIELDS`)."""
    row = {f: item.row.get(f) for f in PREDICTION_FIELDS}
    row["pixel_spacing_mm"] = item.spacing
    row["corrected"] = int(item.correction is not None)
    row.update({f"model_{f}": item.row.get(f) for f in MEASURED_FIELDS})
    if item.correction is not None:
        row.update({f: item.correction[f] for f in MEASURED_FIELDS})
    return row


def csv_text(items: Iterable[Item]) -> str:
    """The table of ``items`` as CSV (a header line; empty fields for unknown values)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for item in items:
        row = table_row(item)
        writer.writerow(["" if row[f] is None else row[f] for f in CSV_FIELDS])
    return buffer.getvalue()
