"""TorchScript and ONNX export of voting_det's detectors (issue 23; docs/export.md).

The models (LS, LCF, Proposed and the border-voting variants, all
:class:`~voting_det.modeling.VotingRCNN`) go through detectron2's deployment
path: :class:`detectron2.export.TracingAdapter` flattens the model's call on
one image into a function of one tensor, which ``torch.jit.trace`` records
(TorchScript) and ``torch.onnx.export`` (the TorchScript-based exporter,
``dynamo=False``, opset :data:`ONNX_OPSET`) writes as ONNX.

The exported graph is the network from the resized image to the detections,
as detectron2's own deployment exports it (``do_postprocess=False``):

- input ``image``: ``(3, H, W)`` float32, the image in ``INPUT.FORMAT``
  channel order (BGR), 0-255, already resized to the test size
  (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, as ``DefaultPredictor`` does);
  H and W stay dynamic (they are graph inputs, not constants);
- outputs, in this order (:func:`output_names`): ``boxes`` ``(N, 4)`` float32
  XYXY in the input's pixels, ``scores`` ``(N,)`` float32, ``classes``
  ``(N,)`` int64 and, for models with border votes, ``borders`` ``(N, 4)``
  float32 (x_left, y_top, x_right, y_bottom; NaN on an axis that does not vote).

Not in the graph: the resize before it and the rescale to the original image
after it (:class:`ExportedModel` does both, as ``DefaultPredictor`` and
detectron2's ``detector_postprocess`` do); the NT measurement
(``pred_calipers``, ``pred_nt_thickness_px``: the "profile" method is numpy /
scipy code with data-dependent loops, see docs/export.md); the trace mode
(``MODEL.EXPLAIN``).
"""
import contextlib
import json
import math
import os
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "BORDERS_OUTPUT",
    "BOX_TOLERANCE_PX",
    "DETECTION_OUTPUTS",
    "ExportedModel",
    "FILE_NAMES",
    "FORMATS",
    "INPUT_NAME",
    "METADATA_FILE",
    "ONNX_OPSET",
    "SCORE_TOLERANCE",
    "check_exportable",
    "compare_detections",
    "export_metadata",
    "detections",
    "export_model",
    "output_names",
    "postprocess",
    "preprocess",
    "record_check",
    "synthetic_sample_image",
    "tracing_adapter",
    "within_tolerance",
]

FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}
# What the export wrote and how to feed the exported files (read by ExportedModel).
METADATA_FILE = "export.json"
INPUT_NAME = "image"
DETECTION_OUTPUTS = ("boxes", "scores", "classes")
BORDERS_OUTPUT = "borders"
# Instance fields of the outputs (as the eager model names them).
INSTANCE_FIELDS = {"boxes": "pred_boxes", "scores": "scores", "classes": "pred_classes", BORDERS_OUTPUT: "pred_borders"}
# ONNX opset: torchvision exports ROIAlign(aligned=True) as RoiAlign from opset 16 on
# (coordinate_transformation_mode half_pixel); GridSample (the context head's sampler) needs 16.
ONNX_OPSET = 17
# What the exported model may differ from the eager one by (on the original image):
# box coordinates in pixels, scores (probabilities). Measured: TorchScript identical; ONNX Runtime
# within 0.0044 px and 4e-5 (docs/export.md, "Tolerance").
BOX_TOLERANCE_PX = 0.01
SCORE_TOLERANCE = 1e-4
# voting_det modules whose len() of Instances must stay a traced value (as detectron2's
# own heads under TracingAdapter): the proposal count per image is data-dependent.
TRACED_LEN_MODULES = ("voting_det.modeling.roi_heads", "voting_det.modeling.context_head")
# torch 2.x's notice on every torch.jit call (trace, save, load): TorchScript is what is asked for here.
JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"
# Sample image when none is given: this synthetic set's first image with an NT.
SYNTHETIC_SEED = 0
SYNTHETIC_SIZE = (576, 768)


# ------------------------------------------------------------------ what can be exported

def check_exportable(cfg) -> None:
    """Refuse a config whose model cannot be exported; the ValueError names
    the config key and what to do."""
    if cfg.MODEL.META_ARCHITECTURE != "VotingRCNN":
        raise ValueError(
            f"config key MODEL.META_ARCHITECTURE: {cfg.MODEL.META_ARCHITECTURE!r} is not voting_det's VotingRCNN; "
            "this tool exports LS, LCF and Proposed (configs/nt_ls.yaml, nt_lcf.yaml, nt_voting.yaml, ...); for "
            "detectron2's own detectors use detectron2's tools/deploy/export_model.py"
        )
    if cfg.MODEL.EXPLAIN.ENABLED:
        raise ValueError("config key MODEL.EXPLAIN.ENABLED: the trace mode (explanations) is not exported; "
                         "set MODEL.EXPLAIN.ENABLED False (explain with tools/explain.py on the eager model)")
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        raise ValueError("config key MODEL.RESNETS.DEFORM_ON_PER_STAGE: deformable convolutions (detectron2's "
                         "compiled extension) cannot be exported; use a model without them")
    if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
        raise ValueError(f"config key INPUT.FORMAT: {cfg.INPUT.FORMAT!r}; the exported model's input is a "
                         "3-channel image, give BGR or RGB")


def output_names(model: nn.Module) -> Tuple[str, ...]:
    """The exported graph's outputs, in order: boxes, scores, classes, and
    borders when the last voting level votes for borders."""
    last = model.roi_heads.levels[-1]
    return DETECTION_OUTPUTS + ((BORDERS_OUTPUT,) if last.borders is not None else ())


# ------------------------------------------------------------------ the traced function

@contextlib.contextmanager
def _measurement_off(model: nn.Module) -> Iterator[None]:
    """The model without its NT measurement (numpy / scipy, not traceable)."""
    measure = getattr(model, "measure", None)
    if measure is None:
        yield
        return
    model.measure = dict(measure, method="")
    try:
        yield
    finally:
        model.measure = measure


def _inference(model: nn.Module, inputs: List[Dict[str, Tensor]]) -> Tuple[Tensor, ...]:
    """TracingAdapter's ``inference_func``: the detections of one image in the
    network input's coordinates, as a tuple in :func:`output_names` order."""
    from detectron2.export.torchscript_patch import patch_builtin_len

    with patch_builtin_len(TRACED_LEN_MODULES), _measurement_off(model):
        instances = model.inference(inputs, do_postprocess=False)[0]
    fields = {name: instances.get(field) for name, field in INSTANCE_FIELDS.items() if instances.has(field)}
    fields["boxes"] = fields["boxes"].tensor
    return tuple(fields[name] for name in output_names(model))


def detections(model: nn.Module, image: Tensor) -> Tuple[Tensor, ...]:
    """The eager model's computation that the export records, on a resized
    ``(3, H, W)`` float32 image (no gradient)."""
    with torch.no_grad():
        return _inference(model, [{"image": image}])


def tracing_adapter(model: nn.Module, image: Tensor):
    """detectron2's :class:`~detectron2.export.TracingAdapter` of ``model`` on
    one resized image, in eval mode (torch.onnx.export restores the adapter's
    mode on the model when it is done)."""
    from detectron2.export import TracingAdapter

    return TracingAdapter(model, [{"image": image}], _inference).eval()


# ------------------------------------------------------------------ before and after the graph

def preprocess(original_image: np.ndarray, min_size: int, max_size: int, input_format: str = "BGR") -> Tensor:
    """What ``DefaultPredictor`` does before the model: ``original_image``
    ``(H, W, 3)`` uint8 BGR, channels flipped for an RGB model, resized by
    ``ResizeShortestEdge(min_size, max_size)``; returns ``(3, h, w)`` float32."""
    import detectron2.data.transforms as T

    from .engine.predictor import model_input

    return model_input(original_image, T.ResizeShortestEdge([min_size, min_size], max_size), input_format)


def postprocess(outputs: Sequence[Tensor], names: Sequence[str], input_size: Tuple[int, int], height: int,
                width: int):
    """The exported outputs as the eager model's Instances on the original
    ``height`` x ``width`` image: ``pred_borders`` scaled as VotingRCNN scales
    it, then detectron2's ``detector_postprocess`` (scale, clip, drop empty
    boxes), as ``GeneralizedRCNN._postprocess`` does."""
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.structures import Boxes, Instances

    from .modeling.meta_arch import rescale_box_fields

    fields = {name: value.clone() for name, value in zip(names, outputs)}  # detectron2 scales the boxes in place
    instances = Instances(tuple(input_size))
    instances.pred_boxes = Boxes(fields["boxes"])
    instances.scores = fields["scores"]
    instances.pred_classes = fields["classes"]
    if BORDERS_OUTPUT in fields:
        instances.pred_borders = fields[BORDERS_OUTPUT]
        rescale_box_fields(instances, height, width, ["pred_borders"])
    return detector_postprocess(instances, height, width)


def synthetic_sample_image(seed: int = SYNTHETIC_SEED, size: Tuple[int, int] = SYNTHETIC_SIZE) -> np.ndarray:
    """A synthetic NT image (voting_det.data.synthetic), ``(H, W, 3)`` uint8
    BGR: the first image of set ``seed`` that shows an NT."""
    from voting_det.data.synthetic.render import render_synthetic_nt

    for index in range(100):
        grey, annotation = render_synthetic_nt(seed, index, size=size)
        if any(row[0] == "NT" for row in annotation["boxes"]):
            return np.repeat(grey[:, :, None], 3, axis=2)
    raise RuntimeError(f"synthetic set {seed} has no NT image among its first 100")  # pragma: no cover


# ------------------------------------------------------------------ export

@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Without the tracer's warnings about Python values (data-dependent
    branches taken once at trace time, e.g. detectron2's finite-box checks)
    and torch.onnx's notes: the export is checked numerically instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION, category=FutureWarning)
        # dynamo=False on purpose: the TorchScript-based exporter of detectron2's deployment path
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        yield


def export_model(model: nn.Module, image: Tensor, output_dir: str, formats: Sequence[str] = FORMATS,
                 metadata: Optional[Dict] = None) -> Dict[str, str]:
    """Trace ``model`` (a VotingRCNN in eval mode) on the resized ``image``
    ``(3, H, W)`` and write ``model.ts`` / ``model.onnx`` (as ``formats`` ask)
    and ``export.json`` (the input and output names, the preprocessing keys
    in ``metadata``) into ``output_dir``, replacing them. Returns
    format -> path (``"metadata"`` -> the JSON file)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"export formats must be some of {FORMATS}, got {list(formats)}")
    names = output_names(model)
    model.eval()
    detections(model, image)  # builds the cached vote operators: traced as constants, as the eager model reads them
    adapter = tracing_adapter(model, image)
    written = {}
    with _quiet_tracing():
        if "torchscript" in formats:
            path = os.path.join(output_dir, FILE_NAMES["torchscript"])
            traced = torch.jit.trace(adapter, (image,), check_trace=False)
            torch.jit.save(traced, path)
            written["torchscript"] = path
        if "onnx" in formats:
            path = os.path.join(output_dir, FILE_NAMES["onnx"])
            dynamic = {INPUT_NAME: {1: "height", 2: "width"}, **{n: {0: "detections"} for n in names}}
            torch.onnx.export(adapter, (image,), path, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=[INPUT_NAME], output_names=list(names), dynamic_axes=dynamic)
            written["onnx"] = path
    meta = {
        "input": {"name": INPUT_NAME, "shape": "3 x H x W", "dtype": "float32",
                  "traced_size": [int(image.shape[1]), int(image.shape[2])]},
        "outputs": list(names),
        "files": {fmt: os.path.basename(p) for fmt, p in written.items()},
        "onnx_opset": ONNX_OPSET if "onnx" in written else None,
        "torch": torch.__version__,
        **(metadata or {}),
    }
    path = os.path.join(output_dir, METADATA_FILE)
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)
    written["metadata"] = path
    return written


def export_metadata(cfg) -> Dict:
    """What :class:`ExportedModel` needs of the config to feed the graph."""
    return {"min_size_test": int(cfg.INPUT.MIN_SIZE_TEST), "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
            "input_format": cfg.INPUT.FORMAT}


# ------------------------------------------------------------------ running an exported file

class ExportedModel:
    """An exported file with the steps around its graph, called like
    ``DefaultPredictor``: ``model(original_image)`` -> ``{"instances":
    Instances}`` on the original image (``pred_boxes``, ``scores``,
    ``pred_classes`` and, with border votes, ``pred_borders``)."""

    def __init__(self, run, names: Sequence[str], min_size: int, max_size: int, input_format: str = "BGR",
                 fmt: str = ""):
        self._run = run
        self.names = tuple(names)
        self.min_size, self.max_size, self.input_format = min_size, max_size, input_format
        self.format = fmt

    @classmethod
    def load(cls, folder: str, fmt: str, threads: Optional[int] = None) -> "ExportedModel":
        """Load ``folder``'s ``model.ts`` (``torch.jit.load``) or ``model.onnx``
        (an ONNX Runtime CPU session, ``threads`` intra-op threads; default
        ONNX Runtime's) with its ``export.json``."""
        with open(os.path.join(folder, METADATA_FILE)) as f:
            meta = json.load(f)
        path = os.path.join(folder, FILE_NAMES[fmt])
        if fmt == "torchscript":
            import torchvision  # noqa: F401  (registers torchvision::roi_align and ::nms, which the graph calls)

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=JIT_DEPRECATION, category=FutureWarning)
                module = torch.jit.load(path, map_location="cpu").eval()

            def run(image: Tensor) -> Tuple[Tensor, ...]:
                with torch.no_grad():
                    return tuple(module(image))
        elif fmt == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

            def run(image: Tensor) -> Tuple[Tensor, ...]:
                return tuple(torch.from_numpy(v) for v in session.run(None, {INPUT_NAME: image.numpy()}))
        else:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        return cls(run, meta["outputs"], meta["min_size_test"], meta["max_size_test"], meta["input_format"], fmt)

    def raw(self, image: Tensor) -> Tuple[Tensor, ...]:
        """The graph's outputs on a resized ``(3, H, W)`` float32 image."""
        return self._run(image)

    def __call__(self, original_image: np.ndarray) -> Dict:
        height, width = original_image.shape[:2]
        image = preprocess(original_image, self.min_size, self.max_size, self.input_format)
        outputs = self.raw(image)
        return {"instances": postprocess(outputs, self.names, tuple(image.shape[1:]), height, width)}


# ------------------------------------------------------------------ checking against the eager model

def _max_abs(a: Tensor, b: Tensor) -> float:
    """Largest |a - b|; NaN against NaN counts as equal, NaN against a number as infinite."""
    if a.numel() == 0:
        return 0.0
    a, b = a.double(), b.double()
    both = a.isnan() & b.isnan()
    diff = torch.where(both, torch.zeros_like(a), (a - b).abs())
    return float(diff.nan_to_num(float("inf")).max())


def compare_detections(eager, exported, box_px: float = BOX_TOLERANCE_PX,
                       score: float = SCORE_TOLERANCE) -> Dict[str, object]:
    """How far ``exported``'s detections (Instances) are from ``eager``'s.

    Detections of the same class are paired nearest boxes first (greedy over
    all pairs, so that two near-equal scores ranked the other way round still
    pair, and one replaced detection takes no other's partner). Returns the counts; over all
    pairs the largest box-coordinate difference in pixels (``max_box_px``),
    score difference (``max_score``) and, with border votes, border
    difference (``max_border_px``), infinite when a detection has no partner;
    ``matched``, the pairs within ``box_px`` / ``score`` (borders as boxes);
    and ``unmatched``, the others: ``rank`` (eager, from 0), eager ``score``,
    ``box_px`` and ``score_diff`` of the pair (infinite: no partner)."""
    inf = float("inf")
    borders = eager.has("pred_borders")
    out = {"eager_detections": len(eager), "exported_detections": len(exported), "max_box_px": 0.0,
           "max_score": 0.0, **({"max_border_px": 0.0} if borders else {}), "matched": 0, "unmatched": []}
    box_e, box_x = eager.pred_boxes.tensor.double(), exported.pred_boxes.tensor.double()
    cost = (box_e[:, None, :] - box_x[None, :, :]).abs().amax(dim=2)
    cost[eager.pred_classes[:, None] != exported.pred_classes[None, :]] = inf
    partner: Dict[int, int] = {}
    taken = set()
    for flat in torch.argsort(cost.flatten(), stable=True).tolist():
        i, j = divmod(flat, len(exported))
        if i not in partner and j not in taken and math.isfinite(float(cost[i, j])):
            partner[i] = j
            taken.add(j)
    for i in range(len(eager)):
        j = partner.get(i)
        if j is None:
            box, score_diff, border = inf, inf, inf
        else:
            box, score_diff = _max_abs(box_e[i], box_x[j]), _max_abs(eager.scores[i], exported.scores[j])
            border = _max_abs(eager.pred_borders[i], exported.pred_borders[j]) if borders else 0.0
        out["max_box_px"], out["max_score"] = max(out["max_box_px"], box), max(out["max_score"], score_diff)
        if borders:
            out["max_border_px"] = max(out["max_border_px"], border)
        if box <= box_px and score_diff <= score and border <= box_px:
            out["matched"] += 1
        else:
            out["unmatched"].append({"rank": i, "score": float(eager.scores[i]), "box_px": box,
                                     "score_diff": score_diff})
    if len(exported) > len(eager):  # exported detections with no eager partner
        out["max_box_px"] = out["max_score"] = inf
        if borders:
            out["max_border_px"] = inf
    return out


def within_tolerance(diff: Dict[str, object], min_matched: float = 1.0) -> bool:
    """Whether a :func:`compare_detections` result passes: with ``min_matched``
    1 (the default), the same number of detections and every one within the
    tolerance; below 1, the best detection within the tolerance and at least
    that share of the eager detections (the others may differ, e.g. a
    low-scoring detection whose proposal a float-rounding difference at the
    RPN's top-k / NMS boundary replaced: docs/export.md)."""
    n = diff["eager_detections"]
    if min_matched >= 1.0:
        return diff["matched"] == n == diff["exported_detections"]
    best_ok = n == 0 or not any(u["rank"] == 0 for u in diff["unmatched"])
    return best_ok and diff["matched"] >= math.ceil(min_matched * n - 1e-9)


def record_check(metadata_file: str, checks: Dict[str, Dict[str, Dict]], box_px: float, score: float,
                 min_matched: float = 1.0) -> None:
    """Add the check against the eager model (format -> image -> the
    :func:`compare_detections` result) and its tolerance to ``export.json``."""
    with open(metadata_file) as f:
        meta = json.load(f)
    meta["check_against_eager"] = {"tolerance": {"box_px": box_px, "score": score, "min_matched": min_matched},
                                   **checks}
    with open(metadata_file, "w") as f:
        json.dump(meta, f, indent=1)
