"""dftnb.measure.stats: paired intervals, McNemar, and the three-way verdict, on hand-made cases and against scipy."""

import numpy as np
import pytest
from scipy.stats import binomtest

from dftnb.measure.stats import (
    mcnemar,
    minimum_detectable_difference,
    paired_block_bootstrap,
    paired_bootstrap,
    paired_statistic_bootstrap,
    verdict,
)


def test_paired_bootstrap_constant_difference_has_a_point_interval():
    rng = np.random.default_rng(0)
    b = rng.normal(size=50)
    d = paired_bootstrap(b + 1.0, b, n_boot=500)
    assert d.mean == pytest.approx(1.0) and d.ci_low == pytest.approx(1.0) and d.ci_high == pytest.approx(1.0)


def test_pairing_separates_what_per_row_intervals_cannot():
    # units differ a lot (hard and easy prompts); method a is better by 0.2 on every unit, plus small noise
    rng = np.random.default_rng(1)
    units = rng.normal(scale=5.0, size=40)
    a, b = units + 0.2 + rng.normal(scale=0.05, size=40), units
    d = paired_bootstrap(a, b, n_boot=2000)
    assert 0.15 < d.ci_low < d.mean < d.ci_high < 0.25
    per_row = [np.percentile(x[rng.integers(0, 40, (2000, 40))].mean(1), [2.5, 97.5]) for x in (a, b)]
    assert per_row[0][0] < per_row[1][1]  # the per-row intervals overlap


def test_paired_bootstrap_refuses_unpaired_or_bad_input():
    with pytest.raises(ValueError, match="same prompts"):
        paired_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap([1, 2], [1, 2], n_boot=10)


@pytest.mark.parametrize("only_a,only_b,both", [(10, 0, 5), (7, 3, 20), (4, 4, 2), (0, 0, 6)])
def test_mcnemar_counts_and_exact_p_value(only_a, only_b, both):
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * 3
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * 3
    res = mcnemar(a, b, n_boot=500)
    assert (res.only_a, res.only_b) == (only_a, only_b)
    n = only_a + only_b
    reference = 1.0 if n == 0 else binomtest(only_a, n, 0.5).pvalue
    assert res.p_value == pytest.approx(reference, rel=1e-12)
    assert res.accuracy_a - res.accuracy_b == pytest.approx((only_a - only_b) / len(a))
    assert res.difference.ci_low <= res.difference.mean <= res.difference.ci_high


@pytest.mark.parametrize("interval,margin,higher,expected", [
    ((21.0, 30.0), 20.0, True, "supported"),
    ((5.0, 19.0), 20.0, True, "refuted"),
    ((15.0, 25.0), 20.0, True, "undetermined"),
    ((-0.5, 0.8), 1.0, False, "supported"),   # accuracy loss under 1 point
    ((-3.0, -1.5), 1.0, False, "refuted"),
    ((-2.0, 0.5), 1.0, False, "undetermined"),
])
def test_verdict_reads_the_interval_against_the_margin(interval, margin, higher, expected):
    assert verdict(*interval, margin=margin, higher_is_claimed=higher) == expected


def test_verdict_refuses_a_reversed_interval():
    with pytest.raises(ValueError, match="ci_low <= ci_high"):
        verdict(2.0, 1.0)


def test_paired_statistic_bootstrap_matches_the_mean_case_and_cancels_shared_units():
    rng = np.random.default_rng(2)
    units = rng.normal(scale=5.0, size=30)
    a, b = units + 0.3 + rng.normal(scale=0.05, size=30), units
    d = paired_statistic_bootstrap(lambda i: a[i].mean(), lambda i: b[i].mean(), 30, n_boot=500, seed=3)
    ref = paired_bootstrap(a, b, n_boot=500, seed=3)  # same rng stream, same statistic: the same interval
    assert d.mean == pytest.approx(ref.mean) and 0.2 < d.ci_low < d.mean < d.ci_high < 0.4
    assert abs(d.ci_low - ref.ci_low) < 0.02 and abs(d.ci_high - ref.ci_high) < 0.02
    with pytest.raises(ValueError, match="n_boot"):
        paired_statistic_bootstrap(np.mean, np.mean, 30, n_boot=10)


def test_paired_block_bootstrap_is_wider_than_iid_on_correlated_tokens():
    rng = np.random.default_rng(4)
    # AR(1)-like per-token differences: strongly correlated neighbours, mean 0.1
    noise = np.repeat(rng.normal(scale=1.0, size=40), 50) + rng.normal(scale=0.1, size=2000)
    diffs = 0.1 + noise
    block = paired_block_bootstrap({"x": diffs}, block=50, n_boot=2000)
    iid = paired_bootstrap(diffs, np.zeros_like(diffs), n_boot=2000)
    assert block.mean == pytest.approx(diffs.mean())
    assert (block.ci_high - block.ci_low) > 3 * (iid.ci_high - iid.ci_low)
    two = paired_block_bootstrap([np.full(200, 0.5), np.full(300, -0.1)], block=20, n_boot=200)
    assert two.mean == pytest.approx(0.2) and two.ci_low == pytest.approx(0.2) and two.ci_high == pytest.approx(0.2)
    with pytest.raises(ValueError, match="lower block"):
        paired_block_bootstrap([np.zeros(50)], block=64)


def test_minimum_detectable_difference():
    # (1.96 + 0.8416) * sqrt(2 * 0.25 / 100) = 0.198
    assert minimum_detectable_difference(0.5, 100) == pytest.approx(0.1981, abs=1e-3)
    assert minimum_detectable_difference(0.3, 14042) < 0.02 < minimum_detectable_difference(0.3, 114)
    assert minimum_detectable_difference(0.0, 10) == pytest.approx(minimum_detectable_difference(0.1, 10))
