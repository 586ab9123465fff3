"""Uncertainty of the paper's table cells: bootstrap confidence intervals and paired tests.

The paper reports medians without intervals. Each table cell here also gets
- a percentile bootstrap 95 % confidence interval of the median over cases
  (`scipy.stats.bootstrap`, fixed seed, so a rerun prints the same interval), and
- for every method compared with SegVol on the same cases, the paired Wilcoxon signed-rank test
  (`scipy.stats.wilcoxon`, two-sided) with the number of pairs it used.

Both are thin wrappers that fix the conventions (NaN cases dropped pairwise, too few cases give NaN
instead of an exception) so that every table applies them the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A median with its bootstrap interval over `n` cases (NaN bounds when n < 2)."""

    median: float
    low: float
    high: float
    n: int


def median_interval(values, seed: int = 0, confidence: float = CONFIDENCE, resamples: int = RESAMPLES) -> Interval:
    """Median of the finite `values` and its percentile bootstrap confidence interval."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = int(values.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    median = float(np.median(values))
    if n < 2 or np.all(values == values[0]):
        return Interval(median, math.nan if n < 2 else median, math.nan if n < 2 else median, n)
    result = bootstrap(
        (values,),
        np.median,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
        vectorized=True,
    )
    return Interval(median, float(result.confidence_interval.low), float(result.confidence_interval.high), n)


@dataclass(frozen=True)
class PairedTest:
    """Wilcoxon signed-rank test of `a - b` over `n` paired cases; `median_difference` of a - b."""

    statistic: float
    p_value: float
    median_difference: float
    n: int


def paired_wilcoxon(a, b) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test between paired scores (pairs with a NaN are dropped).

    NaN statistic and p-value when fewer than 2 pairs remain or every difference is zero.
    """
    from scipy.stats import wilcoxon

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same cases: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    difference = a[keep] - b[keep]
    n = int(difference.size)
    median_difference = float(np.median(difference)) if n else math.nan
    if n < 2 or not np.any(difference):
        return PairedTest(math.nan, math.nan, median_difference, n)
    result = wilcoxon(a[keep], b[keep], alternative="two-sided")
    return PairedTest(float(result.statistic), float(result.pvalue), median_difference, n)


def grouped_intervals(frame, by, value: str = "dice", seed: int = 0):
    """`ci_low`/`ci_high` of the median of `value` per group of `by` (a DataFrame, one row a group)."""
    import pandas as pd

    rows = []
    for key, block in frame.groupby(list(by), sort=False):
        interval = median_interval(block[value].to_numpy(), seed=seed)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "ci_low": interval.low, "ci_high": interval.high})
    return pd.DataFrame(rows, columns=[*by, "ci_low", "ci_high"])
