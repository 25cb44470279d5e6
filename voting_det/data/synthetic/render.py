"""One synthetic image: :func:`render_synthetic_nt` draws the scene
(:mod:`.anatomy`, :mod:`.distractors`), places it, forms the image
(:mod:`.image_formation`) and derives the boxes and the metadata row.

A similarity transform (scale, rotation, left/right flip, translation) places
the fetus so that the NT centre lands where real NT boxes lie. About
``negative_fraction`` of the images (spread evenly over the indices by a Weyl
sequence) are negatives: either another plane (``off_plane``) or the
mid-sagittal fetus shifted so that the neck is outside the image
(``neck_out_of_view``).
"""
from typing import Dict, List, Optional, Tuple

import numpy as np

from .anatomy import (
    FLUID_ECHO,
    HEAD_RADIUS_MM,
    NT_LENGTH_LOG_STD,
    NT_LENGTH_MEDIAN_R,
    NT_LENGTH_RANGE_R,
    NT_THICKNESS_LOG_STD,
    NT_THICKNESS_MEDIAN_MM,
    NT_THICKNESS_RANGE_MM,
    STRUCTURES,
    _draw_off_plane_fetus,
    _draw_sagittal_fetus,
    _Fetus,
)
from .distractors import (
    DISTRACTOR_GAP_NT,
    DISTRACTOR_LENGTH_NT,
    NEAR_NECK_BOX_WIDTHS,
    P_AMNION_UNDER_NECK,
    P_AMNION_UNDER_TRUNK,
    P_POCKET_NEAR_NECK,
    POCKETS_ELSEWHERE,
    _band_pocket,
    _draw_amnion,
    _draw_background,
)
from .geometry import REFERENCE_HEIGHT, _bbox, _Canvas, _Pose, _uniform
from .image_formation import _fan, _form_image, _inside_fan, _overlay, _random_fields, _scanner_settings

VIEWS = ("midsagittal", "off_plane", "neck_out_of_view")

# Pose, matched to the real NT boxes (centre x/W 5-95%: 0.25-0.70, median 0.47;
# centre y/H 0.73-0.89, median 0.82).
NT_CENTRE_X_MEAN, NT_CENTRE_X_STD, NT_CENTRE_X_RANGE = 0.47, 0.13, (0.15, 0.82)
NT_CENTRE_Y_MEAN, NT_CENTRE_Y_STD, NT_CENTRE_Y_RANGE = 0.815, 0.048, (0.68, 0.94)
HEAD_RADIUS_REL_H = (0.30, 0.43)  # R in pixels / image height
ROTATION_STD_DEG, ROTATION_MAX_DEG = 2.0, 15.0

# Negatives: share of off-plane views (the rest have the neck out of view).
P_OFF_PLANE = 0.5
# How far outside the image the NT box is pushed in neck_out_of_view images
# (fraction of the image height).
OUT_OF_VIEW_MARGIN_REL = 0.04
# A structure box is kept when this share of its area is inside the image.
MIN_VISIBLE_FRACTION = 0.6

# Weyl-sequence step for spreading negatives evenly over the indices.
_GOLDEN = 0.6180339887498949


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


def render_synthetic_nt(seed: int, index: int, size: Tuple[int, int] = (576, 768), negative_fraction: float = 0.2,
                        speckle_seed: Optional[int] = None) -> Tuple[np.ndarray, Dict]:
    """Render synthetic image ``index`` of the set ``seed``.

    ``speckle_seed`` (None: the set's own image) re-draws the random fields of
    the image formation (tissue texture, speckle, electronic noise) from
    ``numpy.random.default_rng([seed, index, speckle_seed])``; everything else
    (anatomy, pose, distractors, scanner settings, text) is the set's own, so
    the image shows the same scene with new speckle.

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

    params = _scanner_settings(rng, size)
    fields = _random_fields(rng, size)  # drawn in every case: the text overlay draws after them
    if speckle_seed is not None:
        fields = _random_fields(np.random.default_rng([seed, index, speckle_seed]), size)
    img = _form_image(canvas, fields, fan, params)
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
