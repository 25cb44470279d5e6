#!/usr/bin/env python
"""Run a trained detector over an image or a folder and write a prediction table.

    python tools/predict.py --config-file CFG.yaml --input IMAGE_OR_FOLDER \\
        --output predictions.csv [--score-thresh 0.05] [KEY VALUE ...]

e.g. ``... --output out.csv MODEL.WEIGHTS output/model_final.pth``. Folders are
searched recursively for .png/.jpg/.jpeg/.bmp/.tif/.tiff images, in natural
order. The table has one row per detection (``file``, ``image_height``,
``image_width``, ``rank``, ``score``, ``class``, ``x0 y0 x1 y1``, ``error``): see
``voting_det/inference.py``. ``.csv`` writes CSV; ``.json`` / ``.jsonl`` write
JSON Lines (one object per line). Run it again to resume: images already in
the table are skipped; a file that is not such a table is never overwritten.
"""
import argparse
import logging

from detectron2.engine import DefaultPredictor
from tqdm.contrib.logging import logging_redirect_tqdm

import voting_det  # noqa: F401  (registers the data sets)
from voting_det.config import setup_cfg
from voting_det.engine.checkpoint import SafeCheckpointer
from voting_det.inference import class_names_from_cfg, predict_images

# Score-threshold keys of the detectron2 heads, set by --score-thresh (as detectron2's demo does).
SCORE_THRESH_KEYS = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.RETINANET.SCORE_THRESH_TEST")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="model config (YAML)")
    p.add_argument("--input", required=True, help="an image, or a folder searched recursively")
    p.add_argument("--output", required=True, help="the table: .csv, or .json/.jsonl (JSON Lines)")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="keep detections scoring at least this (default: the config's test threshold)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    thresholds = [] if args.score_thresh is None else [v for key in SCORE_THRESH_KEYS for v in (key, args.score_thresh)]
    cfg = setup_cfg(args.config_file, list(args.opts) + thresholds)
    # detectron2's predictor, its weights read by SafeCheckpointer (no code
    # execution, shape mismatches refused)
    blank = cfg.clone()
    blank.defrost()
    blank.MODEL.WEIGHTS = ""
    predictor = DefaultPredictor(blank)
    SafeCheckpointer.from_config(cfg, predictor.model).load(cfg.MODEL.WEIGHTS)
    with logging_redirect_tqdm():
        summary = predict_images(
            predictor,
            args.input,
            args.output,
            class_names=class_names_from_cfg(cfg),
            # also filters here, for heads whose threshold is none of SCORE_THRESH_KEYS
            score_thresh=0.0 if args.score_thresh is None else args.score_thresh,
            progress=not args.no_progress,
        )
    print(
        f"{summary['images']} image(s) in {args.input}: {summary['processed']} processed, "
        f"{summary['skipped']} already in {args.output}, {summary['errors']} unreadable; "
        f"{summary['detections']} detection(s) written"
    )


if __name__ == "__main__":
    main()
