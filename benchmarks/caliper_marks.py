"""Locating the sonographer's two caliper marks on the NT, removing them, and
reading the scanner's on-screen distance text.

``benchmarks.calipers`` FLAGS whether an NT carries calipers; this module
LOCATES them, so that the sonographer's own measurement can serve as a
reference for the NT-thickness measurement (issue 22):

- :func:`locate_caliper_marks` -> :class:`CaliperMarks` (the upper and lower
  mark centres in pixels, sub-pixel, the style and a score) or None;
- :func:`caliper_mark_mask` and :func:`remove_caliper_marks` (``cv2.inpaint``
  where the marks were drawn, grey where only their smeared colour lies), so
  that a measurement can be run on the image without the marks;
- :func:`parse_distance_text` (the pure parser of "Dist 0.117 cm", "D 1.42 mm",
  ...) and :func:`read_distance_text` (Tesseract OCR of the read-out box, when
  the ``tesseract`` program is installed; the project does not require it);
- :func:`depth_scale_spacing`: the pixel spacing from the depth-scale marks at
  the image edge (5 mm apart), the second source of the spacing.

How the marks are found (what they look like is described in
``benchmarks/calipers.py``; the cue maps are that module's):

"plus" style (GE-like screens): two crisp grey plus signs, one above the other.
The plus and outline cue maps of ``benchmarks.calipers`` (in units of their
flag thresholds) give candidate peaks (>= 0.5; outside light-on-dark text
lines: the "Dist" read-out starts with a plus sign). Each peak is refined to
sub-pixel: where the plus cue dominates (a crisp 1-px plus with its outline)
at the plus response's peak (parabolic), otherwise (the outline of a wider
plus) at the centroid of the thin dark strokes around it (the outline is
symmetric about its centre). A candidate on colour (5 x 5 mean tint-free
chroma above 3 grey levels) is a coloured caliper's dot or cross, not a grey
plus mark, and is dropped. The pair is the two candidates, one below the other
(``dy >= 5`` px, ``dy <= 2.5 * box height + 10``, ``|dx| <= max(3, dy / 4)``),
whose mean cue is the largest. Score: that mean cue divided by 0.8
(:data:`PLUS_PAIR_CUE`; no caliper-free control box of the hand-labelled
sample reaches a plus cue of 0.75).

"coloured" style (most scanners): two small crosses joined by a dotted
vertical line, green/yellow/pink, heavily JPEG-smeared. Found in three steps:

1. the line's column: every column of the search region gets the best sum,
   over a run of rows, of ``min(thin / s_t, 3) + min(chroma / s_c, 3) - 1.5``
   averaged over 3 columns, where ``thin`` is the luma's thin-vertical-structure
   response (a pixel brighter, or darker, than both its horizontal neighbours
   1-3 px away: the dots and the crosses' vertical arms; a tissue edge gives 0),
   ``chroma`` the colour cue's gated tint-free chroma, and ``s_t``, ``s_c``
   their 90th percentiles in the region (the score is relative to the image's
   own texture and colour noise). Columns at the image border or beside a
   black panel (the sector's edge) are skipped. The best column wins, refined
   to sub-pixel on the luma line.
2. the line's extent: along that column, the rows where the luma shows a
   thin vertical line (``thin`` at the column minus its median 6-12 px to
   either side, over its 75th percentile; JPEG keeps the luma at full
   resolution) with colour beside it within 6 rows (the chroma is subsampled
   and smeared over 16-px blocks, but a luma line far from any colour is
   tissue); its best run above 0.8, then again above half that run's 75th
   percentile after a running maximum over 7 rows (which bridges the dotted
   line's gaps; the 3 rows it adds at each end are taken off): ``[top,
   bottom]``, searched within the NT box's rows +- 4 (on the plus-style
   screens, where the marks are crisp, every confident pair lies inside the
   box, within 2 px).
3. the cross centres: within 2 rows of ``top`` and of ``bottom``, the row
   where a cross fits best (a horizontal arm of 7 px and a vertical arm, in
   the luma's deviation from its 9 x 9 median minus the side columns'),
   sub-pixel by a parabola.

Score: the colour cue of ``benchmarks.calipers`` (the largest 9 x 3 window
mean of the gated chroma) measured on the located line alone (its 3 columns,
its rows +- 2), over that cue's threshold; a line whose contrast is below
:data:`COLOURED_MIN_CONTRAST` scores below 1 (doubtful) whatever its colour.
These crosses sit on the edge of an echogenic line, where their luma can
match the background: their rows are uncertain by about 2-3 px (3 px on the
synthetic tests), their column by under 1.5 px; the plus marks' centres by
under 1.5 px (2 px for the outline-only plus on an edge). See
``benchmarks/results/thickness/caliper_reference.md`` for the by-eye check on
the real images.

The channel order of the input does not matter (every cue is symmetric in the
three channels): BGR and RGB arrays give the same marks.
"""
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage as ndi

from benchmarks.calipers import (
    COLOUR_THRESHOLD,
    DEFAULT_MARGIN,
    OUTLINE_THRESHOLD,
    PLUS_THRESHOLD,
    _tint_free_chroma,
    as_float_image,
    gated_chroma,
    outline_response,
    plus_response,
    search_region,
)

__all__ = [
    "CaliperMarks",
    "COLOURED_MIN_CONTRAST",
    "PLUS_MIN_SCORE",
    "locate_caliper_marks",
    "caliper_mark_mask",
    "remove_caliper_marks",
    "DistanceReading",
    "parse_distance_text",
    "tesseract_available",
    "read_distance_text",
    "depth_scale_spacing",
]

# Plus-mark candidates: cue peaks at least this (in units of the flag
# thresholds: plus / PLUS_THRESHOLD or outline / OUTLINE_THRESHOLD).
PLUS_MIN_SCORE = 0.5
# A plus-style pair is confident (score 1) when its marks' mean cue reaches
# this: above every control box's plus cue (0.74) in the hand-labelled sample.
PLUS_PAIR_CUE = 0.8
# A coloured-style pair is confident only when the line's contrast (the 75th
# percentile along its extent's first run, in units of the region's 75th
# percentile of the thin-line map) reaches this.
COLOURED_MIN_CONTRAST = 1.5
# Marks closer than this (px) are one mark, not a pair.
MIN_SEPARATION = 5.0

_PAD = 12  # context around the search region for the filters
_ARM = 3  # half-length of a coloured cross's arms (px)
_END_REACH = 2  # cross centres are searched this far from the line's ends
EXTENT_SLACK = 4  # rows beyond the NT box where a coloured mark may lie
_GREY_MARK_CHROMA = 3.0  # a plus mark is grey: its 5 x 5 mean tint-free chroma stays below this


@dataclass(frozen=True)
class CaliperMarks:
    """The two caliper marks of one NT.

    Attributes:
        upper: (x, y) pixel centre of the upper mark (x = column, y = row;
            pixel centres at integers, sub-pixel values).
        lower: (x, y) pixel centre of the lower mark.
        style: "plus" or "coloured".
        score: >= 1 for a confident pair (see the module docstring; the
            style's own units, divided by its minimum).
    """

    upper: Tuple[float, float]
    lower: Tuple[float, float]
    style: str
    score: float

    @property
    def distance_px(self) -> float:
        """Euclidean distance between the mark centres (pixels)."""
        return float(np.hypot(self.lower[0] - self.upper[0], self.lower[1] - self.upper[1]))


# ------------------------------------------------------------------ helpers


def _best_runs(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each column of ``values`` (rows x columns), the largest sum over a
    run of consecutive rows and the run's first and last row (inclusive)."""
    rows, cols = values.shape
    cumulative = np.vstack([np.zeros((1, cols)), np.cumsum(values, axis=0)])
    low = cumulative[0].copy()
    low_at = np.zeros(cols, int)
    best = np.full(cols, -np.inf)
    first = np.zeros(cols, int)
    last = np.zeros(cols, int)
    for k in range(1, rows + 1):
        gain = cumulative[k] - low
        better = gain > best
        best = np.where(better, gain, best)
        first = np.where(better, low_at, first)
        last = np.where(better, k - 1, last)
        lower = cumulative[k] < low
        low = np.where(lower, cumulative[k], low)
        low_at = np.where(lower, k, low_at)
    return best, first, last


def _parabola(left: float, centre: float, right: float) -> float:
    """Offset (-0.5..0.5) of the vertex of the parabola through three samples."""
    if not np.all(np.isfinite([left, centre, right])):
        return 0.0
    curvature = left - 2.0 * centre + right
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


def _thin_response(grey: np.ndarray, axis: int) -> np.ndarray:
    """How much each pixel is brighter (or darker) than BOTH its neighbours
    ``d`` px away along ``axis`` (max over d = 1, 2, 3): thin lines and dots
    across that axis respond, step edges do not."""
    out = np.zeros_like(grey)
    for d in (1, 2, 3):
        pad = [(d, d), (0, 0)] if axis == 0 else [(0, 0), (d, d)]
        padded = np.pad(grey, pad, mode="edge")
        if axis == 0:
            before, after = padded[:-2 * d], padded[2 * d:]
        else:
            before, after = padded[:, :-2 * d], padded[:, 2 * d:]
        response = np.maximum(np.minimum(grey - before, grey - after), np.minimum(before - grey, after - grey))
        out = np.maximum(out, response)
    return out


def _window(region, height, width, pad=_PAD):
    x0, y0, x1, y1 = region
    wx0, wy0 = max(0, x0 - pad), max(0, y0 - pad)
    wx1, wy1 = min(width, x1 + pad), min(height, y1 + pad)
    window = (slice(wy0, wy1), slice(wx0, wx1))
    inner = (slice(y0 - wy0, y1 - wy0), slice(x0 - wx0, x1 - wx0))
    return window, inner, (wx0, wy0)


# ------------------------------------------------------------ plus style


def _dark_strokes(grey: np.ndarray) -> np.ndarray:
    """How much each pixel is darker than both its neighbours 1 px away,
    vertically or horizontally (whichever is more): thin dark strokes such as
    a plus mark's outline respond; step edges and thick bands do not."""
    padded = np.pad(grey, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    across_rows = np.minimum(padded[:-2, 1:-1], padded[2:, 1:-1]) - centre
    across_cols = np.minimum(padded[1:-1, :-2], padded[1:-1, 2:]) - centre
    return np.maximum(np.maximum(across_rows, across_cols), 0.0)


def _refine_mark(plus: np.ndarray, strokes: np.ndarray, y: int, x: int, crisp: bool,
                 half: int = 5, rounds: int = 3) -> Tuple[float, float]:
    """Sub-pixel centre of a plus mark found near (y, x).

    ``crisp`` (the plus cue dominates: a 1-px plus with its outline): the
    largest plus response within 2 px, with a parabolic sub-pixel peak.
    Otherwise (the outline of a wider plus): the centroid of the thin dark
    strokes (:func:`_dark_strokes`, weighted, above a quarter of their
    maximum) in a (2 half + 1)^2 window, recentred ``rounds`` times (the
    outline is symmetric about the centre; where the mark straddles a bright
    line's edge, the part on the dark side responds less and the centroid
    leans up to ~2 px toward the bright side)."""
    height, width = plus.shape
    if crisp:
        y0, y1 = max(1, y - 2), min(height - 1, y + 3)
        x0, x1 = max(1, x - 2), min(width - 1, x + 3)
        patch = plus[y0:y1, x0:x1]
        ky, kx = np.unravel_index(int(np.argmax(patch)), patch.shape)
        cy, cx = y0 + ky, x0 + kx
        return (cy + _parabola(plus[cy - 1, cx], plus[cy, cx], plus[cy + 1, cx]),
                cx + _parabola(plus[cy, cx - 1], plus[cy, cx], plus[cy, cx + 1]))
    cy, cx = float(y), float(x)
    for _ in range(rounds):
        iy, ix = int(round(cy)), int(round(cx))
        y0, y1 = max(0, iy - half), min(height, iy + half + 1)
        x0, x1 = max(0, ix - half), min(width, ix + half + 1)
        weights = strokes[y0:y1, x0:x1]
        if weights.size == 0 or weights.max() <= 0:
            break
        weights = np.where(weights >= 0.25 * weights.max(), weights, 0.0)
        ys, xs = np.mgrid[y0:y1, x0:x1]
        cy = float((ys * weights).sum() / weights.sum())
        cx = float((xs * weights).sum() / weights.sum())
    return cy, cx


def _locate_plus(pixels: np.ndarray, grey: np.ndarray, region, box_height: float,
                 min_score: float) -> Optional[CaliperMarks]:
    height, width = grey.shape
    window, inner, (wx0, wy0) = _window(region, height, width)
    g = grey[window]
    # plus marks are grey: a candidate on colour is a coloured caliper's dot or cross
    if pixels.ndim == 3:
        tint = ndi.uniform_filter(_tint_free_chroma(pixels, grey, window), size=5, mode="nearest")
    else:
        tint = np.zeros_like(g)
    plus_cue = plus_response(g) / PLUS_THRESHOLD
    outline_cue = outline_response(g) / OUTLINE_THRESHOLD
    cue = np.maximum(plus_cue, outline_cue)
    searched = np.zeros_like(cue)
    searched[inner] = cue[inner]
    # on-screen text (e.g. GE's "+ Dist 0.142 cm" read-out, whose plus sign is
    # the calipers' own) is not a mark
    for tx0, ty0, tx1, ty1 in _text_lines(g):
        searched[max(0, ty0 - 3):ty1 + 4, max(0, tx0 - 3):tx1 + 4] = 0.0
    peaks = (searched == ndi.maximum_filter(searched, size=5)) & (searched >= min_score)
    ys, xs = np.nonzero(peaks)
    if len(ys) < 2:
        return None
    strokes = _dark_strokes(g)
    local_cue = ndi.maximum_filter(cue, size=7)
    candidates = []  # strongest first, at least 5 px apart
    for k in np.argsort(-searched[ys, xs]):
        y, x = int(ys[k]), int(xs[k])
        if any(abs(y - cy) < 5 and abs(x - cx) < 5 for cy, cx in ((c[4], c[5]) for c in candidates)):
            continue
        ry, rx = _refine_mark(plus_cue, strokes, y, x, crisp=bool(plus_cue[y, x] >= outline_cue[y, x]))
        if tint[min(g.shape[0] - 1, int(round(ry))), min(g.shape[1] - 1, int(round(rx)))] > _GREY_MARK_CHROMA:
            continue
        strength = float(local_cue[min(g.shape[0] - 1, int(round(ry))), min(g.shape[1] - 1, int(round(rx)))])
        if any(np.hypot(ry + wy0 - c[0], rx + wx0 - c[1]) < 4.0 for c in candidates):
            continue  # another peak of a mark already refined (the outline cue has plateaus)
        candidates.append((ry + wy0, rx + wx0, strength, 0.0, y, x))
        if len(candidates) == 30:
            break
    max_dy = 2.5 * box_height + 10.0
    best = None
    for i, (ya, xa, sa, *_) in enumerate(candidates):
        for yb, xb, sb, *_ in candidates[i + 1:]:
            (yu, xu, su), (yl, xl, sl) = sorted([(ya, xa, sa), (yb, xb, sb)])
            dy, dx = yl - yu, abs(xl - xu)
            if dy < MIN_SEPARATION or dy > max_dy or dx > max(3.0, 0.25 * dy):
                continue
            key = ((su + sl) / 2.0, min(su, sl))
            if best is None or key > best[0]:
                best = (key, (xu, yu), (xl, yl))
    if best is None:
        return None
    return CaliperMarks(upper=best[1], lower=best[2], style="plus", score=float(best[0][0]) / PLUS_PAIR_CUE)


# --------------------------------------------------------- coloured style


def _locate_coloured(pixels: np.ndarray, grey: np.ndarray, region, box) -> Optional[CaliperMarks]:
    height, width = grey.shape
    x0, y0, x1, y1 = region
    window, inner, (wx0, wy0) = _window(region, height, width)
    g = grey[window]
    thin = _thin_response(g, axis=1)
    gated = gated_chroma(pixels, grey, window)

    # 1. the line's column
    s_t = max(1.0, float(np.percentile(thin[inner], 90)))
    s_c = max(1.0, float(np.percentile(gated[inner], 90)))
    evidence = np.minimum(thin / s_t, 3.0) + np.minimum(gated / s_c, 3.0)
    smoothed = ndi.uniform_filter1d(evidence, 3, axis=1, mode="nearest")
    # the image's own border and the edges of black screen panels (the
    # sector's border) are not lines: no column with black beside it
    columns = np.arange(window[1].start, window[1].stop)
    smoothed[:, (columns < 4) | (columns >= width - 4)] = 0.0
    black = (g < 8).mean(axis=0)
    beside_black = np.maximum(ndi.uniform_filter1d(black, 5, origin=2, mode="nearest"),
                              ndi.uniform_filter1d(black, 5, origin=-2, mode="nearest"))
    smoothed[:, ndi.maximum_filter1d(beside_black, 5, mode="nearest") > 0.8] = 0.0
    sums, first, last = _best_runs(smoothed[inner] - 1.5)
    column = int(np.argmax(sums))
    top, bottom = first[column] + inner[0].start, last[column] + inner[0].start
    xw = column + inner[1].start
    lo, hi = max(0, xw - 2), min(g.shape[1], xw + 3)
    line = thin[top:bottom + 1, lo:hi].sum(axis=0) / s_t + gated[top:bottom + 1, lo:hi].sum(axis=0) / s_c
    k = int(np.argmax(line))
    xw = lo + k
    dx = _parabola(line[k - 1], line[k], line[k + 1]) if 0 < k < len(line) - 1 else 0.0

    # 2. the line's extent along that column: the rows where the luma shows a
    # thin vertical line (minus the side columns 6-12 px away; JPEG keeps the
    # luma at full resolution) with colour next to it within 6 rows (the
    # chroma is subsampled and smeared over 16-px blocks, but a luma line far
    # from any colour is tissue), as one run that bridges the dotted line's
    # gaps (a running maximum over 7 rows, its widening taken off); inside the
    # NT box's rows +- EXTENT_SLACK (on the plus-style screens, where the marks
    # are crisp, every confident pair lies inside the box, within 2 px)
    rows0 = window[0].start
    side_cols = np.r_[max(0, xw - 12):max(0, xw - 5), xw + 6:min(g.shape[1], xw + 13)]
    if side_cols.size == 0:
        return None
    r0 = max(rows0 + _ARM, int(np.floor(float(box[1]))) - EXTENT_SLACK)
    r1 = min(window[0].stop - _ARM - 1, int(np.ceil(float(box[3]))) + EXTENT_SLACK)
    if r1 - r0 < MIN_SEPARATION + 1:
        return None
    rows_r = slice(r0 - rows0, r1 - rows0 + 1)
    chroma = _tint_free_chroma(pixels, grey, window)
    s_t2 = max(1.0, float(np.percentile(thin[inner], 75)))
    own = thin[:, max(0, xw - 1):xw + 2].max(axis=1)
    contrast = (own - np.median(thin[:, side_cols], axis=1)) / s_t2
    beside = chroma[:, max(0, xw - 3):xw + 4].mean(axis=1)
    away = np.c_[chroma[:, max(0, xw - 20):max(0, xw - 7)], chroma[:, xw + 8:xw + 21]]
    colour_excess = beside - (np.median(away, axis=1) if away.shape[1] else 0.0)
    colour_excess = ndi.maximum_filter1d(colour_excess, 13, mode="nearest")[rows_r]
    coloured = colour_excess >= max(2.0, 0.3 * float(colour_excess.max()))
    contrast = np.where(coloured, contrast[rows_r], 0.0)
    _, a, b = _best_runs((contrast - 0.8)[:, None])
    m = float(np.percentile(contrast[int(a[0]):int(b[0]) + 1], 75))  # the line's typical strength
    if m <= 0:
        return None
    bridged = ndi.maximum_filter1d(contrast, 7, mode="nearest")
    _, a, b = _best_runs((bridged - 0.5 * m)[:, None])
    top, bottom = int(a[0]) + 3 + r0, int(b[0]) - 3 + r0
    if bottom - top < MIN_SEPARATION:
        return None

    # 3. the cross centres: within END_REACH rows of the ends, the row where a
    # cross (horizontal arm of 2 ARM + 1 px and vertical arm, in the luma's
    # deviation from its 9 x 9 median, minus the side columns') fits best,
    # sub-pixel by a parabola
    residual = np.abs(g - ndi.median_filter(g, size=(9, 9), mode="nearest"))
    s_r = max(1.0, float(np.percentile(residual[inner], 75)))
    luma = np.minimum(residual / s_r, 4.0)
    excess = luma - np.median(luma[:, side_cols], axis=1, keepdims=True)
    arm = excess[:, max(0, xw - _ARM):xw + _ARM + 1].sum(axis=1)
    column_excess = excess[:, xw]

    def cross(y: int) -> float:  # y: window row
        return float(arm[y] + column_excess[y - _ARM:y].sum() + column_excess[y + 1:y + _ARM + 1].sum())

    def centre(end: int) -> float:
        rows = [y for y in range(end - _END_REACH, end + _END_REACH + 1) if _ARM <= y - rows0 < len(arm) - _ARM]
        if not rows:
            return float(end)
        values = [cross(y - rows0) for y in rows]
        k = int(np.argmax(values))
        y = rows[k]
        if 0 < k < len(rows) - 1:
            return float(y + _parabola(values[k - 1], values[k], values[k + 1]))
        return float(y)

    yu, yl = centre(top), centre(bottom)
    if yl - yu < MIN_SEPARATION:
        return None
    x = xw + dx + wx0
    # the score: the colour cue (benchmarks.calipers: the largest 9 x 3 mean of
    # the gated chroma) measured along the located line only, over its threshold
    line_colour = ndi.uniform_filter(gated, size=(9, 3), mode="nearest")
    rows_in = slice(max(0, top - 2 - rows0), bottom + 3 - rows0)
    colour = float(line_colour[rows_in, max(0, xw - 1):xw + 2].max())
    if m < COLOURED_MIN_CONTRAST:
        colour = min(colour, 0.99 * COLOUR_THRESHOLD)  # not a clear line: at most doubtful
    return CaliperMarks(upper=(x, yu), lower=(x, yl), style="coloured", score=colour / COLOUR_THRESHOLD)


# ------------------------------------------------------------ public API


def locate_caliper_marks(
    image: np.ndarray,
    nt_box: Sequence[float],
    margin: int = DEFAULT_MARGIN,
    style: Optional[str] = None,
    min_score: float = 1.0,
) -> Optional[CaliperMarks]:
    """The two caliper marks on the NT, or None when no pair is found.

    Args:
        image: (H, W, 3) uint8 (BGR or RGB: the result is the same) or (H, W)
            uint8 grey (then only the plus style can be found).
        nt_box: the NT box (x0, y0, x1, y1) pixels; the marks are searched in
            it enlarged by ``margin`` on every side.
        style: "plus" or "coloured" to search only that style; None searches
            both: a plus pair with score >= 1 wins (its marks are crisp),
            otherwise the pair with the higher score.
        min_score: pairs scoring below it are not returned (1: the confident
            ones; lower values also return doubtful pairs, their score says so).

    A returned pair may still be wrong where the image is ambiguous.
    """
    if style not in (None, "plus", "coloured"):
        raise ValueError(f"style must be None, 'plus' or 'coloured', got {style!r}")
    pixels = as_float_image(image)
    height, width = pixels.shape[:2]
    region = search_region(nt_box, margin, height, width)
    box_height = float(nt_box[3]) - float(nt_box[1])
    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    found = []
    if style in (None, "plus"):
        plus = _locate_plus(pixels, grey, region, box_height, PLUS_MIN_SCORE)
        if plus is not None and style is None and plus.score >= 1.0:
            return plus if plus.score >= min_score else None
        if plus is not None:
            found.append(plus)
    if style in (None, "coloured") and pixels.ndim == 3:
        coloured = _locate_coloured(pixels, grey, region, nt_box)
        if coloured is not None:
            found.append(coloured)
    found = [m for m in found if m.score >= min_score]
    if not found:
        return None
    return max(found, key=lambda m: m.score)


# --------------------------------------------------------------- removing


def _mark_masks(image: np.ndarray, marks: CaliperMarks, radius: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    """(drawn, smear): the pixels the marks were drawn on, and the pixels
    around them that only carry their compression-smeared colour."""
    pixels = as_float_image(image)
    height, width = pixels.shape[:2]
    if radius is None:
        radius = 5 if marks.style == "plus" else 4
    drawn = np.zeros((height, width), bool)

    def square(x: float, y: float, r: int) -> None:
        xi, yi = int(round(x)), int(round(y))
        drawn[max(0, yi - r):min(height, yi + r + 1), max(0, xi - r):min(width, xi + r + 1)] = True

    square(*marks.upper, radius)
    square(*marks.lower, radius)
    smear = np.zeros_like(drawn)
    if marks.style == "coloured":
        (xu, yu), (xl, yl) = marks.upper, marks.lower
        for y in range(max(0, int(np.floor(yu))), min(height, int(np.ceil(yl)) + 1)):
            t = 0.0 if yl == yu else (y - yu) / (yl - yu)
            x = int(round(xu + t * (xl - xu)))
            drawn[y, max(0, x - 1):min(width, x + 2)] = True
        if pixels.ndim == 3:
            # JPEG spreads the colour over its 16 x 16 chroma blocks
            grey = pixels.mean(axis=2)
            x0 = int(max(0, min(xu, xl) - 12 - radius))
            x1 = int(min(width, max(xu, xl) + 13 + radius))
            y0 = int(max(0, yu - 8 - radius))
            y1 = int(min(height, yl + 9 + radius))
            bx0, by0 = max(0, x0 - 20), max(0, y0 - 20)
            bx1, by1 = min(width, x1 + 20), min(height, y1 + 20)
            chroma = _tint_free_chroma(pixels, grey, (slice(by0, by1), slice(bx0, bx1)))
            near = np.zeros_like(drawn)
            near[y0:y1, x0:x1] = True
            around = ~near[by0:by1, bx0:bx1]
            background = chroma[around] if around.any() else chroma.ravel()
            level = max(2.0, 1.5 * float(np.percentile(background, 90)))
            smear[by0:by1, bx0:bx1] = chroma > level
            smear &= near
    drawn = ndi.binary_dilation(drawn, iterations=1)
    smear = ndi.binary_dilation(smear, iterations=1) & ~drawn
    return drawn, smear


def caliper_mark_mask(image: np.ndarray, marks: CaliperMarks, radius: Optional[int] = None) -> np.ndarray:
    """(H, W) bool mask of the pixels the caliper marks changed: for both
    styles a square of half-size ``radius`` around each mark (default 5 for
    "plus", 4 for "coloured"); for "coloured" also the dotted line between
    them (3 px wide) and the pixels around them that only carry their
    compression-smeared colour (JPEG spreads it over 16 x 16 chroma blocks):
    within ``radius + 12`` columns of the line and ``radius + 8`` rows beyond
    the crosses, tint-free chroma above 1.5 times the 90th percentile of the
    chroma up to 20 px further away (at least 2 grey levels); dilated by one
    pixel. ``image`` gives the shape (and the colour)."""
    drawn, smear = _mark_masks(image, marks, radius)
    return drawn | smear


def remove_caliper_marks(
    image: np.ndarray, marks: CaliperMarks, radius: Optional[int] = None, inpaint_radius: int = 3
) -> np.ndarray:
    """The image without the marks: the pixels they were drawn on inpainted
    (``cv2.inpaint``, Telea), the pixels that only carry their smeared colour
    set to their own grey level (their luma, i.e. the tissue, is kept); every
    pixel outside :func:`caliper_mark_mask` unchanged. Same shape and dtype
    (uint8) as ``image``."""
    import cv2

    array = np.asarray(image)
    as_float_image(array)  # validates
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    drawn, smear = _mark_masks(array, marks, radius)
    out = cv2.inpaint(np.ascontiguousarray(array), drawn.astype(np.uint8), inpaint_radius, cv2.INPAINT_TELEA)
    out = out.reshape(array.shape)
    if out.ndim == 3 and smear.any():
        grey = np.round(out[smear].astype(np.float32).mean(axis=1)).astype(np.uint8)
        out[smear] = grey[:, None]
    return out


# ------------------------------------------------- the on-screen distance


@dataclass(frozen=True)
class DistanceReading:
    """A distance read from the screen: ``mm`` (millimetres), the ``text`` it
    was parsed from and the text line's ``box`` (x0, y0, x1, y1) pixels."""

    mm: float
    text: str
    box: Optional[Tuple[int, int, int, int]] = None


# A measurement label ("Dist", "D", "D1", "NT", "Distance", "L"), a number and
# a unit (OCR noise after it is ignored: "cm]", "cml"); the label is required
# (the depth read-out "7.6cm / 1.3 / 38Hz" has none).
_DISTANCE = re.compile(
    r"(?<![a-z0-9])(dist(?:ance)?|d\d?|nt|l\d?)\s*[:=]?\s*([0-9oO]+(?:[.,][0-9oO]+)?)\s*(cm|mm|crn|rnm)",
    re.IGNORECASE,
)


def parse_distance_text(text: str) -> Optional[DistanceReading]:
    """The first labelled distance in ``text`` (e.g. "Dist 0.117 cm",
    "D 1.42 mm", "+ Dist 0.174cm", "NT: 1,6 mm"), in millimetres, or None.
    Common OCR confusions are undone (letter O for zero, comma for the decimal
    point, "crn" for "cm", "rnm" for "mm"). A number without a label (the
    depth read-out "7.6cm") is not a distance."""
    for match in _DISTANCE.finditer(text or ""):
        number = match.group(2).replace("o", "0").replace("O", "0").replace(",", ".")
        try:
            value = float(number)
        except ValueError:
            continue
        unit = match.group(3).lower()
        mm = round(value * 10.0 if unit in ("cm", "crn") else value, 6)
        return DistanceReading(mm=mm, text=match.group(0).strip())
    return None


def tesseract_available() -> bool:
    """Whether the ``tesseract`` OCR program is on the PATH (Debian:
    ``apt-get install tesseract-ocr``). Nothing here requires it."""
    return shutil.which("tesseract") is not None


def _text_lines(grey: np.ndarray) -> List[Tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) of light text lines on a dark background: light
    pixels (>= 150) next to dark ones (< 80), closed horizontally, as
    components 6-22 px high and at least twice as wide that hold at least two
    separate strokes (characters) on a ground at least half dark, with dark
    rows (median < 80) just above or below (text on a panel, not a tissue line
    with a mark on it), then joined into lines (same rows, gaps up to 12 px)."""
    import cv2

    light = grey >= 150
    near_dark = cv2.dilate((grey < 80).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    strokes = (light & near_dark).astype(np.uint8)
    joined = cv2.morphologyEx(strokes, cv2.MORPH_CLOSE, np.ones((3, 9), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    stroke_labels = cv2.connectedComponents(strokes, connectivity=8)[1]
    boxes = []
    for x, y, w, h, area in stats[1:]:
        if not (6 <= h <= 22 and w >= 2 * h and area >= 20):
            continue
        inside = grey[y:y + h, x:x + w]
        # text: several separate strokes (characters) on a mostly dark ground
        characters = len(np.unique(stroke_labels[y:y + h, x:x + w])) - 1
        above = grey[max(0, y - 2):y, x:x + w]
        below = grey[y + h:y + h + 2, x:x + w]
        on_dark = any(band.size and np.median(band) < 80 for band in (above, below))
        if characters >= 2 and (inside < 80).mean() >= 0.5 and on_dark:
            boxes.append([int(x), int(y), int(x + w), int(y + h)])
    boxes.sort(key=lambda b: (b[1], b[0]))
    lines: List[List[int]] = []
    for box in boxes:
        for line in lines:
            overlap = min(line[3], box[3]) - max(line[1], box[1])
            close = box[0] - line[2] <= 12 and line[0] - box[2] <= 12
            if overlap >= 0.5 * min(line[3] - line[1], box[3] - box[1]) and close:
                line[:] = [min(line[0], box[0]), min(line[1], box[1]), max(line[2], box[2]), max(line[3], box[3])]
                break
        else:
            lines.append(list(box))
    return [tuple(line) for line in lines]


def ocr_text_lines(image: np.ndarray, boxes: Sequence[Tuple[int, int, int, int]], scale: int = 3) -> List[str]:
    """Tesseract's reading of each text line box of ``image`` (light text on
    dark), in one call: each crop (2 px margin) is upscaled ``scale`` times,
    inverted to dark-on-light and binarised (Otsu); the crops are stacked 24 px
    apart and read as a block (``--psm 6``), each word going to the crop it
    lies on (Tesseract's TSV word boxes). Raises RuntimeError when
    ``tesseract`` is not installed."""
    import cv2

    if not tesseract_available():
        raise RuntimeError("tesseract is not installed (Debian: apt-get install tesseract-ocr); OCR is optional")
    if not boxes:
        return []
    pixels = as_float_image(image)
    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    height, width = grey.shape
    crops = []
    for x0, y0, x1, y1 in boxes:
        crop = grey[max(0, y0 - 2):min(height, y1 + 2), max(0, x0 - 2):min(width, x1 + 2)]
        crop = cv2.resize(crop.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        _, binary = cv2.threshold(255 - crop, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        crops.append(binary)
    gap = 24
    sheet_width = max(c.shape[1] for c in crops) + 2 * gap
    starts, rows, y = [], [], gap
    for crop in crops:
        starts.append(y)
        row = np.full((crop.shape[0] + gap, sheet_width), 255, np.uint8)
        row[:crop.shape[0], gap:gap + crop.shape[1]] = crop
        rows.append(row)
        y += row.shape[0]
    sheet = np.vstack([np.full((gap, sheet_width), 255, np.uint8)] + rows)
    ok, png = cv2.imencode(".png", sheet)
    result = subprocess.run(
        ["tesseract", "stdin", "stdout", "--psm", "6", "tsv"],
        input=png.tobytes(), capture_output=True, timeout=120, check=False,
    )
    words: List[List[Tuple[int, str]]] = [[] for _ in boxes]
    for line in result.stdout.decode("utf-8", "replace").splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) < 12 or fields[0] != "5" or not fields[11].strip():
            continue
        left, top, box_height = int(fields[6]), int(fields[7]), int(fields[9])
        middle = top + box_height / 2.0
        index = int(np.searchsorted(starts, middle, side="right")) - 1
        if 0 <= index < len(boxes):
            words[index].append((left, fields[11].strip()))
    return [" ".join(word for _, word in sorted(found)) for found in words]


def read_distance_text(image: np.ndarray) -> Optional[DistanceReading]:
    """The labelled distance shown on the screen (e.g. GE's "Dist 0.142 cm"
    read-out box), by OCR of the light-on-dark text lines, or None when no
    line parses as one (:func:`parse_distance_text`). Raises RuntimeError
    when ``tesseract`` is not installed (check :func:`tesseract_available`)."""
    pixels = as_float_image(image)
    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    boxes = _text_lines(grey)
    if not boxes:
        if not tesseract_available():
            raise RuntimeError("tesseract is not installed (Debian: apt-get install tesseract-ocr); OCR is optional")
        return None
    texts = ocr_text_lines(image, boxes)
    for k, (box, text) in enumerate(zip(boxes, texts)):
        candidates = [(text, box)]
        # a read-out split into two boxes on one row ("+ Dist" | "0.112 cm")
        for other, other_text in zip(boxes[k + 1:], texts[k + 1:]):
            same_row = min(box[3], other[3]) - max(box[1], other[1]) > 0
            if same_row and 0 <= other[0] - box[2] <= 40:
                joined = (min(box[0], other[0]), min(box[1], other[1]), max(box[2], other[2]), max(box[3], other[3]))
                candidates.append((text + " " + other_text, joined))
        for candidate, where in candidates:
            reading = parse_distance_text(candidate)
            if reading is not None:
                return DistanceReading(mm=reading.mm, text=candidate, box=tuple(int(v) for v in where))
    return None


# ------------------------------------------------------- the depth scale


@dataclass(frozen=True)
class DepthScale:
    """The depth-scale marks found at one image edge: ``step_px`` (the
    distance between neighbouring marks, pixels), ``mm_per_px`` (=
    ``step_mm / step_px``), the marks' column ``x``, their rows ``ys`` and
    ``side`` ("left" or "right")."""

    step_px: float
    mm_per_px: float
    step_mm: float
    x: int
    ys: Tuple[int, ...]
    side: str


def _scale_dots(grey: np.ndarray, x0: int, x1: int, contrast: float = 40.0) -> List[Tuple[int, int]]:
    """(y, x) of small isolated light marks (dots, short ticks) in the columns
    x0..x1: the pixel is the largest within 2 rows and lighter by
    ``contrast`` than the pixels 3 rows above and below and 5 columns left
    and right."""
    height, width = grey.shape
    g = np.pad(grey, 5, mode="edge")
    centre = g[5:-5, 5:-5]
    up, down = g[2:-8, 5:-5], g[8:-2, 5:-5]
    left, right = g[5:-5, :-10], g[5:-5, 10:]
    isolated = (centre - np.maximum(up, down) > contrast) & (centre - np.maximum(left, right) > contrast)
    peak = centre >= ndi.maximum_filter(grey, size=(5, 1), mode="nearest")
    found = isolated & peak
    found[:, :x0] = False
    found[:, x1:] = False
    ys, xs = np.nonzero(found)
    return list(zip(ys.tolist(), xs.tolist()))


def depth_scale_spacing(
    image: np.ndarray, step_mm: float = 5.0, left_band: int = 60, right_band: int = 100, min_marks: int = 5
) -> Optional[DepthScale]:
    """The pixel spacing from the depth scale: a column of small light dots at
    regular intervals near the left (``left_band`` px; GE Voluson-like screens)
    or right (``right_band`` px; GE LOGIQ-like screens) image edge.

    The dots are ``step_mm`` apart (5 mm: checked on the images that also
    show a "Dist" read-out, see ``benchmarks/results/thickness/
    caliper_reference.md``). Returns the column with the most dots on a
    regular lattice (at least ``min_marks``, 30-200 px apart, each within 2 px
    of ``y0 + k * step``; at most a quarter of the lattice's places empty and
    at most half as many other dots in the column: text is neither regular
    nor alone), or None."""
    pixels = as_float_image(image)
    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    height, width = grey.shape
    best: Optional[DepthScale] = None
    for side, x0, x1 in (("left", 0, min(width, left_band)), ("right", max(0, width - right_band), width)):
        dots = _scale_dots(grey, x0, x1)
        columns: dict = {}
        for y, x in dots:
            columns.setdefault(x, []).append(y)
        for x in sorted(columns):
            ys = sorted(set(columns.get(x - 1, []) + columns[x] + columns.get(x + 1, [])))
            ys = [y for k, y in enumerate(ys) if k == 0 or y - ys[k - 1] > 2]
            if len(ys) < min_marks:
                continue
            diffs = np.diff(ys)
            phase = np.array(ys, float)
            for anchor, step in zip(phase[:-1], diffs):
                if not 30 <= step <= 200:
                    continue
                # dots on the lattice through this dot with this step (refined below)
                on = np.abs((phase - anchor) / step - np.round((phase - anchor) / step)) * step <= 2.0
                if on.sum() < min_marks:
                    continue
                chosen = phase[on]
                k = np.round((chosen - anchor) / step)
                if len(np.unique(k)) < 2:
                    continue
                refined = float(np.polyfit(k, chosen, 1)[0])
                expected = int(k.max() - k.min()) + 1
                off_lattice = len(ys) - int(on.sum())
                if on.sum() < 0.75 * expected or off_lattice > on.sum() / 2:
                    continue  # a scale is regular and alone in its column (text is neither)
                if best is None or on.sum() > len(best.ys) or (on.sum() == len(best.ys) and refined < best.step_px):
                    best = DepthScale(
                        step_px=refined, mm_per_px=step_mm / refined, step_mm=step_mm, x=int(x),
                        ys=tuple(int(v) for v in chosen), side=side,
                    )
    return best
