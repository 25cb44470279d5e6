"""``NTEvaluator``: detectron2 ``DatasetEvaluator`` computing the NT metrics of
docs/method.md section 5 (:mod:`voting_det.evaluation.metrics`) for any model whose
outputs are detectron2 ``Instances``: voting_det's and detectron2's own.

It gathers the detections of all processes (detectron2's ``comm.gather``),
computes the metrics with 95% bootstrap intervals on the main process, and
writes to its output folder:

- ``nt_detections.json``: the test settings and, per image, the ground truth
  and the top detections (everything the metrics are computed from: tables,
  paired bootstraps and thresholds are recomputed from these files);
- ``nt_top1.csv``: one row per image: its top-1 box, score, IoU, match;
- ``nt_curves.json``: FROC, paper-style ROC and (with negatives) LROC points;
- ``nt_metrics.json``: the metrics, their intervals and the test settings.
"""
import copy
import csv
import gzip
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm

from . import metrics as M

__all__ = ["NTEvaluator", "test_settings", "check_same_settings", "records_from_dataset", "SettingsMismatchError"]

logger = logging.getLogger(__name__)

DETECTIONS_FILE = "nt_detections.json"
METRICS_FILE = "nt_metrics.json"


class SettingsMismatchError(ValueError):
    """Runs evaluated with different test settings cannot share a table."""


def test_settings(cfg, top_n: int = 10, iou: float = 0.5) -> Dict[str, object]:
    """The test settings every compared run must share (docs/method.md section 5)."""
    settings = {
        "INPUT.MIN_SIZE_TEST": cfg.INPUT.MIN_SIZE_TEST,
        "INPUT.MAX_SIZE_TEST": cfg.INPUT.MAX_SIZE_TEST,
        "MODEL.ROI_HEADS.NMS_THRESH_TEST": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        "MODEL.RPN.POST_NMS_TOPK_TEST": cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
        "TEST.DETECTIONS_PER_IMAGE": cfg.TEST.DETECTIONS_PER_IMAGE,
        "match_iou": iou,
        "paper_top_n": top_n,
    }
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}


def check_same_settings(runs: Dict[str, dict]) -> dict:
    """``runs``: name -> settings. Returns the common settings, or raises
    :class:`SettingsMismatchError` naming the runs and keys that differ."""
    items = list(runs.items())
    if not items:
        raise ValueError("no runs to compare")
    ref_name, ref = items[0]
    problems = []
    for name, settings in items[1:]:
        for key in sorted(set(ref) | set(settings)):
            if ref.get(key) != settings.get(key):
                problems.append(f"{key}: {ref.get(key)!r} in {ref_name} but {settings.get(key)!r} in {name}")
    if problems:
        raise SettingsMismatchError(
            "runs evaluated with different test settings cannot be tabulated together (docs/method.md section 5); "
            "re-evaluate them with the same settings:\n  " + "\n  ".join(problems)
        )
    return ref


def records_from_dataset(dataset_name: str) -> Dict[object, dict]:
    """image_id -> record (file, size, ground-truth boxes in XYXY pixels) of a
    registered data set; crowd annotations are ignored."""
    out = {}
    for d in DatasetCatalog.get(dataset_name):
        gt = []
        for a in d.get("annotations", []):
            if a.get("iscrowd", 0):
                continue
            gt.append([float(v) for v in BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)])
        rec = {"image_id": d["image_id"], "file_name": d["file_name"], "width": d.get("width"), "height": d.get("height"), "gt": gt}
        for key in ("pixel_spacing", "calipers"):
            if key in d:
                rec[key] = d[key]
        out[d["image_id"]] = rec
    return out


class NTEvaluator(DatasetEvaluator):
    """NT localisation metrics with bootstrap intervals.

    Args:
        dataset_name: a registered data set (its ground truth is read from
            detectron2's ``DatasetCatalog``).
        settings: the test settings to record (:func:`test_settings`).
        output_dir: where the files above are written (None: nothing written).
        distributed: gather from all processes (results on the main one).
        top_n: detections per image in the paper-style pool.
        lroc_threshold: top-1 score threshold of the LROC SEN / SPE (sets with
            negatives); the benchmark tables choose it on the validation split.
        num_bootstrap: bootstrap resamples for the 95% intervals (0: none).
    """

    def __init__(self, dataset_name: str, settings: Optional[dict] = None, output_dir: Optional[str] = None,
                 distributed: bool = True, top_n: int = 10, iou: float = 0.5, lroc_threshold: float = 0.5,
                 num_bootstrap: int = 1000):
        self._dataset_name = dataset_name
        self._settings = dict(settings or {})
        self._settings.setdefault("match_iou", iou)
        self._settings.setdefault("paper_top_n", top_n)
        self._output_dir = output_dir
        self._distributed = distributed
        self._top_n, self._iou = top_n, iou
        self._lroc_threshold = lroc_threshold
        self._num_bootstrap = num_bootstrap
        self._gt = None
        self._records = []

    def reset(self):
        self._records = []

    def _ground_truth(self):
        if self._gt is None:
            self._gt = records_from_dataset(self._dataset_name)
        return self._gt

    def process(self, inputs, outputs):
        gt = self._ground_truth()
        for inp, out in zip(inputs, outputs):
            if inp["image_id"] not in gt:
                raise KeyError(f"image_id {inp['image_id']!r} ({inp.get('file_name')}) is not in data set {self._dataset_name!r}")
            rec = copy.deepcopy(gt[inp["image_id"]])
            inst = out["instances"].to("cpu")
            scores = inst.scores.numpy().astype(float)
            order = np.argsort(-scores, kind="stable")
            rec["boxes"] = inst.pred_boxes.tensor.numpy()[order].round(2).tolist()
            rec["scores"] = scores[order].round(6).tolist()
            self._records.append(rec)

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            records = list(itertools.chain(*comm.gather(self._records, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            records = self._records
        if not records:
            logger.warning("NTEvaluator on %s received no predictions", self._dataset_name)
            return {}
        records.sort(key=lambda r: str(r["image_id"]))
        missing = len(self._ground_truth()) - len(records)
        if missing:
            logger.warning("NTEvaluator: %d images of %s were not evaluated", missing, self._dataset_name)
        result = evaluate_records(records, self._settings, self._lroc_threshold, self._num_bootstrap)
        if self._output_dir:
            write_outputs(self._output_dir, self._dataset_name, records, result)
        return OrderedDict({"nt": result["metrics"]})


def evaluate_records(records, settings: dict, lroc_threshold: Optional[float] = 0.5, num_bootstrap: int = 1000) -> dict:
    """Metrics, intervals and curves of a list of records (see the module)."""
    stats = M.analyse(records, iou=settings.get("match_iou", 0.5), top_n=settings.get("paper_top_n", 10))
    has_negatives = bool((~stats.positive).any())
    threshold = lroc_threshold if has_negatives else None
    metrics = M.summarise(stats, threshold=threshold)
    intervals = M.bootstrap(stats, num=num_bootstrap, threshold=threshold) if num_bootstrap else {}
    fppi, sens = M.froc_curve(stats)
    fpr, tpr = M.paper_roc_curve(stats)
    curves = {"froc": {"fp_per_image": fppi.tolist(), "sensitivity": sens.tolist()},
              "paper_roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}
    notes = []
    if has_negatives:
        x, y, t = M.lroc_curve(stats)
        curves["lroc"] = {"fp_fraction": x.tolist(), "found_fraction": y.tolist(), "threshold": [float(v) for v in t]}
    else:
        notes.append("LROC AUC / SEN / SPE not computed: the set has no negative images")
    return {"metrics": metrics, "ci95": intervals, "curves": curves, "settings": settings, "notes": notes,
            "num_bootstrap": num_bootstrap, "stats": stats}


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_outputs(output_dir: str, dataset_name: str, records, result: dict) -> None:
    os.makedirs(output_dir, exist_ok=True)
    _atomic_write(os.path.join(output_dir, DETECTIONS_FILE),
                  json.dumps({"dataset": dataset_name, "settings": result["settings"], "images": records}))
    _atomic_write(os.path.join(output_dir, "nt_curves.json"), json.dumps(result["curves"]))
    _atomic_write(os.path.join(output_dir, METRICS_FILE), json.dumps(
        {"dataset": dataset_name, "metrics": result["metrics"], "ci95": result["ci95"], "settings": result["settings"],
         "notes": result["notes"], "num_bootstrap": result["num_bootstrap"]}, indent=1, default=float))
    stats = result["stats"]
    rows = []
    for i, r in enumerate(records):
        top = r["boxes"][0] if r["boxes"] else [None] * 4
        rows.append([r["image_id"], r["file_name"], len(r["gt"]), *top,
                     r["scores"][0] if r["scores"] else None, round(float(stats.top1_iou[i]), 4),
                     int(stats.top1_match[i])])
    tmp = os.path.join(output_dir, "nt_top1.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "file_name", "num_gt", "x0", "y0", "x1", "y1", "score", "iou", "match"])
        w.writerows(rows)
    os.replace(tmp, os.path.join(output_dir, "nt_top1.csv"))


def load_records(path: str):
    """(dataset, settings, records) of an ``nt_detections.json`` file (or of its
    gzipped copy ``nt_detections.json.gz``, as a benchmark archive keeps it)."""
    if not os.path.isfile(path) and os.path.isfile(path + ".gz"):
        path += ".gz"
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        data = json.load(f)
    try:
        return data["dataset"], data["settings"], data["images"]
    except (KeyError, TypeError):
        raise ValueError(f"{path} is not an {DETECTIONS_FILE} written by NTEvaluator (keys dataset/settings/images)")
