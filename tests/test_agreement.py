"""Agreement figures against published and hand-computed references."""
import math

import numpy as np
import pytest

from voting_det.evaluation.agreement import agreement, bland_altman, cutoff_accuracy, icc_absolute_agreement

# Shrout and Fleiss (1979), Table 2: 6 targets rated by 4 judges; their Table 4
# gives ICC(2,1) = 0.29 (two-way random, absolute agreement, single rater).
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def test_icc_reproduces_shrout_and_fleiss():
    assert icc_absolute_agreement(SHROUT_FLEISS) == pytest.approx(0.29, abs=0.005)


def test_icc_is_one_for_identical_raters_and_penalises_a_constant_offset():
    x = np.array([1.0, 2.5, 3.0, 4.5, 6.0])
    assert icc_absolute_agreement(np.stack([x, x], 1)) == pytest.approx(1.0)
    # an offset keeps the ranking (consistency 1) but not the absolute agreement
    assert icc_absolute_agreement(np.stack([x, x + 1.0], 1)) < 0.9
    with pytest.raises(ValueError, match="n x k"):
        icc_absolute_agreement(x)


def test_bland_altman_by_hand():
    # differences -0.5, 0, 1, -1: mean -0.125, SD sqrt(2.1875 / 3)
    ba = bland_altman([1, 2, 3, 4], [1.5, 2, 2, 5])
    sd = math.sqrt(2.1875 / 3)
    assert ba["n"] == 4 and ba["bias"] == pytest.approx(-0.125) and ba["sd"] == pytest.approx(sd)
    assert ba["loa_low"] == pytest.approx(-0.125 - 1.96 * sd) and ba["loa_high"] == pytest.approx(-0.125 + 1.96 * sd)


def test_cutoff_and_the_whole_summary_with_missing_pairs():
    reference = [2.0, 3.6, 4.0, 1.5, 3.5, np.nan]
    method = [2.2, 3.4, 4.1, 3.6, 3.9, 2.0]
    acc = cutoff_accuracy(method, reference, 3.5)
    # positives (ref >= 3.5): 3.6, 4.0, 3.5 -> called 4.1, 3.9 (not 3.4): 2 / 3; negatives 2.0, 1.5 -> 3.6 is a false call
    assert acc["positives"] == 3 and acc["negatives"] == 2
    assert acc["sensitivity"] == pytest.approx(2 / 3) and acc["specificity"] == pytest.approx(1 / 2)
    out = agreement(method, reference, tolerance=0.25, cutoff=3.5)
    errors = np.abs(np.array(method[:5]) - np.array(reference[:5]))
    assert out["n"] == 5 and out["missing"] == 1
    assert out["mean_abs_error"] == pytest.approx(errors.mean()) and out["median_abs_error"] == pytest.approx(np.median(errors))
    assert out["within_tolerance"] == pytest.approx((errors <= 0.25).mean())
    assert out["cutoff"]["sensitivity"] == pytest.approx(2 / 3)
    assert cutoff_accuracy([1.0], [2.0], 3.5)["sensitivity"] is None
