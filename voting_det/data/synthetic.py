"""Synthetic first-trimester mid-sagittal ultrasound images with NT boxes.

The set mirrors the layout of the public "Dataset for Fetus Framework" (Cui and
Dong 2022) exactly, so the converter and loaders that read the real set are
exercised on it every day::

    out_dir/Train & Val/0.png, 1.png, ...   3-channel 8-bit PNGs (grey replicated)
    out_dir/ObjectDetection.xlsx            fname, structure, h_min, w_min, h_max, w_max
    out_dir/metadata.csv                    per-image truth (NT thickness, pose, ...)

Unlike the real copy it has annotated NEGATIVES (rows for other structures but
no ``NT`` row) and records the true NT thickness.

How an image is made (:func:`render_synthetic_nt`):

1. A scene is drawn as an echogenicity map (0 = anechoic fluid, ~1 = bone or a
   specular skin line) in a fetal frame whose unit is the head's semi-major
   axis ``R``: x points caudally (head -> trunk), y posteriorly (face -> back).
   The fetus is mid-sagittal: head with skull rim, thalami, midbrain,
   brainstem, intracranial translucency (IT), cisterna magna (CM); face with
   nasal bone, nasal skin, nasal tip, palate; neck and trunk with the spine.
   The NT is an anechoic band between the skin line (outside) and the soft
   tissue over the cervical spine (inside), following the posterior neck
   curve, with a lens-shaped thickness profile.
2. A similarity transform (scale, rotation, left/right flip, translation)
   places the fetus so that the NT centre lands where real NT boxes lie.
3. Distractors that look like an NT locally but are in the wrong place are
   drawn in the same map: the amniotic membrane parallel to the fetal back
   with fluid between (often right under the neck), fluid pockets with bright
   walls, the placenta and the uterine wall.
4. Image formation on the echo amplitude: soft edges, tissue texture, speckle
   (the magnitude of a complex Gaussian field blurred by an anisotropic
   point-spread function), depth attenuation with random TGC sliders; then
   log compression with a gain (dB) and a display curve (``contrast`` is its
   exponent), blur, the sector mask (black outside) and scanner-like text.

About ``negative_fraction`` of the images (spread evenly over the indices by a
Weyl sequence) are negatives: either another plane (``off_plane``: a rounder
head cross-section with a midline echo, no face, no NT) or the mid-sagittal
fetus shifted so that the neck is outside the image (``neck_out_of_view``).

``num_distractors`` counts the distractors whose box centre is inside the
image and the fan, of every kind. One counts as "near the neck"
(``distractor_near_neck``) when it is NT-like (a dark band between bright
lines: amnion, fluid pocket) and its box centre lies within
``NEAR_NECK_BOX_WIDTHS`` NT-box widths of the NT box centre; this is only
defined on positives (0 on negatives).

Every image is drawn from its own ``numpy.random.SeedSequence([seed, index])``,
so a set is byte-identical for a seed whatever the number of workers.
"""
import csv
import functools
import logging
import multiprocessing
import os
import time
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from ..utils import staged_folder
from .spreadsheet import write_object_detection_xlsx

__all__ = [
    "IMAGES_DIRNAME",
    "METADATA_COLUMNS",
    "METADATA_FILENAME",
    "NEAR_NECK_BOX_WIDTHS",
    "SPREADSHEET_FILENAME",
    "STRUCTURES",
    "generate_synthetic_nt",
    "render_synthetic_nt",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- layout
IMAGES_DIRNAME = "Train & Val"
SPREADSHEET_FILENAME = "ObjectDetection.xlsx"
METADATA_FILENAME = "metadata.csv"
# The structure names of the real spreadsheet, in its order.
STRUCTURES = ("thalami", "midbrain", "palate", "IT", "CM", "NT", "nasal tip", "nasal skin", "nasal bone")
METADATA_COLUMNS = (
    "fname",
    "pixel_spacing_mm",
    "nt_thickness_px",
    "nt_thickness_mm",
    "has_nt",
    "view",
    "flip",
    "rotation_deg",
    "scale",
    "gain",
    "contrast",
    "speckle_sigma",
    "speckle_strength",
    "blur_sigma",
    "num_distractors",
    "distractor_near_neck",
    "distractor_types",
)
VIEWS = ("midsagittal", "off_plane", "neck_out_of_view")

# ---------------------------------------------------------------- scene constants
# Lengths in the fetal frame are in units of R, the head's semi-major axis.
# Image-space lengths that do not scale with the fetus are given per
# REFERENCE_HEIGHT image rows (the real images are ~480 rows high).
REFERENCE_HEIGHT = 480
SUBPIXEL_BITS = 4  # cv2 drawing with 1/16-pixel precision
ELLIPSE_POINTS = 72

# Pose, matched to the real NT boxes (centre x/W 5-95%: 0.25-0.70, median 0.47;
# centre y/H 0.73-0.89, median 0.82).
NT_CENTRE_X_MEAN, NT_CENTRE_X_STD, NT_CENTRE_X_RANGE = 0.47, 0.13, (0.15, 0.82)
NT_CENTRE_Y_MEAN, NT_CENTRE_Y_STD, NT_CENTRE_Y_RANGE = 0.815, 0.048, (0.68, 0.94)
HEAD_RADIUS_REL_H = (0.30, 0.43)  # R in pixels / image height
ROTATION_STD_DEG, ROTATION_MAX_DEG = 2.0, 15.0

# Anatomy in millimetres (11-14 weeks): the head's semi-major axis (half the
# occipito-frontal diameter) sets the pixel spacing; NT thickness is
# log-normal around a normal fetus' value, clipped to the range asked for.
HEAD_RADIUS_MM = (11.0, 16.0)
NT_THICKNESS_MEDIAN_MM, NT_THICKNESS_LOG_STD = 1.7, 0.4
NT_THICKNESS_RANGE_MM = (1.0, 3.5)
# Length of the translucency along the neck (units of R), log-normal; real
# boxes are 0.19-0.66 of the image width.
NT_LENGTH_MEDIAN_R, NT_LENGTH_LOG_STD, NT_LENGTH_RANGE_R = 1.45, 0.38, (0.6, 2.7)
# Sagitta of the NT curve (the neck's concavity) over the NT, units of R.
NT_SAGITTA_R = (0.0, 0.02)
SKIN_LINE_R = (0.012, 0.02)  # thickness of the echogenic skin line
INNER_LINE_R = (0.01, 0.02)  # thickness of the echogenic line over the spine

# Echo amplitudes of the echogenicity map, linear, relative to a specular
# reflector (bone, skin) = 1; the display is log-compressed (see below), so
# fluid sits ~40 dB and soft tissue ~18 dB below bone.
FLUID_ECHO = (0.002, 0.007)
NT_FLUID_ECHO = (0.006, 0.035)  # the translucency is anechoic but thin: blur and clutter fill it
BRAIN_ECHO = (0.035, 0.07)
SOFT_TISSUE_ECHO = (0.09, 0.17)
BONE_ECHO = (0.6, 1.2)
SKIN_ECHO = (0.7, 1.3)
DARK_STRUCTURE_ECHO = (0.006, 0.02)
PLACENTA_ECHO = (0.18, 0.32)
WALL_ECHO = (0.09, 0.18)
# Specular reflection: an interface parallel to the beam keeps this share of
# the brightness it has when facing the beam.
SPECULAR_FLOOR, SPECULAR_POWER = 0.08, 2.0
# Amplitude of the tissue texture by region (multiplies TEXTURE_AMPLITUDE).
TISSUE_TEXTURE, PLACENTA_TEXTURE = 1.0, 1.6

# Distractors. NT-like ones have a dark band of this many NT thicknesses and
# this many NT lengths.
DISTRACTOR_GAP_NT = (0.7, 2.2)
DISTRACTOR_LENGTH_NT = (0.6, 1.5)
P_AMNION_UNDER_NECK = 0.6
P_AMNION_UNDER_TRUNK = 0.5
P_POCKET_NEAR_NECK = 0.35
POCKETS_ELSEWHERE = (0, 2)  # inclusive range of pockets in the placenta / wall
P_PLACENTA = 0.6
P_UTERINE_WALL = 0.7
# "Near the neck": an NT-like distractor centre within this many NT-box widths
# of the NT-box centre.
NEAR_NECK_BOX_WIDTHS = 1.0

# Negatives: share of off-plane views (the rest have the neck out of view).
P_OFF_PLANE = 0.5
# How far outside the image the NT box is pushed in neck_out_of_view images
# (fraction of the image height).
OUT_OF_VIEW_MARGIN_REL = 0.04
# A structure box is kept when this share of its area is inside the image.
MIN_VISIBLE_FRACTION = 0.6

# Sector geometry: apex above the image; fan half-width at the top row.
APEX_HEIGHT_REL_H = (0.35, 1.6)
FAN_TOP_HALF_WIDTH_REL_W = (0.32, 0.7)
APEX_X_STD_REL_W = 0.04

# Image formation (lengths in pixels per REFERENCE_HEIGHT rows).
EDGE_SOFTNESS_PX = (3.0, 1.0)  # lateral, axial blur of the echogenicity map
TEXTURE_SIGMA_PX = (6.0, 16.0)  # two scales of tissue heterogeneity
TEXTURE_AMPLITUDE = (0.25, 0.5)  # std of the log-amplitude texture (natural log)
TEXTURE_ANISOTROPY = 2.0  # lateral / axial correlation length of the texture
SPECKLE_LATERAL_PX = (8.0, 14.0)  # PSF sigma across the beam (speckle_sigma)
SPECKLE_AXIAL_RATIO = (0.22, 0.35)  # axial / lateral PSF sigma
SPECKLE_STRENGTH = (0.45, 0.8)  # share of fully developed speckle (1 = raw)
ATTENUATION = (0.3, 1.2)  # amplitude * exp(-a * depth below the top row / H)
TGC_KNOTS, TGC_RANGE = 5, (0.75, 1.3)
GAIN = (-4.0, 2.0)  # dB added before display
DYNAMIC_RANGE_DB = 60.0  # displayed range below a specular reflector
CONTRAST = (2.2, 3.2)  # exponent of the display curve on the [0, 1] log image
BLACK_LEVEL = (0.0, 8.0)  # grey of the weakest displayed echo
BLUR_PX = (0.3, 1.6)
NOISE_FLOOR = (0.0, 0.004)  # additive electronic noise (linear amplitude)
SPECKLE_GRID_STEP = 2  # the speckle field is drawn on a 2x coarser grid
DEPTH_GRID_STEP = 8  # attenuation and TGC are computed on an 8x coarser grid
P_TEXT_OVERLAY, P_GREY_BAR = 0.7, 0.5
TEXT_LINES = ("NT", "Har-high", "{g}", "Gn {n}", "C7 / M15", "FF4 / E2", "1.Trim.", "P2 / E3")

# Weyl-sequence step for spreading negatives evenly over the indices.
_GOLDEN = 0.6180339887498949


# ================================================================= geometry


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


# ================================================================= the fetus


class _Fetus:
    """Mid-sagittal fetal anatomy in the fetal frame (units of R), sampled once.

    Holds the posterior skin curve, the NT thickness profile and the key
    shapes, so that drawing, boxes and distractor placement agree.
    """

    def __init__(self, rng: np.random.Generator, nt_thickness_r: float, nt_length_r: float):
        u = rng.uniform
        self.head_b = u(0.82, 0.94)  # semi-minor axis of the head
        self.nt_thickness = nt_thickness_r
        self.nt_length = nt_length_r
        self.skin_t = u(*SKIN_LINE_R)
        self.inner_t = u(*INNER_LINE_R)
        self.nt_centre_x = u(0.35, 0.6)
        half = nt_length_r / 2
        self.curvature = u(*NT_SAGITTA_R) / half**2
        self.back_bend = u(-0.04, 0.06)  # extra curvature of the back beyond the NT
        self.occiput_rise = u(1.5, 3.0)  # how steeply the skin wraps the occiput
        self.occiput_x = self.nt_centre_x - half - u(0.03, 0.2)
        self.profile_exponent = u(3.0, 8.0)  # lens (2) to plateau (8) NT profile
        self.profile_taper = u(0.8, 1.5)  # how sharply the ends close
        self.trunk_end = u(2.9, 3.6)
        self.trunk_thickness = u(1.0, 1.3)
        # Lowest skin level under the neck: the NT and its inner line must clear
        # the head with a scalp margin.
        self.skin_y0 = 0.0
        xs = np.linspace(self.nt_centre_x - half, self.nt_centre_x + half, 41)
        need = self.head_bottom(xs) + u(0.04, 0.12) + self.skin_t / 2 + self.thickness(xs) + self.inner_t
        self.skin_y0 = float(np.max(need - self.skin_y(xs)))
        self.x_left = self._skin_meets_head()

    # -- curves --------------------------------------------------------------
    def head_bottom(self, x):
        x = np.clip(np.asarray(x, float), -0.999, 0.999)
        return self.head_b * np.sqrt(1 - x**2)

    def skin_y(self, x):
        """Centre line of the posterior skin: a parabola under the neck that
        continues along its tangent over the back and rises around the occiput."""
        u = np.asarray(x, float) - self.nt_centre_x
        half = self.nt_length / 2
        au = np.abs(u)
        g = np.where(au <= half, u**2, half * (2 * au - half))
        back = np.maximum(0.0, u - half) ** 2 * self.back_bend
        occ = np.maximum(0.0, self.occiput_x - np.asarray(x, float)) ** 2 * self.occiput_rise
        return self.skin_y0 + self.curvature * g + back + occ

    def _skin_meets_head(self) -> float:
        xs = np.linspace(self.occiput_x, -0.99, 200)
        above = np.flatnonzero(self.skin_y(xs) <= self.head_bottom(xs) + self.skin_t)
        return float(xs[above[0]]) if len(above) else -0.99

    def thickness(self, x):
        """NT thickness profile ``d_max * (1 - |u|^p)^q`` over the NT (``u`` from
        -1 to 1 along it), 0 outside."""
        u = np.abs(np.asarray(x, float) - self.nt_centre_x) / (self.nt_length / 2)
        return self.nt_thickness * np.clip(1 - u**self.profile_exponent, 0, 1) ** self.profile_taper

    def skin_points(self, x0: float, x1: float, n: int = 120):
        """Points of the skin centre line and their inward (into the body) normals."""
        xs = np.linspace(x0, x1, n)
        ys = self.skin_y(xs)
        dy = np.gradient(ys, xs)
        normals = np.stack([dy, -np.ones_like(dy)], axis=1) / np.sqrt(1 + dy**2)[:, None]
        return xs, np.stack([xs, ys], axis=1), normals

    def nt_layers(self):
        """Local polygons of the translucency and its two echogenic borders."""
        half = self.nt_length / 2
        xs, skin, n_in = self.skin_points(self.nt_centre_x - half, self.nt_centre_x + half, 80)
        d = self.thickness(xs)
        top_of_skin = _offset(skin, n_in, self.skin_t / 2)
        inner_edge = _offset(top_of_skin, n_in, d)
        translucency = np.concatenate([top_of_skin, inner_edge[::-1]])
        inner_line = _offset(inner_edge, n_in, self.inner_t / 2)
        # The box encloses the translucency and both echogenic borders.
        box_points = np.concatenate([_offset(skin, n_in, -self.skin_t / 2), _offset(inner_edge, n_in, self.inner_t)])
        return translucency, inner_line, box_points

    def nt_centre_local(self) -> np.ndarray:
        _, _, box_points = self.nt_layers()
        x0, y0, x1, y1 = _bbox(box_points)
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


# ================================================================= drawing


def _uniform(rng, bounds):
    return float(rng.uniform(*bounds))


def _draw_sagittal_fetus(canvas: _Canvas, rng, fetus: _Fetus, pose: _Pose, has_nt: bool) -> Dict[str, np.ndarray]:
    """Draw the mid-sagittal fetus; return the outline points (image pixels)
    of each labelled structure it shows."""
    u = rng.uniform
    px = pose.scale  # pixels per R
    tissue = _uniform(rng, SOFT_TISSUE_ECHO)
    brain = _uniform(rng, BRAIN_ECHO)
    hb = fetus.head_b

    def on_head(angle_deg, r=1.0):
        a = np.deg2rad(angle_deg)
        return np.array([r * np.cos(a), r * hb * np.sin(a)])

    # Body: back skin from the occiput to the trunk end; in front the chin, the
    # concave anterior neck, chest and abdomen, and the rounded trunk end.
    _, skin, _ = fetus.skin_points(fetus.x_left, fetus.trunk_end)
    chin = on_head(u(2, 12), u(1.14, 1.22))
    neck_front = chin + [u(0.12, 0.25), u(0.02, 0.12)]
    front = [chin, neck_front]
    bulge, phase = u(0.02, 0.06), u(0, 2 * np.pi)
    for x in np.linspace(neck_front[0] + 0.35, fetus.trunk_end - 0.25, 10):
        front.append([x, fetus.skin_y(x) - fetus.trunk_thickness * (1 + bulge * np.sin(3 * x + phase))])
    front = np.asarray(front)
    end_c = np.array([fetus.trunk_end - 0.25, fetus.skin_y(fetus.trunk_end) - fetus.trunk_thickness / 2])
    cap = _ellipse(end_c[0], end_c[1], 0.3, fetus.trunk_thickness / 2, 0.0, -np.pi / 2, np.pi / 2, 12)
    body = _chaikin(np.concatenate([front, cap, skin[::-1], [[fetus.x_left, 0.0], [0.5, 0.0]]]), 4)
    canvas.fill(pose(body), tissue)
    canvas.specular_line(pose(_chaikin(front, 4, closed=False)), tissue * u(2.0, 4.0), px * u(0.012, 0.025))
    if rng.random() < 0.5:  # an arm in front of the chest
        limb = _ellipse(u(1.5, 2.3), front[3, 1] - u(0.0, 0.15), u(0.3, 0.5), u(0.07, 0.12), u(-30, 30))
        canvas.fill(pose(limb), tissue * u(1.1, 1.6))

    # Spine: vertebral arches along the back, the bodies a little deeper.
    depth = fetus.nt_thickness + fetus.skin_t + u(0.14, 0.26)
    _, skin_sp, n_sp = fetus.skin_points(fetus.nt_centre_x - 0.1, fetus.trunk_end - 0.45, 60)
    arc_len = np.concatenate([[0], np.cumsum(np.hypot(*np.diff(skin_sp, axis=0).T))])
    bone = _uniform(rng, BONE_ECHO) * u(0.35, 0.7)
    for s in np.arange(0, arc_len[-1], u(0.11, 0.15)):
        i = min(int(np.searchsorted(arc_len, s)), len(skin_sp) - 1)
        ang = np.degrees(np.arctan2(-n_sp[i][0], n_sp[i][1]))
        for extra, scale in ((0.0, 1.0), (u(0.1, 0.16), 0.6)):
            c = skin_sp[i] + n_sp[i] * (depth + extra)
            canvas.fill(pose(_ellipse(c[0], c[1], 0.04, 0.022, ang, n=12)), bone * scale * u(0.6, 1.2))

    # Face soft tissue: forehead, nasion, nose, lips, chin, under the chin.
    profile = [on_head(-80, 1.0), on_head(-63, 1.05), on_head(-50, u(1.28, 1.4)), on_head(-42, 1.18),
               on_head(-33, u(1.22, 1.3)), on_head(-25, 1.16), on_head(-16, u(1.2, 1.27)), chin,
               on_head(25, 0.95)]
    inner = [on_head(35, 0.6), on_head(-20, 0.55), on_head(-75, 0.75)]
    face = _chaikin(np.asarray(profile + inner))
    canvas.fill(pose(face), tissue * u(1.0, 1.3))
    canvas.specular_line(pose(_chaikin(np.asarray(profile), closed=False)), tissue * u(2.0, 4.0), px * 0.016)

    # Brain (with faint heterogeneity) and the skull rim: arcs of varying
    # brightness, open over the face, on a slightly irregular outline.
    canvas.fill(pose(_ellipse(-0.02, 0.0, 0.95, hb * 0.95)), brain)
    for _ in range(int(rng.integers(3, 7))):
        r, t = u(0.2, 0.75), u(0, 2 * np.pi)
        blob = _ellipse(r * np.cos(t), r * hb * np.sin(t), u(0.08, 0.22), u(0.05, 0.12), u(0, 180), n=24)
        canvas.fill(pose(blob), brain * u(0.5, 1.6))
    rim_t = u(0.035, 0.06)
    harmonics = u(-0.015, 0.015, (2, 3))
    cuts = np.deg2rad(np.sort(np.concatenate([[28, 292], u(28, 292, 6)])))
    for t0, t1 in zip(cuts[:-1], cuts[1:]):
        t = np.linspace(t0, t1 + 0.04, 24)
        k = np.arange(2, 5)[:, None]
        r = 0.975 * (1 + (harmonics[0] @ np.cos(k * t) + harmonics[1] @ np.sin(k * t)))
        arc = np.stack([r * np.cos(t), r * hb * np.sin(t)], axis=1)
        canvas.specular_line(pose(arc), _uniform(rng, BONE_ECHO) * u(0.4, 0.9), px * rim_t * u(0.6, 1.2))

    # Brain structures: thalami, midbrain, brainstem, IT (with the choroid
    # plexus of the fourth ventricle behind it), cisterna magna. The brainstem
    # runs from the midbrain towards the neck; IT and CM lie behind it.
    ang_bs = u(40, 58)
    d_bs = np.array([np.cos(np.deg2rad(ang_bs)), np.sin(np.deg2rad(ang_bs))])
    back = np.array([-d_bs[1], d_bs[0]])  # perpendicular, towards the occiput
    thal = _ellipse(u(-0.15, 0.0), u(-0.12, 0.0), u(0.18, 0.24), u(0.11, 0.15), u(-10, 25))
    mid_c = np.array([u(0.08, 0.18), u(0.12, 0.22)])
    mid = _ellipse(mid_c[0], mid_c[1], u(0.1, 0.14), u(0.07, 0.1), ang_bs)
    bs_c = mid_c + d_bs * u(0.28, 0.36)
    stem = _ellipse(bs_c[0], bs_c[1], u(0.26, 0.32), u(0.08, 0.1), ang_bs)
    it_c = bs_c + back * u(0.15, 0.19)
    it = _ellipse(it_c[0], it_c[1], u(0.12, 0.16), u(0.035, 0.055), ang_bs)
    cm_c = bs_c + back * u(0.33, 0.42)
    cm = _ellipse(cm_c[0], cm_c[1], u(0.15, 0.22), u(0.07, 0.11), ang_bs + u(-15, 10))
    canvas.fill(pose(thal), brain * u(0.4, 0.75))
    canvas.line(pose(thal), brain * u(1.3, 2.0), px * 0.012, closed=True)
    canvas.fill(pose(mid), _uniform(rng, DARK_STRUCTURE_ECHO) * 1.5)
    canvas.fill(pose(stem), tissue * u(0.8, 1.1))
    canvas.fill(pose(cm), _uniform(rng, DARK_STRUCTURE_ECHO))
    canvas.fill(pose(it), _uniform(rng, DARK_STRUCTURE_ECHO))
    plexus = _segment_outline(it_c + back * 0.065 - d_bs * 0.11, it_c + back * 0.065 + d_bs * 0.11, 0.03)
    canvas.fill(pose(plexus), _uniform(rng, BONE_ECHO) * u(0.3, 0.6))

    # Facial bones: maxilla with the palate, mandible, nasal bone; nasal skin
    # and the soft nasal tip in front of the nasal bone.
    pal0 = on_head(u(-38, -31), u(1.0, 1.06))
    pal_dir = on_head(u(-5, 10), 0.3) - pal0
    pal_dir /= np.hypot(*pal_dir)
    pal_len = u(0.3, 0.4)
    pal_c = pal0 + pal_dir * pal_len / 2
    palate = _ellipse(pal_c[0], pal_c[1], pal_len / 2, u(0.025, 0.035), np.degrees(np.arctan2(pal_dir[1], pal_dir[0])))
    canvas.fill(pose(palate), _uniform(rng, BONE_ECHO) * u(0.5, 0.9))
    mandible = _segment_outline(on_head(-2, 1.03), on_head(20, 0.85), 0.04)
    canvas.fill(pose(mandible), _uniform(rng, BONE_ECHO) * u(0.3, 0.6))
    nb0 = on_head(u(-66, -61), u(1.02, 1.05))
    nb1 = on_head(u(-53, -49), u(1.12, 1.17))
    nasal_bone = _segment_outline(nb0, nb1, u(0.03, 0.045))
    canvas.fill(pose(nasal_bone), _uniform(rng, BONE_ECHO))
    out = np.array([nb1[1] - nb0[1], nb0[0] - nb1[0]])
    out /= np.hypot(*out)
    if np.dot(out, nb0) < 0:
        out = -out
    sk0, sk1 = nb0 + out * 0.06, nb1 + out * 0.07 + (nb1 - nb0) * 0.35
    nasal_skin = _segment_outline(sk0, sk1, u(0.02, 0.03))
    canvas.fill(pose(nasal_skin), _uniform(rng, SKIN_ECHO) * u(0.5, 0.8))
    tip_c = sk1 + out * 0.01
    tip = _ellipse(tip_c[0], tip_c[1], u(0.06, 0.08), u(0.04, 0.055), np.degrees(np.arctan2(out[1], out[0])))
    canvas.fill(pose(tip), tissue * u(1.2, 1.7))
    shapes = {"thalami": thal, "midbrain": mid, "IT": it, "CM": cm, "palate": palate,
              "nasal bone": nasal_bone, "nasal skin": nasal_skin, "nasal tip": tip}

    # The NT: translucency and the echogenic line over the spine (on a
    # negative the neck is out of view, but the same anatomy is drawn).
    translucency, inner_line, box_points = fetus.nt_layers()
    canvas.fill(pose(translucency), _uniform(rng, NT_FLUID_ECHO), texture=0.0)
    canvas.line(pose(inner_line), _uniform(rng, SKIN_ECHO) * u(0.2, 0.45), px * fetus.inner_t)
    if has_nt:
        shapes["NT"] = box_points
    # Specular skin: brightest where it is perpendicular to the beam (the neck).
    xs, skin, _ = fetus.skin_points(fetus.x_left, fetus.trunk_end, 24)
    peak = _uniform(rng, SKIN_ECHO) * u(0.5, 1.0)
    for i in range(len(skin) - 1):
        fall = np.exp(-(((xs[i] - fetus.nt_centre_x) / (fetus.nt_length + 0.6)) ** 2))
        canvas.line(pose(skin[i : i + 2]), peak * (0.5 + 0.5 * fall) * u(0.8, 1.1), px * fetus.skin_t)
    return {k: pose(v) for k, v in shapes.items()}


def _draw_off_plane_fetus(canvas: _Canvas, rng, size, head_px: float) -> Dict[str, np.ndarray]:
    """An off-plane view (axial-oblique head section and a trunk section): no
    face, no NT. Returns the thalami outline in image pixels."""
    u = rng.uniform
    h, w = size
    centre = np.array([u(0.3, 0.7) * w, u(0.38, 0.55) * h])
    a = head_px * u(0.9, 1.05)
    b = a * u(0.85, 0.98)
    ang = u(-20, 20)
    brain = _uniform(rng, BRAIN_ECHO)
    tissue = _uniform(rng, SOFT_TISSUE_ECHO)
    # The trunk section below and to one side of the head, with its skin line.
    side = 1 if rng.random() < 0.5 else -1
    trunk_c = centre + np.array([side * a * u(0.9, 1.4), b * u(0.7, 1.0)])
    trunk = _ellipse(trunk_c[0], trunk_c[1], a * u(0.8, 1.1), b * u(0.7, 0.9), u(-20, 20))
    canvas.fill(trunk, tissue)
    canvas.specular_line(trunk, _uniform(rng, SKIN_ECHO) * u(0.4, 0.8), head_px * 0.025)
    skull = _ellipse(centre[0], centre[1], a, b, ang)
    canvas.fill(skull, brain)
    canvas.specular_line(skull, _uniform(rng, BONE_ECHO) * u(0.4, 0.9), head_px * u(0.035, 0.06))
    c, s = np.cos(np.deg2rad(ang)), np.sin(np.deg2rad(ang))
    major = np.array([c, s])
    minor = np.array([-s, c])
    canvas.line(np.stack([centre - major * a * 0.9, centre + major * a * 0.9]), _uniform(rng, BONE_ECHO) * 0.6,
                head_px * 0.015)
    # Paired thalami either side of the midline, the cavum septi pellucidi in front.
    off = b * u(0.14, 0.2)
    tc = centre + major * a * u(-0.1, 0.15)
    thal = []
    for sgn in (-1, 1):
        p = tc + minor * sgn * off
        e = _ellipse(p[0], p[1], a * u(0.16, 0.22), b * u(0.1, 0.14), ang)
        canvas.fill(e, brain * u(0.25, 0.45))
        canvas.line(e, brain * u(1.3, 2.0), head_px * 0.012, closed=True)
        thal.append(e)
    csp = tc - major * a * u(0.35, 0.45)
    canvas.fill(_ellipse(csp[0], csp[1], a * 0.1, b * 0.06, ang), _uniform(rng, DARK_STRUCTURE_ECHO))
    for sgn in (-1, 1):  # choroid plexus
        p = centre + major * a * u(0.3, 0.5) + minor * sgn * b * u(0.3, 0.45)
        canvas.fill(_ellipse(p[0], p[1], a * 0.16, b * 0.08, ang), _uniform(rng, BONE_ECHO) * u(0.3, 0.6))
    return {"thalami": np.concatenate(thal)}


def _band_pocket(canvas: _Canvas, rng, centre, length_px, gap_px, angle_deg, wall_px) -> np.ndarray:
    """A dark elongated fluid pocket inside a blob of tissue (a fold of the
    uterine wall, a loop of cord, a limb). Only its upper and lower walls, which
    face the beam, are bright: locally it looks like an NT. Returns the
    outline of the pocket with its walls."""
    a, b = length_px / 2, gap_px / 2
    blob = _ellipse(centre[0], centre[1], a * rng.uniform(1.15, 1.5), b + wall_px * rng.uniform(3, 6), angle_deg)
    canvas.fill(blob, _uniform(rng, SOFT_TISSUE_ECHO))
    canvas.fill(_ellipse(centre[0], centre[1], a, b, angle_deg), _uniform(rng, FLUID_ECHO), texture=0.0)
    wall = _uniform(rng, SKIN_ECHO) * rng.uniform(0.5, 0.9)
    for t0 in (np.pi * 0.22, np.pi * 1.22):  # the lower and the upper wall
        arc = _ellipse(centre[0], centre[1], a, b + wall_px / 2, angle_deg, t0, t0 + np.pi * 0.56, 24)
        canvas.line(arc, wall * rng.uniform(0.7, 1.0), wall_px)
    return _ellipse(centre[0], centre[1], a, b + wall_px, angle_deg)


def _draw_background(canvas: _Canvas, rng, size) -> List[Tuple[str, np.ndarray]]:
    """Uterine wall at the bottom and placenta at a fan edge (before the fetus)."""
    h, w = size
    u = rng.uniform
    found = []
    xs = np.linspace(-0.1 * w, 1.1 * w, 40)
    if rng.random() < P_UTERINE_WALL:
        top = h * u(0.86, 1.0) + h * 0.03 * np.sin(xs / w * u(2, 6) + u(0, 6)) + (xs / w - 0.5) * h * u(-0.15, 0.15)
        wall = np.concatenate([np.stack([xs, top], 1), [[1.1 * w, 1.2 * h], [-0.1 * w, 1.2 * h]]])
        canvas.fill(wall, _uniform(rng, WALL_ECHO))
        canvas.specular_line(np.stack([xs, top], 1), _uniform(rng, SKIN_ECHO) * 0.6, h / REFERENCE_HEIGHT * u(2, 4))
        found.append(("uterine_wall", np.stack([xs, top], 1)))
    if rng.random() < P_PLACENTA:
        # A lens of textured tissue along the top (anterior) or bottom
        # (posterior) of the fan, with its bright chorionic plate.
        at_top = rng.random() < 0.6
        centre, half = u(0.1, 0.9) * w, u(0.4, 0.9) * w
        px_ = np.linspace(centre - half, centre + half, 48)
        thick = h * u(0.08, 0.2) * np.sqrt(np.clip(1 - ((px_ - centre) / half) ** 2, 0, 1))
        thick *= 1 + 0.15 * np.sin(px_ / w * u(4, 9) + u(0, 6))
        line = np.stack([px_, thick if at_top else h - thick], 1)
        far = -0.2 * h if at_top else 1.2 * h
        poly = np.concatenate([line, [[line[-1, 0], far], [line[0, 0], far]]])
        canvas.fill(poly, _uniform(rng, PLACENTA_ECHO), PLACENTA_TEXTURE)
        canvas.specular_line(line, _uniform(rng, SKIN_ECHO) * 0.7, h / REFERENCE_HEIGHT * u(2, 4))
        found.append(("placenta", line))
    return found


def _draw_amnion(canvas: _Canvas, rng, fetus: _Fetus, pose: _Pose, centre_x: float, nt_px: float,
                 nt_len_px: float) -> np.ndarray:
    """The amniotic membrane parallel to the fetal back at a fluid gap of about
    an NT thickness: skin line - fluid - membrane looks like an NT. Returns the
    outline (image pixels) of the fluid band with the membrane."""
    px = pose.scale
    length = rng.uniform(*DISTRACTOR_LENGTH_NT) * nt_len_px / px
    gap = rng.uniform(*DISTRACTOR_GAP_NT) * nt_px / px
    _, skin, n_in = fetus.skin_points(centre_x - length / 2, centre_x + length / 2, 60)
    wobble = 1 + 0.25 * np.sin(np.linspace(0, np.pi * rng.uniform(1, 3), len(skin)) + rng.uniform(0, 6))
    below_skin = fetus.skin_t / 2 + gap * wobble
    membrane = _offset(skin, n_in, -(below_skin + fetus.inner_t / 2))
    band = pose(np.concatenate([_offset(skin, n_in, -fetus.skin_t / 2), membrane[::-1]]))
    canvas.fill(band, _uniform(rng, FLUID_ECHO), texture=0.0)
    canvas.specular_line(pose(membrane), _uniform(rng, SKIN_ECHO) * rng.uniform(0.5, 0.95), px * rng.uniform(*INNER_LINE_R))
    return band


# ================================================================= image formation


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int, step: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of an ``h`` x ``w`` image, every ``step`` pixels."""
    ys, xs = np.mgrid[0:h:step, 0:w:step].astype(np.float32)
    return xs, ys


def _fan(rng, size) -> Dict:
    """Random sector geometry: the apex above the image and the half-angle."""
    h, w = size
    apex = np.array([w / 2 + rng.normal(0, APEX_X_STD_REL_W) * w, -_uniform(rng, APEX_HEIGHT_REL_H) * h])
    half_width = _uniform(rng, FAN_TOP_HALF_WIDTH_REL_W) * w
    return {"apex": apex, "half_angle": float(np.arctan2(half_width, -apex[1]))}


def _inside_fan(points: np.ndarray, fan: Dict) -> np.ndarray:
    d = np.asarray(points, float) - fan["apex"]
    return np.abs(d[:, 0]) <= np.tan(fan["half_angle"]) * d[:, 1]


def _fan_mask(size, fan: Dict) -> np.ndarray:
    xs, ys = _pixel_grid(*size)
    return np.abs(xs - np.float32(fan["apex"][0])) <= np.float32(np.tan(fan["half_angle"])) * (ys - np.float32(fan["apex"][1]))


def _depth_gain(size, fan: Dict, params: Dict) -> np.ndarray:
    """Attenuation ``exp(-a * depth)`` times the TGC curve (piecewise linear
    over the depth below the top row), computed coarsely and resized: it is smooth."""
    h, w = size
    xs, ys = _pixel_grid(h, w, DEPTH_GRID_STEP)
    depth = np.hypot(xs - np.float32(fan["apex"][0]), ys - np.float32(fan["apex"][1])) / np.float32(h)
    depth -= depth.min()
    knots = np.linspace(0.0, float(depth.max()) + 1e-3, TGC_KNOTS)
    gain = np.interp(depth, knots, params["tgc"]) * np.exp(-params["attenuation"] * depth)
    return cv2.resize(gain.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def _smooth_noise(rng, size, step: int, sigma_x: float, sigma_y: float) -> np.ndarray:
    """Unit-variance Gaussian noise drawn every ``step`` pixels, blurred by
    ``sigma_x``, ``sigma_y`` (in coarse pixels) and resized to ``size``."""
    h, w = size
    coarse = rng.standard_normal((-(-h // step), -(-w // step)), dtype=np.float32)
    coarse = cv2.GaussianBlur(coarse, (0, 0), sigma_x, sigmaY=sigma_y)
    coarse /= max(float(coarse.std()), 1e-6)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def _form_image(canvas: _Canvas, rng, fan: Dict, params: Dict) -> np.ndarray:
    """Texture, speckle, attenuation and TGC on the echo amplitude, then log
    compression, the display curve, blur and the sector mask."""
    h, w = size = canvas.echo.shape
    per_px = h / REFERENCE_HEIGHT
    amp = cv2.GaussianBlur(canvas.echo, (0, 0), EDGE_SOFTNESS_PX[0] * per_px, sigmaY=EDGE_SOFTNESS_PX[1] * per_px)
    # Tissue texture: a smooth log-normal field at two scales, per region,
    # smeared across the beam like everything in the image.
    log_texture = sum(_smooth_noise(rng, size, max(1, int(s * per_px / 3)), 3.0 * TEXTURE_ANISOTROPY, 3.0)
                      for s in TEXTURE_SIGMA_PX)
    region = cv2.GaussianBlur(canvas.texture, (0, 0), 2 * per_px)
    amp *= np.exp(params["texture"] / np.sqrt(len(TEXTURE_SIGMA_PX)) * region * log_texture)
    # Speckle: magnitude of a complex Gaussian field seen through the PSF; the
    # field is smooth, so it is drawn on a grid SPECKLE_GRID_STEP times coarser.
    step = SPECKLE_GRID_STEP
    sx = params["speckle_sigma"] / step
    sy = sx * params["speckle_axial_ratio"]
    field = rng.standard_normal((2, -(-h // step), -(-w // step)), dtype=np.float32)
    re, im = (cv2.resize(cv2.GaussianBlur(f, (0, 0), sx, sigmaY=sy), (w, h), interpolation=cv2.INTER_LINEAR)
              for f in field)
    speckle = np.sqrt(re * re + im * im)
    speckle /= max(float(speckle.mean()), 1e-6)
    m = params["speckle_strength"]
    amp *= (1 - m) + m * speckle
    amp *= _depth_gain(size, fan, params)
    amp += params["noise"] * rng.random((h, w), dtype=np.float32)
    # Log compression and the display curve.
    db = 20 * np.log10(np.maximum(amp, 1e-6)) + params["gain"]
    level = np.clip(1 + db / DYNAMIC_RANGE_DB, 0, 1) ** params["contrast"]
    black = params["black_level"]
    out = black + (255 - black) * level
    if params["blur_sigma"] > 0:
        out = cv2.GaussianBlur(out, (0, 0), params["blur_sigma"])
    out[~_fan_mask(size, fan)] = 0
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _overlay(img: np.ndarray, rng) -> None:
    """Scanner-like text at the top right and a grey bar at the top left."""
    h, w = img.shape
    per_px = h / REFERENCE_HEIGHT
    if rng.random() < P_TEXT_OVERLAY:
        lines = [t.format(g=int(rng.integers(80, 99)), n=int(rng.integers(-8, 6))) for t in TEXT_LINES]
        n = int(rng.integers(3, len(lines) + 1))
        scale = 0.33 * per_px
        thickness = max(1, int(round(per_px)))
        for i, text in enumerate(lines[:n]):
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
            y = int((6 + (i + 1) * 12) * per_px)
            cv2.putText(img, text, (w - tw - int(4 * per_px), y), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        int(rng.integers(170, 230)), thickness, cv2.LINE_AA)
    if rng.random() < P_GREY_BAR:
        x0, y0 = int(4 * per_px), int(10 * per_px)
        bar_h, bar_w = int(90 * per_px), max(2, int(5 * per_px))
        ramp = np.linspace(230, 10, bar_h).astype(np.uint8)[:, None]
        img[y0 : y0 + bar_h, x0 : x0 + bar_w] = ramp


# ================================================================= one image


def _negative(seed: int, index: int, negative_fraction: float) -> bool:
    """Whether image ``index`` is a negative: a Weyl sequence with a per-seed
    phase spreads the negatives evenly, so any N images have ~N*fraction."""
    phase = np.random.default_rng(np.random.SeedSequence([seed])).random()
    return ((index + 1) * _GOLDEN + phase) % 1.0 < negative_fraction


def _structure_box(points: np.ndarray, size) -> Optional[Tuple[int, int, int, int]]:
    """Integer box (x0, y0, x1, y1) clipped to the image, or None when less
    than MIN_VISIBLE_FRACTION of it is inside or it is degenerate."""
    h, w = size
    x0, y0, x1, y1 = _bbox(points)
    area = max((x1 - x0) * (y1 - y0), 1e-9)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)
    if cx1 <= cx0 or cy1 <= cy0 or (cx1 - cx0) * (cy1 - cy0) < MIN_VISIBLE_FRACTION * area:
        return None
    box = (int(np.floor(cx0)), int(np.floor(cy0)), int(np.ceil(cx1)), int(np.ceil(cy1)))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box


def render_synthetic_nt(seed: int, index: int, size: Tuple[int, int] = (576, 768),
                        negative_fraction: float = 0.2) -> Tuple[np.ndarray, Dict]:
    """Render synthetic image ``index`` of the set ``seed``.

    Returns ``(image, annotation)``: ``image`` is an ``(H, W)`` uint8 grey
    image; ``annotation`` has ``"boxes"``, a list of ``(structure, x0, y0, x1,
    y1)`` integer pixel boxes inside the image (x = column, y = row), the
    spreadsheet rows; ``"distractors"``, ``(kind, x0, y0, x1, y1)`` boxes of the
    visible distractors (kinds ``amnion``, ``fluid_pocket``, ``placenta``,
    ``uterine_wall``; not written to the spreadsheet); and ``"meta"``, the row
    of metadata.csv for it (without ``fname``).
    """
    h, w = size
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    u = rng.uniform
    per_px = h / REFERENCE_HEIGHT
    is_negative = _negative(seed, index, negative_fraction)
    view = "midsagittal"
    if is_negative:
        view = "off_plane" if rng.random() < P_OFF_PLANE else "neck_out_of_view"
    has_nt = view == "midsagittal"

    # Sizes: R in pixels, pixel spacing, NT thickness and length.
    head_px = _uniform(rng, HEAD_RADIUS_REL_H) * h
    spacing = _uniform(rng, HEAD_RADIUS_MM) / head_px
    nt_mm = float(np.clip(NT_THICKNESS_MEDIAN_MM * np.exp(rng.normal(0, NT_THICKNESS_LOG_STD)), *NT_THICKNESS_RANGE_MM))
    nt_px = nt_mm / spacing
    nt_len_r = float(np.clip(NT_LENGTH_MEDIAN_R * np.exp(rng.normal(0, NT_LENGTH_LOG_STD)), *NT_LENGTH_RANGE_R))
    fetus = _Fetus(rng, nt_px / head_px, nt_len_r)

    flip = bool(rng.random() < 0.5)
    rotation = float(np.clip(rng.normal(0, ROTATION_STD_DEG), -ROTATION_MAX_DEG, ROTATION_MAX_DEG))
    target = np.array([
        np.clip(rng.normal(NT_CENTRE_X_MEAN, NT_CENTRE_X_STD), *NT_CENTRE_X_RANGE) * w,
        np.clip(rng.normal(NT_CENTRE_Y_MEAN, NT_CENTRE_Y_STD), *NT_CENTRE_Y_RANGE) * h,
    ])
    nt_local = fetus.nt_centre_local()
    pose = _Pose(head_px, rotation, flip, nt_local, target)
    if view == "neck_out_of_view":
        # Push the whole NT box (with a margin) below the image.
        y0 = _bbox(pose(fetus.nt_layers()[2]))[1]
        shift = h * (1 + OUT_OF_VIEW_MARGIN_REL + u(0, 0.08)) - y0
        pose = _Pose(head_px, rotation, flip, nt_local, target + np.array([0.0, shift]))

    fan = _fan(rng, size)
    canvas = _Canvas(size, _uniform(rng, FLUID_ECHO))
    background = _draw_background(canvas, rng, size)
    nt_box_img = _bbox(pose(fetus.nt_layers()[2]))
    nt_centre = np.array([(nt_box_img[0] + nt_box_img[2]) / 2, (nt_box_img[1] + nt_box_img[3]) / 2])
    nt_box_w = nt_box_img[2] - nt_box_img[0]

    # Distractors: (kind, outline in image pixels, NT-like?).
    distractors: List[Tuple[str, np.ndarray, bool]] = [(kind, line, False) for kind, line in background]
    nt_len_px = nt_len_r * head_px
    if view != "off_plane":
        if rng.random() < P_AMNION_UNDER_NECK:
            cx = fetus.nt_centre_x + u(-0.35, 0.35) * fetus.nt_length
            distractors.append(("amnion", _draw_amnion(canvas, rng, fetus, pose, cx, nt_px, nt_len_px), True))
        if rng.random() < P_AMNION_UNDER_TRUNK:
            cx = fetus.nt_centre_x + fetus.nt_length * u(0.9, 1.6) + 0.3
            cx = min(cx, fetus.trunk_end - 0.4)
            distractors.append(("amnion", _draw_amnion(canvas, rng, fetus, pose, cx, nt_px, nt_len_px), True))
    pockets = []
    if rng.random() < P_POCKET_NEAR_NECK:
        # Below the neck, between the skin/amnion and the bottom of the fan.
        below = np.array([u(-0.4, 0.4) * nt_box_w, (nt_box_img[3] - nt_centre[1]) + u(1.2, 2.5) * nt_px])
        pockets.append(nt_centre + below)
    for _ in range(int(rng.integers(POCKETS_ELSEWHERE[0], POCKETS_ELSEWHERE[1] + 1))):
        pockets.append(np.array([u(0.1, 0.9) * w, h * (u(0.03, 0.2) if rng.random() < 0.4 else u(0.88, 0.98))]))
    for c in pockets:
        length = u(*DISTRACTOR_LENGTH_NT) * nt_len_px
        gap = u(*DISTRACTOR_GAP_NT) * nt_px
        outline = _band_pocket(canvas, rng, c, length, gap, rotation + u(-6, 6), u(2, 5) * per_px)
        distractors.append(("fluid_pocket", outline, True))

    if view == "off_plane":
        structures = _draw_off_plane_fetus(canvas, rng, size, head_px)
    else:
        structures = _draw_sagittal_fetus(canvas, rng, fetus, pose, has_nt)

    params = {
        "texture": _uniform(rng, TEXTURE_AMPLITUDE),
        "speckle_sigma": _uniform(rng, SPECKLE_LATERAL_PX) * per_px,
        "speckle_axial_ratio": _uniform(rng, SPECKLE_AXIAL_RATIO),
        "speckle_strength": _uniform(rng, SPECKLE_STRENGTH),
        "attenuation": _uniform(rng, ATTENUATION),
        "tgc": rng.uniform(*TGC_RANGE, TGC_KNOTS),
        "noise": _uniform(rng, NOISE_FLOOR),
        "gain": _uniform(rng, GAIN),
        "contrast": _uniform(rng, CONTRAST),
        "black_level": _uniform(rng, BLACK_LEVEL),
        "blur_sigma": _uniform(rng, BLUR_PX) * per_px,
    }
    img = _form_image(canvas, rng, fan, params)
    _overlay(img, rng)

    boxes = []
    for name in STRUCTURES:
        if name not in structures:
            continue
        pts = structures[name]
        box = _structure_box(pts, size)
        if box is None or (name != "NT" and not _inside_fan(pts.mean(axis=0, keepdims=True), fan)[0]):
            continue
        boxes.append((name,) + box)
    if not boxes and "thalami" in structures:
        # Every image needs a row; the thalami are the most central structure.
        x0, y0, x1, y1 = _bbox(structures["thalami"])
        box = (int(np.clip(np.floor(x0), 0, w - 2)), int(np.clip(np.floor(y0), 0, h - 2)),
               int(np.clip(np.ceil(x1), 1, w - 1)), int(np.clip(np.ceil(y1), 1, h - 1)))
        box = (box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1))
        boxes.append(("thalami",) + box)

    # A distractor counts when the centre of its box is in the image and the fan.
    visible = []
    for kind, outline, like in distractors:
        x0, y0, x1, y1 = _bbox(outline)
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        if 0 <= centre[0] < w and 0 <= centre[1] < h and _inside_fan(centre[None], fan)[0]:
            box = (max(0, int(x0)), max(0, int(y0)), min(w - 1, int(np.ceil(x1))), min(h - 1, int(np.ceil(y1))))
            visible.append((kind, centre, like, box))
    near = has_nt and any(
        like and np.hypot(*(c - nt_centre)) <= NEAR_NECK_BOX_WIDTHS * nt_box_w for _, c, like, _ in visible
    )
    meta = {
        "pixel_spacing_mm": round(spacing, 5),
        "nt_thickness_px": round(nt_px, 3) if has_nt else 0.0,
        "nt_thickness_mm": round(nt_mm, 4) if has_nt else 0.0,
        "has_nt": int(has_nt),
        "view": view,
        "flip": int(flip),
        "rotation_deg": round(rotation, 3),
        "scale": round(head_px / h, 5),
        "gain": round(params["gain"], 4),
        "contrast": round(params["contrast"], 4),
        "speckle_sigma": round(params["speckle_sigma"], 4),
        "speckle_strength": round(params["speckle_strength"], 4),
        "blur_sigma": round(params["blur_sigma"], 4),
        "num_distractors": len(visible),
        "distractor_near_neck": int(near),
        "distractor_types": ";".join(sorted({k for k, _, _, _ in visible})),
    }
    return img, {"boxes": boxes, "distractors": [(k,) + box for k, _, _, box in visible], "meta": meta}


# ================================================================= the set


def _render_and_write(job) -> Tuple[List[Tuple], Dict]:
    """Worker: render image ``index`` and write it as a 3-channel PNG."""
    seed, index, size, negative_fraction, images_dir = job
    img, ann = render_synthetic_nt(seed, index, size, negative_fraction)
    fname = f"{index}.png"
    path = os.path.join(images_dir, fname)
    if not cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)):
        raise OSError(f"could not write {path}")
    rows = [(fname, name, y0, x0, y1, x1) for name, x0, y0, x1, y1 in ann["boxes"]]
    return rows, dict(fname=fname, **ann["meta"])


def _pool_context():
    """'fork' where the platform has it (fast start), else 'spawn' (the worker
    function and its arguments are module-level and picklable)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _init_worker() -> None:
    """One OpenCV thread per worker process: the processes are the parallelism."""
    cv2.setNumThreads(1)


def generate_synthetic_nt(out_dir: str, num: int, seed: int = 0, size=(576, 768), workers: int = 1,
                          overwrite: bool = False, progress: bool = True, negative_fraction: float = 0.2) -> dict:
    """Write a synthetic NT set of ``num`` images in the layout of the public
    "Dataset for Fetus Framework" (see the module docstring) to ``out_dir``.

    ``size`` is ``(H, W)``. The set is byte-identical for a ``seed`` whatever
    ``workers``. It is written into a hidden temporary folder next to
    ``out_dir`` and renamed at the end, so an interrupted run leaves no
    half-written set.

    Returns a summary: image, negative and NT counts, the views, the share of
    positives with an NT-like distractor near the neck, the mean number of
    distractors, the speed (images/s) and the output paths.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty, and ``overwrite``
            is false.
        ValueError: bad ``num``, ``size``, ``workers`` or ``negative_fraction``.
    """
    h, w = (int(v) for v in size)
    if num < 1 or h < 64 or w < 64 or workers < 1 or not 0.0 <= negative_fraction < 1.0:
        raise ValueError(f"bad arguments: num={num}, size={size}, workers={workers}, "
                         f"negative_fraction={negative_fraction}")
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    start = time.perf_counter()
    with staged_folder(out_dir) as tmp:
        images_dir = os.path.join(tmp, IMAGES_DIRNAME)
        os.makedirs(images_dir)
        jobs = [(seed, i, (h, w), negative_fraction, images_dir) for i in range(num)]
        if workers == 1:
            results = [_render_and_write(j) for j in tqdm(jobs, disable=not progress, desc="synthetic NT", unit="img")]
        else:
            with _pool_context().Pool(workers, initializer=_init_worker) as pool:
                it = pool.imap(_render_and_write, jobs, chunksize=max(1, min(16, num // (4 * workers))))
                results = list(tqdm(it, total=num, disable=not progress, desc="synthetic NT", unit="img"))
        rows = [r for image_rows, _ in results for r in image_rows]
        write_object_detection_xlsx(os.path.join(tmp, SPREADSHEET_FILENAME), rows)
        with open(os.path.join(tmp, METADATA_FILENAME), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METADATA_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(meta for _, meta in results)
    seconds = time.perf_counter() - start

    metas = [m for _, m in results]
    positives = [m for m in metas if m["has_nt"]]
    summary = {
        "num_images": num,
        "num_nt": len(positives),
        "num_negatives": num - len(positives),
        "views": {v: sum(m["view"] == v for m in metas) for v in VIEWS},
        "num_rows": len(rows),
        "fraction_distractor_near_neck": (sum(m["distractor_near_neck"] for m in positives) / len(positives)
                                          if positives else 0.0),
        "mean_num_distractors": float(np.mean([m["num_distractors"] for m in metas])),
        "seconds": seconds,
        "images_per_s": num / seconds if seconds > 0 else float("inf"),
        "out_dir": out_dir,
        "images_dir": os.path.join(out_dir, IMAGES_DIRNAME),
        "spreadsheet": os.path.join(out_dir, SPREADSHEET_FILENAME),
        "metadata": os.path.join(out_dir, METADATA_FILENAME),
    }
    logger.info("wrote %d synthetic images (%d with NT) to %s in %.1f s", num, len(positives), out_dir, seconds)
    return summary
