"""Converting the "Dataset for Fetus Framework" to COCO JSON with grouped folds.

The public set (Cui and Dong 2022, Mendeley Data, doi:10.17632/n2rbrb9t4f.1,
CC-BY-4.0) and the built-in synthetic set share one layout: an image folder
(any depth of sub-folders) and ``ObjectDetection.xlsx`` with one row per box
(see :mod:`voting_det.data.spreadsheet`). :func:`convert_fetus_framework` turns
such a folder into the COCO files that :mod:`voting_det.data.datasets`
registers::

    OUT/all.json
    OUT/fold{k}_train.json, fold{k}_val.json, fold{k}_test.json
    OUT/conversion_report.json

Boxes. A row's ``h`` is the image row (y) and ``w`` the column (x). The
coordinates are taken as the XYXY corners of the box directly::

    x0 = w_min, y0 = h_min, x1 = w_max, y1 = h_max       (COCO bbox [x0, y0, x1-x0, y1-y0])

so a box must satisfy ``0 <= x0 < x1 <= width`` and ``0 <= y0 < y1 <= height``
(a box may touch the border; ``w_max = width`` is allowed).

Images. An image with rows for other structures but none for the selected
ones is a NEGATIVE (kept, no annotations). An image on disk without any row is
UNANNOTATED: skipped (and listed) unless ``include_unannotated``, then kept as
a negative flagged ``"annotated": false``.

Validation. Every row is checked, and all problems are reported at once
(:class:`ConversionError`). With ``skip_invalid`` the bad rows are dropped
instead, and an image that lost a row of a selected (or unrecognisable)
structure is dropped entirely, so that it never turns into a false negative.
A duplicate row is dropped but its first occurrence kept, so it costs nothing.

Folds (docs/method.md section 5). Near-duplicate images (perceptual hash within
``phash_threshold`` bits, :mod:`voting_det.data.folds`) share a fold; folds
are stratified on "has a selected structure"; the validation split is carved
from the training folds the same way. The output is byte-identical for the
same inputs and seed. The source folder is never written to, and the output
folder appears complete or not at all.
"""
import json
import logging
import os
import posixpath
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from .. import __version__
from ..utils import IMAGE_EXTENSIONS, natural_key, staged_folder
from .folds import DEFAULT_PHASH_THRESHOLD, PHASH_BITS, assign_folds, carve_validation, group_near_duplicates, phash
from .image_io import ImageReadError, read_scan
from .spreadsheet import read_object_detection_xlsx

__all__ = [
    "FETUS_FRAMEWORK_STRUCTURES",
    "SPREADSHEET_NAME",
    "REPORT_FILE",
    "DEFAULT_STRUCTURES",
    "DEFAULT_NUM_FOLDS",
    "DEFAULT_SEED",
    "DEFAULT_VAL_FRACTION",
    "PROBLEM_KINDS",
    "Problem",
    "ConversionError",
    "convert_fetus_framework",
    "format_report",
    "index_images",
]

logger = logging.getLogger(__name__)

# Structure names of the full public set, in its order (docs/method.md section 7).
FETUS_FRAMEWORK_STRUCTURES = (
    "thalami",
    "midbrain",
    "palate",
    "IT",
    "CM",
    "NT",
    "nasal tip",
    "nasal skin",
    "nasal bone",
)
_STRUCTURE_BY_KEY = {s.lower(): s for s in FETUS_FRAMEWORK_STRUCTURES}
SPREADSHEET_NAME = "ObjectDetection.xlsx"
DEFAULT_STRUCTURES = ("NT",)
DEFAULT_NUM_FOLDS = 3
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_SEED = 0

ALL_FILE = "all.json"
REPORT_FILE = "conversion_report.json"
SPLITS = ("train", "val", "test")
_OUTPUT_FILE_PATTERN = re.compile(r"(all|conversion_report|fold\d+_(train|val|test))\.json")
JSON_INDENT = 2

# Kinds of problems, in the order they are listed.
MISSING_FILE = "missing_file"
AMBIGUOUS_FILE = "ambiguous_file"
UNREADABLE_IMAGE = "unreadable_image"
UNKNOWN_STRUCTURE = "unknown_structure"
BAD_COORDINATE = "bad_coordinate"
EMPTY_BOX = "empty_box"
BOX_OUTSIDE_IMAGE = "box_outside_image"
DUPLICATE_ROW = "duplicate_row"
PROBLEM_KINDS = (
    MISSING_FILE,
    AMBIGUOUS_FILE,
    UNREADABLE_IMAGE,
    UNKNOWN_STRUCTURE,
    BAD_COORDINATE,
    EMPTY_BOX,
    BOX_OUTSIDE_IMAGE,
    DUPLICATE_ROW,
)

# Errors PIL raises for a file that is not a decodable image.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Problem:
    """One problem of the input: a spreadsheet row (``row``, 1-based as shown
    by a spreadsheet program) or, with ``row=None``, an image without a row."""

    row: Optional[int]
    fname: str
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row is not None else "no row"
        return f"{where} ({self.fname}): {self.kind}: {self.message}"


class ConversionError(ValueError):
    """The input has problems; ``problems`` lists every one of them."""

    def __init__(self, problems: Sequence[Problem], spreadsheet: str):
        self.problems = list(problems)
        kinds = Counter(p.kind for p in self.problems)
        lines = [
            f"{spreadsheet}: {len(self.problems)} problem(s) "
            f"({', '.join(f'{kinds[k]} {k}' for k in PROBLEM_KINDS if kinds[k])}):"
        ]
        lines += [f"  {p}" for p in self.problems]
        lines.append(
            "Fix the spreadsheet or the image folder, or drop these rows with "
            "skip_invalid=True (tools/convert_fetus_framework.py --skip-invalid)."
        )
        super().__init__("\n".join(lines))


@dataclass
class _Row:
    """A spreadsheet row after parsing: what could be read, and its problems."""

    row: int
    fname: str
    structure: Optional[str]  # canonical name, None when unknown
    box: Optional[Tuple[int, int, int, int]]  # x0, y0, x1, y1; None when invalid
    candidates: List[str]  # image paths (relative to root) the fname may name
    problems: List[Problem] = field(default_factory=list)

    @property
    def file_name(self) -> Optional[str]:
        return self.candidates[0] if len(self.candidates) == 1 else None


@dataclass(frozen=True)
class _ImageFile:
    width: int
    height: int
    phash: int


def convert_fetus_framework(
    root: str,
    out: str,
    structures: Sequence[str] = DEFAULT_STRUCTURES,
    folds: int = DEFAULT_NUM_FOLDS,
    seed: int = DEFAULT_SEED,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    skip_invalid: bool = False,
    include_unannotated: bool = False,
    phash_threshold: int = DEFAULT_PHASH_THRESHOLD,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Convert ``root`` (images + ``ObjectDetection.xlsx``) into COCO files in ``out``.

    Args:
        root: folder with ``ObjectDetection.xlsx`` and the images (searched
            recursively; hidden folders skipped). Only read.
        out: output folder; created, or replaced when ``overwrite`` (only if it
            holds nothing but files this converter writes).
        structures: structure names to convert (case-insensitive), one COCO
            category each, ids from 1 in this order.
        folds: number of cross-validation folds (>= 2).
        seed: seed of the fold assignment and the validation carving.
        val_fraction: share of each fold's training images moved to validation.
        skip_invalid: drop invalid rows (and images they spoil) instead of
            raising :class:`ConversionError`.
        include_unannotated: keep images without any row as negatives.
        phash_threshold: near-duplicate threshold in bits of the 64-bit pHash.
        overwrite: replace an existing non-empty ``out``.
        progress: show a progress bar while reading images.

    Returns:
        The conversion report (also written to ``out/conversion_report.json``).

    Raises:
        ConversionError: invalid rows or images and not ``skip_invalid``.
        FileExistsError: ``out`` is not empty and not ``overwrite``.
        FileNotFoundError: ``root`` or its spreadsheet does not exist.
        ValueError: bad arguments, or too few images for ``folds``.
    """
    root = os.path.abspath(root)
    out = os.path.abspath(out)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: image folder not found")
    structures = _canonical_structures(structures)
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (one tests, the others train), got {folds}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 0 <= phash_threshold <= PHASH_BITS:
        raise ValueError(f"phash_threshold must be in [0, {PHASH_BITS}] bits, got {phash_threshold}")
    _check_output_folder(out, root, overwrite)

    spreadsheet = os.path.join(root, SPREADSHEET_NAME)
    sheet_rows = read_object_detection_xlsx(spreadsheet)
    index = index_images(root)
    rows = [_parse_row(r, index, root) for r in sheet_rows]

    named = sorted({c for r in rows for c in r.candidates}, key=natural_key)
    unannotated = sorted(set(p for paths in index.values() for p in paths) - set(named), key=natural_key)
    to_read = named + (unannotated if include_unannotated else [])
    images, unreadable = _read_images(root, to_read, progress)
    _check_rows_against_images(rows, images, unreadable)

    problems = [p for r in rows for p in r.problems]
    if include_unannotated:
        problems += [Problem(None, p, UNREADABLE_IMAGE, unreadable[p]) for p in unannotated if p in unreadable]
    problems.sort(key=lambda p: (p.row is None, p.row or 0, PROBLEM_KINDS.index(p.kind), p.fname))
    if problems and not skip_invalid:
        raise ConversionError(problems, spreadsheet)

    dropped = _dropped_images(rows, structures, unreadable)
    if problems:
        logger.warning(
            "skipped %d problem row(s) and %d image(s) they spoil; the list is in %s",
            len({p.row for p in problems}),
            len(dropped),
            REPORT_FILE,
        )
    if unannotated and not include_unannotated:
        logger.info("skipped %d image(s) without any row (unannotated)", len(unannotated))
    kept = [p for p in named if p not in dropped]
    if include_unannotated:
        kept += [p for p in unannotated if p not in unreadable]
    kept.sort(key=natural_key)
    if not kept:
        raise ValueError(f"{root}: no image left to convert")

    annotations_of = _annotations_by_image(rows, structures)
    hashes = [images[p].phash for p in kept]
    groups = group_near_duplicates(hashes, phash_threshold)
    if len(set(groups)) < folds:
        raise ValueError(
            f"{root}: {len(kept)} image(s) in {len(set(groups))} near-duplicate group(s) "
            f"cannot fill {folds} folds; use fewer folds or more images"
        )
    labels = [int(bool(annotations_of.get(p))) for p in kept]
    fold_of = assign_folds(groups, labels, folds, seed)

    coco_images, coco_annotations = _coco_records(
        kept, images, annotations_of, set(unannotated), groups, fold_of, structures
    )
    splits = _split_image_ids(coco_images, folds, seed, val_fraction)

    common_info = {
        "image_root": root,
        # where the images are seen from the output folder: found again when both move together
        "image_root_relative": os.path.relpath(root, out),
        "spreadsheet": spreadsheet,
        "structures": list(structures),
        "seed": seed,
        "folds": folds,
        "phash_threshold": phash_threshold,
        "val_fraction": val_fraction,
        "skip_invalid": skip_invalid,
        "include_unannotated": include_unannotated,
        "tool": __name__,
        "version": __version__,
    }
    categories = [{"id": i + 1, "name": s, "supercategory": "fetus"} for i, s in enumerate(structures)]
    outputs = {}
    for name, ids in [("all", [im["id"] for im in coco_images])] + sorted(splits.items()):
        outputs[f"{name}.json"] = _coco_file(coco_images, coco_annotations, ids, categories, common_info, name)

    report = _report(
        common_info,
        sheet_rows,
        index,
        named,
        kept,
        coco_images,
        len(coco_annotations),
        unannotated,
        problems,
        dropped,
        groups,
        splits,
    )
    outputs[REPORT_FILE] = report
    _write_outputs(outputs, out)
    logger.info("converted %d image(s) from %s into %s", len(kept), root, out)
    return report


def _canonical_structures(structures: Iterable[str]) -> Tuple[str, ...]:
    result = []
    for s in structures:
        name = _STRUCTURE_BY_KEY.get(str(s).strip().lower())
        if name is None:
            raise ValueError(f"unknown structure {s!r}; known: {', '.join(FETUS_FRAMEWORK_STRUCTURES)}")
        if name in result:
            raise ValueError(f"structure {name!r} given twice")
        result.append(name)
    if not result:
        raise ValueError("no structure selected")
    return tuple(result)


def _check_output_folder(out: str, root: str, overwrite: bool) -> None:
    """Refuse an output that would touch the source or lose unrelated files."""
    real_out, real_root = os.path.realpath(out), os.path.realpath(root)
    for a, b in ((real_out, real_root), (real_root, real_out)):
        if os.path.commonpath([a, b]) == b:
            raise ValueError(f"output folder {out} overlaps the source folder {root}; choose another place")
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out) or os.path.islink(out):
        raise FileExistsError(f"{out}: exists and is not a folder")
    entries = sorted(os.listdir(out))
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(
            f"{out}: not empty ({len(entries)} entries); pass overwrite=True (--overwrite) to replace it"
        )
    foreign = [e for e in entries if not (_OUTPUT_FILE_PATTERN.fullmatch(e) and os.path.isfile(os.path.join(out, e)))]
    if foreign:
        raise FileExistsError(
            f"{out}: holds entries this converter did not write ({foreign[:5]}...); "
            "refusing to delete it, choose another output folder"
        )


def index_images(root: str) -> Dict[str, List[str]]:
    """File name -> paths (relative to ``root``, posix) of every image below ``root``."""
    index: Dict[str, List[str]] = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                relative = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
                index.setdefault(name, []).append(relative)
    return index


def _parse_coordinate(column: str, value) -> Tuple[Optional[int], Optional[str]]:
    """(integer value, None) or (None, why it is not a pixel coordinate)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"{column} is empty"
    if isinstance(value, bool):
        return None, f"{column} = {value!r} is not a number"
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None, f"{column} = {value!r} is not a number"
    elif isinstance(value, (int, float)):
        number = value
    else:
        return None, f"{column} = {value!r} is not a number"
    if not np.isfinite(number) or number != int(number):
        return None, f"{column} = {value!r} is not an integer pixel index"
    return int(number), None


def _parse_row(sheet_row, index: Dict[str, List[str]], root: str) -> _Row:
    """Check one row on its own: structure, coordinates, and which file it names."""
    fname = "" if sheet_row.fname is None else str(sheet_row.fname).strip()
    problems = []

    structure = None if sheet_row.structure is None else _STRUCTURE_BY_KEY.get(str(sheet_row.structure).strip().lower())
    if structure is None:
        problems.append(
            Problem(
                sheet_row.row,
                fname,
                UNKNOWN_STRUCTURE,
                f"unknown structure {sheet_row.structure!r}; known: {', '.join(FETUS_FRAMEWORK_STRUCTURES)}",
            )
        )

    values = {}
    for column in ("w_min", "h_min", "w_max", "h_max"):
        values[column], error = _parse_coordinate(column, getattr(sheet_row, column))
        if error:
            problems.append(Problem(sheet_row.row, fname, BAD_COORDINATE, error))
    box = None
    if None not in values.values():
        empty = [
            f"{lo} = {values[lo]} >= {hi} = {values[hi]}"
            for lo, hi in (("w_min", "w_max"), ("h_min", "h_max"))
            if values[lo] >= values[hi]
        ]
        if empty:
            problems.append(Problem(sheet_row.row, fname, EMPTY_BOX, "; ".join(empty)))
        else:
            box = (values["w_min"], values["h_min"], values["w_max"], values["h_max"])

    normalized = fname.replace("\\", "/")
    candidates = list(index.get(posixpath.basename(normalized), [])) if normalized else []
    if "/" in normalized:
        candidates = [c for c in candidates if c == normalized or c.endswith("/" + normalized)]
    if not candidates:
        why = "empty file name" if not fname else f"no image named {fname!r} under {root}"
        problems.append(Problem(sheet_row.row, fname, MISSING_FILE, why))
    elif len(candidates) > 1:
        problems.append(
            Problem(
                sheet_row.row,
                fname,
                AMBIGUOUS_FILE,
                f"{len(candidates)} images have this name: {candidates}; "
                "rename them or give the sub-folder in fname",
            )
        )
    return _Row(sheet_row.row, fname, structure, box, candidates, problems)


def _luma(bgr: np.ndarray) -> np.ndarray:
    """Grey levels of a BGR uint8 image by PIL's ``convert("L")`` (ITU-R 601-2,
    16-bit fixed point), so that the pHashes of earlier conversions (read with
    PIL) are kept: identical on all 737 images of the development copy."""
    b, g, r = (bgr[:, :, i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _read_image(path: str) -> _ImageFile:
    """Size (as training reads it: :func:`voting_det.data.image_io.read_scan`,
    DICOM included) and pHash; raises ``ImageReadError`` (one of
    ``_DECODE_ERRORS``) when the file does not decode."""
    image = read_scan(path)
    return _ImageFile(width=image.shape[1], height=image.shape[0], phash=phash(_luma(image)))


def _read_images(root: str, paths: Sequence[str], progress: bool) -> Tuple[Dict[str, _ImageFile], Dict[str, str]]:
    """Decode every image once: (path -> size and hash, path -> why unreadable)."""
    images, unreadable = {}, {}
    for path in tqdm(paths, desc="reading images", unit="image", disable=not progress):
        try:
            images[path] = _read_image(os.path.join(root, path))
        except ImageReadError as e:
            unreadable[path] = f"{path} cannot be decoded as an image ({e.reason})"
        except _DECODE_ERRORS as e:
            unreadable[path] = f"{path} cannot be decoded as an image ({type(e).__name__}: {e})"
    return images, unreadable


def _check_rows_against_images(
    rows: Sequence[_Row], images: Dict[str, _ImageFile], unreadable: Dict[str, str]
) -> None:
    """Add the problems that need the image (decoding, box inside) or other rows (duplicates)."""
    first_row: Dict[tuple, int] = {}
    for r in rows:
        path = r.file_name
        if path in unreadable:
            r.problems.append(Problem(r.row, r.fname, UNREADABLE_IMAGE, unreadable[path]))
        elif path is not None and r.box is not None:
            x0, y0, x1, y1 = r.box
            size = images[path]
            if x0 < 0 or y0 < 0 or x1 > size.width or y1 > size.height:
                r.problems.append(
                    Problem(
                        r.row,
                        r.fname,
                        BOX_OUTSIDE_IMAGE,
                        f"box x {x0}..{x1} (w_min..w_max), y {y0}..{y1} (h_min..h_max) leaves the "
                        f"{size.width} x {size.height} image (needs 0 <= w_min, w_max <= width, "
                        "0 <= h_min, h_max <= height)",
                    )
                )
        if r.box is not None and r.structure is not None:
            key = (r.fname, r.structure, r.box)
            if key in first_row:
                r.problems.append(
                    Problem(r.row, r.fname, DUPLICATE_ROW, f"same file, structure and box as row {first_row[key]}")
                )
            else:
                first_row[key] = r.row


def _dropped_images(rows: Sequence[_Row], structures: Sequence[str], unreadable: Dict[str, str]) -> Dict[str, dict]:
    """Images that cannot be kept: unreadable, ambiguously named, or having lost
    a row of a selected (or unrecognisable) structure. Path -> rows and reasons."""
    dropped: Dict[str, dict] = {}
    for r in rows:
        kinds = {p.kind for p in r.problems}
        loses_annotation = bool(kinds - {DUPLICATE_ROW}) and (r.structure is None or r.structure in structures)
        spoils = loses_annotation or bool(kinds & {AMBIGUOUS_FILE, UNREADABLE_IMAGE})
        if not spoils:
            continue
        for path in r.candidates:
            entry = dropped.setdefault(path, {"file_name": path, "rows": [], "kinds": []})
            entry["rows"].append(r.row)
            entry["kinds"] = sorted(set(entry["kinds"]) | (kinds - {DUPLICATE_ROW}), key=PROBLEM_KINDS.index)
    for path in unreadable:
        dropped.setdefault(path, {"file_name": path, "rows": [], "kinds": [UNREADABLE_IMAGE]})
    return dropped


def _annotations_by_image(rows: Sequence[_Row], structures: Sequence[str]) -> Dict[str, List[_Row]]:
    """Valid rows of the selected structures, by image path, in spreadsheet order."""
    result: Dict[str, List[_Row]] = {}
    for r in rows:
        if not r.problems and r.structure in structures:
            result.setdefault(r.file_name, []).append(r)
    return result


def _coco_records(
    kept: Sequence[str],
    images: Dict[str, _ImageFile],
    annotations_of: Dict[str, List[_Row]],
    unannotated: set,
    groups: Sequence[int],
    fold_of: Sequence[int],
    structures: Sequence[str],
) -> Tuple[List[dict], List[dict]]:
    """COCO image and annotation entries; ids from 1 in ``kept`` order."""
    coco_images, coco_annotations = [], []
    for image_id, (path, group, fold) in enumerate(zip(kept, groups, fold_of), start=1):
        size = images[path]
        rows = annotations_of.get(path, [])
        coco_images.append(
            {
                "id": image_id,
                "file_name": path,
                "height": size.height,
                "width": size.width,
                "negative": not rows,
                "annotated": path not in unannotated,
                "phash": f"{size.phash:0{PHASH_BITS // 4}x}",
                "group": group,
                "fold": fold,
            }
        )
        for r in rows:
            x0, y0, x1, y1 = r.box
            coco_annotations.append(
                {
                    "id": len(coco_annotations) + 1,
                    "image_id": image_id,
                    "category_id": structures.index(r.structure) + 1,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                    "row": r.row,
                }
            )
    return coco_images, coco_annotations


def _split_image_ids(coco_images: Sequence[dict], folds: int, seed: int, val_fraction: float) -> Dict[str, List[int]]:
    """``fold{k}_{train,val,test}`` -> image ids: test is fold k; validation is
    carved (grouped, stratified) from the other folds; train is the rest."""
    splits = {}
    for k in range(folds):
        test = [im for im in coco_images if im["fold"] == k]
        rest = [im for im in coco_images if im["fold"] != k]
        is_val = carve_validation(
            [im["group"] for im in rest], [int(not im["negative"]) for im in rest], val_fraction, [seed, k]
        )
        splits[f"fold{k}_test"] = [im["id"] for im in test]
        splits[f"fold{k}_val"] = [im["id"] for im, v in zip(rest, is_val) if v]
        splits[f"fold{k}_train"] = [im["id"] for im, v in zip(rest, is_val) if not v]
    return splits


def _counts(coco_images: Sequence[dict], ids: Iterable[int]) -> Dict[str, int]:
    ids = set(ids)
    chosen = [im for im in coco_images if im["id"] in ids]
    negatives = sum(im["negative"] for im in chosen)
    return {"images": len(chosen), "positives": len(chosen) - negatives, "negatives": negatives}


def _coco_file(
    coco_images: Sequence[dict],
    coco_annotations: Sequence[dict],
    ids: Sequence[int],
    categories: List[dict],
    common_info: dict,
    split: str,
) -> dict:
    chosen = set(ids)
    annotations = [a for a in coco_annotations if a["image_id"] in chosen]
    info = dict(common_info, split=split, counts=dict(_counts(coco_images, chosen), annotations=len(annotations)))
    return {
        "info": info,
        "images": [im for im in coco_images if im["id"] in chosen],
        "annotations": annotations,
        "categories": categories,
    }


def _report(
    common_info: dict,
    sheet_rows: Sequence,
    index: Dict[str, List[str]],
    named: Sequence[str],
    kept: Sequence[str],
    coco_images: Sequence[dict],
    num_annotations: int,
    unannotated: Sequence[str],
    problems: Sequence[Problem],
    dropped: Dict[str, dict],
    groups: Sequence[int],
    splits: Dict[str, List[int]],
) -> dict:
    all_counts = _counts(coco_images, [im["id"] for im in coco_images])
    by_kind = {}
    for kind in PROBLEM_KINDS:
        rows = sorted({p.row for p in problems if p.kind == kind and p.row is not None})
        count = sum(p.kind == kind for p in problems)
        if count:
            by_kind[kind] = {"count": count, "rows": rows}
    members: Dict[int, List[str]] = {}
    for path, group in zip(kept, groups):
        members.setdefault(group, []).append(path)
    sizes = Counter(len(m) for m in members.values())
    folds = []
    for k in range(common_info["folds"]):
        folds.append({"fold": k, **{s: _counts(coco_images, splits[f"fold{k}_{s}"]) for s in SPLITS}})
    return {
        **common_info,
        "rows": len(sheet_rows),
        "rows_invalid": len({p.row for p in problems if p.row is not None}),
        "images_on_disk": sum(len(v) for v in index.values()),
        "images_named": len(named),
        "annotations": num_annotations,
        **all_counts,
        "unannotated": {
            "count": len(unannotated),
            "included": common_info["include_unannotated"],
            "files": list(unannotated),
        },
        "problems_by_kind": by_kind,
        "problems": [asdict(p) for p in problems],
        "dropped_images": [dropped[p] for p in sorted(dropped, key=natural_key)],
        "near_duplicates": {
            "groups": len(members),
            "group_sizes": {str(size): sizes[size] for size in sorted(sizes)},
            "multi_image_groups": [m for _, m in sorted(members.items()) if len(m) > 1],
        },
        "per_fold": folds,
    }


def _write_outputs(outputs: Dict[str, dict], out: str) -> None:
    """Write every file into a fresh folder next to ``out``, then swap it in."""
    with staged_folder(out) as staging:
        for name, content in outputs.items():
            with open(os.path.join(staging, name), "w") as f:
                json.dump(content, f, indent=JSON_INDENT, sort_keys=True)
                f.write("\n")


def format_report(report: dict) -> str:
    """Human summary of a conversion report (what the command line prints)."""
    structures = ", ".join(report["structures"])
    unannotated = report["unannotated"]
    lines = [
        f"source      {report['spreadsheet']}",
        f"rows        {report['rows']} ({report['rows_invalid']} invalid)",
        f"images      {report['images_on_disk']} on disk, {report['images_named']} named by rows",
        f"converted   {report['images']} images: {report['positives']} with {structures}, "
        f"{report['negatives']} negatives",
        f"unannotated {unannotated['count']} image(s) without any row, "
        + ("kept as negatives" if unannotated["included"] else "skipped"),
    ]
    for kind, entry in report["problems_by_kind"].items():
        rows = entry["rows"]
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        lines.append(f"invalid     {entry['count']} {kind}" + (f" (rows {shown})" if rows else ""))
    if report["dropped_images"]:
        lines.append(f"dropped     {len(report['dropped_images'])} image(s) whose rows were invalid")
    near = report["near_duplicates"]
    sizes = ", ".join(f"{n} of size {s}" for s, n in near["group_sizes"].items())
    lines.append(
        f"near-dups   {near['groups']} groups at pHash distance <= {report['phash_threshold']} bits ({sizes})"
    )
    for entry in report["per_fold"]:
        parts = [
            f"{s} {entry[s]['images']} ({entry[s]['positives']} pos / {entry[s]['negatives']} neg)" for s in SPLITS
        ]
        lines.append(f"fold {entry['fold']}      " + ", ".join(parts))
    return "\n".join(lines)
