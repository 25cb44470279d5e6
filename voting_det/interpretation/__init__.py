"""Interpretation: the trace-back explanations of a trained model (the paper's
Fig. 4 panels and Fig. 3 primitive atlas) and a measure of their faithfulness
(deletion test and stability). See docs/interpretation.md.

- :mod:`.trace`: :class:`Explainer` (trace-mode inference as ``DefaultPredictor``
  runs it) and the JSON trace format;
- :mod:`.panel`: one prediction's voting process as a figure;
- :mod:`.atlas`: per primitive, the image patches where it responds most and
  its spatial template, with an offline HTML index;
- :mod:`.faithfulness`: the faithfulness measurement over a data set, from
  :mod:`.deletion` (deletion of top-ranked primitives as an intervention in the
  forward pass, compared with random and lowest-ranked deletions),
  :mod:`.stability` (stability of the top primitives under shifts and new
  speckle) and :mod:`.faithfulness_report` (summary table and figure).
"""
from .trace import TRACE_FORMAT, Explainer, Explanation, check_new_paths, image_trace, load_image, load_json, save_json
from .panel import render_panel

__all__ = [
    "TRACE_FORMAT",
    "Explainer",
    "Explanation",
    "check_new_paths",
    "image_trace",
    "load_image",
    "load_json",
    "render_panel",
    "save_json",
]
