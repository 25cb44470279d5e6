"""The primitive module's parameters and forward at one level
(:class:`PrimitiveVoting`), wiring the pure functions of :mod:`.voting`
(Eq. 2), :mod:`.trace_back` (Eq. 3), :mod:`.grid` and :mod:`.kmeans`.
"""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .grid import nearest_cell_index
from .kmeans import DEFAULT_KMEANS_ITERATIONS, kmeans_semantic_templates
from .trace_back import contributions, contributions_bilinear, reconstruct, trace_back_from_maps
from .voting import (
    DEFAULT_EPS,
    DEFAULT_LOG_TEMPERATURE_RANGE,
    mask_primitives,
    normalize_features,
    response_maps,
    semantic_templates,
    soft_argmax,
    spatial_templates,
    vote,
    vote_operator,
    vote_per_primitive,
)

__all__ = [
    "PrimitiveVoting",
    "SPATIAL_TEMPLATE_INIT_SIGMA_FRACTION",
]


# Default std of the centred Gaussian that initialises the spatial-template
# logits, as a fraction of the grid size per axis (see PrimitiveVoting).
SPATIAL_TEMPLATE_INIT_SIGMA_FRACTION = 0.5


class PrimitiveVoting(nn.Module):
    """The primitive module's parameters and its forward at one level
    (docs/method.md section 2, steps 1-4; the crop itself is done by the caller).

    Parameters (none should get weight decay, docs/method.md section 2 "Losses"):

    - ``semantic_templates`` ``(K, C)``: random unit vectors drawn from torch's
      global RNG (seed it for reproducibility), or k-means of ROI features via
      :meth:`init_semantic_templates_kmeans`;
    - ``spatial_template_logits`` ``(K, Hd, Wd)``: initialised to the log of a
      centred Gaussian, the same for every k (each primitive starts by voting
      for its own location, blurred). Not zeros: with full-size kernels a
      uniform D_k sends every response to every cell with the same weight, so
      Phi is exactly constant, its std 0, and the standardised soft-argmax has
      no gradient to learn from. The default std, half the grid per axis, keeps
      the far displacements' softmax gradient alive (``exp(-2)`` of the peak
      at the largest displacement);
    - ``log_temperature`` t, a scalar initialised to 0 (T = 1), clamped to
      ``log_temperature_range`` in the forward.

    Args:
        in_channels: C.
        num_primitives: K.
        grid_size: ``(M, N)`` of the ROIAligned crop.
        spatial_template_size: odd ``(Hd, Wd)``; default ``(2M - 1, 2N - 1)``.
        spatial_template_init_sigma: ``(sigma_x, sigma_y)`` in cells of the
            initial Gaussian; default half the grid, ``(N / 2, M / 2)``.
        log_temperature_range: ``(t_min, t_max)``.
        eps: see :func:`normalize_features` and :func:`soft_argmax`.
    """

    def __init__(
        self,
        in_channels: int,
        num_primitives: int,
        grid_size: Tuple[int, int],
        spatial_template_size: Optional[Tuple[int, int]] = None,
        spatial_template_init_sigma: Optional[Tuple[float, float]] = None,
        log_temperature_range: Tuple[float, float] = DEFAULT_LOG_TEMPERATURE_RANGE,
        eps: float = DEFAULT_EPS,
    ):
        super().__init__()
        m, n = grid_size
        kh, kw = spatial_template_size if spatial_template_size is not None else (2 * m - 1, 2 * n - 1)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"spatial_template_size must be odd, got {kh} x {kw}")
        if spatial_template_init_sigma is None:
            spatial_template_init_sigma = (
                SPATIAL_TEMPLATE_INIT_SIGMA_FRACTION * n,
                SPATIAL_TEMPLATE_INIT_SIGMA_FRACTION * m,
            )
        sigma_x, sigma_y = spatial_template_init_sigma
        self.grid_size = (m, n)
        self.log_temperature_range = tuple(log_temperature_range)
        self.eps = eps

        self.semantic_templates = nn.Parameter(semantic_templates(torch.randn(num_primitives, in_channels), eps))
        dy = (torch.arange(kh, dtype=torch.float32) - kh // 2) / sigma_y
        dx = (torch.arange(kw, dtype=torch.float32) - kw // 2) / sigma_x
        gaussian_logits = -0.5 * (dy.square()[:, None] + dx.square()[None, :])
        self.spatial_template_logits = nn.Parameter(gaussian_logits.expand(num_primitives, kh, kw).clone())
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self._operator_cache: Optional[Tuple[tuple, Tensor, Tensor]] = None

    def spatial_templates(self) -> Tensor:
        """The current spatial templates D_k, ``(K, Hd, Wd)``."""
        return spatial_templates(self.spatial_template_logits)

    def templates_and_operator(self) -> Tuple[Tensor, Tensor]:
        """D_k and the vote operator of Eq. 2 (:func:`vote_operator`, ``(K, MN, MN)``).

        Both depend only on the spatial-template logits, not on the image: when
        no gradient is recorded (inference) they are built once and reused until
        the logits change (an optimizer step or a loaded checkpoint bumps the
        tensor's version), which saves a ``K x MN x MN`` gather per level and
        forward. With gradients they are built in the graph every time.
        """
        logits = self.spatial_template_logits
        if torch.is_grad_enabled() and logits.requires_grad:
            self._operator_cache = None
            D = spatial_templates(logits)
            return D, vote_operator(D, self.grid_size)
        key = (logits._version, logits.data_ptr(), logits.dtype, logits.device, logits.shape)
        if self._operator_cache is None or self._operator_cache[0] != key:
            with torch.no_grad():
                D = spatial_templates(logits)
                self._operator_cache = (key, D, vote_operator(D, self.grid_size))
        return self._operator_cache[1], self._operator_cache[2]

    def forward(self, gamma: Tensor, primitive_mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Detection, vote and location for the crops ``gamma`` ``(R, C, M, N)``.

        ``primitive_mask`` (``(K,)`` or ``(R, K)``, see :func:`mask_primitives`)
        deletes primitives before they vote; None (the default) keeps them all.

        Returns:
            dict with ``response_maps`` Rs ``(R, K, M, N)``, ``vote_heatmap`` Phi
            ``(R, M, N)``, ``probabilities`` p ``(R, M, N)`` and
            ``centre_cells`` ``(R, 2)`` ``(x, y)`` in cell units (map them with
            :func:`grid_to_image`).
        """
        if tuple(gamma.shape[2:]) != self.grid_size:
            raise ValueError(f"expected crops of size {self.grid_size}, got {tuple(gamma.shape[2:])}")
        Rs = response_maps(normalize_features(gamma, self.eps), semantic_templates(self.semantic_templates, self.eps))
        if primitive_mask is not None:
            Rs = mask_primitives(Rs, primitive_mask)
        D, operator = self.templates_and_operator()
        Phi = vote(Rs, D, operator)
        p, centre_cells = soft_argmax(Phi, self.log_temperature, *self.log_temperature_range, eps=self.eps)
        return {"response_maps": Rs, "vote_heatmap": Phi, "probabilities": p, "centre_cells": centre_cells}

    @torch.no_grad()
    def explain(self, outputs: Dict[str, Tensor], tau: float = 0.0, normalize: bool = False) -> Dict[str, Tensor]:
        """The trace-back of Eq. 3 for a :meth:`forward` result (no gradient).

        Args:
            outputs: what :meth:`forward` returned.
            tau, normalize: see :func:`trace_back_from_maps`.

        Returns:
            dict with ``alpha`` ``(R, K)``; ``contributions`` ``(R, K)`` at the
            cell nearest the centre and ``contributions_bilinear`` ``(R, K)`` at
            the continuous centre; ``reconstruction`` Rc ``(R, K, M, N)``;
            ``primitive_votes`` ``(R, K, M, N)`` (Phi_k, Phi = their mean).
        """
        Rs, Phi, centre_cells = outputs["response_maps"], outputs["vote_heatmap"], outputs["centre_cells"]
        D, operator = self.templates_and_operator()
        Rc = reconstruct(Phi, D, operator)
        return {
            "alpha": trace_back_from_maps(Rs, Rc, tau=tau, normalize=normalize),
            "contributions": contributions(Rs, D, nearest_cell_index(centre_cells, self.grid_size), operator),
            "contributions_bilinear": contributions_bilinear(Rs, D, centre_cells, operator),
            "reconstruction": Rc,
            "primitive_votes": vote_per_primitive(Rs, D, operator),
        }

    @torch.no_grad()
    def init_semantic_templates_kmeans(
        self, features: Tensor, iterations: int = DEFAULT_KMEANS_ITERATIONS, seed: int = 0
    ) -> None:
        """Set the semantic templates to the spherical k-means directions of
        ``features`` ``(P, C)`` (:func:`kmeans_semantic_templates`)."""
        centres = kmeans_semantic_templates(features, self.semantic_templates.shape[0], iterations, seed, self.eps)
        self.semantic_templates.copy_(centres.to(self.semantic_templates))
