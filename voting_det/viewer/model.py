"""The viewer's one model: loaded once, run on one image at a time.

A voting_det model (``MODEL.META_ARCHITECTURE: VotingRCNN``) is loaded as an
:class:`~voting_det.interpretation.Explainer`: its trace-mode run gives both the
detections (box, score, calipers, thickness) and the trace of the explanation,
so the weights are read once. Any other detectron2 model (e.g. an FPN Faster
R-CNN config) is loaded as voting_det's predictor: box and score only, no
measurement and no explanation.
"""
import dataclasses
import os
import threading
from typing import Dict, Optional, Tuple

import numpy as np
from detectron2.structures import Instances

from ..engine import build_predictor
from ..inference import class_names_from_cfg
from ..measurement import NT_CUTOFF_MM
from ..interpretation import Explainer, image_trace
from ..interpretation.trace import VOTING_META_ARCHITECTURE

__all__ = ["ViewerModel"]


class ViewerModel:
    """``model(image_bgr, pixel_spacing, file) -> (instances, trace or None)``.

    ``instances``: the detections in image pixels (detectron2's predictor
    output, on the CPU). ``trace``: :func:`voting_det.interpretation.image_trace`
    of the top-scoring detection (None for a model that does not vote, or
    without detection). Calls are serialised (one image at a time).
    """

    def __init__(self, cfg, top_primitives: Optional[int] = None, spacing_override: Optional[float] = None):
        self.cfg = cfg
        self.voting = cfg.MODEL.META_ARCHITECTURE == VOTING_META_ARCHITECTURE
        if self.voting:
            self.explainer = Explainer(cfg, top_primitives=top_primitives)
            self.options = dict(self.explainer.model.roi_heads.explain_options)
            self.options["ranking"] = self.explainer.ranking
        else:
            self.explainer = None
            self.predictor = build_predictor(cfg)
        self.class_names = class_names_from_cfg(cfg)
        measure = cfg.MODEL.get("MEASURE")
        self.cutoff_mm = float(measure.CUTOFF_MM) if measure is not None else NT_CUTOFF_MM
        configured = float(measure.PIXEL_SPACING) if measure is not None else 0.0
        # MODEL.MEASURE.PIXEL_SPACING of the config: images without their own spacing
        self.default_spacing: Optional[float] = configured if configured > 0 else None
        # tools/serve.py --pixel-spacing: every image's spacing, a DICOM file's own replaced (as tools/predict.py)
        self.spacing_override: Optional[float] = spacing_override
        self._lock = threading.Lock()

    def describe(self) -> Dict[str, object]:
        """What the page says about the model (file names only, no folders)."""
        return {
            "architecture": self.cfg.MODEL.META_ARCHITECTURE,
            "weights": os.path.basename(self.cfg.MODEL.WEIGHTS),
            "explains": self.voting,
            "measures": self.voting and bool(self.cfg.MODEL.MEASURE.METHOD),
            "cutoff_mm": self.cutoff_mm,
            "default_pixel_spacing_mm": self.spacing_override or self.default_spacing,
            "note": None if self.voting else (
                f"This model ({self.cfg.MODEL.META_ARCHITECTURE}) does not vote: the page shows its box and score, "
                "without measurement or explanation (calipers can be placed by hand)."),
        }

    def __call__(self, image: np.ndarray, pixel_spacing: Optional[float] = None,
                 file: Optional[str] = None) -> Tuple[Instances, Optional[Dict]]:
        with self._lock:
            if not self.voting:
                return self.predictor(image)["instances"].to("cpu"), None
            explanation = self.explainer(image, pixel_spacing=pixel_spacing)
        instances = explanation.instances
        if not len(instances):
            return instances, None
        top = int(instances.scores.argmax())
        # the trace of the top-scoring detection only (the page's; it is the panel's detection 0)
        single = dataclasses.replace(explanation, instances=instances[top:top + 1])
        trace = image_trace(single, self.explainer.levels, file=file, max_detections=1,
                            class_names=self.class_names, options=self.options)
        return instances, trace
