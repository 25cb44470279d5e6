#!/usr/bin/env python
"""Learning curves of finished (or interrupted) training runs: every periodic
checkpoint a run kept, evaluated on one split of its fold (the validation split
by default, so that the test split is not looked at), beside the training loss
at that iteration. It answers "was this row still improving when its schedule
ended?" for rows trained with the same schedule.

    .venv/bin/python tools/learning_curve.py --split val --out benchmarks/results/diagnostics/learning_curves_fold2 \\
        "LCF=output/benchmark/cpu/nt_real/lcf/fold2/train" \\
        "FPN R18=output/benchmark/cpu/nt_real/fpn_R18/fold2/train"

Each argument is LABEL=TRAIN_DIR, a detectron2 output folder holding the run's
``config.yaml``, its ``metrics.json`` and ``model_*.pth`` checkpoints (for
Proposed, give its ``stage1_lcf`` and ``stage2_voting`` folders as two rows).
The split's set is the config's ``DATASETS.TRAIN[0]`` with ``_train`` replaced
by ``_<split>`` (``--dataset`` overrides it). Each checkpoint's evaluation is
kept under ``OUT/evals/LABEL/SET/CHECKPOINT/`` (NTEvaluator's files), so a rerun evaluates only
what is missing; ``OUT/learning_curve.md``, ``.csv`` and ``.png`` are
rewritten from them. Checkpoints are never modified. Exit status: 0 when
written; 2 for a user error (one line naming the argument, found before any
evaluation).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.learning_curve import curve_rows, write_outputs  # noqa: E402
from voting_det import cli  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(prog="tools/learning_curve.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=TRAIN_DIR")
    p.add_argument("--out", required=True, help="folder for the tables, the plot and the cached evaluations")
    p.add_argument("--split", default="val", help="which split of the run's fold (default: val)")
    p.add_argument("--dataset", help="evaluate on this registered set instead of the fold's split")
    p.add_argument("--device", help="MODEL.DEVICE for the evaluation (default: the run's)")
    cli.add_data_argument(p)
    return p


def main(argv=None):
    args = cli.parse_args(build_parser(), argv)
    for spec in args.runs:  # each LABEL=TRAIN_DIR names a training run's folder
        label, sep, train_dir = spec.rpartition("=")
        if not sep or not label:
            raise cli.UserError(f"{spec!r}: not LABEL=TRAIN_DIR; give e.g. \"LCF=output/.../train\"")
        cli.check_input(os.path.join(train_dir, "config.yaml"), label, "a detectron2 output folder of a training run")
    import voting_det  # noqa: F401  (registers the data sets)

    try:
        rows = curve_rows(args.runs, args.out, args.split, args.dataset, args.device)
    except SystemExit as e:  # benchmarks.learning_curve's own refusals (a message, before any evaluation)
        if not isinstance(e.code, str):
            raise
        raise cli.UserError(e.code) from None
    write_outputs(args.out, args.split, args.dataset, args.runs, rows)
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
