#!/usr/bin/env python
"""Train Proposed with the paper's two-stage protocol on one fold, in one command:
stage 1 = LCF (local branch alone), stage 2 = the whole network from it.

    python tools/train_voting.py --fold 0 --output-dir output/voting_fold0 [KEY VALUE ...]

The two stages split one schedule (SOLVER.MAX_ITER, SOLVER.STEPS of the LCF
config after the overrides) by --stage1-fraction; both are resumable.
"""
import argparse
import json

from detectron2.utils.logger import setup_logger

import voting_det  # noqa: F401  (registers data sets and components)
from voting_det.engine.two_stage import stage_configs, train_two_stage


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fold", type=int, default=0, help="cross-validation fold: trains on its train split, tests on its test split")
    p.add_argument("--dataset", default="nt", help="registered set prefix (nt = synthetic, nt_real = the public set)")
    p.add_argument("--lcf-config", default="configs/nt_lcf.yaml")
    p.add_argument("--voting-config", default="configs/nt_voting.yaml")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--stage1-fraction", type=float, default=0.5, help="share of the iterations for stage 1")
    p.add_argument("--no-resume", action="store_true", help="train both stages from the start")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for both stages, KEY VALUE ...")
    return p.parse_args()


def main():
    args = parse_args()
    setup_logger(name="voting_det")
    setup_logger()
    fold = f"{args.dataset}_fold{args.fold}"
    opts = ["DATASETS.TRAIN", f"('{fold}_train',)", "DATASETS.TEST", f"('{fold}_test',)"] + list(args.opts)
    stage1, stage2 = stage_configs(args.lcf_config, args.voting_config, args.output_dir, opts, args.stage1_fraction)
    results = train_two_stage(stage1, stage2, resume=not args.no_resume)
    print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
