"""One uploaded file through the model: the image, its detection and
measurement, the clinician's form of the explanation, or a clear error.

Everything here is in image pixels (x right, y down), boxes XYXY. Nothing of
the patient is kept: a DICOM file's pixels, frame count and spacing only
(:func:`voting_det.data.image_io.read_scan_with_info` reads nothing else).
"""
import re
import secrets
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data.image_io import ImageReadError, read_scan_with_info, scan_frames
from ..inference import NO_DETECTION_RANK, detection_rows, error_row
from ..modeling.grid import grid_to_image
from ..interpretation.panel import LINE_PRIMITIVES, explanation_line, peak_place
from .model import ViewerModel

__all__ = ["Item", "analyse_file", "clean_name", "error_message", "explanation_summary", "failed_item"]

# Where the pixel spacing of an image came from (besides a DICOM attribute's name).
SPACING_FROM_PAGE = "entered on the page"
SPACING_FROM_CONFIG = "MODEL.MEASURE.PIXEL_SPACING"
SPACING_FROM_OPTION = "tools/serve.py --pixel-spacing"


@dataclass
class Item:
    """One uploaded file (one frame of a cine) as the viewer holds it."""

    id: str
    file: str
    image: Optional[np.ndarray] = None  # (H, W, 3) uint8 BGR; None for an unreadable file
    info: Dict = field(default_factory=dict)  # format, frame, frames, spacing (nothing of the patient)
    spacing_xy: Optional[Sequence[float]] = None  # (dx, dy) mm per pixel, when known
    row: Dict = field(default_factory=dict)  # the model's row of the table (voting_det.inference.detection_rows)
    trace: Optional[Dict] = None  # image_trace of the top detection (voting models)
    explanation: Optional[Dict] = None  # explanation_summary(trace)
    correction: Optional[Dict] = None  # the dragged calipers (voting_det.viewer.table.correct)
    error: Optional[str] = None
    panel_png: Optional[bytes] = None  # the research panel, drawn on first request

    @property
    def spacing(self) -> Optional[float]:
        """mm per pixel along y (the thickness's axis), or None."""
        return self.spacing_xy[1] if self.spacing_xy else None


def new_id() -> str:
    """An item's id: random, so that a restarted viewer never reuses one (the page caches images by id)."""
    return secrets.token_hex(8)


def clean_name(name: Optional[str]) -> str:
    """The uploaded file's own name (no folders), as shown and written."""
    name = re.split(r"[\\/]", name or "")[-1].strip()
    return name or "unnamed file"


def _advice(reason: str) -> str:
    if reason.startswith("empty file"):
        return "the upload is empty: drop the image file itself"
    if "pip install" in reason:
        return "install that package in the viewer's environment and restart it, or export the file uncompressed"
    if "DICOM" in reason:
        return ("export it again from the scanner or PACS (uncompressed DICOM), or drop a PNG or JPEG of the "
                "scan instead")
    if reason.startswith("frame "):
        return "choose a frame the file has"
    return "drop a PNG, JPEG or DICOM file of the scan"


def error_message(file: str, reason: str) -> str:
    """``<file>: <what is wrong>; <what to do>`` for the page and the table."""
    return f"{file}: {reason}; {_advice(reason)}. The other images are not affected."


def _vote_point(votes: Sequence, crop_box: Sequence[float]) -> List[float]:
    """Image ``(x, y)`` of the strongest cell's centre of a primitive's vote map
    Phi_k (M x N over the level's crop box), mapped by the model's own
    :func:`voting_det.modeling.grid.grid_to_image`."""
    votes = np.asarray(votes, dtype=float)
    row, col = np.unravel_index(int(np.nanargmax(votes)), votes.shape)
    point = grid_to_image(torch.tensor([[col + 0.5, row + 0.5]], dtype=torch.float64),
                          torch.tensor([list(crop_box)], dtype=torch.float64), votes.shape)
    return point[0].tolist()


def explanation_summary(trace: Dict, per_level: int = LINE_PRIMITIVES) -> Dict:
    """The clinician's form of the top detection's explanation: the one
    sentence of the research panel (:func:`explanation_line`) and, per level
    (coarse to fine), its top ``per_level`` primitives with where each matched
    the image best (its peak response, and that place in words relative to
    the box) and where it voted for the NT's centre (the peak of its vote
    map), its share of the vote at the centre; the context boxes."""
    det = trace["detections"][0]
    levels = []
    names = trace["levels"]
    for i, name in enumerate(names):
        tr = det["levels"][name]
        contributions = np.asarray(tr["contributions"], dtype=float)
        total = float(tr["vote_at_centre"] or 0.0)
        primitives = []
        for j, k in enumerate(tr["top_primitives"][:per_level]):
            k = int(k)
            peak = [float(v) for v in tr["peak_points"][k]]
            primitives.append({
                "k": k,
                "share": float(contributions[k] / total) if total > 0 else None,
                "matched": peak,
                "place": peak_place(peak, det["box"]),
                "voted": _vote_point(tr["primitive_votes"][j], tr["crop_boxes"]),
            })
        levels.append({"name": name, "role": "fine" if i == len(names) - 1 else "coarse",
                       "box": tr["boxes"], "centre": tr["centres"], "primitives": primitives})
    return {
        "line": explanation_line(trace, per_level=per_level),
        "rank_by": (trace.get("options") or {}).get("rank_by"),
        "levels": levels,
        "context_boxes": det.get("deformed_context_boxes") or det.get("context_boxes") or [],
        "mu": det.get("mu"),
    }


def _spacing(info: Dict, page_spacing: Optional[float], override: Optional[float], default: Optional[float]):
    """``(dx, dy)`` mm per pixel and where it came from, the order of
    tools/predict.py: what the user gave wins (the page's value for these
    files, then ``--pixel-spacing``), then the file's own (DICOM), then the
    config's ``MODEL.MEASURE.PIXEL_SPACING``; (None, None) when unknown."""
    if page_spacing:
        return (float(page_spacing),) * 2, SPACING_FROM_PAGE
    if override:
        return (float(override),) * 2, SPACING_FROM_OPTION
    if info.get("pixel_spacing_mm"):
        xy = info.get("pixel_spacing_xy_mm") or (info["pixel_spacing_mm"],) * 2
        return tuple(float(v) for v in xy), info.get("spacing_source")
    if default:
        return (float(default),) * 2, SPACING_FROM_CONFIG
    return None, None


def analyse_file(model: ViewerModel, path: str, file: str, page_spacing: Optional[float] = None,
                 frame: Optional[int] = None) -> Item:
    """Read ``path`` (the upload of ``file``) and run the model on it (of a
    cine, ``frame``, default the first). An unreadable file gives an Item
    with ``error`` (its message names ``file``, never the temporary path) and
    its error row."""
    try:
        chosen = frame if frame is not None and scan_frames(path) > 1 else None
        image, info = read_scan_with_info(path, frame=chosen)
    except ImageReadError as e:
        return failed_item(file, e.reason.replace(path, file))
    item = Item(id=new_id(), file=file)
    xy, source = _spacing(info, page_spacing, model.spacing_override, model.default_spacing)
    item.image, item.spacing_xy = image, xy
    item.info = {
        "format": info["format"], "frame": info["frame"], "frames": info["frames"],
        "pixel_spacing_mm": xy[1] if xy else None, "pixel_spacing_xy_mm": list(xy) if xy else None,
        "spacing_source": source,
        "spacing_note": None if xy else (info.get("spacing_note") or "unknown"),
    }
    instances, item.trace = model(image, pixel_spacing=item.spacing, file=file)
    rows = detection_rows(file, image.shape[0], image.shape[1], instances, model.class_names,
                          frame=info["frame"])
    item.row = rows[0]  # the top detection (or the no-detection row)
    if item.trace is not None and item.row["rank"] != NO_DETECTION_RANK:
        item.explanation = explanation_summary(item.trace)
    return item


def failed_item(file: str, reason: str) -> Item:
    """The item of a file that could not be processed: its error (naming the
    file, saying what to do) and error row."""
    item = Item(id=new_id(), file=file)
    item.error = error_message(file, reason)
    item.row = error_row(file, reason)  # the table's error column: what is wrong (the file is its own column)
    return item
