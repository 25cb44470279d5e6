#!/usr/bin/env python
"""Train and evaluate voting_det models and detectron2's built-in detectors on
the NT data sets, in detectron2's standard form.

    python tools/train_net.py --config-file configs/... [--eval-only] [--resume] \
        [--num-gpus N] [KEY VALUE ...]
"""
import json
import os
import sys

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import voting_det  # noqa: F401  (registers the data sets)
from voting_det.config import setup_cfg
from voting_det.engine import Trainer
from voting_det.engine.checkpoint import SafeCheckpointer
from voting_det.engine.run_folder import holds_a_run, refuse_other_run


def check_output_dir(cfg, args) -> None:
    """A new run never writes into another run's folder; --resume continues
    only a run of the same config (compared key by key)."""
    if args.eval_only:
        return
    if args.resume:
        refuse_other_run(cfg.OUTPUT_DIR, cfg.dump(), "config.yaml",
                         "Choose another OUTPUT_DIR, or drop --resume to start anew in an empty folder")
    elif holds_a_run(cfg.OUTPUT_DIR):
        raise ValueError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR} holds the checkpoints of another run: pass --resume to continue it, "
            "or choose another OUTPUT_DIR (nothing was written)"
        )


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    # voting_det's own messages (e.g. MODEL.CONTEXT.INIT_FROM_LOCAL) in the run's log too
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="voting_det")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SafeCheckpointer.from_config(cfg, model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            # every evaluator's numbers (COCO AP included) in one file next to the NT evaluator's
            path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
            with open(path + ".tmp", "w") as f:
                json.dump(results, f, indent=1, default=float)
            os.replace(path + ".tmp", path)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        check_output_dir(setup_cfg(args.config_file, args.opts), args)
    except ValueError as e:  # bad config keys or values, another run's folder
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
