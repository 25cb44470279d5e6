"""The fetus of the synthetic scene, drawn as an echogenicity map (0 =
anechoic fluid, ~1 = bone or a specular skin line) in a fetal frame whose unit
is the head's semi-major axis ``R``: x points caudally (head -> trunk), y
posteriorly (face -> back).

The mid-sagittal fetus (:class:`_Fetus`, :func:`_draw_sagittal_fetus`) has a
head with skull rim, thalami, midbrain, brainstem, intracranial translucency
(IT), cisterna magna (CM); a face with nasal bone, nasal skin, nasal tip,
palate; neck and trunk with the spine. The NT is an anechoic band between the
skin line (outside) and the soft tissue over the cervical spine (inside),
following the posterior neck curve, with a lens-shaped thickness profile. The
off-plane view (:func:`_draw_off_plane_fetus`) is a rounder head cross-section
with a midline echo, no face and no NT.
"""
from typing import Dict

import numpy as np

from .geometry import _bbox, _Canvas, _chaikin, _ellipse, _offset, _Pose, _segment_outline, _uniform

# The structure names of the real spreadsheet, in its order.
STRUCTURES = ("thalami", "midbrain", "palate", "IT", "CM", "NT", "nasal tip", "nasal skin", "nasal bone")

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
# reflector (bone, skin) = 1; the display is log-compressed (image_formation),
# so fluid sits ~40 dB and soft tissue ~18 dB below bone.
FLUID_ECHO = (0.002, 0.007)
NT_FLUID_ECHO = (0.006, 0.035)  # the translucency is anechoic but thin: blur and clutter fill it
BRAIN_ECHO = (0.035, 0.07)
SOFT_TISSUE_ECHO = (0.09, 0.17)
BONE_ECHO = (0.6, 1.2)
SKIN_ECHO = (0.7, 1.3)
DARK_STRUCTURE_ECHO = (0.006, 0.02)
PLACENTA_ECHO = (0.18, 0.32)
WALL_ECHO = (0.09, 0.18)


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
