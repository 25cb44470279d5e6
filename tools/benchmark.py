#!/usr/bin/env python
"""Cross-validate methods (the paper's Tables 1 to 3) and tabulate them, or
compare them on an outside split (trained on one set, tested on another).

    .venv/bin/python tools/benchmark.py --profile cpu --folds 0 --methods table1-r18
    .venv/bin/python tools/benchmark.py --profile cpu --folds 0 1 2 --methods table1
    .venv/bin/python tools/benchmark.py --profile cpu --tabulate-only --root benchmarks/results/runs --out benchmarks/results/table1_cpu_real
    .venv/bin/python tools/benchmark.py --profile cpu --data mine=/data/mine_coco --data theirs=/data/theirs_coco \\
        --train-set mine_all --test-set theirs_all --methods proposed fpn_R18 --out output/mine_on_theirs

Runs are resumable: rerun the same command after an interruption. With
--archive DIR every finished run's small result files (metrics, detections,
config, times; no weights) are copied into DIR, from which --tabulate-only
--root DIR rebuilds the tables when the output folder is gone. Methods:
names from benchmarks.runner.METHODS, or the groups table1,
table1-r18 (Table 1 without the R50 rows), ablations (Tables 2 and 3), longer
(LCF and Proposed's longer schedule, which starts from the LCF row's model).
Profiles (--list shows them) are documented config overrides applied to every row.
Options come before the ``KEY VALUE`` overrides. Exit status: 0 when done; 2 for
a user error (one line, found before any training).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.runner import (ABLATIONS, LONGER, METHODS, PROFILES, TABLE1, archive_conflict,  # noqa: E402
                               archive_run, plan_runs, run_all)
from voting_det import cli  # noqa: E402

GROUPS = {
    "table1": list(TABLE1),
    "table1-r18": [m for m in TABLE1 if not m.endswith("R50")],
    "ablations": list(ABLATIONS),
    "longer": list(LONGER),
}


def build_parser():
    p = argparse.ArgumentParser(prog="tools/benchmark.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="cpu", help=f"one of {sorted(PROFILES)}")
    p.add_argument("--dataset", default=None, help="registered set prefix; default: the profile's")
    p.add_argument("--methods", nargs="+", default=["table1-r18"], help="method names or groups " + ", ".join(GROUPS))
    p.add_argument("--folds", nargs="+", type=int, default=None, help="cross-validation folds (default 0 1 2)")
    p.add_argument("--train-set", default=None, metavar="NAME",
                   help="an outside split instead of folds: train on this registered set (e.g. mine_all of "
                        "--data mine=PATH) ...")
    p.add_argument("--test-set", default=None, metavar="NAME", help="... and test on this one (e.g. theirs_all)")
    p.add_argument("--val-set", default=None, metavar="NAME",
                   help="optional validation set of the outside split (LROC threshold, --val-only)")
    p.add_argument("--root", default="output/benchmark", help="folder of the runs")
    p.add_argument("--out", default=None, help="write the tables, plots and manifest here (default: only print)")
    p.add_argument("--tabulate-only", action="store_true", help="do not train: tabulate the finished runs")
    p.add_argument("--archive", default=None,
                   help="copy every finished run's small result files (no weights) into this folder, same layout "
                        "(e.g. benchmarks/results/runs, committed): `--root` it to tabulate them again later")
    p.add_argument("--val-only", action="store_true",
                   help="train and evaluate on each fold's validation split only, print no tables, and leave the "
                        "runs unfinished (a tuning trial decided before its test split is seen); rerun without it "
                        "to evaluate the test split and finish them")
    p.add_argument("--calipers", choices=("auto", "yes", "no"), default="auto",
                   help="report metrics with and without caliper-marked images (auto: for the real set nt_real)")
    p.add_argument("--speed", default="benchmarks/results/speed_cpu/speed.json",
                   help="tools/benchmark_speed.py's JSON: adds each row's parameters, FLOPs and time at the "
                        "profile's test size to the table ('' to leave out)")
    p.add_argument("--list", action="store_true", help="list methods and profiles, then exit")
    cli.add_data_argument(p)
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="extra overrides for every run, KEY VALUE ... (recorded), after every option")
    return p


def parse_args(argv=None):
    return cli.parse_args(build_parser(), argv)


def expand(methods):
    out = []
    for m in methods:
        for name in GROUPS.get(m, [m]):
            if name not in out:
                out.append(name)
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for name, m in METHODS.items():
            print(f"{name:18s} table {m.table}  {m.config}{'  (two-stage)' if m.two_stage else ''}  {' '.join(m.opts)}")
        for name, p in PROFILES.items():
            print(f"\nprofile {name} (data set {p.dataset}): {p.doc}\n  {' '.join(p.opts)}")
        return 0
    if args.val_only and args.tabulate_only:
        raise cli.UserError("--val-only trains; it cannot be combined with --tabulate-only: drop one of them")
    if (args.train_set or args.test_set) and args.folds is not None:
        raise cli.UserError("--folds and --train-set / --test-set choose the split two ways: give one of them")
    if bool(args.train_set) != bool(args.test_set):
        raise cli.UserError("an outside split needs --train-set and --test-set (the registered names, e.g. "
                            "mine_all and theirs_all with --data mine=PATH --data theirs=PATH)")
    if args.val_set and not args.train_set:
        raise cli.UserError("--val-set belongs to an outside split (--train-set, --test-set); a fold has its own")
    if args.val_only and args.train_set and not args.val_set:
        raise cli.UserError("--val-only on an outside split needs --val-set")
    if args.train_set:
        from detectron2.data import DatasetCatalog

        for option, name in (("--train-set", args.train_set), ("--test-set", args.test_set),
                             ("--val-set", args.val_set)):
            if name and name not in DatasetCatalog.list():
                raise cli.UserError(f"{option} {name}: not a registered data set; register a converted folder "
                                    f"with --data NAME=PATH (NAME_all, NAME_fold0_train, ...)")
    try:
        runs = plan_runs(expand(args.methods), [0, 1, 2] if args.folds is None else args.folds, args.profile,
                         args.root, args.dataset, args.opts, train_set=args.train_set, test_set=args.test_set,
                         val_set=args.val_set, data=args.data)
    except ValueError as e:
        raise cli.UserError(f"{e}; see tools/benchmark.py --list") from None
    # (an archive that is the runs' own folder, e.g. `make tables`, is left as it is)
    archive = args.archive if args.archive and os.path.abspath(args.archive) != os.path.abspath(args.root) else None
    conflicts = [c for c in (archive_conflict(r, archive) for r in runs) if c] if archive else []
    if conflicts:  # found before any training, not after hours of it
        raise cli.UserError(f"--archive {args.archive}: " + "; ".join(conflicts))
    if not args.tabulate_only:
        for run in runs:  # every run's config, with the overrides, before any training
            try:
                run.frozen_configs()
            except (KeyError, ValueError) as e:
                raise cli.UserError(f"{run.folder}: {cli.error_message(e)}") from None
        run_all(runs, val_only=args.val_only, archive=archive)
    if archive:
        done = [archive_run(r, archive) for r in runs if r.finished()]
        print(f"archived {len(done)} finished run(s) in {args.archive}")
    if args.val_only:
        print("validation evaluations: " + ", ".join(r.eval_dir("val") for r in runs) + " (test split not evaluated)")
        return 0
    from benchmarks.tables import tabulate

    calipers = args.calipers == "yes" or (args.calipers == "auto" and not args.train_set
                                          and runs[0].dataset.startswith("nt_real"))
    tabulate(runs, out_dir=args.out, command=" ".join(["python", "tools/benchmark.py"] + (argv or sys.argv[1:])),
             calipers=calipers, speed_json=args.speed)
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
