"""Agreement between two measurements of the same quantity (a method against
a reference, e.g. the NT thickness against the sonographer's calipers).

- absolute errors: mean and median;
- Bland-Altman: the bias (mean difference, method minus reference) and the 95%
  limits of agreement, bias +- 1.96 x the SD of the differences (Bland and
  Altman, Lancet 1986);
- ICC(A,1): two-way, absolute agreement, single measurement (McGraw and Wong
  1996, case A; the same estimate as Shrout and Fleiss's ICC(2,1)), from the
  two-way ANOVA mean squares of the n x 2 table;
- the share of differences within a tolerance (0.5 mm for the NT);
- sensitivity and specificity of a cut-off (3.5 mm for the NT): the reference
  at or above it is a positive, the method at or above it a call.
"""
from typing import Dict, Optional

import numpy as np

__all__ = ["agreement", "bland_altman", "icc_absolute_agreement", "cutoff_accuracy"]


def _pair(method, reference):
    m, r = np.asarray(method, dtype=float).ravel(), np.asarray(reference, dtype=float).ravel()
    if m.shape != r.shape:
        raise ValueError(f"method and reference differ in length: {m.size} and {r.size}")
    keep = np.isfinite(m) & np.isfinite(r)
    return m[keep], r[keep]


def bland_altman(method, reference) -> Dict[str, float]:
    """Bias (mean of method - reference), SD of the differences (n - 1) and the
    95% limits of agreement, bias -+ 1.96 SD. Pairs with a NaN are dropped."""
    m, r = _pair(method, reference)
    d = m - r
    if d.size < 2:
        return {"n": int(d.size), "bias": float(d.mean()) if d.size else float("nan"), "sd": float("nan"),
                "loa_low": float("nan"), "loa_high": float("nan")}
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    return {"n": int(d.size), "bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def icc_absolute_agreement(ratings) -> float:
    """ICC(A,1) of an n targets x k raters table (McGraw and Wong's case A,
    single measures; Shrout and Fleiss's ICC(2,1)):

        (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n)

    with MSR, MSC and MSE the two-way ANOVA mean squares of rows (targets),
    columns (raters) and the residual. Rows with a NaN are dropped."""
    x = np.asarray(ratings, dtype=float)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"ratings must be an n x k table with k >= 2, got shape {x.shape}")
    x = x[np.isfinite(x).all(axis=1)]
    n, k = x.shape
    if n < 2:
        return float("nan")
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    denominator = msr + (k - 1) * mse + k * (msc - mse) / n
    return float((msr - mse) / denominator) if denominator > 0 else float("nan")


def cutoff_accuracy(method, reference, cutoff: float) -> Dict[str, Optional[float]]:
    """Sensitivity and specificity of ``method >= cutoff`` for ``reference >=
    cutoff``, with the counts (None where there is no case of that kind)."""
    m, r = _pair(method, reference)
    positive, called = r >= cutoff, m >= cutoff
    pos, neg = int(positive.sum()), int((~positive).sum())
    return {
        "positives": pos,
        "negatives": neg,
        "sensitivity": float((called & positive).sum() / pos) if pos else None,
        "specificity": float((~called & ~positive).sum() / neg) if neg else None,
    }


def agreement(method, reference, tolerance: Optional[float] = None,
              cutoff: Optional[float] = None) -> Dict[str, object]:
    """Every figure above for one method against the reference (pairs with a
    NaN dropped and counted): n, mean / median absolute error, Bland-Altman,
    ICC(A,1), the share of |difference| <= ``tolerance`` and the cut-off's
    sensitivity and specificity (when given)."""
    m_all = np.asarray(method, dtype=float).ravel()
    m, r = _pair(method, reference)
    errors = np.abs(m - r)
    out: Dict[str, object] = {
        "n": int(m.size),
        "missing": int(m_all.size - m.size),
        "mean_abs_error": float(errors.mean()) if m.size else float("nan"),
        "median_abs_error": float(np.median(errors)) if m.size else float("nan"),
        **{f"ba_{k}": v for k, v in bland_altman(m, r).items() if k != "n"},
        "icc_a1": icc_absolute_agreement(np.stack([m, r], axis=1)) if m.size else float("nan"),
    }
    if tolerance is not None:
        out["within_tolerance"] = float((errors <= tolerance).mean()) if m.size else float("nan")
    if cutoff is not None:
        out["cutoff"] = cutoff_accuracy(m, r, cutoff)
    return out
