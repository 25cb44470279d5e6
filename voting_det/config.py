"""Config keys added by voting_det.

``add_voting_config(cfg)`` adds voting_det's own nodes to a detectron2 config
(made by ``detectron2.config.get_cfg()``); it never changes an existing key's
default, so a config without voting_det keys behaves as detectron2 does.
:func:`validate_voting_config` checks a merged config when a model is built and
names the offending key.
"""
import os
from typing import Any, Dict

import yaml
from detectron2.config import CfgNode as CN

__all__ = [
    "EXPLAIN_RANKINGS",
    "EXPLAIN_REFERENCE_FILE",
    "PICKLE_SUFFIXES",
    "UnsafeWeightsError",
    "MODEL_ZOO_PREFIX",
    "VOTING_LEVELS",
    "add_voting_config",
    "load_config_dict",
    "merge_config_file",
    "refuse_untrusted_weights",
    "resolve_device",
    "setup_cfg",
    "validate_explain_config",
    "validate_voting_config",
]

# A `_BASE_` starting with this names one of detectron2's own built-in configs
# (resolved with detectron2.model_zoo.get_config_file), e.g.
# "model_zoo://COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml".
MODEL_ZOO_PREFIX = "model_zoo://"

# Feature maps the primitive module can run on, with their strides.
VOTING_LEVELS = {"res2": 4, "res3": 8, "res4": 16}
# MODEL.VOTING.TEST_SCORE: the last level's class probability, or the levels' mean.
TEST_SCORES = ("last", "mean")


def add_voting_config(cfg: CN) -> None:
    """Add voting_det's keys to ``cfg`` in place (idempotent)."""
    if "ULTRASOUND" in cfg.INPUT:
        return
    _add_input_config(cfg)
    # Optimiser of voting_det.engine.Trainer: "SGD" (detectron2's) or "ADAM" (the paper's).
    cfg.SOLVER.OPTIMIZER = "SGD"
    # The paper's own parameters (templates, temperature, fusion weight), by parameter
    # name: they get no weight decay and their learning rate times VOTING_LR_FACTOR.
    cfg.SOLVER.NO_DECAY_KEYS = ["semantic_templates", "spatial_template_logits", "log_temperature", "fusion_logit"]
    # Learning-rate factor of those parameters: they are logits and unit vectors that
    # must move by O(1), which Adam's ~lr-sized steps at 1e-4 take ~10^4 iterations to do.
    cfg.SOLVER.VOTING_LR_FACTOR = 1.0
    _add_voting_model_config(cfg)
    _add_context_config(cfg)
    _add_eval_config(cfg)
    _add_checkpoint_config(cfg)
    _add_explain_config(cfg)
    _add_measure_config(cfg)
    for key in RETIRED_KEYS:
        cfg.register_deprecated_key(key)


# Rankings of the primitives a trace keeps maps of (MODEL.EXPLAIN.RANK_BY): the
# contribution c_k (the most faithful in the deletion test, docs/interpretation.md),
# the trace-back score alpha_k (Eq. 3, the paper's), or the contrastive score (this
# image's vote share c_k / Phi(x^) minus its mean over the training images, which
# needs the reference file of MODEL.EXPLAIN.REFERENCE). Ties are broken by a
# second key (voting_det.modeling.voting_level.RANKING_KEYS), never by index.
EXPLAIN_RANKINGS = ("contribution", "alpha", "contrastive")
# File name of the contrastive reference written beside the weights
# (tools/explanation_specificity.py --write-reference) when MODEL.EXPLAIN.REFERENCE is "".
EXPLAIN_REFERENCE_FILE = "explain_reference.json"


def _add_measure_config(cfg: CN) -> None:
    m = cfg.MODEL.MEASURE = CN()
    # NT thickness of the detections (voting_det.measurement): "profile" (the
    # inner borders of the echogenic lines in the image inside the box),
    # "borders" (the model's voted borders; needs MODEL.VOTING.BORDER_AXES with
    # "y"), "box" (the box height), or "" (none).
    m.METHOD = "profile"
    # How many of each image's detections (best first) are measured; the rest get NaN.
    m.MAX_DETECTIONS = 1
    # Pixel spacing in mm per pixel of the input images (0 = unknown: no mm); an
    # input dict's "pixel_spacing" (e.g. from DICOM, tools/predict.py
    # --pixel-spacing) takes precedence.
    m.PIXEL_SPACING = 0.0
    # Thickness in mm at which a detection is flagged (the FMF's 99th centile).
    m.CUTOFF_MM = 3.5


def _add_explain_config(cfg: CN) -> None:
    # Trace mode of VotingRCNN (docs/interpretation.md), read by voting_det.interpretation.
    e = cfg.MODEL.EXPLAIN = CN()
    # Attach each detection's full trace (alpha_k, c_k, maps, context boxes, mu) as
    # trace_* fields; off by default, so normal inference computes nothing extra.
    e.ENABLED = False
    # Primitives per level whose maps (Rs_k, D_k, Phi_k, Rc_k) the trace keeps.
    e.TOP_PRIMITIVES = 5
    # Ranking of those primitives: "contribution" (c_k, the most faithful measured),
    # "alpha" (Eq. 3, the paper's) or "contrastive" (c_k's share minus its training mean).
    e.RANK_BY = "contribution"
    # The contrastive ranking's reference (mean vote shares over the training images,
    # voting_det.interpretation.specificity.write_reference); "" = EXPLAIN_REFERENCE_FILE
    # beside MODEL.WEIGHTS. Read by voting_det.interpretation.Explainer.
    e.REFERENCE = ""


def validate_explain_config(cfg: CN) -> None:
    """Check the MODEL.EXPLAIN keys; raise naming the bad key."""
    e = cfg.MODEL.EXPLAIN
    if e.TOP_PRIMITIVES < 1:
        _fail("MODEL.EXPLAIN.TOP_PRIMITIVES", f"must be >= 1, got {e.TOP_PRIMITIVES}")
    if e.RANK_BY not in EXPLAIN_RANKINGS:
        _fail("MODEL.EXPLAIN.RANK_BY", f"must be one of {EXPLAIN_RANKINGS}, got {e.RANK_BY!r}")
    m = cfg.MODEL.MEASURE
    if m.METHOD not in ("", "profile", "borders", "box"):
        _fail("MODEL.MEASURE.METHOD", f"must be 'profile', 'borders', 'box' or '' (none), got {m.METHOD!r}")
    if m.METHOD == "borders" and "y" not in cfg.MODEL.VOTING.BORDER_AXES:
        _fail("MODEL.MEASURE.METHOD", "'borders' needs border votes along y (MODEL.VOTING.BORDER_AXES ['y', ...])")
    if m.MAX_DETECTIONS < 0 or m.PIXEL_SPACING < 0:
        _fail("MODEL.MEASURE", f"MAX_DETECTIONS and PIXEL_SPACING must be >= 0, got {m.MAX_DETECTIONS}, {m.PIXEL_SPACING}")


# Keys of earlier versions that configs saved next to old runs still carry:
# merging them logs a warning and ignores them.
RETIRED_KEYS = ("MODEL.VOTING.TRUST_PICKLE",)  # now MODEL.CHECKPOINT.TRUST_PICKLE, the only one


# File name endings read with pickle (only with MODEL.CHECKPOINT.TRUST_PICKLE).
PICKLE_SUFFIXES = (".pkl", ".pickle")


class UnsafeWeightsError(ValueError):
    """A weights file that could run code when read."""


def refuse_untrusted_weights(path: str, trust_pickle: bool) -> None:
    """Raise :class:`UnsafeWeightsError` for a pickle file name unless
    ``trust_pickle``: checked before any byte of the file is read (by the
    model's ``from_config`` for ``MODEL.WEIGHTS``, so also for a plain
    detectron2 ``DefaultPredictor``, and by the checkpointer)."""
    if path and path.lower().endswith(PICKLE_SUFFIXES) and not trust_pickle:
        raise UnsafeWeightsError(
            f"{path}: a pickle file, which can run code when read; refused. Convert it to a .pth state dict, "
            "or set MODEL.CHECKPOINT.TRUST_PICKLE True if you trust where it comes from"
        )


def _add_checkpoint_config(cfg: CN) -> None:
    # voting_det.engine.checkpoint.SafeCheckpointer (training, tools/train_net.py, tools/predict.py).
    cfg.MODEL.CHECKPOINT = CN()
    # Read pickle weight files (.pkl), which can run code when read; .pth files are
    # always read with torch.load(weights_only=True).
    cfg.MODEL.CHECKPOINT.TRUST_PICKLE = False
    # Leave parameters whose shape differs from the file's at their initial values
    # instead of refusing the file (e.g. fine-tuning with another K).
    cfg.MODEL.CHECKPOINT.SKIP_MISMATCHED = False
    # Name prefixes of the model's tensors a weights file may lack (they keep their
    # initial values); any other gap refuses the file. Stage 2 of training starts from
    # stage 1's LCF weights: ["context_backbone.", "roi_heads.context_head.", "roi_heads.fusion_logit"].
    cfg.MODEL.CHECKPOINT.ALLOW_MISSING = []


def _add_eval_config(cfg: CN) -> None:
    # voting_det.evaluation.NTEvaluator (docs/method.md section 5), used for every config.
    cfg.TEST.NT_EVAL = CN()
    # Detections per image pooled in the paper-style AUC / SEN / SPE.
    cfg.TEST.NT_EVAL.TOP_N = 10
    # Top-1 score threshold of the LROC SEN / SPE (sets with negative images); the
    # benchmark tables choose it on the validation split instead.
    cfg.TEST.NT_EVAL.LROC_THRESHOLD = 0.5
    # Bootstrap resamples over images for the 95% intervals (0 disables them).
    cfg.TEST.NT_EVAL.NUM_BOOTSTRAP = 1000


def _add_input_config(cfg: CN) -> None:
    cfg.INPUT.ULTRASOUND = CN()
    # Probability of a horizontal flip in training (a fetus faces either way).
    cfg.INPUT.ULTRASOUND.HFLIP_PROB = 0.5
    # Range of the random brightness factor in training; (1.0, 1.0) disables it.
    cfg.INPUT.ULTRASOUND.BRIGHTNESS = (0.8, 1.2)
    # Range of the random contrast factor in training; (1.0, 1.0) disables it.
    cfg.INPUT.ULTRASOUND.CONTRAST = (0.8, 1.2)
    # Std of multiplicative unit-mean gamma speckle added in training; 0 disables it.
    cfg.INPUT.ULTRASOUND.SPECKLE_SIGMA = 0.0


def _add_voting_model_config(cfg: CN) -> None:
    # (Grey input: a one-value MODEL.PIXEL_MEAN / PIXEL_STD makes VotingRCNN average
    # the loaders' 3 replicated BGR channels into one; see configs/Base-NT.yaml.)
    v = cfg.MODEL.VOTING = CN()
    # Pretrained ResNet-18 for the local backbone: a local file (torchvision .pth or
    # detectron2 format); "" = from scratch. Needs MODEL.RESNETS.NORM "FrozenBN".
    # Read through MODEL.CHECKPOINT's rules (pickles only with TRUST_PICKLE).
    v.PRETRAINED_BACKBONE = ""
    # Which levels run, coarse to fine: ["res4"] = LS, ["res4", "res3"] = LCF.
    v.LEVELS = ["res4", "res3"]
    # K: number of visual primitives (semantic + spatial template pairs) per level.
    v.NUM_PRIMITIVES = 128
    # ROIAlign grid (M, N) = (H, W) per level, in the order of LEVELS.
    v.GRID_SIZES = [[6, 24], [8, 32]]
    # Spatial-template size (Hd, Wd) per level (odd); [] = full size (2M-1, 2N-1).
    v.SPATIAL_TEMPLATE_SIZES = []
    # Crop = input box enlarged about its centre by these factors (width, height).
    v.CROP_CONTEXT = (1.5, 3.0)
    # ROIAlign of the crops: detectron2 ROIPooler type and samples per bin.
    v.POOLER_TYPE = "ROIAlignV2"
    v.POOLER_SAMPLING_RATIO = 0
    # Initial log temperature t of the soft-argmax (T = exp(t)) and its clamp range.
    v.LOG_TEMPERATURE_INIT = 0.0
    v.LOG_TEMPERATURE_RANGE = (-3.0, 3.0)
    # Learn t; False keeps T fixed at exp(LOG_TEMPERATURE_INIT).
    v.LEARN_TEMPERATURE = True
    # Hidden sizes of FC_L (score and size from mean_k(Rs_k) * crop); [] = linear.
    v.FC_DIMS = [256]
    # Initialise the semantic templates: "random" (unit vectors) or "kmeans"
    # (spherical k-means of training-positive ROI features before training).
    v.TEMPLATE_INIT = "random"
    # Images read for k-means initialisation.
    v.KMEANS_NUM_IMAGES = 32
    # Loss weights: score cross-entropy, centre offset, log-size change, heatmap.
    v.LOSS_WEIGHT_CLS = 1.0
    v.LOSS_WEIGHT_CENTRE = 1.0
    v.LOSS_WEIGHT_SIZE = 1.0
    v.LOSS_WEIGHT_HEATMAP = 1.0
    # Border votes (docs/method.md section 2b): axes along which the primitives
    # also vote for the structure's two borders, "y" (upper and lower) and / or
    # "x" (the two ends); the box's size along them is the distance between the
    # voted borders instead of FC_L's regression. [] = the paper (FC_L's size).
    v.BORDER_AXES = []
    # Weight of the border heatmap loss (each border's soft-argmax probabilities
    # against a Gaussian of HEATMAP_SIGMA at the true border).
    v.LOSS_WEIGHT_BORDER = 1.0
    # Weight of a generalized-IoU loss on each level's box against the true box
    # (a scale-free box term beside the centre, size and border terms);
    # 0 = off, the paper's losses only. Tuning trial 8.
    v.LOSS_WEIGHT_BOX_GIOU = 0.0
    # Weight of an IoU-prediction branch (IoU-aware scoring, as IoU-aware
    # RetinaNet and VarifocalNet): > 0 gives every level a linear layer on FC_L's
    # features that predicts the IoU of the level's own box with the true box
    # (binary cross-entropy against that IoU, foreground only), and at inference
    # each class score becomes sqrt(score x the last level's predicted IoU), so
    # that of two boxes on the same NT the better-fitting one ranks first.
    # 0 = off, no branch (the paper's score). Tuning trial 13.
    v.LOSS_WEIGHT_IOU = 0.0
    # At inference, read each voted border as the soft-argmax over the cells
    # within this many cells of its most probable cell (the whole-axis
    # soft-argmax is pulled toward the crop's middle, which shortens boxes).
    # 0 = the whole-axis soft-argmax, as in training. Inference only.
    v.BORDER_READOUT_WINDOW = 0
    # The local score of a detection at inference: "last", the last level's
    # class probability (the paper's s_L); "mean", the mean over the levels of
    # their class probabilities, as detectron2's Cascade R-CNN scores its
    # stages (each level judged its own input box). Fused with the context
    # score by Eq. 1 either way; boxes unchanged. Inference only.
    v.TEST_SCORE = "last"
    # Smooth-L1 beta of the centre and size losses.
    v.SMOOTH_L1_BETA = 0.1
    # Sigma (x, y) in cells of the heatmap target Gaussian at the true centre.
    v.HEATMAP_SIGMA = (1.0, 1.0)
    # IoU threshold at which a coarse box x_p' counts as foreground when the fine
    # level re-matches its labels (cascade style); the first level uses
    # MODEL.ROI_HEADS.IOU_THRESHOLDS through detectron2's sampling.
    v.REMATCH_IOU = 0.5
    # One such threshold per later level (len(LEVELS) - 1 values), rising
    # like Cascade R-CNN's stages (detectron2's ROI_BOX_CASCADE_HEAD.IOUS
    # 0.5, 0.6, 0.7), so that the last level's classifier, which gives the
    # score, prefers the better-fitting of two boxes on the same NT.
    # [] = REMATCH_IOU at every later level. Tuning trial 12.
    v.REMATCH_IOU_PER_LEVEL = []
    # Trace-back (Eq. 3): Rc threshold tau (0 = the paper) and unit-mass normalisation.
    v.TRACE_TAU = 0.0
    v.TRACE_NORMALIZE = False
    # Attach intermediate boxes (proposal, coarse, fine, local, global, context) to
    # each output instance.
    v.RETURN_INTERMEDIATE = False
    # Run the ResNet stems (7x7 convolution, norm, 3x3 max-pool) of both
    # backbones in channels-last memory format, the rest as usual. Same numbers
    # up to float rounding; on CPU the stem's max-pool is ~10x faster that way
    # and the stem went from ~45% to ~12% of a backbone's time (docs/speed.md).
    v.CHANNELS_LAST_STEM = True


def _add_context_config(cfg: CN) -> None:
    c = cfg.MODEL.CONTEXT = CN()
    # Run the context branch and the fusion (Proposed); False = local branch only.
    c.ENABLED = True
    # Registered name of the context head (voting_det.modeling.CONTEXT_HEAD_REGISTRY).
    c.NAME = "ContextHead"
    # Feature map of the context backbone (a second ResNet, its own weights) the head reads.
    c.IN_FEATURE = "res4"
    # Pretrained ResNet-18 for the context backbone (as MODEL.VOTING.PRETRAINED_BACKBONE).
    c.PRETRAINED_BACKBONE = ""
    # Initialisation of the context backbone when the weights loaded into the
    # model have none (a stage-1 LCF model, MODEL.WEIGHTS of stage 2): False =
    # it keeps its own random (or PRETRAINED_BACKBONE) initialisation, as the
    # paper's separate context network; True = it starts as a copy of the loaded
    # local backbone and trains on as its own weights (tuning trial 3,
    # benchmarks/results/tuning/README.md). A checkpoint that has context
    # weights (resume, a finished Proposed) always loads them.
    c.INIT_FROM_LOCAL = False
    # O: number of context boxes; a built-in layout exists for 2, 4 and 6.
    c.NUM_BOXES = 4
    # Custom layout: O rows (dx, dy, w, h) in fractions of the image around the
    # proposal centre; [] = the built-in layout for NUM_BOXES.
    c.LAYOUT = []
    # ROIAlign size of the union box for FC_G1, and of each deformed context box for FC_G2.
    c.UNION_POOLER_RESOLUTION = (7, 7)
    c.BOX_POOLER_RESOLUTION = (4, 4)
    # Samples per bin and axis of the union box's ROIAlign (detectron2's
    # sampling_ratio). 2, as the context boxes' sampler: the union spans most of
    # the image, and adaptive sampling (0) would take ~45 samples per bin there,
    # making this one ROIAlign ~6x slower (a fifth of Proposed's CPU inference).
    c.UNION_POOLER_SAMPLING_RATIO = 2
    # Deformable gain gamma: offsets are in units of the box size times gamma.
    c.DEFORM_GAMMA = 0.1
    # Hidden sizes of FC_G1 (offsets) and FC_G2 (score and box).
    c.FC_G1_DIMS = [256]
    c.FC_G2_DIMS = [256]
    # Loss weights of the context branch: cross-entropy and box regression.
    c.LOSS_WEIGHT_CLS = 1.0
    c.LOSS_WEIGHT_BOX = 1.0
    # Fusion (Eq. 1): initial logit m of mu = sigmoid(m) (0 -> mu = 0.5).
    c.FUSION_INIT = 0.0
    # Diagnostic: a fixed mu at inference instead of the learned one (-1 = the
    # learned mu). 1.0 evaluates the local branch alone, 0.0 the context branch
    # alone, with the same weights (docs: "Why Proposed trails", README).
    c.TEST_MU = -1.0
    # Stage-2 loss weights: fused loss, local branch, context branch.
    c.LOSS_WEIGHT_FUSED = 1.0
    c.LOSS_WEIGHT_LOCAL = 1.0
    c.LOSS_WEIGHT_GLOBAL = 1.0
    # True: the context head reads the local backbone's IN_FEATURE map (one
    # backbone, no second ResNet); False: the paper's separate context network.
    c.SHARE_BACKBONE = False
    # Eq. 1 fuses the boxes too (the paper); False: the box is the local
    # branch's and the context branch only enters the score.
    c.FUSE_BOXES = True


def _fail(key: str, message: str) -> None:
    raise ValueError(f"config key {key}: {message}")


def validate_voting_config(cfg: CN) -> None:
    """Check voting_det's keys of a merged config; raise naming the bad key."""
    v, c = cfg.MODEL.VOTING, cfg.MODEL.CONTEXT
    if cfg.TEST.NT_EVAL.TOP_N < 1:
        _fail("TEST.NT_EVAL.TOP_N", f"must be >= 1, got {cfg.TEST.NT_EVAL.TOP_N}")
    if cfg.TEST.NT_EVAL.NUM_BOOTSTRAP < 0:
        _fail("TEST.NT_EVAL.NUM_BOOTSTRAP", f"must be >= 0, got {cfg.TEST.NT_EVAL.NUM_BOOTSTRAP}")
    if v.NUM_PRIMITIVES < 1:
        _fail("MODEL.VOTING.NUM_PRIMITIVES", f"K must be >= 1, got {v.NUM_PRIMITIVES}")
    if not v.LEVELS:
        _fail("MODEL.VOTING.LEVELS", "needs at least one level, e.g. ['res4'] (LS) or ['res4', 'res3'] (LCF)")
    for level in v.LEVELS:
        if level not in VOTING_LEVELS:
            _fail("MODEL.VOTING.LEVELS", f"unknown level {level!r}; known: {sorted(VOTING_LEVELS)}")
    if len(set(v.LEVELS)) != len(v.LEVELS):
        _fail("MODEL.VOTING.LEVELS", f"a level is repeated: {list(v.LEVELS)}")
    if len(v.GRID_SIZES) < len(v.LEVELS):
        _fail("MODEL.VOTING.GRID_SIZES", f"needs one (M, N) per level of {list(v.LEVELS)}, got {list(v.GRID_SIZES)}")
    for size in v.GRID_SIZES:
        if len(size) != 2 or min(size) < 1:
            _fail("MODEL.VOTING.GRID_SIZES", f"each entry must be (M, N) >= 1, got {list(size)}")
    if v.SPATIAL_TEMPLATE_SIZES and len(v.SPATIAL_TEMPLATE_SIZES) < len(v.LEVELS):
        _fail("MODEL.VOTING.SPATIAL_TEMPLATE_SIZES", "needs one (Hd, Wd) per level, or [] for full size")
    for size in v.SPATIAL_TEMPLATE_SIZES:
        if len(size) != 2 or any(s < 1 or s % 2 == 0 for s in size):
            _fail("MODEL.VOTING.SPATIAL_TEMPLATE_SIZES", f"each entry must be two odd sizes, got {list(size)}")
    if len(v.CROP_CONTEXT) != 2 or min(v.CROP_CONTEXT) < 1.0:
        _fail("MODEL.VOTING.CROP_CONTEXT", f"must be (width, height) factors >= 1, got {v.CROP_CONTEXT}")
    lo, hi = v.LOG_TEMPERATURE_RANGE
    if not lo <= v.LOG_TEMPERATURE_INIT <= hi:
        _fail("MODEL.VOTING.LOG_TEMPERATURE_INIT", f"{v.LOG_TEMPERATURE_INIT} outside LOG_TEMPERATURE_RANGE {lo, hi}")
    if v.TEMPLATE_INIT not in ("random", "kmeans"):
        _fail("MODEL.VOTING.TEMPLATE_INIT", f"must be 'random' or 'kmeans', got {v.TEMPLATE_INIT!r}")
    if min(v.HEATMAP_SIGMA) <= 0:
        _fail("MODEL.VOTING.HEATMAP_SIGMA", f"must be positive, got {v.HEATMAP_SIGMA}")
    if not 0.0 <= v.TRACE_TAU < 1.0:
        _fail("MODEL.VOTING.TRACE_TAU", f"must be in [0, 1), got {v.TRACE_TAU}")
    if v.POOLER_TYPE not in ("ROIAlign", "ROIAlignV2"):
        _fail("MODEL.VOTING.POOLER_TYPE", f"must be ROIAlign or ROIAlignV2, got {v.POOLER_TYPE!r}")
    if len(set(v.BORDER_AXES)) != len(v.BORDER_AXES) or any(a not in ("x", "y") for a in v.BORDER_AXES):
        _fail("MODEL.VOTING.BORDER_AXES", f"must be distinct axes of 'x', 'y' ([] = no border votes), got {list(v.BORDER_AXES)}")
    if v.TEST_SCORE not in TEST_SCORES:
        _fail("MODEL.VOTING.TEST_SCORE", f"must be one of {', '.join(map(repr, TEST_SCORES))}, got {v.TEST_SCORE!r}")
    if not isinstance(v.BORDER_READOUT_WINDOW, int) or v.BORDER_READOUT_WINDOW < 0:
        _fail("MODEL.VOTING.BORDER_READOUT_WINDOW", f"must be a whole number of cells >= 0 (0 = the soft-argmax), got {v.BORDER_READOUT_WINDOW!r}")
    for key, values in (("REMATCH_IOU", [v.REMATCH_IOU]), ("REMATCH_IOU_PER_LEVEL", list(v.REMATCH_IOU_PER_LEVEL))):
        if any(not 0.0 < float(x) < 1.0 for x in values):
            _fail(f"MODEL.VOTING.{key}", f"IoU thresholds must be in (0, 1), got {values}")
    if v.REMATCH_IOU_PER_LEVEL and len(v.REMATCH_IOU_PER_LEVEL) != len(v.LEVELS) - 1:
        _fail(
            "MODEL.VOTING.REMATCH_IOU_PER_LEVEL",
            f"needs one IoU per level after the first ({len(v.LEVELS) - 1} for {list(v.LEVELS)}), "
            f"got {list(v.REMATCH_IOU_PER_LEVEL)}; [] uses REMATCH_IOU for each",
        )
    for key in ("LOSS_WEIGHT_BORDER", "LOSS_WEIGHT_BOX_GIOU", "LOSS_WEIGHT_IOU"):
        if v.get(key) < 0:
            _fail(f"MODEL.VOTING.{key}", f"must be >= 0 (0 = off), got {v.get(key)}")
    out_features = set(cfg.MODEL.RESNETS.OUT_FEATURES)
    missing = [lvl for lvl in v.LEVELS if lvl not in out_features]
    if missing:
        _fail("MODEL.RESNETS.OUT_FEATURES", f"must contain the voting levels {missing} (MODEL.VOTING.LEVELS)")
    if list(cfg.MODEL.RPN.IN_FEATURES) != [v.LEVELS[0]] and cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RPN":
        _fail("MODEL.RPN.IN_FEATURES", f"the RPN runs on the coarse level {v.LEVELS[0]!r}, got {cfg.MODEL.RPN.IN_FEATURES}")
    if c.ENABLED:
        if c.LAYOUT:
            if len(c.LAYOUT) != c.NUM_BOXES or any(len(row) != 4 for row in c.LAYOUT):
                _fail("MODEL.CONTEXT.LAYOUT", f"needs NUM_BOXES={c.NUM_BOXES} rows of (dx, dy, w, h)")
        elif c.NUM_BOXES not in (2, 4, 6):
            _fail("MODEL.CONTEXT.NUM_BOXES", f"O={c.NUM_BOXES} has no built-in layout (2, 4, 6); give MODEL.CONTEXT.LAYOUT")
        if c.IN_FEATURE not in VOTING_LEVELS:
            _fail("MODEL.CONTEXT.IN_FEATURE", f"must be one of {sorted(VOTING_LEVELS)} (a truncated ResNet), got {c.IN_FEATURE!r}")
        if c.TEST_MU != -1.0 and not 0.0 <= c.TEST_MU <= 1.0:
            _fail("MODEL.CONTEXT.TEST_MU", f"must be -1 (the learned mu) or in [0, 1], got {c.TEST_MU}")
        if c.UNION_POOLER_SAMPLING_RATIO < 0:
            _fail("MODEL.CONTEXT.UNION_POOLER_SAMPLING_RATIO", f"must be >= 0 (0 = adaptive), got {c.UNION_POOLER_SAMPLING_RATIO}")
        if c.DEFORM_GAMMA < 0:
            _fail("MODEL.CONTEXT.DEFORM_GAMMA", f"must be >= 0, got {c.DEFORM_GAMMA}")
        if c.SHARE_BACKBONE and c.IN_FEATURE not in out_features:
            _fail("MODEL.CONTEXT.IN_FEATURE", f"with SHARE_BACKBONE the local backbone must output it "
                  f"(MODEL.RESNETS.OUT_FEATURES {sorted(out_features)}), got {c.IN_FEATURE!r}")
        if c.SHARE_BACKBONE and (c.INIT_FROM_LOCAL or c.PRETRAINED_BACKBONE):
            _fail("MODEL.CONTEXT.SHARE_BACKBONE", "there is no context backbone to initialise: unset "
                  "MODEL.CONTEXT.INIT_FROM_LOCAL and MODEL.CONTEXT.PRETRAINED_BACKBONE")
        if c.INIT_FROM_LOCAL and c.PRETRAINED_BACKBONE:
            _fail("MODEL.CONTEXT.INIT_FROM_LOCAL", "and MODEL.CONTEXT.PRETRAINED_BACKBONE both initialise the context "
                  "backbone; set one of them")


def _merge_dicts(src: Dict[str, Any], dst: Dict[str, Any]) -> None:
    """Merge ``src`` into ``dst`` in place, recursively (``src`` wins)."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge_dicts(value, dst[key])
        else:
            dst[key] = value


def load_config_dict(path: str) -> Dict[str, Any]:
    """Read a YAML config with its ``_BASE_`` chain into one dict.

    Like detectron2's ``merge_from_file``, with one addition: a base (or each
    entry of a list of bases, merged in order) that starts with
    :data:`MODEL_ZOO_PREFIX` is one of detectron2's built-in configs, so the
    baselines inherit detectron2's own Faster R-CNN and FPN settings instead of
    copying them.
    """
    from detectron2 import model_zoo

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found")
    with open(path) as f:
        loaded = yaml.safe_load(f) or {}
    bases = loaded.pop("_BASE_", [])
    merged: Dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        if base.startswith(MODEL_ZOO_PREFIX):
            base_dict = CN.load_yaml_with_base(model_zoo.get_config_file(base[len(MODEL_ZOO_PREFIX):]), allow_unsafe=True)
        else:
            base_dict = load_config_dict(os.path.join(os.path.dirname(path), os.path.expanduser(base)))
        _merge_dicts(base_dict, merged)
    _merge_dicts(loaded, merged)
    return merged


def merge_config_file(cfg: CN, path: str) -> None:
    """``cfg.merge_from_file(path)`` that also resolves ``model_zoo://`` bases
    (:func:`load_config_dict`); an unknown key raises naming it, as detectron2 does."""
    cfg.merge_from_other_cfg(CN(load_config_dict(path)))


def resolve_device(cfg: CN) -> None:
    """Run on the CPU when ``MODEL.DEVICE`` asks for CUDA and there is none
    (detectron2's default is "cuda"); a warning says so. Call before freezing."""
    import logging

    import torch

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).info("MODEL.DEVICE=%s but no CUDA device is available: using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"


def setup_cfg(config_file: str, opts=(), *, freeze: bool = True) -> CN:
    """The one config builder: detectron2's defaults, voting_det's keys, the
    file (``model_zoo://`` bases resolved), the ``KEY VALUE`` overrides, the
    device (:func:`resolve_device`), validated when the model is a VotingRCNN,
    frozen unless ``freeze`` is False."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_voting_config(cfg)
    merge_config_file(cfg, config_file)
    try:
        cfg.merge_from_list(list(opts))
    except (AssertionError, KeyError) as e:  # yacs: "Non-existent key: ..."
        raise ValueError(f"command-line override: {e}; check its spelling (docs/configs.md)") from None
    resolve_device(cfg)
    if cfg.MODEL.META_ARCHITECTURE == "VotingRCNN":  # detectron2's own models validate themselves
        validate_voting_config(cfg)
    if freeze:
        cfg.freeze()
    return cfg
