"""Modeling: the paper's math as pure functions (``voting``: Eq. 2;
``trace_back``: Eq. 3; ``grid``: the crop grid's geometry; ``context``: the
context-box geometry of Eq. 4 and Eq. 5; ``kmeans``) and the registered
detectron2 components built on them: ``VotingRCNN`` (backbones and
proposals) calls ``VotingROIHeads`` (voting levels, context head, the fusion
of Eq. 1 and every loss) once."""
from .context import (
    CONTEXT_LAYOUTS,
    context_layout,
    deform_boxes,
    place_context_boxes,
    sample_boxes_bilinear,
    union_box,
)
from .context_head import CONTEXT_HEAD_REGISTRY, ContextHead, ContextOutput, build_context_head
from .grid import (
    bilinear_cell_weights,
    cell_centres_of,
    enlarge_boxes,
    grid_to_image,
    image_to_grid,
    interpolate_bilinear,
    nearest_cell_index,
)
from .kmeans import kmeans_semantic_templates
from .meta_arch import VotingRCNN
from .primitives import PrimitiveVoting
from .roi_heads import CONTEXT_FEATURES, TRACE_PREFIX, VotingROIHeads, fuse_predictions
from .trace_back import contributions, contributions_bilinear, reconstruct, trace_back, trace_back_from_maps
from .voting import (
    gaussian_heatmap_target,
    heatmap_loss,
    mask_primitives,
    normalize_features,
    response_maps,
    semantic_templates,
    soft_argmax,
    spatial_templates,
    temperature,
    vote,
    vote_operator,
    vote_per_primitive,
)
from .voting_level import LevelOutput, VotingLevel

__all__ = [
    "CONTEXT_FEATURES",
    "CONTEXT_HEAD_REGISTRY",
    "CONTEXT_LAYOUTS",
    "ContextHead",
    "ContextOutput",
    "LevelOutput",
    "PrimitiveVoting",
    "TRACE_PREFIX",
    "VotingLevel",
    "VotingRCNN",
    "VotingROIHeads",
    "bilinear_cell_weights",
    "build_context_head",
    "cell_centres_of",
    "context_layout",
    "contributions",
    "contributions_bilinear",
    "deform_boxes",
    "enlarge_boxes",
    "fuse_predictions",
    "gaussian_heatmap_target",
    "grid_to_image",
    "heatmap_loss",
    "image_to_grid",
    "interpolate_bilinear",
    "kmeans_semantic_templates",
    "mask_primitives",
    "nearest_cell_index",
    "normalize_features",
    "place_context_boxes",
    "reconstruct",
    "response_maps",
    "sample_boxes_bilinear",
    "semantic_templates",
    "soft_argmax",
    "spatial_templates",
    "temperature",
    "trace_back",
    "trace_back_from_maps",
    "union_box",
    "vote",
    "vote_operator",
    "vote_per_primitive",
]
