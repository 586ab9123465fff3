"""Bootstrap intervals and paired tests of the evaluation tables."""

import math

import numpy as np
import pytest
from scipy import stats

from segvol.evaluate.statistics import median_interval, paired_wilcoxon


def test_interval_matches_scipy_and_is_reproducible():
    values = np.random.default_rng(1).beta(8, 3, size=40)
    interval = median_interval(values, seed=7)
    reference = stats.bootstrap(
        (values,), np.median, n_resamples=2000, method="percentile", random_state=np.random.default_rng(7)
    ).confidence_interval
    assert interval.low == pytest.approx(reference.low) and interval.high == pytest.approx(reference.high)
    assert interval.median == pytest.approx(np.median(values))
    assert interval.low < interval.median < interval.high
    assert median_interval(values, seed=7) == interval
    assert interval.n == 40


def test_interval_covers_the_true_median_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    true_median = 0.7  # a normal distribution centred there
    covered = 0
    for trial in range(60):
        sample = rng.normal(true_median, 0.1, size=30)
        interval = median_interval(sample, seed=trial, resamples=400)
        covered += interval.low <= true_median <= interval.high
    assert 48 <= covered <= 60  # 95 % of 60 = 57; a broken interval (e.g. the mean's SE / 10) falls far below


def test_interval_narrows_with_more_cases_and_skips_nans():
    rng = np.random.default_rng(3)
    small = median_interval(rng.normal(size=10), seed=0)
    large = median_interval(rng.normal(size=400), seed=0)
    assert (large.high - large.low) < (small.high - small.low) / 3
    with_nan = median_interval([0.5, math.nan, 0.7, 0.6], seed=0)
    assert with_nan.n == 3 and with_nan.median == pytest.approx(0.6)
    assert median_interval([0.4]).n == 1 and math.isnan(median_interval([0.4]).low)
    assert median_interval([]).n == 0 and math.isnan(median_interval([]).median)


def test_paired_wilcoxon_matches_scipy_and_drops_incomplete_pairs():
    rng = np.random.default_rng(5)
    segvol = rng.uniform(0.6, 0.9, size=25)
    baseline = segvol - rng.uniform(0.0, 0.2, size=25)
    segvol_with_gap = np.append(segvol, math.nan)
    baseline_with_gap = np.append(baseline, 0.3)
    result = paired_wilcoxon(segvol_with_gap, baseline_with_gap)
    reference = stats.wilcoxon(segvol, baseline)
    assert result.n == 25
    assert result.p_value == pytest.approx(reference.pvalue) and result.statistic == pytest.approx(reference.statistic)
    assert result.p_value < 0.001 and result.median_difference > 0
    # No difference at all: no test, not an exception.
    same = paired_wilcoxon(segvol, segvol)
    assert math.isnan(same.p_value) and same.median_difference == 0


def test_paired_wilcoxon_sees_no_effect_in_noise():
    rng = np.random.default_rng(11)
    a = rng.uniform(size=30)
    b = a + rng.normal(0, 0.05, size=30)
    assert paired_wilcoxon(a, b).p_value > 0.01
    with pytest.raises(ValueError, match="same cases"):
        paired_wilcoxon([1, 2], [1, 2, 3])


def test_table2_statistics_pairs_methods_on_the_same_cases():
    import pandas as pd

    from segvol.evaluate.table2_statistics import table2_statistics

    rng = np.random.default_rng(2)
    cases = [f"case_{i:02d}" for i in range(20)]
    segvol = rng.uniform(0.7, 0.9, size=20)
    rows = []
    for case, score in zip(cases, segvol):
        rows.append({"dataset": "ext", "category": "liver", "case": case, "method": "SegVol", "dice": score})
        rows.append({"dataset": "ext", "category": "liver", "case": case, "method": "SAM(box)", "dice": score - 0.1})
    # Shuffled rows and one case the baseline lacks must not break the pairing.
    rows.append({"dataset": "ext", "category": "liver", "case": "case_99", "method": "SegVol", "dice": 0.0})
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0)
    table = table2_statistics(frame).set_index("method")
    assert table.loc["SAM(box)", "n_pairs"] == 20
    assert table.loc["SAM(box)", "median_difference"] == pytest.approx(0.1)
    assert table.loc["SAM(box)", "wilcoxon_p"] < 1e-4
    assert table.loc["SegVol", "n"] == 21 and np.isnan(table.loc["SegVol", "wilcoxon_p"])
    assert table.loc["SegVol", "ci_low"] <= table.loc["SegVol", "median"] <= table.loc["SegVol", "ci_high"]


def test_paper_claims_are_stated_with_numbers():
    import pandas as pd

    from segvol.evaluate.fig3a import scaling_claim
    from segvol.evaluate.table3 import table3

    rows = []
    for mode, score, seconds in (("resize", 0.5, 0.1), ("window", 0.64, 1.0), ("zoom", 0.62, 0.3)):
        rows.append({"dataset": "d", "case": "c", "mode": mode, "dice": score, "case_seconds": seconds})
    table = table3(pd.DataFrame(rows)).set_index("mode")
    claim = table.loc["zoom", "paper_claim"]
    assert "does not hold" in claim and "0.6200 <= 0.6400" in claim
    assert "cheaper" in table.loc["zoom", "paper_claim"] and table.loc["window", "paper_claim"] == ""
    flat = pd.DataFrame({"n_datasets": [1, 2, 3], "median_dice": [0.55, 0.55, 0.56]})
    assert "is flat" in scaling_claim(flat) and "does not hold" in scaling_claim(flat)
    rising = flat.assign(median_dice=[0.4, 0.5, 0.6])
    assert "rises" in scaling_claim(rising) and "(holds)" in scaling_claim(rising)
