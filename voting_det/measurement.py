"""NT thickness from a detection, as a sonographer measures it (the
Fetal Medicine Foundation's rule): the maximum thickness of the translucency,
calipers "on-on" on the inner borders of the two echogenic lines.

Three methods, each giving two caliper points (x, y) and the distance between
them in pixels:

- ``"profile"``: from the image inside the detected box. Along each column
  band of the box's middle part, the vertical intensity profile (smoothed)
  shows the dark translucency between two bright lines: the darkest row in the
  box, and the *nearest* local maximum above and below it that rises at least
  ``PROFILE_MIN_CONTRAST`` above it and at least ``PROFILE_LINE_SHARE`` of the
  brightest row's rise on its side (a brighter line farther out is another
  layer; a speckle bump inside a wide translucency is no line). Each inner
  border is where the profile, going from that line's maximum towards the
  dark minimum, falls half-way between them (sub-pixel, by linear
  interpolation). The thickness is a robust maximum over the bands:
  the band at their 75th centile (``PROFILE_BAND_PERCENTILE``; the plain
  maximum of noisy bands runs long). Both choices were made on development
  images only (benchmarks/results/thickness/profile_decision.md);
- ``"borders"``: the upper and lower borders the model's border votes placed
  (``MODEL.VOTING.BORDER_AXES`` with "y"), at the box's centre column;
- ``"box"``: the box's height at its centre column (the naive baseline).

All coordinates are image pixels (x right, y down). Millimetres need the
pixel spacing (mm per pixel, the same along y for every method here).
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

__all__ = [
    "MEASUREMENT_METHODS",
    "NT_CUTOFF_MM",
    "Measurement",
    "box_measurement",
    "border_measurement",
    "profile_measurement",
    "to_millimetres",
]

MEASUREMENT_METHODS = ("profile", "borders", "box")
# The 99th centile of NT thickness (FMF) at which further testing is offered.
NT_CUTOFF_MM = 3.5
# Share of the box width (centred) the profile method reads: the NT's ends curve away.
PROFILE_WIDTH_FRACTION = 0.6
# Margin above and below the box, as a share of its height, so that lines on the box's edge are inside.
PROFILE_HEIGHT_MARGIN = 0.25
# Column band width in pixels: profiles are averaged over it (speckle).
PROFILE_BAND_PX = 5
# Vertical Gaussian smoothing of the profiles (pixels).
PROFILE_SMOOTH_PX = 1.0
# The measured band: the one at this centile of the bands' thicknesses (a robust maximum).
PROFILE_BAND_PERCENTILE = 75
# A band counts when both lines are at least this much brighter than the dark minimum (grey levels).
PROFILE_MIN_CONTRAST = 8.0
# ... and each line at least this share of the brightest row's rise on its side of the minimum
# (speckle inside a wide translucency is no line); 0 = the absolute contrast only.
PROFILE_LINE_SHARE = 0.25


@dataclass
class Measurement:
    """Two caliper points (upper, lower), each ``(x, y)`` in image pixels, and
    their distance in pixels; ``valid`` False when the method found no NT
    profile (the calipers are then NaN)."""

    calipers: np.ndarray  # (2, 2)
    thickness_px: float
    valid: bool = True

    @classmethod
    def invalid(cls) -> "Measurement":
        return cls(np.full((2, 2), np.nan), float("nan"), False)


def _from_points(x: float, y_upper: float, y_lower: float) -> Measurement:
    return Measurement(np.array([[x, y_upper], [x, y_lower]], dtype=float), float(y_lower - y_upper))


def box_measurement(box: Sequence[float]) -> Measurement:
    """The naive baseline: the box's height, calipers on its upper and lower
    edges at its centre column."""
    x0, y0, x1, y1 = map(float, box)
    return _from_points((x0 + x1) / 2, y0, y1)


def border_measurement(box: Sequence[float], border_positions: Sequence[Optional[float]]) -> Measurement:
    """The model's voted upper and lower borders (``border_positions`` = x_left,
    y_top, x_right, y_bottom of the trace; y_top / y_bottom None or NaN when
    the model does not vote along y) at the box's centre column."""
    _, top, _, bottom = border_positions
    if top is None or bottom is None or not (np.isfinite(top) and np.isfinite(bottom)) or bottom <= top:
        return Measurement.invalid()
    x0, _, x1, _ = map(float, box)
    return _from_points((x0 + x1) / 2, float(top), float(bottom))


def _crossing(profile: np.ndarray, start: int, stop: int, level: float) -> Optional[float]:
    """First position going from index ``start`` towards ``stop`` where
    ``profile`` falls to ``level`` (linear interpolation between samples)."""
    step = 1 if stop > start else -1
    for i in range(start, stop, step):
        a, b = profile[i], profile[i + step]
        if a >= level > b or a > level >= b:
            return i + step * (a - level) / (a - b)
    return None


def _band_thickness(profile: np.ndarray, lo: int, hi: int) -> Optional[Tuple[float, float]]:
    """Inner borders (upper, lower) of the dark band of ``profile`` whose
    minimum lies in rows ``[lo, hi)``: the half-way crossings between the
    minimum and the nearest local maximum above it and below it that is at
    least ``PROFILE_MIN_CONTRAST`` brighter than the minimum and rises at least
    ``PROFILE_LINE_SHARE`` of the brightest row's rise on its side."""
    if hi - lo < 1:
        return None
    dark = lo + int(np.argmin(profile[lo:hi]))
    floor = profile[dark]
    # local maxima, the profile's two ends included (a line cut by the region's edge)
    peaks = find_peaks(np.concatenate(([-np.inf], profile, [-np.inf])))[0] - 1
    rise = profile[peaks] - floor
    side_max_above = profile[:dark].max() - floor if dark > 0 else 0.0
    side_max_below = profile[dark + 1:].max() - floor if dark + 1 < len(profile) else 0.0
    need = np.where(peaks < dark, side_max_above, side_max_below) * PROFILE_LINE_SHARE
    bright = peaks[(rise >= PROFILE_MIN_CONTRAST) & (rise >= need)]
    above, below = bright[bright < dark], bright[bright > dark]
    if len(above) == 0 or len(below) == 0:
        return None
    upper, lower = int(above.max()), int(below.min())
    top = _crossing(profile, upper, dark, (profile[upper] + floor) / 2)
    bottom = _crossing(profile, lower, dark, (profile[lower] + floor) / 2)
    if top is None or bottom is None or bottom <= top:
        return None
    return top, bottom


def profile_measurement(grey: np.ndarray, box: Sequence[float]) -> Measurement:
    """The intensity-profile measurement inside ``box`` (XYXY pixels) of the
    grey image ``grey`` (H, W); see the module docstring. Coordinates follow
    the pixel-centre convention: row r is at y = r + 0.5."""
    grey = np.asarray(grey, dtype=np.float64)
    if grey.ndim != 2:
        raise ValueError(f"profile_measurement needs a grey (H, W) image, got shape {grey.shape}")
    h_img, w_img = grey.shape
    x0, y0, x1, y1 = map(float, box)
    width, height = x1 - x0, y1 - y0
    if width <= 0 or height <= 0:
        return Measurement.invalid()
    cx = (x0 + x1) / 2
    c0 = int(np.clip(np.floor(cx - width * PROFILE_WIDTH_FRACTION / 2), 0, w_img - 1))
    c1 = int(np.clip(np.ceil(cx + width * PROFILE_WIDTH_FRACTION / 2), c0 + 1, w_img))
    r0 = int(np.clip(np.floor(y0 - PROFILE_HEIGHT_MARGIN * height), 0, h_img - 1))
    r1 = int(np.clip(np.ceil(y1 + PROFILE_HEIGHT_MARGIN * height), r0 + 1, h_img))
    region = grey[r0:r1, c0:c1]
    if region.shape[0] < 5:
        return Measurement.invalid()
    # the dark minimum is looked for inside the box itself, not in its margins
    lo = int(np.clip(np.floor(y0) - r0, 0, region.shape[0]))
    hi = int(np.clip(np.ceil(y1) - r0, lo, region.shape[0]))
    bands = max(1, region.shape[1] // PROFILE_BAND_PX)
    # band b spans columns [b * PROFILE_BAND_PX, (b + 1) * PROFILE_BAND_PX), the last one the rest
    edges = np.minimum(np.arange(bands + 1) * PROFILE_BAND_PX, region.shape[1])
    edges[-1] = region.shape[1]
    means = np.add.reduceat(region, edges[:-1], axis=1) / np.diff(edges)  # (rows, bands)
    profiles = gaussian_filter1d(means, PROFILE_SMOOTH_PX, axis=0, mode="nearest")
    found = [_band_thickness(profiles[:, b], lo, hi) for b in range(bands)]
    tops = np.array([np.nan if f is None else f[0] for f in found])
    bottoms = np.array([np.nan if f is None else f[1] for f in found])
    xs = c0 + (edges[:-1] + edges[1:]) / 2
    thickness = bottoms - tops
    if not np.isfinite(thickness).any():
        return Measurement.invalid()
    # the band at the 75th centile of the found bands' thicknesses (an actual band, so
    # that the calipers and the thickness belong together)
    found = np.flatnonzero(np.isfinite(thickness))
    level = np.percentile(thickness[found], PROFILE_BAND_PERCENTILE, method="nearest")
    best = int(found[np.argmin(np.abs(thickness[found] - level))])
    # rows to image y (pixel centres at r + 0.5)
    return _from_points(float(xs[best]), r0 + tops[best] + 0.5, r0 + bottoms[best] + 0.5)


def to_millimetres(thickness_px: float, pixel_spacing_mm: Optional[float]) -> float:
    """Thickness in mm for a pixel spacing in mm per pixel; NaN when unknown
    (None or <= 0)."""
    if pixel_spacing_mm is None or not pixel_spacing_mm > 0:
        return float("nan")
    return float(thickness_px) * float(pixel_spacing_mm)
