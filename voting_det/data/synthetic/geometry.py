"""Drawing for the synthetic scene: the pose that places the fetus in the
image, outlines (ellipses, segments, offsets, rounded polygons) and the
echogenicity canvas they are drawn on with sub-pixel precision.

Lengths in the fetal frame are in units of R, the head's semi-major axis;
image-space lengths that do not scale with the fetus are given per
:data:`REFERENCE_HEIGHT` image rows (the real images are ~480 rows high).
"""
from typing import Tuple

import cv2
import numpy as np

REFERENCE_HEIGHT = 480
SUBPIXEL_BITS = 4  # cv2 drawing with 1/16-pixel precision
ELLIPSE_POINTS = 72
# Specular reflection: an interface parallel to the beam keeps this share of
# the brightness it has when facing the beam.
SPECULAR_FLOOR, SPECULAR_POWER = 0.08, 2.0
# Amplitude of the tissue texture by region (multiplies image_formation.TEXTURE_AMPLITUDE).
TISSUE_TEXTURE, PLACENTA_TEXTURE = 1.0, 1.6


def _uniform(rng, bounds):
    return float(rng.uniform(*bounds))


class _Pose:
    """Similarity transform from the fetal frame to image pixels (x, y).

    ``image = scale * Rot(angle) * Flip * (local - anchor_local) + anchor_image``.
    """

    def __init__(self, scale: float, angle_deg: float, flip: bool, anchor_local, anchor_image):
        a = np.deg2rad(angle_deg)
        c, s = np.cos(a), np.sin(a)
        f = -1.0 if flip else 1.0
        self.scale = scale
        self.matrix = scale * np.array([[c * f, -s], [s * f, c]])
        self.offset = np.asarray(anchor_image, float) - self.matrix @ np.asarray(anchor_local, float)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, float) @ self.matrix.T + self.offset


def _ellipse(cx, cy, a, b, angle_deg=0.0, t0=0.0, t1=2 * np.pi, n=ELLIPSE_POINTS) -> np.ndarray:
    """Points of an ellipse (or of its arc from ``t0`` to ``t1``)."""
    t = np.linspace(t0, t1, n)
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _segment_outline(p0, p1, thickness) -> np.ndarray:
    """Corners of the rectangle around the segment ``p0``-``p1``."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-9) * thickness / 2
    return np.stack([p0 + n, p1 + n, p1 - n, p0 - n])


def _offset(points: np.ndarray, normals: np.ndarray, dist) -> np.ndarray:
    """``points`` moved by ``dist`` (scalar or per point) along ``normals``."""
    return points + normals * np.asarray(dist, float).reshape(-1, 1)


def _bbox(points: np.ndarray) -> Tuple[float, float, float, float]:
    return float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max())


def _chaikin(points: np.ndarray, iterations: int = 2, closed: bool = True) -> np.ndarray:
    """Chaikin corner cutting: rounds a polygon (or an open polyline) so that
    outlines look organic rather than drawn with a ruler."""
    p = np.asarray(points, float)
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0) if closed else p[1:]
        a = p if closed else p[:-1]
        cut = np.empty((2 * len(a), 2))
        cut[0::2] = 0.75 * a + 0.25 * q
        cut[1::2] = 0.25 * a + 0.75 * q
        p = cut if closed else np.concatenate([p[:1], cut, p[-1:]])
    return p


class _Canvas:
    """The echogenicity map, drawn with the painter's algorithm in image pixels."""

    def __init__(self, shape: Tuple[int, int], background: float):
        self.echo = np.full(shape, background, np.float32)
        self.texture = np.zeros(shape, np.float32)  # texture amplitude by region (0 in fluid)

    @staticmethod
    def _fixed(points: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(points) * (1 << SUBPIXEL_BITS)).astype(np.int32).reshape(-1, 1, 2)

    def fill(self, points: np.ndarray, value: float, texture: float = TISSUE_TEXTURE) -> None:
        pts = [self._fixed(points)]
        cv2.fillPoly(self.echo, pts, float(value), cv2.LINE_8, SUBPIXEL_BITS)
        cv2.fillPoly(self.texture, pts, float(texture), cv2.LINE_8, SUBPIXEL_BITS)

    def line(self, points: np.ndarray, value: float, thickness_px: float, closed: bool = False) -> None:
        t = max(1, int(round(thickness_px)))
        cv2.polylines(self.echo, [self._fixed(points)], closed, float(value), t, cv2.LINE_8, SUBPIXEL_BITS)
        cv2.polylines(self.texture, [self._fixed(points)], closed, TISSUE_TEXTURE / 2, t, cv2.LINE_8, SUBPIXEL_BITS)

    def specular_line(self, points: np.ndarray, peak: float, thickness_px: float, piece: int = 4) -> None:
        """A reflecting interface (bone, skin, membrane): each piece of the
        polyline is bright where it faces the (vertical) beam and fades where
        it runs along it, ``SPECULAR_FLOOR + (1 - SPECULAR_FLOOR) * |n_y|^SPECULAR_POWER``."""
        points = np.asarray(points, float)
        for i in range(0, len(points) - 1, piece):
            part = points[i : i + piece + 1]
            dx, dy = part[-1] - part[0]
            facing = abs(dx) / max(np.hypot(dx, dy), 1e-9)  # |n_y| of the piece's normal
            self.line(part, peak * (SPECULAR_FLOOR + (1 - SPECULAR_FLOOR) * facing**SPECULAR_POWER), thickness_px)
