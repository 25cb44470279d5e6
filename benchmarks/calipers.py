"""Flagging images whose NT carries the sonographer's calipers.

The evaluation protocol reports every metric with and without the images that
show calipers on the NT, so that a model which learned to find the calipers
(rather than the translucency) is exposed. This module is the flag: a small,
deterministic, hand-designed detector (no learned weights), checked against a
hand-labelled sample of the real development set
(``benchmarks/results/caliper_labels.csv``, measured agreement in
``benchmarks/results/caliper_detector.md``).

What calipers look like in the real data (737 screen captures, heavily
JPEG-compressed before being saved as PNG):

- "coloured" style (most scanners): two small crosses at the upper and lower
  edge of the translucency joined by a vertical dotted line, drawn in green,
  yellow or pink. Compression has smeared them into a narrow dark block with a
  faint tint (chroma only 5-30 grey levels away from grey), so the colour is
  weak but clustered, and luminance alone hardly shows them.
- "plus" style (GE-like screens, e.g. all 640x450 ones, ~10% of the set): two
  crisp grey plus signs, one above the other, with no line between them and
  no colour: either a light 5x5 plus with a black outline (or the reverse), or
  the black outline of a plus with 2-px arms; the "Dist 0.142 cm" read-out
  box elsewhere on the screen starts with the same plus sign.

In the development set nearly every annotated image carries calipers (all 200
randomly drawn ones did), so the flag mostly separates "calipers seen" from
"calipers too faint to see" there; it matters for other data.

Overlays that are not calipers: scanner text (white, sometimes with a coloured
line), depth-scale dots and ruler lines, focal-zone markers, logos, thumbnail
insets and black screen borders. They lie near the image edges, mostly outside
the NT box, so the detector looks only inside the NT box enlarged by a margin
(inside it they can still raise a cue: measured on control boxes, see the
report).

The rule (three cues, any one flags the image):

1. colour: each pixel's distance from the grey axis,
   ``sqrt(sum_c (I_c - mean(I))**2)``, after removing the image's own tint
   (the median of each channel's offset from grey, per band of 16 grey
   levels); pixels in near-black or near-white surroundings (3x3 mean grey
   < 12 or > 220) and within 3 px of the image border are ignored (their
   chroma is compression noise or clipping). The cue is the largest mean of
   that chroma over a 9 (high) x 3 (wide) window in the search region: a
   caliper line or cross is a vertical cluster of tinted pixels, JPEG chroma
   noise mostly is not.
2. plus: at each pixel, ``min(centre and its 4 neighbours) - max(its 4
   diagonal neighbours)`` (a light plus with dark corners) or the same with
   the polarities swapped (a dark plus); the cue is the largest value in the
   search region. Blurred anatomy, text, dots and edges give <= ~7 grey
   levels, the light/dark plus calipers 12-107.
3. outline: thin dark strokes in both directions within 5 px of each other:
   ``min(max_5x5(min(up, down) - centre), max_5x5(min(left, right) - centre))``
   (neighbours 1 px away), largest value in the search region: the outlined
   plus gives 50-130, tissue <= ~46, but white-on-black text gives 50-120 too.

``score = max(colour / COLOUR_THRESHOLD, plus / PLUS_THRESHOLD, outline /
OUTLINE_THRESHOLD)``; the image is flagged when ``score >= 1``. The three
thresholds were chosen on the "dev" rows of the hand-labelled sample and then
checked, unchanged, on a held-out random sample (see the report).
The channel order of the input does not matter: every cue is symmetric in the
three channels, so BGR (detectron2, OpenCV) and RGB (PIL) arrays give the
same result.
"""
import json
import os
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "DEFAULT_MARGIN",
    "COLOUR_THRESHOLD",
    "PLUS_THRESHOLD",
    "OUTLINE_THRESHOLD",
    "CaliperEvidence",
    "as_float_image",
    "gated_chroma",
    "outline_response",
    "plus_response",
    "search_region",
    "caliper_evidence",
    "detect_calipers",
    "score_dataset",
    "flag_dataset",
    "read_image",
]

# Pixels added on every side of the NT box before searching: the crosses sit on
# the box's upper and lower edges and reach a few pixels beyond them.
DEFAULT_MARGIN = 16

# Thresholds, in the cues' own units (grey levels), chosen on the "dev" rows of
# benchmarks/results/caliper_labels.csv by `tools/flag_calipers.py --check ...
# --choose` (for each cue: the midpoint of the gap between the dev negatives and
# the dev positives of the style the cue is meant for, or the best balanced
# accuracy where they overlap); see benchmarks/results/caliper_detector.md.
COLOUR_THRESHOLD = 5.72
PLUS_THRESHOLD = 9.5
OUTLINE_THRESHOLD = 42.5

# Colour cue settings (see the module docstring).
_TINT_BAND = 16  # grey levels per band when estimating the image's tint
_TINT_MIN_PIXELS = 50  # bands with fewer pixels get no tint correction
_DARK = 12.0  # 3x3 mean grey below which chroma is ignored (near black: noise)
_BRIGHT = 220.0  # 3x3 mean grey above which chroma is ignored (clipped white)
_BORDER = 3  # image border (px) where chroma is ignored
_COLOUR_WINDOW = (9, 3)  # (rows, columns) of the chroma averaging window
_OUTLINE_WINDOW = 5  # neighbourhood joining horizontal and vertical strokes
_PAD = 8  # context kept around the search region for the filters


@dataclass(frozen=True)
class CaliperEvidence:
    """The detector's measurements on one image (or one box of it).

    Attributes:
        calipers: the flag (``score >= 1``).
        score: ``max(colour / COLOUR_THRESHOLD, plus / PLUS_THRESHOLD,
            outline / OUTLINE_THRESHOLD)`` (or the thresholds passed in).
        colour: the colour cue (grey levels of chroma).
        plus: the small-plus cue (grey levels).
        outline: the outlined-plus cue (grey levels).
        region: the searched region, XYXY pixels (end-exclusive).
    """

    calipers: bool
    score: float
    colour: float
    plus: float
    outline: float
    region: Tuple[int, int, int, int]


def _search_region(box, margin: int, height: int, width: int) -> Tuple[int, int, int, int]:
    if box is None:
        return 0, 0, width, height
    if len(box) != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1) in pixels, got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        raise ValueError(f"box must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {box!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    rx0 = max(0, int(np.floor(x0)) - margin)
    ry0 = max(0, int(np.floor(y0)) - margin)
    rx1 = min(width, int(np.ceil(x1)) + margin)
    ry1 = min(height, int(np.ceil(y1)) + margin)
    if rx1 <= rx0 or ry1 <= ry0:
        raise ValueError(f"box {box!r} (margin {margin}) lies outside the {width}x{height} image")
    return rx0, ry0, rx1, ry1


def _as_float_image(image) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]  # drop alpha
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
        raise ValueError(f"expected an (H, W, 3) colour or (H, W) grey image, got shape {array.shape}")
    if array.shape[0] < 3 or array.shape[1] < 3:
        raise ValueError(f"image too small: {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image (0-255), got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return array.astype(np.float32)


def _tint_free_chroma(image: np.ndarray, grey: np.ndarray, window: Tuple[slice, slice]) -> np.ndarray:
    """Distance from the grey axis inside ``window``, after removing the image's
    tint (per band of grey levels, the median offset of each channel from grey,
    estimated on every second pixel of the whole image)."""
    offsets = image - grey[:, :, None]
    bands = np.minimum((grey / _TINT_BAND).astype(np.int64), 255 // _TINT_BAND)
    sample_bands = bands[::2, ::2].ravel()
    sample_offsets = offsets[::2, ::2].reshape(-1, 3)
    tint = np.zeros((255 // _TINT_BAND + 1, 3), np.float32)
    for band in np.unique(sample_bands):
        chosen = sample_bands == band
        if chosen.sum() >= _TINT_MIN_PIXELS:
            tint[band] = np.median(sample_offsets[chosen], axis=0)
    residual = offsets[window] - tint[bands[window]]
    return np.sqrt((residual ** 2).sum(axis=2))


def gated_chroma(pixels: np.ndarray, grey: np.ndarray, window: Tuple[slice, slice]) -> np.ndarray:
    """The colour cue's map inside ``window`` (a pair of slices of the image):
    the tint-free chroma (grey levels), 0 where the 3x3 mean grey is near black
    or near white and within ``_BORDER`` px of the image border.

    ``pixels``: (H, W, 3) float32 image; ``grey``: its channel mean (H, W).
    The colour cue is the largest 9 x 3 window mean of this map."""
    height, width = grey.shape
    chroma = _tint_free_chroma(pixels, grey, window)
    local_grey = ndi.uniform_filter(grey[window], size=3, mode="nearest")
    chroma[(local_grey < _DARK) | (local_grey > _BRIGHT)] = 0.0
    rows = np.arange(height)[window[0]][:, None]
    cols = np.arange(width)[window[1]][None, :]
    near_border = (rows < _BORDER) | (rows >= height - _BORDER) | (cols < _BORDER) | (cols >= width - _BORDER)
    chroma[near_border] = 0.0
    return chroma


def _plus_response(grey: np.ndarray) -> np.ndarray:
    """``max(min(arms) - max(diagonals), min(diagonals) - max(arms))`` at every
    interior pixel (arms: the pixel and its 4 neighbours; diagonals: its 4
    diagonal neighbours); 0 on the outermost rows and columns."""
    out = np.zeros_like(grey)
    c = grey[1:-1, 1:-1]
    arms = np.stack([c, grey[:-2, 1:-1], grey[2:, 1:-1], grey[1:-1, :-2], grey[1:-1, 2:]])
    diagonals = np.stack([grey[:-2, :-2], grey[:-2, 2:], grey[2:, :-2], grey[2:, 2:]])
    light = arms.min(axis=0) - diagonals.max(axis=0)
    dark = diagonals.min(axis=0) - arms.max(axis=0)
    out[1:-1, 1:-1] = np.maximum(np.maximum(light, dark), 0.0)
    return out


def _outline_response(grey: np.ndarray) -> np.ndarray:
    """Thin dark strokes in both directions close together: at every pixel,
    ``min(max over a 5x5 neighbourhood of (min(up, down) - centre),
          max over a 5x5 neighbourhood of (min(left, right) - centre))``
    (neighbours 1 px away; edge pixels replicated)."""
    padded = np.pad(grey, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    horizontal = np.minimum(padded[:-2, 1:-1], padded[2:, 1:-1]) - centre  # a dark horizontal stroke
    vertical = np.minimum(padded[1:-1, :-2], padded[1:-1, 2:]) - centre  # a dark vertical stroke
    both = np.minimum(
        ndi.maximum_filter(horizontal, size=_OUTLINE_WINDOW, mode="nearest"),
        ndi.maximum_filter(vertical, size=_OUTLINE_WINDOW, mode="nearest"),
    )
    return np.maximum(both, 0.0)


def caliper_evidence(
    image: np.ndarray,
    box: Optional[Sequence[float]] = None,
    margin: int = DEFAULT_MARGIN,
    colour_threshold: float = COLOUR_THRESHOLD,
    plus_threshold: float = PLUS_THRESHOLD,
    outline_threshold: float = OUTLINE_THRESHOLD,
) -> CaliperEvidence:
    """Measure the three cues in ``box`` enlarged by ``margin`` (the whole image
    when ``box`` is None) and return them with the flag.

    Args:
        image: (H, W, 3) uint8 array, BGR or RGB (the result is the same), or
            (H, W) uint8 grey (the colour cue is then 0).
        box: the NT box as (x0, y0, x1, y1) pixels (detectron2's XYXY_ABS);
            None searches the whole image, where scanner overlays (coloured
            text, depth-scale dots) can raise the colour cue: whole-image
            flags are not validated (the hand-labelled check uses NT boxes).
        margin: pixels added on every side of ``box``.
        colour_threshold, plus_threshold, outline_threshold: the cues'
            thresholds (defaults: the module constants, chosen on the dev rows).
    """
    pixels = _as_float_image(image)
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = _search_region(box, margin, height, width)
    # Work on the region plus some context, so that the filters see real pixels.
    wx0, wy0 = max(0, x0 - _PAD), max(0, y0 - _PAD)
    wx1, wy1 = min(width, x1 + _PAD), min(height, y1 + _PAD)
    window = (slice(wy0, wy1), slice(wx0, wx1))
    inner = (slice(y0 - wy0, y1 - wy0), slice(x0 - wx0, x1 - wx0))

    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    plus = float(_plus_response(grey[window])[inner].max())
    outline = float(_outline_response(grey[window])[inner].max())

    if pixels.ndim == 2:
        colour = 0.0
    else:
        chroma = gated_chroma(pixels, grey, window)
        colour = float(ndi.uniform_filter(chroma, size=_COLOUR_WINDOW, mode="nearest")[inner].max())

    score = max(colour / colour_threshold, plus / plus_threshold, outline / outline_threshold)
    return CaliperEvidence(
        calipers=bool(score >= 1.0),
        score=float(score),
        colour=colour,
        plus=plus,
        outline=outline,
        region=(x0, y0, x1, y1),
    )


def detect_calipers(
    image: np.ndarray,
    box: Optional[Sequence[float]] = None,
    margin: int = DEFAULT_MARGIN,
) -> Tuple[bool, float]:
    """``(flag, score)`` for one image: whether calipers are visible in ``box``
    (x0, y0, x1, y1 pixels) enlarged by ``margin``, or anywhere when ``box`` is
    None. ``image`` is an (H, W, 3) uint8 array in BGR or RGB order (either:
    the result is the same) or (H, W) grey. ``score >= 1`` means flagged; see
    :func:`caliper_evidence` for the three cues behind it."""
    evidence = caliper_evidence(image, box, margin)
    return evidence.calipers, evidence.score


def read_image(path: str) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def score_dataset(
    coco_json_path: str,
    image_root: Optional[str] = None,
    margin: int = DEFAULT_MARGIN,
) -> Dict[str, dict]:
    """Run the detector on every image of a COCO file (as written by
    ``tools/convert_fetus_framework.py``).

    Returns ``{file_name: {"calipers", "score", "colour", "plus", "outline", "box"}}`` keyed
    by the COCO ``file_name`` (relative to the image root). An image with
    several boxes is flagged when any box is; one without boxes is searched
    whole (``"box": None``; not validated, see :func:`caliper_evidence`).
    ``image_root`` defaults to the folder the converter recorded in the file's
    ``info``.
    """
    with open(coco_json_path) as f:
        coco = json.load(f)
    if image_root is None:
        from voting_det.data.datasets import _image_root_of

        image_root = _image_root_of(coco_json_path, coco.get("info", {}))
    boxes: Dict[object, list] = {}
    for a in coco.get("annotations", []):
        x, y, w, h = a["bbox"]
        boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    out = {}
    for record in coco["images"]:
        image = read_image(os.path.join(image_root, record["file_name"]))
        image_boxes = boxes.get(record["id"]) or [None]
        found = [caliper_evidence(image, b, margin) for b in image_boxes]
        best = max(range(len(found)), key=lambda k: found[k].score)
        entry = asdict(found[best])
        entry.pop("region")
        entry["box"] = image_boxes[best]
        out[record["file_name"]] = entry
    return out


def flag_dataset(
    coco_json_path: str, image_root: Optional[str] = None, margin: int = DEFAULT_MARGIN
) -> Dict[str, bool]:
    """``{file_name: flag}`` for every image of a COCO file; see :func:`score_dataset`."""
    return {name: entry["calipers"] for name, entry in score_dataset(coco_json_path, image_root, margin).items()}


# The cue maps and input checks, for benchmarks.caliper_marks (which locates the marks).
as_float_image = _as_float_image
search_region = _search_region
plus_response = _plus_response
outline_response = _outline_response
