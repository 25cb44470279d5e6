"""The paper's two-stage protocol (docs/method.md section 4) as one call:
stage 1 trains the local branch alone (LCF), stage 2 starts from it and trains
the whole network (Proposed), the local branch fine-tuned. The two stages share
one iteration budget, so Proposed gets what a baseline's single schedule gets."""
import contextlib
import logging
import os
from typing import Dict, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from ..config import setup_cfg
from .run_folder import final_weights_written, refuse_other_run
from .trainer import Trainer

__all__ = ["split_schedule", "stage_configs", "train_two_stage"]

logger = logging.getLogger(__name__)


def split_schedule(total_iters: int, steps: Sequence[int], stage1_fraction: float) -> Tuple[Tuple[int, tuple], Tuple[int, tuple]]:
    """Split a single schedule (``total_iters`` with LR ``steps``) into the two
    stages: ``(iters, steps)`` of stage 1 and stage 2, each stage's steps scaled
    from the single schedule's by its share of the iterations."""
    if not 0.0 < stage1_fraction < 1.0:
        raise ValueError(f"stage-1 fraction must be in (0, 1), got {stage1_fraction}")
    first = max(1, int(round(total_iters * stage1_fraction)))
    second = max(1, total_iters - first)

    def scaled(iters):
        return tuple(int(round(s * iters / total_iters)) for s in steps if 0 < round(s * iters / total_iters) < iters)

    return (first, scaled(first)), (second, scaled(second))


# What stage 2 (the whole network) may lack in stage 1's LCF weights: the context branch.
STAGE2_ALLOW_MISSING = ("context_backbone.", "roi_heads.context_head.", "roi_heads.fusion_logit")


def stage_configs(
    lcf_config: str,
    voting_config: str,
    output_dir: str,
    opts: Sequence[str] = (),
    stage1_fraction: float = 0.5,
) -> Tuple[CfgNode, CfgNode]:
    """The frozen configs of both stages. ``opts`` apply to both (e.g. the data
    sets of a fold); the total ``SOLVER.MAX_ITER`` / ``STEPS`` after them is
    split by :func:`split_schedule`. Stage 2 loads stage 1's final weights."""
    cfgs = [setup_cfg(path, opts, freeze=False) for path in (lcf_config, voting_config)]
    (it1, st1), (it2, st2) = split_schedule(cfgs[0].SOLVER.MAX_ITER, cfgs[0].SOLVER.STEPS, stage1_fraction)
    for cfg, iters, steps, name in ((cfgs[0], it1, st1, "stage1_lcf"), (cfgs[1], it2, st2, "stage2_voting")):
        cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = iters, steps
        cfg.OUTPUT_DIR = os.path.join(output_dir, name)
    cfgs[1].MODEL.WEIGHTS = os.path.join(cfgs[0].OUTPUT_DIR, "model_final.pth")
    cfgs[1].MODEL.CHECKPOINT.ALLOW_MISSING = list(STAGE2_ALLOW_MISSING)
    for cfg in cfgs:
        cfg.freeze()
    return cfgs[0], cfgs[1]


def trained_config(cfg: CfgNode) -> CfgNode:
    """A stage's frozen config with ``MODEL.WEIGHTS`` its own final model, for
    inference after training (a stage's ``MODEL.WEIGHTS`` is what it started
    from: stage 2's is stage 1's model, without the context branch)."""
    out = cfg.clone()
    out.defrost()
    out.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    out.MODEL.CHECKPOINT.ALLOW_MISSING = []  # its own final model is whole
    out.freeze()
    return out


def _refuse_other_run(cfg: CfgNode) -> None:
    """Resuming into a folder that holds a run with another config would mix two
    runs (e.g. a smoke test's checkpoints taken for a full run's): refuse."""
    refuse_other_run(cfg.OUTPUT_DIR, cfg.dump(), "config.yaml",
                     "Use a new --output-dir, or --no-resume to train this one from the start there")


# Format of a stage's log.txt (detectron2's file format).
STAGE_LOG_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"
# The loggers whose messages a stage's log.txt gets.
STAGE_LOGGERS = ("detectron2", "fvcore", "voting_det")


@contextlib.contextmanager
def stage_log(output_dir: str):
    """While a stage runs, its messages also go to ``<output_dir>/log.txt``
    (appended on resume), as tools/train_net.py's runs have one."""
    handler = logging.FileHandler(os.path.join(output_dir, "log.txt"), mode="a")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(STAGE_LOG_FORMAT, datefmt="%m/%d %H:%M:%S"))
    loggers = [logging.getLogger(name) for name in STAGE_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.addHandler(handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)  # their INFO messages reach the file
    try:
        yield handler
    finally:
        for log, level in zip(loggers, levels):
            log.removeHandler(handler)
            log.setLevel(level)
        handler.close()


def train_two_stage(stage1: CfgNode, stage2: CfgNode, resume: bool = True) -> Dict[str, dict]:
    """Train both stages, then evaluate each on its test sets; returns the test
    results. With ``resume``, a finished stage is not trained again and an
    unfinished one continues from its last checkpoint, provided the stage's
    folder holds a run of the same config (else :func:`_refuse_other_run` raises).
    A stage is finished when the checkpointer has tagged its final weights
    (:func:`final_weights_written`), not merely when the file exists."""
    results = {}
    for name, cfg in (("stage1_lcf", stage1), ("stage2_voting", stage2)):
        final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        if resume:
            _refuse_other_run(cfg)
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
        with stage_log(cfg.OUTPUT_DIR):
            logger.info("%s: training on %s, testing on %s; config %s", name, list(cfg.DATASETS.TRAIN),
                        list(cfg.DATASETS.TEST), os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
            # as detectron2's default_setup does for tools/train_net.py: the model's
            # initialisation, the data order and the random draws follow cfg.SEED
            seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + comm.get_rank())
            trainer = Trainer(cfg)
            if resume and final_weights_written(cfg.OUTPUT_DIR):
                logger.info("%s: %s exists, not training it again", name, final)
                trainer.checkpointer.load(final)
                results[name] = Trainer.test(cfg, trainer.model) if cfg.DATASETS.TEST else {}
            else:
                trainer.resume_or_load(resume=resume)
                trainer.train()
                # detectron2's EvalHook evaluates once more after the last iteration
                results[name] = trainer._last_eval_results
    return results
