"""Image formation of the synthetic scene: from the echogenicity map to the
8-bit grey image a scanner would show.

On the echo amplitude: soft edges, tissue texture, speckle (the magnitude of a
complex Gaussian field blurred by an anisotropic point-spread function), depth
attenuation with random TGC sliders and electronic noise; then log compression
with a gain (dB) and a display curve (``contrast`` is its exponent), blur, the
sector mask (black outside) and scanner-like text.

The scanner settings (:func:`_scanner_settings`) and the random fields
(:func:`_random_fields`: texture, speckle, noise) are drawn separately from
forming the image (:func:`_form_image`), so the same scene and settings can be
formed with another draw of the fields (``speckle_seed`` of
:func:`~voting_det.data.synthetic.render_synthetic_nt`).
"""
import functools
from typing import Dict, List, Tuple

import cv2
import numpy as np

from .geometry import REFERENCE_HEIGHT, _Canvas, _uniform

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


def _scanner_settings(rng, size) -> Dict:
    """Random scanner settings of one image: texture amplitude, speckle PSF and
    strength, attenuation, TGC sliders, noise floor, gain, display curve, blur."""
    per_px = size[0] / REFERENCE_HEIGHT
    return {
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


def _coarse_shape(size, step: int) -> Tuple[int, int]:
    """Shape of a grid every ``step`` pixels over an image of ``size``."""
    h, w = size
    return -(-h // step), -(-w // step)


def _texture_steps(size) -> List[int]:
    """Grid step (pixels) of the tissue texture's noise at each scale of TEXTURE_SIGMA_PX."""
    per_px = size[0] / REFERENCE_HEIGHT
    return [max(1, int(s * per_px / 3)) for s in TEXTURE_SIGMA_PX]


def _random_fields(rng, size) -> Dict:
    """The random fields of the image formation, in the order they are drawn:
    unit Gaussian noise for the tissue texture (one coarse grid per scale), the
    complex speckle field (real and imaginary parts, every SPECKLE_GRID_STEP
    pixels) and the electronic noise (uniform, per pixel). They depend on
    ``rng`` and ``size`` only, not on the scene or the settings."""
    h, w = size
    texture = [rng.standard_normal(_coarse_shape(size, step), dtype=np.float32) for step in _texture_steps(size)]
    speckle = rng.standard_normal((2,) + _coarse_shape(size, SPECKLE_GRID_STEP), dtype=np.float32)
    noise = rng.random((h, w), dtype=np.float32)
    return {"texture": texture, "speckle": speckle, "noise": noise}


def _smooth(coarse: np.ndarray, size, sigma_x: float, sigma_y: float) -> np.ndarray:
    """Coarse unit Gaussian noise blurred by ``sigma_x``, ``sigma_y`` (in coarse
    pixels), scaled back to unit variance and resized to ``size``."""
    h, w = size
    coarse = cv2.GaussianBlur(coarse, (0, 0), sigma_x, sigmaY=sigma_y)
    coarse /= max(float(coarse.std()), 1e-6)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


def _form_image(canvas: _Canvas, fields: Dict, fan: Dict, params: Dict) -> np.ndarray:
    """Texture, speckle, attenuation and TGC on the echo amplitude, then log
    compression, the display curve, blur and the sector mask. ``fields``:
    :func:`_random_fields`; ``params``: :func:`_scanner_settings`."""
    h, w = size = canvas.echo.shape
    per_px = h / REFERENCE_HEIGHT
    amp = cv2.GaussianBlur(canvas.echo, (0, 0), EDGE_SOFTNESS_PX[0] * per_px, sigmaY=EDGE_SOFTNESS_PX[1] * per_px)
    # Tissue texture: a smooth log-normal field at two scales, per region,
    # smeared across the beam like everything in the image.
    log_texture = sum(_smooth(coarse, size, 3.0 * TEXTURE_ANISOTROPY, 3.0) for coarse in fields["texture"])
    region = cv2.GaussianBlur(canvas.texture, (0, 0), 2 * per_px)
    amp *= np.exp(params["texture"] / np.sqrt(len(TEXTURE_SIGMA_PX)) * region * log_texture)
    # Speckle: magnitude of a complex Gaussian field seen through the PSF; the
    # field is smooth, so it is drawn on a grid SPECKLE_GRID_STEP times coarser.
    sx = params["speckle_sigma"] / SPECKLE_GRID_STEP
    sy = sx * params["speckle_axial_ratio"]
    re, im = (cv2.resize(cv2.GaussianBlur(f, (0, 0), sx, sigmaY=sy), (w, h), interpolation=cv2.INTER_LINEAR)
              for f in fields["speckle"])
    speckle = np.sqrt(re * re + im * im)
    speckle /= max(float(speckle.mean()), 1e-6)
    m = params["speckle_strength"]
    amp *= (1 - m) + m * speckle
    amp *= _depth_gain(size, fan, params)
    amp += params["noise"] * fields["noise"]
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
