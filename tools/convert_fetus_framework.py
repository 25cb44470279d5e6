#!/usr/bin/env python
"""Convert a "Dataset for Fetus Framework" folder (images + ObjectDetection.xlsx)
into COCO JSON files with grouped, stratified cross-validation folds.

Example (the real NT development set)::

    .venv/bin/python tools/convert_fetus_framework.py --root /path/to/fetus_framework_nt \\
        --out datasets/nt_real --skip-invalid

Exit status: 0 on success, 2 when the input has problems or the arguments are
wrong: one ``error:`` line; for bad rows and images it is followed by every
problem, one per line with its spreadsheet row number, and nothing is written.
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

from voting_det import cli  # noqa: E402
from voting_det.data.fetus_framework import (  # noqa: E402
    DEFAULT_NUM_FOLDS,
    DEFAULT_SEED,
    DEFAULT_STRUCTURES,
    DEFAULT_VAL_FRACTION,
    REPORT_FILE,
    ConversionError,
    convert_fetus_framework,
    format_report,
)
from voting_det.data.folds import DEFAULT_PHASH_THRESHOLD, PHASH_BITS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/convert_fetus_framework.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder with ObjectDetection.xlsx and the images (read only)")
    parser.add_argument("--out", required=True, help="output folder for the COCO files")
    parser.add_argument(
        "--structures",
        action="append",
        help=f"structure(s) to convert, comma-separated or repeated (default: {','.join(DEFAULT_STRUCTURES)})",
    )
    parser.add_argument("--folds", type=int, default=DEFAULT_NUM_FOLDS, help="number of cross-validation folds")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the fold assignment")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULT_VAL_FRACTION,
        help="share of each fold's training images used for validation",
    )
    parser.add_argument(
        "--skip-invalid", action="store_true", help="drop invalid rows (and the images they spoil) instead of failing"
    )
    parser.add_argument(
        "--include-unannotated", action="store_true", help="keep images that have no row at all, as negatives"
    )
    parser.add_argument(
        "--phash-threshold",
        type=int,
        default=DEFAULT_PHASH_THRESHOLD,
        help=f"near-duplicate threshold: Hamming distance in bits of the {PHASH_BITS}-bit pHash",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = cli.parse_args(build_parser(), argv)
    given = args.structures or [",".join(DEFAULT_STRUCTURES)]
    args.structures = [s.strip() for item in given for s in item.split(",") if s.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.check_input(args.root, "--root", "the folder holding ObjectDetection.xlsx and the images")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        report = convert_fetus_framework(
            args.root,
            args.out,
            structures=args.structures,
            folds=args.folds,
            seed=args.seed,
            val_fraction=args.val_fraction,
            skip_invalid=args.skip_invalid,
            include_unannotated=args.include_unannotated,
            phash_threshold=args.phash_threshold,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except ConversionError as e:  # the summary line, then every problem with its row number
        first, *problems = str(e).splitlines()
        raise cli.UserError(f"{first.rstrip(':')}; nothing was written: fix the spreadsheet or the image folder, "
                            "or drop these rows with --skip-invalid",
                            details=[p for p in problems if p.startswith("  ")]) from None
    except ValueError as e:  # arguments the converter refuses (folds, fractions, structures)
        raise cli.UserError(str(e)) from None
    print(format_report(report))
    print(f"wrote {args.out} (details in {REPORT_FILE}) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
