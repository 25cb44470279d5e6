#!/usr/bin/env python
"""Run a trained detector over an image or a folder and write a prediction table.

    .venv/bin/python tools/predict.py --config-file CFG.yaml --input IMAGE_OR_FOLDER \\
        --output predictions.csv [--score-thresh 0.05] [--pixel-spacing MM] [--frame N] [KEY VALUE ...]

e.g. ``... --output out.csv MODEL.WEIGHTS output/model_final.pth`` (options
before the ``KEY VALUE`` overrides). Folders are searched recursively for
.png/.jpg/.jpeg/.bmp/.tif/.tiff images and .dcm/.dicom DICOM files, in natural
order (a DICOM file without such an ending is read when given as --input).
The table has one row per detection (``file``, ``image_height``,
``image_width``, ``rank``, ``score``, ``class``, ``x0 y0 x1 y1``, the NT
thickness in pixels and, where the pixel spacing is known, in mm with the
3.5 mm flag, the two caliper points, ``frame``, ``error``): see
``voting_det/inference.py``. The spacing of a DICOM file comes from the file
(its ultrasound regions, else PixelSpacing: docs/dicom.md); ``--pixel-spacing``
replaces it for every image. A multi-frame (cine) DICOM file gives rows for
every frame (``frame`` = 0, 1, ...) or, with ``--frame N``, for frame N only.
No patient identifier of a DICOM file is written: ``file`` is its path.
``.csv`` writes CSV; ``.json`` / ``.jsonl`` write JSON Lines (one object per
line). Run it again to resume: images already in the table are skipped; a file
that is not such a table is never overwritten.

Exit status: 0 when the table holds predictions; 2 for a user error (one line
naming the file or key, found before the model loads, nothing written); 1 when
no image could be read (the table of error rows is written).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import logging  # noqa: E402

from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

import voting_det  # noqa: F401,E402  (registers the data sets)
from voting_det import cli  # noqa: E402
from voting_det.engine import build_predictor  # noqa: E402
from voting_det.inference import (  # noqa: E402
    CSV_SUFFIX,
    JSON_LINES_SUFFIXES,
    NotAPredictionFileError,
    check_prediction_output,
    class_names_from_cfg,
    predict_images,
)

# Score-threshold keys of the detectron2 heads, set by --score-thresh (as detectron2's demo does).
SCORE_THRESH_KEYS = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.RETINANET.SCORE_THRESH_TEST")


def build_parser():
    p = argparse.ArgumentParser(prog="tools/predict.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="model config (YAML)")
    p.add_argument("--input", required=True, help="an image, or a folder searched recursively")
    p.add_argument("--output", required=True, help="the table: .csv, or .json/.jsonl (JSON Lines)")
    p.add_argument("--pixel-spacing", type=float, default=None, metavar="MM",
                   help="pixel spacing of the images in mm per pixel: the NT thickness is also given in mm "
                        "(MODEL.MEASURE.PIXEL_SPACING). Given, it wins over the spacing a DICOM file holds "
                        "(used otherwise)")
    p.add_argument("--frame", type=int, default=None, metavar="N",
                   help="of multi-frame (cine) DICOM files, only frame N (counted from 0); default: every frame, "
                        "one set of rows per frame (column frame). Single images are not affected")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="keep detections scoring at least this (default: the config's test threshold)")
    return cli.add_overrides(p)


def main(argv=None):
    args = cli.parse_args(build_parser(), argv)
    # every user error before the model is built (nothing written until then)
    thresholds = [] if args.score_thresh is None else [v for key in SCORE_THRESH_KEYS for v in (key, args.score_thresh)]
    if args.pixel_spacing is not None and not args.pixel_spacing > 0:
        raise cli.UserError(f"--pixel-spacing {args.pixel_spacing}: must be > 0 (mm per pixel, e.g. 0.1)")
    if args.frame is not None and args.frame < 0:
        raise cli.UserError(f"--frame {args.frame}: must be >= 0 (frames are counted from 0)")
    spacing = [] if args.pixel_spacing is None else ["MODEL.MEASURE.PIXEL_SPACING", args.pixel_spacing]
    cfg = cli.load_config(args.config_file, list(args.opts) + thresholds + spacing)
    cli.input_images(args.input)
    cli.check_suffix(args.output, (CSV_SUFFIX,) + JSON_LINES_SUFFIXES)
    try:
        check_prediction_output(args.output)
    except NotAPredictionFileError as e:
        raise cli.UserError(f"--output {e}; choose another --output (a file that is not such a table is never "
                            "replaced)") from None
    cli.check_weights(cfg)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    # detectron2's predictor, its weights read by SafeCheckpointer (no code
    # execution, shape mismatches refused)
    predictor = build_predictor(cfg)
    with logging_redirect_tqdm():
        summary = predict_images(
            predictor,
            args.input,
            args.output,
            class_names=class_names_from_cfg(cfg),
            # also filters here, for heads whose threshold is none of SCORE_THRESH_KEYS
            score_thresh=0.0 if args.score_thresh is None else args.score_thresh,
            progress=not args.no_progress,
            frame=args.frame,
            # --pixel-spacing wins over a DICOM file's own spacing
            file_spacing=args.pixel_spacing is None,
        )
    print(
        f"{summary['images']} image(s) in {args.input}: {summary['processed']} processed, "
        f"{summary['skipped']} already in {args.output}, {summary['errors']} unreadable; "
        f"{summary['detections']} detection(s) written"
    )
    if not summary["predicted"]:
        raise cli.NothingProcessedError(
            f"--input {args.input}: none of its {summary['images']} image(s) could be read; {args.output} lists "
            "them as error rows (delete those rows to retry them after fixing the files)"
        )
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
