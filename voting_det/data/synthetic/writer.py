"""Writing a synthetic set: :func:`generate_synthetic_nt` renders the images
(in worker processes if asked) and writes them in the layout of the public
"Dataset for Fetus Framework", with the box spreadsheet and metadata.csv."""
import csv
import logging
import multiprocessing
import os
import time
from typing import Dict, List, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from ...utils import staged_folder
from ..spreadsheet import write_object_detection_xlsx
from .render import VIEWS, render_synthetic_nt

logger = logging.getLogger(__name__)

IMAGES_DIRNAME = "Train & Val"
SPREADSHEET_FILENAME = "ObjectDetection.xlsx"
METADATA_FILENAME = "metadata.csv"
METADATA_COLUMNS = (
    "fname",
    "pixel_spacing_mm",
    "nt_thickness_px",
    "nt_thickness_mm",
    "has_nt",
    "view",
    "flip",
    "rotation_deg",
    "scale",
    "gain",
    "contrast",
    "speckle_sigma",
    "speckle_strength",
    "blur_sigma",
    "num_distractors",
    "distractor_near_neck",
    "distractor_types",
)


def _render_and_write(job) -> Tuple[List[Tuple], Dict]:
    """Worker: render image ``index`` and write it as a 3-channel PNG."""
    seed, index, size, negative_fraction, images_dir = job
    img, ann = render_synthetic_nt(seed, index, size, negative_fraction)
    fname = f"{index}.png"
    path = os.path.join(images_dir, fname)
    if not cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)):
        raise OSError(f"could not write {path}")
    rows = [(fname, name, y0, x0, y1, x1) for name, x0, y0, x1, y1 in ann["boxes"]]
    return rows, dict(fname=fname, **ann["meta"])


def _pool_context():
    """'forkserver' where the platform has it, else 'spawn' (the worker function
    and its arguments are module-level and picklable). Not 'fork': a process
    forked from one whose OpenCV or torch thread pools are running can inherit
    a held lock, and its first cv2 call then waits for ever (seen in the test
    suite: both workers stuck in cv2.setNumThreads)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _init_worker() -> None:
    """One OpenCV thread per worker process: the processes are the parallelism."""
    cv2.setNumThreads(1)


def generate_synthetic_nt(out_dir: str, num: int, seed: int = 0, size=(576, 768), workers: int = 1,
                          overwrite: bool = False, progress: bool = True, negative_fraction: float = 0.2) -> dict:
    """Write a synthetic NT set of ``num`` images in the layout of the public
    "Dataset for Fetus Framework" (see :mod:`voting_det.data.synthetic`) to ``out_dir``.

    ``size`` is ``(H, W)``. The set is byte-identical for a ``seed`` whatever
    ``workers``. It is written into a hidden temporary folder next to
    ``out_dir`` and renamed at the end, so an interrupted run leaves no
    half-written set.

    Returns a summary: image, negative and NT counts, the views, the share of
    positives with an NT-like distractor near the neck, the mean number of
    distractors, the speed (images/s) and the output paths.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty, and ``overwrite``
            is false.
        ValueError: bad ``num``, ``size``, ``workers`` or ``negative_fraction``.
    """
    h, w = (int(v) for v in size)
    if num < 1 or h < 64 or w < 64 or workers < 1 or not 0.0 <= negative_fraction < 1.0:
        raise ValueError(f"bad arguments: num={num}, size={size}, workers={workers}, "
                         f"negative_fraction={negative_fraction}")
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    start = time.perf_counter()
    with staged_folder(out_dir) as tmp:
        images_dir = os.path.join(tmp, IMAGES_DIRNAME)
        os.makedirs(images_dir)
        jobs = [(seed, i, (h, w), negative_fraction, images_dir) for i in range(num)]
        if workers == 1:
            results = [_render_and_write(j) for j in tqdm(jobs, disable=not progress, desc="synthetic NT", unit="img")]
        else:
            with _pool_context().Pool(workers, initializer=_init_worker) as pool:
                it = pool.imap(_render_and_write, jobs, chunksize=max(1, min(16, num // (4 * workers))))
                results = list(tqdm(it, total=num, disable=not progress, desc="synthetic NT", unit="img"))
        rows = [r for image_rows, _ in results for r in image_rows]
        write_object_detection_xlsx(os.path.join(tmp, SPREADSHEET_FILENAME), rows)
        with open(os.path.join(tmp, METADATA_FILENAME), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METADATA_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(meta for _, meta in results)
    seconds = time.perf_counter() - start

    metas = [m for _, m in results]
    positives = [m for m in metas if m["has_nt"]]
    summary = {
        "num_images": num,
        "num_nt": len(positives),
        "num_negatives": num - len(positives),
        "views": {v: sum(m["view"] == v for m in metas) for v in VIEWS},
        "num_rows": len(rows),
        "fraction_distractor_near_neck": (sum(m["distractor_near_neck"] for m in positives) / len(positives)
                                          if positives else 0.0),
        "mean_num_distractors": float(np.mean([m["num_distractors"] for m in metas])),
        "seconds": seconds,
        "images_per_s": num / seconds if seconds > 0 else float("inf"),
        "out_dir": out_dir,
        "images_dir": os.path.join(out_dir, IMAGES_DIRNAME),
        "spreadsheet": os.path.join(out_dir, SPREADSHEET_FILENAME),
        "metadata": os.path.join(out_dir, METADATA_FILENAME),
    }
    logger.info("wrote %d synthetic images (%d with NT) to %s in %.1f s", num, len(positives), out_dir, seconds)
    return summary
