"""Golden outputs of the synthetic generator, recorded before it was split into
the ``voting_det.data.synthetic`` package: the generator's default output must
stay byte-identical (the demo and the committed benchmark results depend on
it), and so must the new-speckle variants of the faithfulness check, which
were made by patching the generator before it had ``speckle_seed``.

A digest is the MD5 of an image array's dtype, shape and bytes, of an
annotation as sorted JSON, or of a written file's bytes. If a change to the
generator is meant to change its output, the benchmark results made with it
change too: regenerate them with these digests, never these alone.
"""
import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from voting_det.data.synthetic import IMAGES_DIRNAME, generate_synthetic_nt, render_synthetic_nt
from voting_det.interpretation.stability import synthetic_with_new_speckle

# render_synthetic_nt(0, index) at the default 576 x 768: image, annotation
# (index 0 midsagittal, 3 neck_out_of_view, 24 off_plane).
RENDERS = {
    0: ("553433e9d990e300ea25c7ad7170b0d6", "d918c7f37bd149fa6bed250a2a9787a6"),
    3: ("280b8f2be3f47d736ddc3d6ed88f5b72", "d98d245f13c9ee749b245ffa87d818a0"),
    24: ("18aa1f9c3724d92d6d866babbe667336", "74b405f19123ee573d100a369ca3ac94"),
}
# generate_synthetic_nt(out, 4, seed=5, size=(144, 192)): every file written.
SET_SEED, SET_NUM, SET_SIZE = 5, 4, (144, 192)
SET_FILES = {
    "ObjectDetection.xlsx": "56c783acfac0a6e16aec53d162a508b8",
    "Train & Val/0.png": "aeff5f4fe8a2be14c17e515fb4495014",
    "Train & Val/1.png": "7e4e7c37a96c9f06570fa0f71d1e9339",
    "Train & Val/2.png": "253c45889f1bd0ea55aec0734af2d2a7",
    "Train & Val/3.png": "c7440afa7e1a21ba562a2d9c9afb1eb9",
    "metadata.csv": "5a85782f27babb34f30f738bd716303d",
}
SET_SUMMARY = {
    "num_images": 4,
    "num_nt": 3,
    "num_negatives": 1,
    "views": {"midsagittal": 3, "off_plane": 0, "neck_out_of_view": 1},
    "num_rows": 32,
    "fraction_distractor_near_neck": 1.0,
    "mean_num_distractors": 3.0,
}
# synthetic_with_new_speckle(<that set>/<index>.png, 5, [1, 2]): the BGR variants.
SPECKLE_SEEDS = (1, 2)
SPECKLE = {
    0: ("00954ec179be30952cc237610166d9e3", "122902607498d32b5a76f8c43d98260b"),
    1: ("d36cb62de5b6d64c5541622677ee708c", "3618c8f141494948bbab2a664d84dc99"),
    2: ("446377b9a4733259e0bd09c90641dac7", "d7d4cf9c40aa4472e6570158ef822bf0"),
    3: ("5bc74d3b968d1163392ad4fcc1109564", "20a0baaaac24d012f76e5545150a0557"),
}


def _array_md5(array: np.ndarray) -> str:
    header = str((array.dtype.str, array.shape)).encode()
    return hashlib.md5(header + np.ascontiguousarray(array).tobytes()).hexdigest()


def _json_md5(value) -> str:
    return hashlib.md5(json.dumps(value, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def golden_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden") / "set"
    summary = generate_synthetic_nt(str(root), SET_NUM, seed=SET_SEED, size=SET_SIZE, progress=False)
    return root, summary


@pytest.mark.parametrize("index", sorted(RENDERS))
def test_render_is_unchanged(index):
    image, annotation = render_synthetic_nt(0, index)
    assert (_array_md5(image), _json_md5(annotation)) == RENDERS[index]


def test_written_set_is_unchanged(golden_set):
    root, summary = golden_set
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root).replace(os.sep, "/")] = hashlib.md5(f.read()).hexdigest()
    assert files == SET_FILES
    assert {k: summary[k] for k in SET_SUMMARY} == SET_SUMMARY


@pytest.mark.parametrize("index", sorted(SPECKLE))
def test_new_speckle_variants_are_unchanged(golden_set, index):
    root, _ = golden_set
    path = os.path.join(root, IMAGES_DIRNAME, f"{index}.png")
    variants = synthetic_with_new_speckle(path, SET_SEED, SPECKLE_SEEDS)
    assert tuple(_array_md5(v) for v in variants) == SPECKLE[index]
    # the same images straight from the generator's parameter
    for variant, speckle_seed in zip(variants, SPECKLE_SEEDS):
        grey, _ = render_synthetic_nt(SET_SEED, index, SET_SIZE, speckle_seed=speckle_seed)
        assert np.array_equal(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), variant)


def test_speckle_seed_changes_the_image_not_the_annotation():
    image, annotation = render_synthetic_nt(0, 0, SET_SIZE)
    other, other_annotation = render_synthetic_nt(0, 0, SET_SIZE, speckle_seed=1)
    assert other_annotation == annotation and not np.array_equal(other, image)
