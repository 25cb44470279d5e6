"""What ``tools/explain.py``, ``tools/primitive_atlas.py`` and
``tools/faithfulness.py`` share: the config, the inputs (image files or a
registered data set), and writing one panel + JSON trace per image."""
import logging
import os
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from tqdm import tqdm

from .. import cli
from ..data.image_io import read_scan_with_info, scan_frames
from .panel import render_panel
from .trace import Explainer, check_new_paths, gt_boxes, image_trace, save_json

__all__ = [
    "common_root",
    "dataset_records",
    "explain_images",
    "gt_boxes",
    "input_records",
    "output_paths",
    "output_stem",
    "setup_cfg",
]

logger = logging.getLogger(__name__)

# Detections per image written to the JSON trace by default (the panel shows the top one).
DEFAULT_DETECTIONS = 3


def setup_cfg(config_file: str, opts: Sequence[str] = (), top: Optional[int] = None) -> CfgNode:
    """:func:`voting_det.config.setup_cfg` of the file and the ``KEY VALUE``
    overrides (frozen) through :func:`voting_det.cli.load_config`: a missing
    file, a bad key or value raise :class:`voting_det.cli.UserError` naming it.
    ``top`` sets ``MODEL.EXPLAIN.TOP_PRIMITIVES``."""
    top_opts = () if top is None else ("MODEL.EXPLAIN.TOP_PRIMITIVES", str(top))
    return cli.load_config(config_file, list(opts) + list(top_opts))


def dataset_records(name: str, num_images: Optional[int] = None) -> List[Dict]:
    """The first ``num_images`` records of a registered data set (all when None)."""
    if name not in DatasetCatalog.list():
        nt = sorted(n for n in DatasetCatalog.list() if n.startswith("nt"))
        raise cli.UnknownNameError(f"--dataset {name}: not a registered data set; voting_det registers {nt} "
                                   "(below $DETECTRON2_DATASETS; make demo or tools/convert_fetus_framework.py "
                                   "create them)")
    records = DatasetCatalog.get(name)
    return records if num_images is None else records[:num_images]


def input_records(path: str) -> Tuple[str, List[Dict]]:
    """``(root, records)`` for an image or a folder (searched recursively): one
    record per image with ``file_name`` (and no annotations). A missing path or
    a folder without images raises :class:`voting_det.cli.MissingFileError`."""
    root, files = cli.input_images(path)
    return root, [{"file_name": os.path.join(root, f)} for f in files]


def output_stem(record: Dict, root: str, out_dir: str) -> str:
    """``out_dir`` / the image's path relative to ``root`` without its extension."""
    relative = os.path.relpath(record["file_name"], root)
    return os.path.join(out_dir, os.path.splitext(relative)[0])


def output_paths(records: Sequence[Dict], root: str, out_dir: str) -> List[str]:
    """Every file :func:`explain_images` may write (``<stem>.png`` and
    ``<stem>.json`` per record); two records of one stem raise
    :class:`voting_det.cli.UserError`."""
    stems = [output_stem(r, root, out_dir) for r in records]
    twice = sorted(s for s, n in Counter(stems).items() if n > 1)
    if twice:
        raise cli.UserError(f"{twice[0]}: two inputs map to this output name (same path without extension); "
                            "rename one of them")
    return [s + ext for s in stems for ext in (".png", ".json")]


def explain_images(
    explainer: Explainer,
    records: Sequence[Dict],
    root: str,
    out_dir: str,
    detections: int = DEFAULT_DETECTIONS,
    class_names: Optional[Sequence[str]] = None,
    overwrite: bool = False,
    progress: bool = True,
    frame: Optional[int] = None,
) -> List[Tuple[str, str]]:
    """For every record, ``<stem>.png`` (the panel of the top detection, with
    the ground truth when the record has annotations) and ``<stem>.json`` (the
    trace of its top ``detections``), ``<stem>`` from :func:`output_stem`.

    Every output path is checked before anything is written (existing files are
    refused unless ``overwrite``). An image without detection gets its JSON
    (empty ``detections``) and no panel; an unreadable file is skipped with a
    warning. Returns the (png or "", json) pairs written.

    DICOM files: of a multi-frame one, ``frame`` (from 0; None: the first) is
    explained; the file's pixel spacing gives the thickness in mm, and the
    trace gets ``"dicom": {"frame", "frames", "pixel_spacing_mm",
    "spacing_source"}`` (nothing identifying the patient).
    """
    check_new_paths(output_paths(records, root, out_dir), overwrite)
    stems = [output_stem(r, root, out_dir) for r in records]
    options = dict(explainer.model.roi_heads.explain_options)
    options["ranking"] = explainer.ranking  # the keys and, for "contrastive", the reference file
    written = []
    for record, stem in tqdm(list(zip(records, stems)), desc="explain", unit="image",
                             disable=not progress or len(records) < 2):
        try:
            path = record["file_name"]
            chosen = frame if frame is not None and scan_frames(path) > 1 else None
            image, info = read_scan_with_info(path, frame=chosen)
        except ValueError as error:
            logger.warning("skipped: %s", error)
            continue
        explanation = explainer(image, pixel_spacing=info["pixel_spacing_mm"])
        trace = image_trace(explanation, explainer.levels, file=os.path.relpath(record["file_name"], root),
                            max_detections=detections, class_names=class_names, options=options)
        if info["format"] == "dicom":
            trace["dicom"] = {k: info[k] for k in ("frame", "frames", "pixel_spacing_mm", "spacing_source")}
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        save_json(stem + ".json", trace, overwrite=overwrite)
        png = ""
        if trace["detections"]:
            png = stem + ".png"
            render_panel(image, trace, png, gt_boxes=gt_boxes(record))
        else:
            logger.warning("%s: no detection, so no panel (the JSON trace is written)", record["file_name"])
        written.append((png, stem + ".json"))
    return written


def common_root(records: Sequence[Dict]) -> str:
    """The folder holding all the records' images (outputs keep paths below it)."""
    folders = [os.path.dirname(os.path.abspath(r["file_name"])) for r in records]
    if not folders:
        raise ValueError("no image to explain")
    return os.path.commonpath(folders)
