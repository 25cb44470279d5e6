#!/usr/bin/env python
"""Write a synthetic NT set in the layout of the public "Dataset for Fetus Framework".

    .venv/bin/python tools/make_synthetic_nt.py --out datasets/synthetic_nt --num 300 --seed 0 --workers 2

writes ``Train & Val/{i}.png``, ``ObjectDetection.xlsx`` and ``metadata.csv``
under ``--out`` (see :mod:`voting_det.data.synthetic`) and prints a summary.
Exit status: 0 when written; 2 for a user error (one line: bad arguments, or a
non-empty ``--out`` without ``--overwrite``).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

from voting_det import cli  # noqa: E402
from voting_det.data.synthetic import generate_synthetic_nt  # noqa: E402


def parse_size(text: str):
    """``"576x768"`` -> ``(576, 768)`` (H x W)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW, e.g. 576x768")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/make_synthetic_nt.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument("--num", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="seed: the same seed gives a byte-identical set")
    parser.add_argument("--size", type=parse_size, default=(576, 768), help="image size HxW (default 576x768)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (output does not depend on it)")
    parser.add_argument("--negative-fraction", type=float, default=0.2, help="share of images without an NT")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    if args.num < 1 or min(args.size) < 64 or args.workers < 1 or not 0.0 <= args.negative_fraction < 1.0:
        raise cli.UserError(f"--num {args.num} --size {args.size[0]}x{args.size[1]} --workers {args.workers} "
                            f"--negative-fraction {args.negative_fraction}: need --num >= 1, a --size of at least "
                            "64x64, --workers >= 1 and --negative-fraction in [0, 1)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = generate_synthetic_nt(args.out, args.num, seed=args.seed, size=args.size, workers=args.workers,
                                    overwrite=args.overwrite, progress=not args.no_progress,
                                    negative_fraction=args.negative_fraction)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    cli.run_tool(main)
