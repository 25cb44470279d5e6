"""Spherical k-means of ROI feature vectors: the optional initialisation of
the semantic templates (docs/method.md section 2, initialisation).
"""
import torch
from torch import Tensor

from .voting import DEFAULT_EPS, unit_vectors

__all__ = [
    "DEFAULT_KMEANS_ITERATIONS",
    "kmeans_semantic_templates",
]


# Lloyd iterations of the optional k-means initialisation of the semantic templates.
DEFAULT_KMEANS_ITERATIONS = 20


def _kmeans_plus_plus(points: Tensor, num_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding on unit vectors with the cosine distance ``1 - cos``."""
    first = torch.randint(points.shape[0], (1,), generator=generator, device=points.device)
    centres = [points[first[0]]]
    closest = 1 - points @ centres[0]
    for _ in range(1, num_clusters):
        weights = closest.clamp_min(0)
        if weights.sum() <= 0:
            weights = torch.ones_like(weights)
        chosen = torch.multinomial(weights, 1, generator=generator)[0]
        centres.append(points[chosen])
        closest = torch.minimum(closest, 1 - points @ points[chosen])
    return torch.stack(centres)


def kmeans_semantic_templates(
    features: Tensor,
    num_primitives: int,
    iterations: int = DEFAULT_KMEANS_ITERATIONS,
    seed: int = 0,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Spherical k-means of ROI feature vectors, the optional initialisation of
    the semantic templates (compositional-voting practice, docs/method.md section 2).

    Cosine similarity, seeded k-means++ start, ``iterations`` Lloyd steps; a
    cluster left empty is restarted at the point worst served by its centre.

    Args:
        features: ``(P, C)`` feature vectors (e.g. cells of training-positive crops).
        num_primitives: K, at most P.
        iterations: Lloyd iterations.
        seed: seed of the k-means++ start.
        eps: guards the normalisation of zero vectors.

    Returns:
        ``(K, C)`` unit cluster directions.
    """
    if features.shape[0] < num_primitives:
        raise ValueError(f"k-means needs at least K={num_primitives} feature vectors, got {features.shape[0]}")
    points = unit_vectors(features.detach(), dim=1, eps=eps)
    generator = torch.Generator(device=points.device)
    generator.manual_seed(seed)
    centres = _kmeans_plus_plus(points, num_primitives, generator)
    for _ in range(iterations):
        similarity = points @ centres.T
        best, assignment = similarity.max(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=num_primitives)
        empty = (counts == 0).nonzero().squeeze(1)
        if empty.numel() > 0:
            worst = best.topk(empty.numel(), largest=False).indices
            sums[empty] = points[worst]
        centres = unit_vectors(sums, dim=1, eps=eps)
    return centres
