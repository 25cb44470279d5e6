#!/usr/bin/env python
"""Convert a "Dataset for Fetus Framework" folder (images + ObjectDetection.xlsx)
into COCO JSON files with grouped, stratified cross-validation folds.

Example (the real NT development set)::

    python tools/convert_fetus_framework.py --root ../shared/data/fetus_framework_nt \\
        --out datasets/nt_real --skip-invalid

Exit status: 0 on success, 2 when the input has problems (all are listed, nothing
is written) or the arguments are wrong.
"""
import argparse
import logging
import sys
import time

from voting_det.data.fetus_framework import (
    DEFAULT_NUM_FOLDS,
    DEFAULT_SEED,
    DEFAULT_STRUCTURES,
    DEFAULT_VAL_FRACTION,
    REPORT_FILE,
    ConversionError,
    convert_fetus_framework,
    format_report,
)
from voting_det.data.folds import DEFAULT_PHASH_THRESHOLD, PHASH_BITS
from voting_det.data.spreadsheet import SpreadsheetError

EXIT_BAD_INPUT = 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = parser.parse_args(argv)
    given = args.structures or [",".join(DEFAULT_STRUCTURES)]
    args.structures = [s.strip() for item in given for s in item.split(",") if s.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
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
    except ConversionError as e:
        print(f"error: {e}\nNothing was written.", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FileExistsError, FileNotFoundError, SpreadsheetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(format_report(report))
    print(f"wrote {args.out} (details in {REPORT_FILE}) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
