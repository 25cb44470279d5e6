"""Explanations from a trained model: the trace mode of :class:`VotingRCNN` run
like detectron2's ``DefaultPredictor``, and its JSON form.

:class:`Explainer` builds the model with ``MODEL.EXPLAIN.ENABLED`` (every
detection then carries its trace as ``trace_<level>_<name>`` fields, see
:meth:`voting_det.modeling.VotingLevel.trace`), runs it on a BGR image of any
size exactly as ``DefaultPredictor`` does, and also keeps the backbone features
and the proposals of that run, so the deletion test can intervene on the local
branch without recomputing them (:mod:`voting_det.interpretation.faithfulness`).

:func:`image_trace` turns one image's detections into a JSON-serialisable dict
(arrays as nested lists, boxes and points in image pixels, XYXY), the format
``tools/explain.py`` writes; :func:`save_json` / :func:`load_json` write and read it.
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.structures import BoxMode, Instances
from tqdm import tqdm

from ..data.image_io import read_scan
from ..engine.predictor import build_predictor
from ..modeling import TRACE_PREFIX
from ..modeling.voting_level import RANKING_KEYS
from .reference import apply_reference, load_reference, reference_path

__all__ = [
    "TRACE_FORMAT",
    "Explainer",
    "Explanation",
    "as_bgr",
    "check_new_paths",
    "explain_records",
    "image_trace",
    "load_image",
    "load_json",
    "save_json",
    "shift_offsets",
    "to_jsonable",
]

# Name and version of the JSON trace format written by image_trace.
TRACE_FORMAT = "voting_det.trace/1"
# Significant digits of the floats written to JSON (float32 carries about 7).
JSON_SIGNIFICANT_DIGITS = 6
# Meta-architecture whose trace mode the explanations read.
VOTING_META_ARCHITECTURE = "VotingRCNN"


def load_image(path: str) -> np.ndarray:
    """An image file as detectron2's loaders give it: ``(H, W, 3)`` uint8 BGR
    (grey replicated, 16-bit reduced to 8-bit, alpha dropped)."""
    return read_scan(path)  # ImageReadError (a ValueError) naming the file when it cannot be read


def as_bgr(image: np.ndarray) -> np.ndarray:
    """A grey ``(H, W)``, ``(H, W, 1)``, BGR or BGRA array as ``(H, W, 3)`` uint8 BGR."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a grey or BGR image, got an array of shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, got {image.dtype}; "
                         "load files with voting_det.interpretation.load_image")
    return np.ascontiguousarray(image)


def check_new_paths(paths: Sequence[str], overwrite: bool) -> None:
    """Refuse to replace existing files unless ``overwrite``: raises
    FileExistsError listing them (at most 5) and saying what to do."""
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise FileExistsError(f"{shown} already exist(s); pass --overwrite to replace, or choose another --output")


@dataclass
class Explanation:
    """One image through :class:`Explainer`.

    Attributes:
        instances: the detections in image pixels, with the intermediate and
            trace fields and ``proposal_index``.
        features: the local backbone's feature maps (model-input scale).
        proposals: the RPN proposals (``proposal_boxes`` in model-input pixels).
        image_size: ``(H, W)`` of the image.
        input_size: ``(h, w)`` of the resized model input.
    """

    instances: Instances
    features: Dict[str, torch.Tensor]
    proposals: Instances
    image_size: Tuple[int, int]
    input_size: Tuple[int, int]

    @property
    def scale(self) -> Tuple[float, float]:
        """``(sx, sy)``: image pixels per model-input pixel."""
        return self.image_size[1] / self.input_size[1], self.image_size[0] / self.input_size[0]


class Explainer:
    """A trained voting_det model in trace mode, run as ``DefaultPredictor`` runs it.

    Args:
        cfg: a voting_det config (``MODEL.META_ARCHITECTURE: VotingRCNN``) with
            ``MODEL.WEIGHTS``; ``MODEL.EXPLAIN.ENABLED`` is switched on in a copy.
        top_primitives: overrides ``MODEL.EXPLAIN.TOP_PRIMITIVES`` when given.

    The contrastive reference (mean vote shares over the training images,
    :mod:`voting_det.interpretation.reference`) is read from
    ``MODEL.EXPLAIN.REFERENCE`` (or ``explain_reference.json`` beside the
    weights) when it exists: the traces then carry ``contrastive`` too.
    ``MODEL.EXPLAIN.RANK_BY contrastive`` without it is refused
    (FileNotFoundError naming the key and how to write it).
    """

    def __init__(self, cfg: CfgNode, top_primitives: Optional[int] = None):
        if cfg.MODEL.META_ARCHITECTURE != VOTING_META_ARCHITECTURE:
            raise ValueError(
                f"config key MODEL.META_ARCHITECTURE: explanations need voting_det's {VOTING_META_ARCHITECTURE} "
                f"(configs/nt_ls.yaml, nt_lcf.yaml or nt_voting.yaml), got {cfg.MODEL.META_ARCHITECTURE!r}"
            )
        weights = cfg.MODEL.WEIGHTS
        if weights and "://" not in weights and not os.path.isfile(weights):
            raise FileNotFoundError(
                f"config key MODEL.WEIGHTS: {weights} not found; give the model_final.pth of a trained model"
            )
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.EXPLAIN.ENABLED = True
        if top_primitives is not None:
            cfg.MODEL.EXPLAIN.TOP_PRIMITIVES = top_primitives
        cfg.freeze()
        self.cfg = cfg
        self.predictor = build_predictor(cfg)
        self.model = self.predictor.model
        self.levels: List[str] = self.model.roi_heads.level_names
        self.reference: Optional[Dict] = None
        self.reference_file: Optional[str] = None
        path = reference_path(cfg)
        if os.path.isfile(path):
            self.set_reference(load_reference(path, weights), path)
        elif cfg.MODEL.EXPLAIN.RANK_BY == "contrastive":
            raise FileNotFoundError(
                f"config key MODEL.EXPLAIN.REFERENCE: {path} not found; the contrastive ranking needs the mean vote "
                f"shares of the training images: write them with tools/explanation_specificity.py "
                f"--write-reference (or choose MODEL.EXPLAIN.RANK_BY contribution)"
            )

    def set_reference(self, reference: Optional[Dict], file: Optional[str] = None) -> None:
        """Use ``reference`` (a :func:`~voting_det.interpretation.reference.compute_reference`
        dict; None: none) for the contrastive scores from now on."""
        apply_reference(self.model, reference)
        self.reference, self.reference_file = reference, file if reference is not None else None

    @property
    def ranking(self) -> Dict:
        """How the traces rank the primitives: ``rank_by``, the keys in order
        (ties of one broken by the next) and the contrastive reference used."""
        rank_by = self.cfg.MODEL.EXPLAIN.RANK_BY
        info = {"rank_by": rank_by, "keys": list(RANKING_KEYS[rank_by]), "reference": None}
        if self.reference is not None:
            info["reference"] = {"file": self.reference_file, "dataset": self.reference.get("dataset"),
                                 "num_images": self.reference.get("num_images")}
        return info

    @property
    def num_primitives(self) -> Dict[str, int]:
        """K of every level."""
        stages = self.model.roi_heads.levels
        return {lvl: s.primitives.semantic_templates.shape[0] for lvl, s in zip(self.levels, stages)}

    @property
    def grid_sizes(self) -> Dict[str, Tuple[int, int]]:
        """``(M, N)`` of every level."""
        return {lvl: tuple(s.grid_size) for lvl, s in zip(self.levels, self.model.roi_heads.levels)}

    def __call__(self, image: np.ndarray, pixel_spacing: Optional[float] = None) -> Explanation:
        """Explain the detections of one grey or BGR uint8 image, any size
        (``pixel_spacing``: its mm per pixel, e.g. from DICOM, for the thickness in mm)."""
        image = as_bgr(image)
        captured = {}
        hooks = [
            self.model.backbone.register_forward_hook(lambda m, i, o: captured.update(features=o)),
            self.model.proposal_generator.register_forward_hook(
                lambda m, i, o: captured.update(input_size=tuple(i[0].image_sizes[0]), proposals=o[0][0])
            ),
        ]
        try:
            instances = self.predictor(image, pixel_spacing=pixel_spacing)["instances"].to("cpu")
        finally:
            for hook in hooks:
                hook.remove()
        return Explanation(
            instances=instances,
            features=captured["features"],
            proposals=captured["proposals"],
            image_size=tuple(image.shape[:2]),
            input_size=captured["input_size"],
        )


def explain_records(explainer: "Explainer", records: Sequence[Dict], desc: str, progress: bool = True
                    ) -> Iterator[Tuple[int, str, np.ndarray, Optional[Explanation]]]:
    """``(i, file name, image, explanation)`` for each record in order, with a
    progress bar; the explanation is None when the image has no detection."""
    for i, record in enumerate(tqdm(list(records), desc=desc, unit="image", disable=not progress)):
        image = load_image(record["file_name"])
        explanation = explainer(image)
        yield i, record["file_name"], image, explanation if len(explanation.instances) else None


def shift_offsets(shift_px: int) -> List[Tuple[int, int]]:
    """The stability check's shifts: ``shift_px`` left, right, down and up (none for 0)."""
    return [(shift_px, 0), (-shift_px, 0), (0, shift_px), (0, -shift_px)] if shift_px else []


def _round(value: float) -> float:
    return float(f"{value:.{JSON_SIGNIFICANT_DIGITS}g}")


def to_jsonable(value):
    """Tensors and arrays as nested lists of Python numbers (floats rounded to
    :data:`JSON_SIGNIFICANT_DIGITS` significant digits), recursively."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iub":
            return value.tolist()
        return to_jsonable(value.astype(np.float64).tolist())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _round(float(value)) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _detection(instances: Instances, i: int, levels: Sequence[str]) -> Dict:
    """The JSON dict of detection ``i``."""
    get = lambda name: instances.get(name)[i] if instances.has(name) else None  # noqa: E731
    cls = int(instances.pred_classes[i])
    det = {
        "rank": i + 1,
        "class": cls,
        "score": instances.scores[i],
        "box": instances.pred_boxes.tensor[i],
        "proposal_index": get("proposal_index"),
        "proposal_box": get("proposal_boxes"),
        "local": {"box": get("local_boxes"), "probs": get("local_probs")},
        "global": None,
        "mu": get("mu"),
        "context_boxes": get("context_boxes"),
        "deformed_context_boxes": get("deformed_context_boxes"),
        "calipers": get("pred_calipers"),
        "thickness_px": get("pred_nt_thickness_px"),
        "thickness_mm": get("pred_nt_thickness_mm"),
        "levels": {},
    }
    if instances.has("global_boxes"):
        det["global"] = {"box": get("global_boxes"), "probs": get("global_probs")}
    for level in levels:
        prefix = f"{TRACE_PREFIX}{level}_"
        det["levels"][level] = {
            name[len(prefix):]: value[i] for name, value in instances.get_fields().items() if name.startswith(prefix)
        }
    return to_jsonable(det)


def image_trace(
    explanation: Explanation,
    levels: Sequence[str],
    file: Optional[str] = None,
    max_detections: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
    options: Optional[Dict] = None,
) -> Dict:
    """One image's trace as a JSON-serialisable dict (``TRACE_FORMAT``).

    Args:
        explanation: :class:`Explainer`'s result.
        levels: the model's levels, coarse to fine.
        file: the image's path, recorded as given.
        max_detections: keep the top ones only (they are sorted by score).
        class_names: recorded when given.
        options: recorded as ``"options"`` (e.g. rank_by, tau).

    Returns:
        ``{"format", "file", "image_size": [H, W], "model_input_size": [h, w],
        "levels", "class_names", "options", "detections": [...]}``; each
        detection has ``rank``, ``class``, ``score``, ``box``, ``proposal_index``,
        ``proposal_box``, ``local`` / ``global`` (``box``, ``probs``), ``mu``,
        ``context_boxes`` and ``deformed_context_boxes`` (O x 4; absent parts
        ``null``), and ``levels[<level>]`` with the fields of
        :meth:`VotingLevel.trace`.
    """
    instances = explanation.instances
    count = len(instances) if max_detections is None else min(len(instances), max_detections)
    return {
        "format": TRACE_FORMAT,
        "file": file,
        "image_size": list(explanation.image_size),
        "model_input_size": list(explanation.input_size),
        "levels": list(levels),
        "class_names": list(class_names) if class_names is not None else None,
        "options": to_jsonable(options or {}),
        "detections": [_detection(instances, i, levels) for i in range(count)],
    }


def save_json(path: str, data: Dict, overwrite: bool = False, indent: Optional[int] = None) -> None:
    """Write ``data`` as JSON, atomically; refuses an existing file unless ``overwrite``."""
    check_new_paths([path], overwrite)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.writing"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=indent, separators=None if indent else (",", ":"), allow_nan=False)
    os.replace(tmp, path)


def load_json(path: str) -> Dict:
    """Read a trace (or any JSON) written by :func:`save_json`."""
    with open(path) as f:
        return json.load(f)


def gt_boxes(record: Dict) -> Optional[List[List[float]]]:
    """A data set record's ground-truth boxes (XYXY pixels, any ``bbox_mode``),
    or None when it has no annotations."""
    if "annotations" not in record:
        return None
    return [list(BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS))
            for a in record["annotations"]]
