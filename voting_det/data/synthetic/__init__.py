"""Synthetic first-trimester mid-sagittal ultrasound images with NT boxes.

The set mirrors the layout of the public "Dataset for Fetus Framework" (Cui and
Dong 2022) exactly, so the converter and loaders that read the real set are
exercised on it every day::

    out_dir/Train & Val/0.png, 1.png, ...   3-channel 8-bit PNGs (grey replicated)
    out_dir/ObjectDetection.xlsx            fname, structure, h_min, w_min, h_max, w_max
    out_dir/metadata.csv                    per-image truth (NT thickness, pose, ...)

Unlike the real copy it has annotated NEGATIVES (rows for other structures but
no ``NT`` row) and records the true NT thickness.

How an image is made (:func:`render_synthetic_nt`, module :mod:`.render`):

1. A scene is drawn as an echogenicity map (0 = anechoic fluid, ~1 = bone or a
   specular skin line) in a fetal frame whose unit is the head's semi-major
   axis ``R``: x points caudally (head -> trunk), y posteriorly (face -> back).
   The fetus is mid-sagittal (:mod:`.anatomy`): head with skull rim, thalami,
   midbrain, brainstem, intracranial translucency (IT), cisterna magna (CM);
   face with nasal bone, nasal skin, nasal tip, palate; neck and trunk with
   the spine. The NT is an anechoic band between the skin line (outside) and
   the soft tissue over the cervical spine (inside), following the posterior
   neck curve, with a lens-shaped thickness profile.
2. A similarity transform (scale, rotation, left/right flip, translation;
   :mod:`.geometry`) places the fetus so that the NT centre lands where real
   NT boxes lie.
3. Distractors that look like an NT locally but are in the wrong place are
   drawn in the same map (:mod:`.distractors`): the amniotic membrane parallel
   to the fetal back with fluid between (often right under the neck), fluid
   pockets with bright walls, the placenta and the uterine wall.
4. Image formation on the echo amplitude (:mod:`.image_formation`): soft
   edges, tissue texture, speckle (the magnitude of a complex Gaussian field
   blurred by an anisotropic point-spread function), depth attenuation with
   random TGC sliders; then log compression with a gain (dB) and a display
   curve (``contrast`` is its exponent), blur, the sector mask (black outside)
   and scanner-like text.

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
so a set is byte-identical for a seed whatever the number of workers. The
files are written by :func:`generate_synthetic_nt` (module :mod:`.writer`).
"""
from .anatomy import STRUCTURES
from .distractors import NEAR_NECK_BOX_WIDTHS
from .render import render_synthetic_nt
from .writer import IMAGES_DIRNAME, METADATA_COLUMNS, METADATA_FILENAME, SPREADSHEET_FILENAME, generate_synthetic_nt

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
