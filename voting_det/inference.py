"""Batch inference over image files into a resumable prediction table.

:func:`predict_images` runs a predictor (detectron2's ``DefaultPredictor``, or
any callable mapping a BGR image to ``{"instances": Instances}``) over an image
or a folder (searched recursively, natural order) and appends one row per
detection to a table, ``tools/predict.py``'s output:

====================  =========================================================
``file``              path relative to the input folder, with ``/`` separators
``image_height``      image size in pixels
``image_width``
``rank``              1 for the top-scoring detection of the image, 2, ...;
                      0 on the single row of an image without detection
``score``             detection score (empty when rank is 0)
``class``             class name from the metadata's ``thing_classes``, else id
``x0 y0 x1 y1``       box corners in image pixels (XYXY; empty when rank is 0)
``thickness_px``      NT thickness between the two calipers, image pixels
                      (voting_det models, ``MODEL.MEASURE``; empty when not
                      measured: other detectors, detections after the first
                      ``MODEL.MEASURE.MAX_DETECTIONS``, or no NT profile found)
``thickness_mm``      the same in mm (empty when the pixel spacing is unknown)
``above_cutoff``      1 when thickness_mm >= ``MODEL.MEASURE.CUTOFF_MM`` (3.5), else 0
``caliper_upper_x``   the two caliper points (upper, lower) in image pixels
``caliper_upper_y``
``caliper_lower_x``
``caliper_lower_y``
``frame``             the frame of a multi-frame (cine) DICOM file, from 0
                      (one set of rows per frame); empty for a single image
``error``             why the image could not be processed (other fields empty)
====================  =========================================================

DICOM files (.dcm / .dicom, :mod:`voting_det.data.dicom`) are read like the
other images; their pixel spacing (the ultrasound regions' PhysicalDeltaY, or
PixelSpacing) is passed to a predictor that takes ``pixel_spacing`` (voting_det's
:func:`~voting_det.engine.build_predictor`), so ``thickness_mm`` is filled where
the file knows it, unless ``file_spacing=False`` (``--pixel-spacing`` given).
Nothing of the patient (name, ID, dates) enters the table: ``file`` is the path.

Two formats, chosen by the output's suffix: ``.csv`` (a header line, then rows)
and ``.json`` / ``.jsonl``, both written as JSON Lines (one JSON object per line,
empty fields ``null``), so that rows can be appended. An image's rows are
written with one write and flushed, so a table is complete after each image.

Resuming: if the output exists, it must be a table of this module (the CSV
header, or JSON objects with exactly these keys), else it is refused and left
untouched. Images already in it (errors included; delete their rows to retry)
are skipped and new rows appended; an incomplete last line left by a killed
run is dropped first. A table belongs to one input folder, as ``file`` is
relative to it.
"""
import csv
import inspect
import io
import json
import logging
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Instances
from tqdm import tqdm

from .data.dicom import is_dicom
from .data.image_io import ImageReadError, iter_scan_frames, scan_frames
from .utils import IMAGE_EXTENSIONS, natural_key

__all__ = [
    "NO_DETECTION_RANK",
    "PREDICTION_FIELDS",
    "NotAPredictionFileError",
    "UNREADABLE_IMAGE",
    "PredictionWriter",
    "check_prediction_output",
    "class_names_from_cfg",
    "detection_rows",
    "error_row",
    "list_images",
    "predict_images",
    "read_predictions",
]

logger = logging.getLogger(__name__)

# Columns of a prediction table, in order.
CALIPER_FIELDS = ("caliper_upper_x", "caliper_upper_y", "caliper_lower_x", "caliper_lower_y")
PREDICTION_FIELDS = ("file", "image_height", "image_width", "rank", "score", "class", "x0", "y0", "x1", "y1",
                     "thickness_px", "thickness_mm", "above_cutoff") + CALIPER_FIELDS + ("frame", "error")
BOX_FIELDS = ("x0", "y0", "x1", "y1")
_INT_FIELDS = ("image_height", "image_width", "rank", "above_cutoff", "frame")
_FLOAT_FIELDS = ("score", "thickness_px", "thickness_mm") + BOX_FIELDS + CALIPER_FIELDS
# Decimals of a thickness in mm in the table.
MM_DECIMALS = 3
# Rank of the one row of an image without detection (detections are ranked from 1).
NO_DETECTION_RANK = 0
# The error recorded for a file that cannot be read as an image.
UNREADABLE_IMAGE = "unreadable image (not an image, corrupt, or a format OpenCV cannot read)"
# Decimals written: scores, and box corners in pixels.
SCORE_DECIMALS = 6
BOX_DECIMALS = 2
CSV_SUFFIX = ".csv"
# How every JSON line of a table starts (json.dumps of a row, "file" first).
_JSON_ROW_START = '{"file": '
JSON_LINES_SUFFIXES = (".json", ".jsonl")

Row = Dict[str, object]


class NotAPredictionFileError(ValueError):
    """An existing output file that this module did not write (it is never modified)."""


def list_images(path: str) -> Tuple[str, List[str]]:
    """``(root, files)``: the images of a folder (recursive) or a single image.

    ``files`` are relative to ``root`` with ``/`` separators, in natural order;
    for a single image ``root`` is its folder.
    """
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), [os.path.basename(path)]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"input not found: {path}")
    files = []
    for folder, _, names in os.walk(path):
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                relative = os.path.relpath(os.path.join(folder, name), path)
                files.append(relative.replace(os.sep, "/"))
    return path, sorted(files, key=natural_key)


def class_names_from_cfg(cfg) -> Optional[List[str]]:
    """``thing_classes`` of the first test set's metadata, if it is known yet."""
    if not len(cfg.DATASETS.TEST):
        return None
    return MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes")


def _empty_row(file: str) -> Row:
    row = dict.fromkeys(PREDICTION_FIELDS)
    row["file"] = file
    return row


def error_row(file: str, message: str, frame: Optional[int] = None) -> Row:
    """The row recording that ``file`` (its ``frame``, if given) could not be processed."""
    row = _empty_row(file)
    row["frame"] = frame
    row["error"] = " ".join(message.split())  # one line
    return row


def detection_rows(
    file: str,
    height: int,
    width: int,
    instances: Instances,
    class_names: Optional[Sequence[str]] = None,
    score_thresh: float = 0.0,
    frame: Optional[int] = None,
) -> List[Row]:
    """One row per detection with score >= ``score_thresh``, ranked by score
    (``frame``: of a multi-frame file, which one).

    ``instances`` holds ``pred_boxes``, ``scores`` and ``pred_classes`` in image
    pixels (a detectron2 predictor's output). Without detection the image gets
    one row of rank ``NO_DETECTION_RANK`` with empty score, class and box.
    """
    scores = instances.scores.detach().cpu()
    keep = torch.nonzero(scores >= score_thresh).flatten()
    order = keep[torch.argsort(scores[keep], descending=True, stable=True)]
    boxes = instances.pred_boxes.tensor.detach().cpu()[order].tolist()
    classes = instances.pred_classes.detach().cpu()[order].tolist()
    measured = instances.has("pred_calipers")
    if measured:
        calipers = instances.pred_calipers.detach().cpu()[order].reshape(-1, 4).tolist()
        px = instances.pred_nt_thickness_px.detach().cpu()[order].tolist()
        mm = instances.pred_nt_thickness_mm.detach().cpu()[order].tolist()
    base = {"image_height": int(height), "image_width": int(width), "frame": frame}
    if not boxes:
        return [{**_empty_row(file), **base, "rank": NO_DETECTION_RANK}]
    rows = []
    for rank, (score, box, cls) in enumerate(zip(scores[order].tolist(), boxes, classes), start=1):
        row = {**_empty_row(file), **base, "rank": rank, "score": round(score, SCORE_DECIMALS)}
        row["class"] = class_names[cls] if class_names is not None and cls < len(class_names) else cls
        row.update({k: round(v, BOX_DECIMALS) for k, v in zip(BOX_FIELDS, box)})
        if measured and math.isfinite(px[rank - 1]):
            row["thickness_px"] = round(px[rank - 1], BOX_DECIMALS)
            row.update({k: round(v, BOX_DECIMALS) for k, v in zip(CALIPER_FIELDS, calipers[rank - 1])})
            if math.isfinite(mm[rank - 1]):
                row["thickness_mm"] = round(mm[rank - 1], MM_DECIMALS)
                row["above_cutoff"] = int(bool(instances.pred_nt_above_cutoff[order][rank - 1]))
        rows.append(row)
    return rows


def _is_json_lines(path: str) -> bool:
    lower = path.lower()
    if lower.endswith(CSV_SUFFIX):
        return False
    if lower.endswith(JSON_LINES_SUFFIXES):
        return True
    raise ValueError(f"{path}: the output must end in {CSV_SUFFIX} or one of {JSON_LINES_SUFFIXES}")


def _parse_csv_value(field: str, value: str) -> object:
    if value == "":
        return None
    if field in _INT_FIELDS:
        return int(value)
    if field in _FLOAT_FIELDS:
        return float(value)
    return value


def _parse_table(path: str, text: str, json_lines: bool) -> List[Row]:
    """The rows of a table's complete text; raises if it is not one of ours."""
    if json_lines:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or set(row) != set(PREDICTION_FIELDS):
                raise NotAPredictionFileError(
                    f"{path}: line {number} is not a prediction row of tools/predict.py "
                    f"(JSON object with keys {list(PREDICTION_FIELDS)})"
                )
            rows.append(row)
        return rows
    reader = csv.reader(io.StringIO(text, newline=""))
    if next(reader, None) != list(PREDICTION_FIELDS):
        raise NotAPredictionFileError(
            f"{path}: its first line is not the header of a tools/predict.py table ({','.join(PREDICTION_FIELDS)})"
        )
    rows = []
    for number, values in enumerate(reader, start=2):
        if len(values) != len(PREDICTION_FIELDS):
            raise NotAPredictionFileError(
                f"{path}: row {number} has {len(values)} fields, not the {len(PREDICTION_FIELDS)} of a prediction row"
            )
        rows.append({f: _parse_csv_value(f, v) for f, v in zip(PREDICTION_FIELDS, values)})
    return rows


def _complete_text(path: str, text: str, json_lines: bool) -> str:
    """``text`` up to its last newline; refuses a file with no complete line that
    could not be the start of one of our tables (it may be a user's file)."""
    end = text.rfind("\n") + 1
    if end == 0 and text:
        start = _JSON_ROW_START if json_lines else ",".join(PREDICTION_FIELDS)
        if not (start.startswith(text) or text.startswith(start)):
            raise NotAPredictionFileError(f"{path}: not a prediction table of tools/predict.py (no complete line)")
    return text[:end]


def _csv_text(records: List[list]) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows(records)
    return buffer.getvalue()


def read_predictions(path: str) -> List[Row]:
    """The rows of a prediction table (CSV or JSON Lines), typed: ints, floats,
    ``None`` for empty fields (a CSV's ``class`` stays a string); an incomplete
    last line is ignored. Raises :class:`NotAPredictionFileError` for other files."""
    json_lines = _is_json_lines(path)
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    return _parse_table(path, _complete_text(path, text, json_lines), json_lines)


def _existing_table(path: str, json_lines: bool) -> Tuple[str, str, List[Row]]:
    """``(text, complete_text, rows)`` of an existing output (empty when there is
    none), read only; a file that is not one of our tables raises
    :class:`NotAPredictionFileError`."""
    if not os.path.exists(path):
        return "", "", []
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    complete = _complete_text(path, text, json_lines)
    return text, complete, _parse_table(path, complete, json_lines) if complete else []


def check_prediction_output(path: str) -> None:
    """Raise as :class:`PredictionWriter` would for ``path`` (a wrong suffix, an
    existing file that is not a prediction table), without touching it: run
    before the model is loaded."""
    _existing_table(path, _is_json_lines(path))


class PredictionWriter:
    """Appends image rows to a prediction table, resuming an existing one.

    On opening, an existing table is validated (a foreign file raises
    :class:`NotAPredictionFileError` and is left untouched), an incomplete last
    line is cut off, and :attr:`done` holds the files it already has,
    :attr:`failed` those of them recorded as errors, :attr:`done_frames` the
    ``(file, frame)`` pairs it has (frame None for a single image).
    """

    def __init__(self, path: str):
        self.path = path
        self._json_lines = _is_json_lines(path)
        text, complete, rows = _existing_table(path, self._json_lines)
        self.done = {row["file"] for row in rows}
        self.failed = {row["file"] for row in rows if row["error"]}
        self.done_frames = {(row["file"], row["frame"]) for row in rows}
        if len(complete) < len(text):
            logger.warning("%s: dropped an incomplete last line (an interrupted run)", path)
            with open(path, "r+b") as f:
                f.truncate(len(complete.encode("utf-8")))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, "a", encoding="utf-8", newline="")
        if not complete and not self._json_lines:
            self._append(_csv_text([list(PREDICTION_FIELDS)]))

    def _append(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()

    def write(self, rows: List[Row]) -> None:
        """Append one image's rows (one write, then flush) and mark it done."""
        if self._json_lines:
            self._append("".join(json.dumps({f: row[f] for f in PREDICTION_FIELDS}) + "\n" for row in rows))
        else:
            self._append(_csv_text([["" if row[f] is None else row[f] for f in PREDICTION_FIELDS] for row in rows]))
        self.done.update(row["file"] for row in rows)
        self.failed.update(row["file"] for row in rows if row["error"])
        self.done_frames.update((row["file"], row["frame"]) for row in rows)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _takes_pixel_spacing(predictor: Callable) -> bool:
    """Whether ``predictor(image, pixel_spacing=...)`` is accepted."""
    try:
        parameters = inspect.signature(predictor).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "pixel_spacing" or p.kind == p.VAR_KEYWORD for p in parameters)


def predict_images(
    predictor: Callable[..., dict],
    input_path: str,
    output_path: str,
    *,
    class_names: Optional[Sequence[str]] = None,
    score_thresh: float = 0.0,
    progress: bool = True,
    frame: Optional[int] = None,
    file_spacing: bool = True,
) -> Dict[str, int]:
    """Run ``predictor`` on the images of ``input_path`` not yet in ``output_path``.

    Images are read by :func:`voting_det.data.image_io.iter_scan_frames` as
    training reads them (BGR, grey scans replicated to 3 channels; DICOM
    files too); an unreadable one is logged as a warning and recorded as an
    error row. A multi-frame (cine) DICOM file gives rows for every frame, or
    for ``frame`` only (from 0; single images are not affected). With
    ``file_spacing`` a DICOM file's pixel spacing is passed as
    ``predictor(image, pixel_spacing=mm)`` when the predictor takes it. Returns
    counts of files: ``images`` found, ``skipped`` (already in the table),
    ``processed``, ``errors``, ``detections`` (rows), and ``predicted``: the
    images found that the table now holds predictions of (not error rows),
    this run's or an earlier one's; 0 when there were images means that
    nothing could be processed.
    """
    root, files = list_images(input_path)
    summary = {"images": len(files), "skipped": 0, "processed": 0, "errors": 0, "detections": 0, "predicted": 0}
    pass_spacing = file_spacing and _takes_pixel_spacing(predictor)
    with PredictionWriter(output_path) as writer:
        # new files, and multi-frame files an interrupted run left with frames to do
        todo = [f for f in files if f not in writer.done
                or (f not in writer.failed and is_dicom(os.path.join(root, f)))]
        summary["skipped"] = len(files) - len(todo)
        for file in tqdm(todo, desc="predict", unit="image", disable=not progress):
            path = os.path.join(root, file)
            pending = []  # the frames of this file still to write (None: a single image)
            try:
                count = scan_frames(path)
                wanted = [None] if count == 1 else [frame] if frame is not None else list(range(count))
                pending = [f for f in wanted if (file, f) not in writer.done_frames]
                if not pending:
                    summary["skipped"] += 1
                    continue
                for i, (current, image, info) in enumerate(iter_scan_frames(path, None if count == 1 else pending)):
                    if i == 0 and info["format"] == "dicom":
                        logger.info("%s: pixel spacing %s", path,
                                    f"{info['pixel_spacing_mm']:g} mm ({info['spacing_source']})"
                                    if info["pixel_spacing_mm"] else info["spacing_note"])
                    spacing = info["pixel_spacing_mm"] if pass_spacing else None
                    outputs = predictor(image) if spacing is None else predictor(image, pixel_spacing=spacing)
                    rows = detection_rows(file, image.shape[0], image.shape[1], outputs["instances"], class_names,
                                          score_thresh, frame=current)
                    writer.write(rows)
                    pending.pop(0)
                    summary["detections"] += sum(row["rank"] != NO_DETECTION_RANK for row in rows)
            except ImageReadError as error:
                logger.warning("%s; recorded as an error row", error)
                reason = error.reason if is_dicom(path) else UNREADABLE_IMAGE
                writer.write([error_row(file, reason, pending[0] if pending else None)])
                summary["errors"] += 1
                continue
            summary["processed"] += 1
        summary["predicted"] = sum(f in writer.done and f not in writer.failed for f in files)
    logger.info("%s: %s", output_path, summary)
    return summary
