"""detectron2's DefaultTrainer with the ultrasound mapper, the NT evaluators and
an Adam option (the paper trains with Adam). Nothing of the training loop is
rewritten: only the builder hooks are overridden."""
import contextlib
import itertools
import logging
import os
import random
import weakref

import numpy as np
import torch
from detectron2.structures import Boxes
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.engine import defaults as d2_defaults
from detectron2.utils import comm
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..data import NT_EVALUATOR_TYPE, build_ultrasound_mapper
from ..data.sampler import PositionDataset, PositionSampler, position_seed
from .checkpoint import SafeCheckpointer
from ..evaluation import NTEvaluator, test_settings

__all__ = ["Trainer", "build_nt_evaluator", "detectron2_has_compiled_ops"]

logger = logging.getLogger(__name__)


def detectron2_has_compiled_ops() -> bool:
    """Whether detectron2's compiled extension ``_C`` loads (it does not in the
    registry repackaging used as a fallback); without it COCO evaluation must use
    pycocotools' own implementation (``use_fast_impl=False``)."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def build_nt_evaluator(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluators:
    """The evaluators for ``dataset_name``: COCO AP/AP50 (detectron2's
    COCOEvaluator, pycocotools' implementation when detectron2's ``_C`` is
    missing) and the NT metrics (:class:`NTEvaluator`), with the test settings
    of ``cfg`` recorded."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if evaluator_type not in (NT_EVALUATOR_TYPE, "coco"):
        raise ValueError(
            f"data set {dataset_name!r} has evaluator_type {evaluator_type!r}; voting_det evaluates "
            f"'{NT_EVALUATOR_TYPE}' and 'coco' sets (register yours with voting_det.data.register_nt_coco)"
        )
    coco = COCOEvaluator(
        dataset_name,
        tasks=("bbox",),
        distributed=True,
        output_dir=output_dir,
        use_fast_impl=detectron2_has_compiled_ops(),
    )
    return DatasetEvaluators([coco, build_nt_metrics_evaluator(cfg, dataset_name, output_dir)])


def build_nt_metrics_evaluator(cfg, dataset_name: str, output_dir: str, distributed: bool = True) -> NTEvaluator:
    """The NT metrics alone (:class:`NTEvaluator`) with ``cfg``'s test settings
    and ``TEST.NT_EVAL`` keys."""
    return NTEvaluator(
        dataset_name,
        settings=test_settings(cfg, top_n=cfg.TEST.NT_EVAL.TOP_N),
        output_dir=output_dir,
        distributed=distributed,
        top_n=cfg.TEST.NT_EVAL.TOP_N,
        lroc_threshold=cfg.TEST.NT_EVAL.LROC_THRESHOLD,
        num_bootstrap=cfg.TEST.NT_EVAL.NUM_BOOTSTRAP,
    )


@contextlib.contextmanager
def _ddp_on_cpu():
    """detectron2's ``create_ddp_model`` passes ``device_ids=[local_rank]``,
    which torch refuses for a CPU model; on CPU (gloo) pass none."""
    original = d2_defaults.create_ddp_model

    def create(model, **kwargs):
        if next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class _SeedEachIteration(HookBase):
    """Seed torch, NumPy and Python from ``(SEED, iteration)`` before every
    step, so the model's random choices (proposal sampling) at iteration i do
    not depend on whether training was interrupted before it."""

    def __init__(self, seed: int):
        self._seed = seed

    def before_step(self):
        s = position_seed(self._seed + 7919 * (1 + comm.get_rank()), self.trainer.iter)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)


class Trainer(DefaultTrainer):
    """DefaultTrainer with the ultrasound mapper, NT evaluators and Adam.

    ``cfg.SOLVER.OPTIMIZER`` selects ``"SGD"`` (detectron2's settings) or
    ``"ADAM"`` (the paper's), over the same parameter groups. On top of
    detectron2's loop: multi-process training on CPU (gloo) as on GPUs, a
    training stream that resumes exactly (:mod:`voting_det.data.sampler`; with
    ``SEED >= 0``, each iteration also seeded), checkpoints that are written
    atomically and read without running code (:mod:`.checkpoint`). A
    non-finite loss stops training before the optimizer step, as in every
    detectron2 trainer (``FloatingPointError`` naming the iteration and the
    losses).
    """

    def __init__(self, cfg):
        with _ddp_on_cpu():
            super().__init__(cfg)

    def build_hooks(self):
        old = self.checkpointer
        self.checkpointer = SafeCheckpointer.from_config(self.cfg, old.model, old.save_dir, trainer=weakref.proxy(self))
        hooks = super().build_hooks()
        if self.cfg.SEED >= 0:
            hooks.insert(0, _SeedEachIteration(self.cfg.SEED))
        return hooks

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_nt_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        """detectron2's train loader over :class:`PositionDataset`: sample p is
        the same image and augmentation in every run with the same ``SEED``
        (a random one when ``SEED < 0``), and ``start_iter`` continues the
        stream where an interrupted run stopped."""
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        seed = cfg.SEED if cfg.SEED >= 0 else int(np.random.SeedSequence().generate_state(1)[0])
        dataset = PositionDataset(dicts, build_ultrasound_mapper(cfg, is_train=True), seed=seed)
        return build_detection_train_loader(
            dataset,
            mapper=None,
            sampler=PositionSampler(start=start_iter * cfg.SOLVER.IMS_PER_BATCH),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            # the loader's own generator: starting its iterator draws nothing from
            # torch's global one (which the model's sampling uses)
            seed=seed,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_ultrasound_mapper(cfg, is_train=False))

    @classmethod
    def build_optimizer(cls, cfg, model):
        """SGD or Adam over detectron2's parameter groups; the parameters named in
        ``SOLVER.NO_DECAY_KEYS`` (templates, temperature, fusion) get no weight
        decay and ``SOLVER.VOTING_LR_FACTOR`` times the base learning rate."""
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name not in ("SGD", "ADAM"):
            raise ValueError(f"config key SOLVER.OPTIMIZER must be 'SGD' or 'ADAM', got {cfg.SOLVER.OPTIMIZER!r}")
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
            overrides={
                key: {"weight_decay": 0.0, "lr": cfg.SOLVER.BASE_LR * cfg.SOLVER.VOTING_LR_FACTOR}
                for key in cfg.SOLVER.NO_DECAY_KEYS
            },
        )
        if name == "SGD":
            optimizer = torch.optim.SGD(
                params,
                lr=cfg.SOLVER.BASE_LR,
                momentum=cfg.SOLVER.MOMENTUM,
                nesterov=cfg.SOLVER.NESTEROV,
                weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            )
        else:
            optimizer = torch.optim.Adam(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        return maybe_add_gradient_clipping(cfg, optimizer)

    def resume_or_load(self, resume=True):
        """The pretrained backbones (``MODEL.*.PRETRAINED_BACKBONE``) unless a
        checkpoint is resumed, detectron2's resume/load, then the k-means initialisation of the
        semantic templates when ``MODEL.VOTING.TEMPLATE_INIT`` is ``"kmeans"``
        and training starts from scratch (no checkpoint, no MODEL.WEIGHTS)."""
        if not (resume and self.checkpointer.has_checkpoint()):
            # before MODEL.WEIGHTS, which overrides the backbones it holds
            self.checkpointer.load_pretrained_backbones(self.cfg)
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:
            # continue the training stream after the samples already consumed
            self._trainer.data_loader = self.build_train_loader(self.cfg, start_iter=self.start_iter)
            self._trainer._data_loader_iter_obj = None
        fresh = self.start_iter == 0 and not self.cfg.MODEL.WEIGHTS
        if fresh and self.cfg.MODEL.get("VOTING") and self.cfg.MODEL.VOTING.TEMPLATE_INIT == "kmeans":
            self.init_templates_kmeans()

    @torch.no_grad()
    def init_templates_kmeans(self) -> None:
        """Run the local backbone on ``MODEL.VOTING.KMEANS_NUM_IMAGES`` training
        images (test-time mapper: no augmentation) and initialise every level's
        semantic templates from the features inside their ground-truth boxes."""
        model = self.model.module if hasattr(self.model, "module") else self.model
        cfg = self.cfg
        # keeps the boxes, prepares the images as at test time (no random augmentation)
        mapper = build_ultrasound_mapper(cfg, is_train=True, augment=False)
        loader = build_detection_test_loader(cfg, cfg.DATASETS.TRAIN[0], mapper=mapper)
        was_training = model.training
        model.eval()
        # the test loader yields lists of one image
        batches = [x for batch in itertools.islice(loader, cfg.MODEL.VOTING.KMEANS_NUM_IMAGES) for x in batch]
        images = model.preprocess_image(batches)
        features = model.backbone(images.tensor)
        gt_boxes = [Boxes(b["instances"].gt_boxes.tensor.to(model.device)) for b in batches]
        used = model.roi_heads.init_templates_kmeans(features, gt_boxes, seed=cfg.SEED if cfg.SEED >= 0 else 0)
        model.train(was_training)
        logger.info("semantic templates initialised by k-means on %d ground-truth crops of %d images", used, len(batches))
