"""Two non-learned NT localisation baselines, used to show how hard a data set is.

* :func:`fit_mean_box` / :func:`mean_box_prediction`: the constant box, the mean
  of the training NT boxes in relative coordinates. It measures how much the NT
  position alone gives away.
* :func:`darkest_band_detector`: the hand-made rule "the NT is a dark horizontal
  band between two bright lines". It slides windows of typical NT sizes over
  the (smoothed) fan and scores each by how much darker its inside is than the
  rows just above and just below it. It measures how much the LOCAL appearance
  gives away; NT-like distractors (amnion under the back, fluid pockets) are
  what defeats it.

Boxes here are ``(x0, y0, x1, y1)`` in pixels (x = column, y = row); score
them with :func:`voting_det.evaluation.metrics.box_iou`.
"""
from typing import Iterable, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "darkest_band_detector",
    "estimate_fan_mask",
    "fit_mean_box",
    "mean_box_prediction",
]

# A pixel of the blurred image brighter than this (0-255) is echo, not the
# black surround of the sector.
FAN_ECHO_THRESHOLD = 6
# Box filter (pixels) applied before thresholding the fan.
FAN_BLUR_PX = 7
# Closing kernel (pixels) that joins the fan's echoes across dark fluid.
FAN_CLOSE_PX = 25

# Window sizes tried by the darkest-band detector, relative to the image
# (width / W, height / H): they span the 5th-95th percentiles of real NT boxes
# (width 0.19-0.66 W, height 0.04-0.13 H).
BAND_WIDTHS_REL = (0.25, 0.4, 0.55)
BAND_HEIGHTS_REL = (0.045, 0.07, 0.1)
# Height of each flank (the rows above and below the window that must be
# bright), as a fraction of the window height.
BAND_FLANK_FRACTION = 0.5
# Gaussian smoothing (pixels, per 480 image rows) before scoring.
BAND_SMOOTH_SIGMA = 2.0
# Grid stride as a fraction of the window size.
BAND_STRIDE_FRACTION = 0.125
# A window (with its flanks) must lie this much inside the fan.
BAND_MIN_FAN_FRACTION = 0.95
REFERENCE_HEIGHT = 480


def fit_mean_box(boxes: Iterable[Sequence[float]], sizes: Iterable[Tuple[int, int]]) -> np.ndarray:
    """Mean of ``boxes`` (x0, y0, x1, y1 pixels) in coordinates relative to
    their images' ``sizes`` (H, W): returns ``(x0/W, y0/H, x1/W, y1/H)``."""
    rel = [(b[0] / w, b[1] / h, b[2] / w, b[3] / h) for b, (h, w) in zip(boxes, sizes)]
    if not rel:
        raise ValueError("fit_mean_box needs at least one box")
    return np.mean(np.asarray(rel, dtype=np.float64), axis=0)


def mean_box_prediction(mean_rel: Sequence[float], size: Tuple[int, int]) -> Tuple[float, float, float, float]:
    """The constant mean box (from :func:`fit_mean_box`) in an image of ``size`` (H, W)."""
    h, w = size
    return (mean_rel[0] * w, mean_rel[1] * h, mean_rel[2] * w, mean_rel[3] * h)


def estimate_fan_mask(gray: np.ndarray) -> np.ndarray:
    """Boolean mask of the ultrasound sector, estimated from the image alone.

    The largest connected region of echo (after closing the gaps that dark
    fluid leaves) is taken as the sector; each of its rows is then filled
    between its outermost pixels, since a sector is convex along rows. Scanner
    text in the black corners forms separate small regions and is dropped.
    """
    blurred = cv2.blur(gray, (FAN_BLUR_PX, FAN_BLUR_PX))
    echo = (blurred > FAN_ECHO_THRESHOLD).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (FAN_CLOSE_PX, FAN_CLOSE_PX))
    echo = cv2.morphologyEx(echo, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(echo, connectivity=8)
    if count <= 1:
        return np.ones(gray.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = labels == largest
    rows = np.flatnonzero(region.any(axis=1))
    first = np.argmax(region[rows], axis=1)
    last = region.shape[1] - 1 - np.argmax(region[rows, ::-1], axis=1)
    cols = np.arange(region.shape[1])
    mask = np.zeros_like(region)
    mask[rows] = (cols[None, :] >= first[:, None]) & (cols[None, :] <= last[:, None])
    return mask


def _window_sums(integral: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sums over the ``h`` x ``w`` windows with top-left corners ``(y0, x0)``
    (broadcast arrays) from an OpenCV integral image."""
    return integral[y0 + h, x0 + w] - integral[y0, x0 + w] - integral[y0 + h, x0] + integral[y0, x0]


def darkest_band_detector(
    gray: np.ndarray,
    fan_mask: Optional[np.ndarray] = None,
    widths_rel: Sequence[float] = BAND_WIDTHS_REL,
    heights_rel: Sequence[float] = BAND_HEIGHTS_REL,
) -> Tuple[Tuple[float, float, float, float], float]:
    """Top-1 box of the rule "NT = darkest horizontal band between bright rows".

    For every window size (``widths_rel`` x ``heights_rel`` of the image) and
    every grid position whose window and flanks lie inside the fan, the score
    is ``min(mean(flank above), mean(flank below)) - mean(window)`` on the
    smoothed image, where each flank is ``BAND_FLANK_FRACTION`` of the window
    height tall. The best-scoring window over all sizes is returned with its
    score; ``fan_mask`` defaults to :func:`estimate_fan_mask`.
    """
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    img_h, img_w = gray.shape
    if fan_mask is None:
        fan_mask = estimate_fan_mask(gray)
    sigma = BAND_SMOOTH_SIGMA * img_h / REFERENCE_HEIGHT
    smooth = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), sigma)
    integral = cv2.integral(smooth, sdepth=cv2.CV_64F)
    fan_integral = cv2.integral(fan_mask.astype(np.uint8), sdepth=cv2.CV_64F)

    best_box, best_score = (0.0, 0.0, float(img_w), float(img_h)), -np.inf
    for wr in widths_rel:
        for hr in heights_rel:
            w = max(2, int(round(wr * img_w)))
            h = max(2, int(round(hr * img_h)))
            flank = max(1, int(round(BAND_FLANK_FRACTION * h)))
            if w >= img_w or h + 2 * flank >= img_h:
                continue
            step_x = max(1, int(round(BAND_STRIDE_FRACTION * w)))
            step_y = max(1, int(round(BAND_STRIDE_FRACTION * h)))
            ys = np.arange(flank, img_h - h - flank + 1, step_y)[:, None]
            xs = np.arange(0, img_w - w + 1, step_x)[None, :]
            inside = _window_sums(integral, ys, xs, h, w) / (h * w)
            above = _window_sums(integral, ys - flank, xs, flank, w) / (flank * w)
            below = _window_sums(integral, ys + h, xs, flank, w) / (flank * w)
            in_fan = _window_sums(fan_integral, ys - flank, xs, h + 2 * flank, w) / ((h + 2 * flank) * w)
            score = np.minimum(above, below) - inside
            score[in_fan < BAND_MIN_FAN_FRACTION] = -np.inf
            k = int(np.argmax(score))
            if score.flat[k] > best_score:
                iy, ix = np.unravel_index(k, score.shape)
                y, x = int(ys[iy, 0]), int(xs[0, ix])
                best_box, best_score = (float(x), float(y), float(x + w), float(y + h)), float(score.flat[k])
    return best_box, best_score
