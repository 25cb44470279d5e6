#!/usr/bin/env python
"""Train Proposed with the paper's two-stage protocol in one command:
stage 1 = LCF (local branch alone), stage 2 = the whole network from it.

    .venv/bin/python tools/train_voting.py --fold 0 --output-dir output/voting_fold0 [KEY VALUE ...]
    .venv/bin/python tools/train_voting.py --data mine=/data/mine_coco --data theirs=/data/theirs_coco \\
        --train-set mine_all --test-set theirs_all --output-dir output/mine_voting

On one fold of a registered set (``--dataset``, ``--fold``: its train split,
tested on its test split), or on any registered sets (``--train-set``,
``--test-set``; ``--data NAME=PATH`` registers a converted folder as
``NAME_all`` and ``NAME_fold{k}_{split}``). Each stage folder gets its
``config.yaml``, ``log.txt``, metrics and checkpoints.

The two stages split one schedule (SOLVER.MAX_ITER, SOLVER.STEPS of the LCF
config after the overrides) by --stage1-fraction; both are resumable. Options
come before the ``KEY VALUE`` overrides. Exit status: 0 after both stages; 2
for a user error (one line naming the file or key, found before anything is
built or written).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import json  # noqa: E402

from detectron2.utils.logger import setup_logger  # noqa: E402

import voting_det  # noqa: F401,E402  (registers data sets and components)
from voting_det import cli  # noqa: E402
from voting_det.engine.run_folder import refuse_other_run  # noqa: E402
from voting_det.engine.two_stage import stage_configs, train_two_stage  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(prog="tools/train_voting.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fold", type=int, default=None,
                   help="cross-validation fold: trains on its train split, tests on its test split (default 0, "
                        "unless --train-set is given)")
    p.add_argument("--dataset", default="nt", help="registered set prefix of --fold (nt = synthetic, nt_real = the "
                                                   "public set, or a NAME of --data)")
    p.add_argument("--train-set", action="append", default=[], metavar="NAME",
                   help="train on this registered set instead of a fold (repeat for several), e.g. mine_all")
    p.add_argument("--test-set", action="append", default=[], metavar="NAME",
                   help="with --train-set: evaluate both stages on this registered set (repeatable); none: "
                        "train only")
    p.add_argument("--lcf-config", default="configs/nt_lcf.yaml")
    p.add_argument("--voting-config", default="configs/nt_voting.yaml")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--stage1-fraction", type=float, default=0.5, help="share of the iterations for stage 1")
    p.add_argument("--no-resume", action="store_true", help="train both stages from the start")
    cli.add_data_argument(p)
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="config overrides for both stages, KEY VALUE ..., after every option")
    return p


def checked_stage_configs(lcf_config, voting_config, output_dir, opts, stage1_fraction, resume=True):
    """:func:`stage_configs` after the user errors of both stages (config files,
    keys, values, pretrained weights, data sets, with ``resume`` a stage folder
    holding another run), which raise :class:`cli.UserError`."""
    if not 0.0 < stage1_fraction < 1.0:
        raise cli.UserError(f"--stage1-fraction {stage1_fraction}: must be in (0, 1), e.g. 0.5")
    for path, option in ((lcf_config, "--lcf-config"), (voting_config, "--voting-config")):
        cfg = cli.load_config(path, opts, option=option)
        cli.check_weights(cfg, required=False, keys=cli.PRETRAINED_BACKBONE_KEYS)
        cli.check_datasets(cfg)
    stages = stage_configs(lcf_config, voting_config, output_dir, opts, stage1_fraction)
    for cfg in stages if resume else ():  # as train_two_stage checks each stage, but before stage 1 trains
        try:
            refuse_other_run(cfg.OUTPUT_DIR, cfg.dump(), "config.yaml",
                             "Use a new --output-dir, or --no-resume to train this one from the start there")
        except ValueError as e:
            raise cli.UserError(str(e)) from None
    return stages


def _as_tuple(names):
    return "(" + "".join(f"'{n}', " for n in names) + ")"


def dataset_opts(args):
    """DATASETS.TRAIN / TEST of the fold or of --train-set / --test-set."""
    if args.train_set:
        if args.fold is not None:
            raise cli.UserError(f"--fold {args.fold} and --train-set both choose the training data: give one of them")
        return ["DATASETS.TRAIN", _as_tuple(args.train_set), "DATASETS.TEST", _as_tuple(args.test_set)]
    if args.test_set:
        raise cli.UserError("--test-set needs --train-set (a fold tests on its own test split)")
    fold = f"{args.dataset}_fold{0 if args.fold is None else args.fold}"
    return ["DATASETS.TRAIN", f"('{fold}_train',)", "DATASETS.TEST", f"('{fold}_test',)"]


def main(argv=None):
    args = cli.parse_args(build_parser(), argv)
    opts = dataset_opts(args) + list(args.opts)
    stage1, stage2 = checked_stage_configs(args.lcf_config, args.voting_config, args.output_dir, opts,
                                           args.stage1_fraction, resume=not args.no_resume)
    setup_logger(name="voting_det")
    setup_logger()
    results = train_two_stage(stage1, stage2, resume=not args.no_resume)
    final = os.path.join(stage2.OUTPUT_DIR, "model_final.pth")
    if stage2.DATASETS.TEST:
        print(json.dumps(results, indent=2, default=float))
    else:
        print(f"trained on {', '.join(stage2.DATASETS.TRAIN)}; no test set was given (--test-set, or DATASETS.TEST), "
              "so nothing was evaluated")
    print(f"final model: {final} (config: {os.path.join(stage2.OUTPUT_DIR, 'config.yaml')})")
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
