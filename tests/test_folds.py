"""pHash, near-duplicate grouping, grouped stratified folds and validation carving."""
from collections import Counter

import cv2
import numpy as np
import pytest
from scipy.fft import dctn

from voting_det.data.folds import (
    assign_folds,
    carve_validation,
    group_near_duplicates,
    hamming,
    pairwise_hamming,
    phash,
)

SHAPE = (120, 160)


def _smooth_pattern(seed, shape=SHAPE):
    """A smooth random grey image (coarse noise, upsampled): distinct per seed."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8)).astype(np.float32)
    big = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(big, 0, 255).astype(np.uint8)


def _reference_phash(grey):
    """pHash from its definition with scipy's orthonormal DCT-II (not cv2.dct)."""
    small = cv2.resize(grey.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    block = dctn(small.astype(np.float64), type=2, norm="ortho")[:8, :8].ravel()
    bits = "".join("1" if c > np.median(block) else "0" for c in block)
    return int(bits, 2)


@pytest.mark.parametrize("seed", range(5))
def test_phash_matches_reference_definition(seed):
    grey = _smooth_pattern(seed)
    assert phash(grey) == _reference_phash(grey)


def test_phash_small_for_near_duplicates_large_for_different_images():
    grey = _smooth_pattern(0)
    noisy = np.clip(grey + np.random.default_rng(1).normal(0, 4, grey.shape), 0, 255).astype(np.uint8)
    shifted = np.roll(grey, 1, axis=1)
    base = phash(grey)
    assert hamming(base, phash(noisy)) <= 4
    assert hamming(base, phash(shifted)) <= 4
    for seed in range(1, 6):
        assert hamming(base, phash(_smooth_pattern(seed))) >= 16


def test_phash_rejects_colour_input():
    with pytest.raises(ValueError, match="2-D"):
        phash(np.zeros(SHAPE + (3,), np.uint8))


def test_hamming_hand_cases_and_matrix_agree():
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(0, (1 << 64) - 1) == 64
    values = [int(v) for v in np.random.default_rng(0).integers(0, 2**63, 20, dtype=np.uint64)] + [(1 << 64) - 1, 0]
    matrix = pairwise_hamming(values)
    expected = [[bin(a ^ b).count("1") for b in values] for a in values]
    np.testing.assert_array_equal(matrix, expected)


def test_grouping_is_transitive_and_numbered_by_first_member():
    far = (1 << 64) - 1
    # 0 ~ 1 (1 bit), 1 ~ 3 (1 bit), 0 vs 3 is 2 bits: chained at threshold 1
    hashes = [far, 0b0, 0b1, 0b11]
    assert group_near_duplicates(hashes, 0) == [0, 1, 2, 3]
    assert group_near_duplicates(hashes, 1) == [0, 1, 1, 1]
    assert group_near_duplicates(hashes, 64) == [0, 0, 0, 0]
    assert group_near_duplicates([], 6) == []


def _toy_groups():
    """60 items: groups of sizes 1-4, positives (label 1) and negatives (label 0)."""
    rng = np.random.default_rng(7)
    groups, labels = [], []
    for g in range(30):
        size = int(rng.integers(1, 5))
        label = int(g % 3 != 0)
        groups += [g] * size
        labels += [label] * size
    return groups, labels


def test_assign_folds_keeps_groups_together_and_balances_strata():
    groups, labels = _toy_groups()
    k = 3
    folds = assign_folds(groups, labels, k, seed=0)
    assert set(folds) == set(range(k))
    for g in set(groups):
        assert len({f for f, gg in zip(folds, groups) if gg == g}) == 1
    sizes = Counter(groups)
    for stratum in (0, 1):
        per_fold = Counter(f for f, lab in zip(folds, labels) if lab == stratum)
        largest = max(sizes[g] for g, lab in zip(groups, labels) if lab == stratum)
        counts = [per_fold[f] for f in range(k)]
        assert max(counts) - min(counts) <= largest, counts


def test_assign_folds_is_seeded():
    groups, labels = _toy_groups()
    assert assign_folds(groups, labels, 3, seed=0) == assign_folds(groups, labels, 3, seed=0)
    assert assign_folds(groups, labels, 3, seed=0) != assign_folds(groups, labels, 3, seed=1)


def test_carve_validation_takes_whole_groups_near_the_fraction():
    groups, labels = _toy_groups()
    fraction = 0.25
    is_val = carve_validation(groups, labels, fraction, seed=0)
    for g in set(groups):
        assert len({v for v, gg in zip(is_val, groups) if gg == g}) == 1
    sizes = Counter(groups)
    for stratum in (0, 1):
        n = sum(lab == stratum for lab in labels)
        taken = sum(v for v, lab in zip(is_val, labels) if lab == stratum)
        largest = max(sizes[g] for g, lab in zip(groups, labels) if lab == stratum)
        assert abs(taken - round(fraction * n)) <= largest
    assert carve_validation(groups, labels, fraction, seed=0) == is_val
    assert not any(carve_validation(groups, labels, 0.0, seed=0))
    with pytest.raises(ValueError):
        carve_validation(groups, labels, 1.0, seed=0)
