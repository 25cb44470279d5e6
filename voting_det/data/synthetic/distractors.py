"""Distractors of the synthetic scene: structures that look like an NT locally
but are in the wrong place, drawn in the same echogenicity map as the fetus:
the amniotic membrane parallel to the fetal back with fluid between (often
right under the neck), fluid pockets with bright walls, the placenta and the
uterine wall."""
from typing import List, Tuple

import numpy as np

from .anatomy import FLUID_ECHO, INNER_LINE_R, PLACENTA_ECHO, SKIN_ECHO, SOFT_TISSUE_ECHO, WALL_ECHO, _Fetus
from .geometry import PLACENTA_TEXTURE, REFERENCE_HEIGHT, _Canvas, _ellipse, _offset, _Pose, _uniform

# NT-like distractors have a dark band of this many NT thicknesses and this
# many NT lengths.
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
