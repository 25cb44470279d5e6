"""Near-duplicate grouping and grouped, stratified cross-validation folds.

Pure functions on plain lists and arrays (no file system), used by the
converter (:mod:`voting_det.data.fetus_framework`) to build the three-fold
protocol of docs/method.md section 5:

- :func:`phash` computes a 64-bit perceptual hash of a grey image;
- :func:`group_near_duplicates` joins images whose hashes differ in at most
  ``threshold`` bits (connected components of the "near-duplicate" graph, i.e.
  union-find over all close pairs);
- :func:`assign_folds` distributes whole groups over ``k`` folds, balancing the
  number of images of each stratum (positive / negative) per fold;
- :func:`carve_validation` takes a fraction of whole groups out of the
  training folds, again per stratum.

All functions are deterministic for a given ``seed``.
"""
from typing import Dict, List, Sequence, Union

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "PHASH_BITS",
    "DEFAULT_PHASH_THRESHOLD",
    "phash",
    "hamming",
    "pairwise_hamming",
    "group_near_duplicates",
    "assign_folds",
    "carve_validation",
]

# pHash as in the common reference implementation (imagehash.phash): the grey
# image shrunk to 32 x 32, its 2-D DCT-II, the top-left 8 x 8 low-frequency
# block (DC included), one bit per coefficient: above the block's median.
PHASH_RESIZE = 32
PHASH_BLOCK = 8
PHASH_BITS = PHASH_BLOCK * PHASH_BLOCK

# Images whose hashes differ in at most this many of the 64 bits are treated as
# near-duplicates (same fold). Measured on the real NT development set (737
# images): re-saving, JPEG quality 50, noise (sigma 15), gain/contrast changes
# and 1-px shifts move a hash by <= 4 bits, 5-px shifts and drawn calipers or
# text by <= 6 (95th percentile); the closest pairs of distinct images are at
# 6 bits (11 pairs, all different fetuses on inspection), at 8 bits 45 more,
# and from 10 bits on transitive groups chain into one of ~100 images. At 6,
# the 9 small groups (<= 3 images) of look-alikes merged by mistake cost
# little, while a missed near-duplicate would leak between train and test.
DEFAULT_PHASH_THRESHOLD = 6

# Popcount of every byte value, for a vectorised Hamming distance (numpy < 2
# has no bitwise_count).
_POPCOUNT8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def phash(image_gray: np.ndarray) -> int:
    """64-bit perceptual hash (DCT hash) of a 2-D grey uint8 image.

    The image is shrunk to ``32 x 32`` (area interpolation), transformed with a
    2-D DCT-II, and the ``8 x 8`` lowest-frequency coefficients (row-major, DC
    first) are thresholded at their median: bit ``i`` (counted from the most
    significant bit) is 1 when coefficient ``i`` is above the median. Small
    changes of the image (noise, a shift by a pixel, re-compression) change
    few bits; different images differ in about half of them.
    """
    image = np.asarray(image_gray)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"phash expects a non-empty 2-D grey image, got shape {image.shape}")
    small = cv2.resize(image.astype(np.float32), (PHASH_RESIZE, PHASH_RESIZE), interpolation=cv2.INTER_AREA)
    block = cv2.dct(small)[:PHASH_BLOCK, :PHASH_BLOCK].ravel()
    bits = block > np.median(block)
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value


def hamming(a: int, b: int) -> int:
    """Number of bits in which the hashes ``a`` and ``b`` differ."""
    return bin(a ^ b).count("1")


def pairwise_hamming(hashes: Sequence[int]) -> np.ndarray:
    """``(N, N)`` matrix of Hamming distances between 64-bit ``hashes``."""
    values = np.array([int(h) for h in hashes], dtype=np.uint64)
    xor = values[:, None] ^ values[None, :]
    return _POPCOUNT8[xor.view(np.uint8)].reshape(len(values), len(values), -1).sum(axis=-1, dtype=np.int64)


def group_near_duplicates(hashes: Sequence[int], threshold: int) -> List[int]:
    """Group id per hash: connected components of "distance <= ``threshold``".

    Near-duplicate is made transitive (as union-find over all close pairs
    would): if a ~ b and b ~ c, all three share a group. Group ids are
    ``0, 1, ...`` in order of each group's first member.
    """
    n = len(hashes)
    if n == 0:
        return []
    close = pairwise_hamming(hashes) <= threshold
    rows, cols = np.nonzero(close)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    renumber: Dict[int, int] = {}
    return [renumber.setdefault(int(label), len(renumber)) for label in labels]


def _group_strata(groups: Sequence[int], labels: Sequence[int]) -> Dict[int, int]:
    """Stratum of every group: the largest label among its members (a group
    with any positive image counts as positive)."""
    strata: Dict[int, int] = {}
    for group, label in zip(groups, labels):
        strata[group] = max(strata.get(group, label), label)
    return strata


def _group_sizes(groups: Sequence[int]) -> Dict[int, int]:
    sizes: Dict[int, int] = {}
    for group in groups:
        sizes[group] = sizes.get(group, 0) + 1
    return sizes


def assign_folds(groups: Sequence[int], labels: Sequence[int], k: int, seed: int) -> List[int]:
    """Fold (``0..k-1``) per item; items of one group share a fold.

    Greedy balanced assignment, stratified on ``labels`` (e.g. 1 = positive
    image, 0 = negative): groups are visited largest first (equal sizes in a
    seeded random order), and each goes to the fold holding the fewest images
    of its stratum; ties go to the fold with fewest images overall, remaining
    ties to a seeded random choice. Per stratum, the fold sizes then differ by
    at most the size of that stratum's largest group.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups but {len(labels)} labels")
    rng = np.random.default_rng(seed)
    sizes = _group_sizes(groups)
    strata = _group_strata(groups, labels)
    order = sorted(sizes)
    order = [order[i] for i in rng.permutation(len(order))]
    order.sort(key=lambda g: -sizes[g])  # stable: keeps the random order among equal sizes

    per_stratum = {s: np.zeros(k, dtype=np.int64) for s in set(strata.values())}
    total = np.zeros(k, dtype=np.int64)
    fold_of: Dict[int, int] = {}
    for group in order:
        count = per_stratum[strata[group]]
        candidates = np.flatnonzero(count == count.min())
        candidates = candidates[total[candidates] == total[candidates].min()]
        fold = int(candidates[rng.integers(len(candidates))])
        fold_of[group] = fold
        count[fold] += sizes[group]
        total[fold] += sizes[group]
    return [fold_of[g] for g in groups]


def carve_validation(
    groups: Sequence[int], labels: Sequence[int], fraction: float, seed: Union[int, Sequence[int]]
) -> List[bool]:
    """Mark about ``fraction`` of the items as validation, whole groups at a time.

    Per stratum (the group's largest label), the target is
    ``round(fraction * items of that stratum)``; groups are visited in a seeded
    random order and a group is taken whenever taking it brings the count
    closer to the target. ``seed`` is anything :func:`numpy.random.default_rng`
    takes (e.g. ``[seed, fold]``). Returns one flag per item (True = validation).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups but {len(labels)} labels")
    rng = np.random.default_rng(seed)
    sizes = _group_sizes(groups)
    strata = _group_strata(groups, labels)
    chosen = set()
    for stratum in sorted(set(strata.values())):
        members = sorted(g for g in sizes if strata[g] == stratum)
        target = round(fraction * sum(sizes[g] for g in members))
        taken = 0
        for i in rng.permutation(len(members)):
            group = members[i]
            if abs(taken + sizes[group] - target) < abs(taken - target):
                chosen.add(group)
                taken += sizes[group]
    return [g in chosen for g in groups]
