"""detectron2's DefaultTrainer with the ultrasound mapper, the NT evaluators and
an Adam option (the paper trains with Adam). Nothing of the training loop is
rewritten: only the builder hooks are overridden."""
import itertools
import logging
import os

import torch
from detectron2.structures import Boxes
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..data import NT_EVALUATOR_TYPE, build_ultrasound_mapper
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
    nt = NTEvaluator(
        dataset_name,
        settings=test_settings(cfg, top_n=cfg.TEST.NT_EVAL.TOP_N),
        output_dir=output_dir,
        distributed=True,
        top_n=cfg.TEST.NT_EVAL.TOP_N,
        lroc_threshold=cfg.TEST.NT_EVAL.LROC_THRESHOLD,
        num_bootstrap=cfg.TEST.NT_EVAL.NUM_BOOTSTRAP,
    )
    return DatasetEvaluators([coco, nt])


class Trainer(DefaultTrainer):
    """DefaultTrainer with the ultrasound mapper, NT evaluators and Adam.

    ``cfg.SOLVER.OPTIMIZER`` selects ``"SGD"`` (detectron2's settings) or
    ``"ADAM"`` (the paper's), over the same parameter groups.
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_nt_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_ultrasound_mapper(cfg, is_train=True))

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
        """detectron2's resume/load, then the k-means initialisation of the
        semantic templates when ``MODEL.VOTING.TEMPLATE_INIT`` is ``"kmeans"``
        and training starts from scratch (no checkpoint, no MODEL.WEIGHTS)."""
        super().resume_or_load(resume=resume)
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
