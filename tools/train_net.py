#!/usr/bin/env python
"""Train and evaluate voting_det models and detectron2's built-in detectors on
the NT data sets, in detectron2's standard form.

    .venv/bin/python tools/train_net.py --config-file configs/... [--eval-only] [--resume] \\
        [--num-gpus N] [--data NAME=PATH ...] [KEY VALUE ...]

Your own converted folders: ``--data mine=/data/mine_coco`` registers
``mine_all`` and ``mine_fold{k}_{train,val,test}``, e.g.
``DATASETS.TRAIN "('mine_all',)" DATASETS.TEST "('theirs_all',)"``.

Options come before the ``KEY VALUE`` overrides. Exit status: 0 after training
or evaluation; 2 for a user error (one line naming the file or key, found
before anything is built or written: the config file and its keys, the
weights, the data sets, another run's OUTPUT_DIR).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import json  # noqa: E402

from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import voting_det  # noqa: F401,E402  (registers the data sets)
from voting_det import cli  # noqa: E402
from voting_det.engine import Trainer  # noqa: E402
from voting_det.engine.checkpoint import SafeCheckpointer  # noqa: E402
from voting_det.engine.run_folder import holds_a_run, refuse_other_run  # noqa: E402

def check_output_dir(cfg, args) -> None:
    """A new run never writes into another run's folder; --resume continues
    only a run of the same config (compared key by key)."""
    if args.eval_only:
        return
    if args.resume:
        try:
            refuse_other_run(cfg.OUTPUT_DIR, cfg.dump(), "config.yaml",
                             "Choose another OUTPUT_DIR, or drop --resume to start anew in an empty folder")
        except ValueError as e:
            raise cli.UserError(str(e)) from None
    elif holds_a_run(cfg.OUTPUT_DIR):
        raise cli.UserError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR} holds the checkpoints of another run: pass --resume to continue it, "
            "or choose another OUTPUT_DIR (nothing was written)"
        )


def check_run(cfg, args) -> None:
    """Every user error of a run, before anything is built or written."""
    check_output_dir(cfg, args)
    if not (args.resume and holds_a_run(cfg.OUTPUT_DIR)):  # else the last checkpoint is read, not MODEL.WEIGHTS
        cli.check_weights(cfg, required=args.eval_only)
    cli.check_weights(cfg, required=False, keys=cli.PRETRAINED_BACKBONE_KEYS)
    cli.check_datasets(cfg, ("DATASETS.TEST",) if args.eval_only else ("DATASETS.TRAIN", "DATASETS.TEST"))


def build_parser():
    p = default_argument_parser()
    p.prog = "tools/train_net.py"
    cli.add_data_argument(p)
    return p


def setup(args):
    cfg = cli.load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    # voting_det's own messages (e.g. MODEL.CONTEXT.INIT_FROM_LOCAL) in the run's log too
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="voting_det")
    return cfg


def run(args):
    """One process's training or evaluation (detectron2's ``launch`` runs it
    in every process)."""
    cli.register_data(args.data)  # again in a spawned process (the same folders: a no-op in this one)
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


def main(argv=None):
    args = cli.parse_args(build_parser(), argv)
    check_run(cli.load_config(args.config_file, args.opts), args)
    launch(
        run,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
