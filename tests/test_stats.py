"""dftnb.measure.stats: paired intervals, McNemar, and the three-way verdict, on hand-made cases and against scipy."""

import numpy as np
import pytest
from scipy.stats import binomtest, norm

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


# ------------------------------------------------------------------- p-values, the seed floor and multiplicity
from dftnb.measure.stats import (  # noqa: E402
    PairedDifference,
    benjamini_hochberg,
    bootstrap_p_value,
    claim_p_value,
    decide,
    holm,
    seed_floor,
)


def test_bootstrap_p_value_counts_the_draws_beyond_the_null():
    draws = np.r_[np.full(95, 1.0), np.full(5, -1.0)]  # 5 of 100 draws at or below 0
    assert bootstrap_p_value(draws) == pytest.approx(2 * 6 / 101)
    assert bootstrap_p_value(np.zeros(100)) == 1.0  # a model against itself
    assert bootstrap_p_value(draws, null=2.0) == pytest.approx(2 / 101)  # every draw below 2


def test_paired_intervals_carry_p_values_that_agree_with_them():
    rng = np.random.default_rng(3)
    units = rng.normal(size=60)
    clear = paired_bootstrap(units + 0.5, units + rng.normal(scale=0.1, size=60), n_boot=2000)
    assert clear.ci_low > 0 and clear.p_value < 0.01
    none = paired_bootstrap(units + rng.normal(scale=0.1, size=60), units, n_boot=2000)
    assert none.ci_low < 0 < none.ci_high and none.p_value > 0.05


def test_holm_and_bh_against_hand_computed_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04 (running max) = .02, .03, .06, .06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: m p_(i) / i = .02, .02, .04, .04 (running min from the top) = .02, .02, .04, .04
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert holm([0.3, 0.2]) == pytest.approx([0.4, 0.4]) and holm([0.6, 0.7, 0.8]).max() == 1.0
    assert (holm(p) >= benjamini_hochberg(p)).all() and (benjamini_hochberg(p) >= np.asarray(p)).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


def test_holm_controls_the_family_wise_error_under_the_null():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(4000, 10))  # 10 true null hypotheses per table
    any_rejected = np.mean([(holm(row) < 0.05).any() for row in p])
    unadjusted = np.mean([(row < 0.05).any() for row in p])
    assert any_rejected <= 0.06 and unadjusted > 0.35


def test_seed_floor_is_the_largest_seed_to_seed_difference():
    assert seed_floor([PairedDifference(0.4, 0.1, 0.7, 10), -1.2, 0.3]) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="seed-to-seed"):
        seed_floor([])


def test_decide_needs_the_interval_beyond_the_floor_and_the_adjusted_p():
    d = PairedDifference(1.0, 0.5, 1.5, 100, draws=np.linspace(0.4, 1.6, 1000))
    assert decide(d) == "supported"
    assert decide(d, floor=0.4) == "supported" and decide(d, floor=0.6) == "undetermined"
    assert decide(d, adjusted_p=0.2) == "undetermined" and decide(d, adjusted_p=0.01) == "supported"
    worse = PairedDifference(-1.0, -1.5, -0.5, 100)
    assert decide(worse) == "refuted" and decide(worse, floor=0.6) == "undetermined"
    # "no worse than 1 point": an interval of [-0.8, -0.2] supports it unless the floor eats the margin
    small_loss = PairedDifference(-0.5, -0.8, -0.2, 100)
    assert decide(small_loss, margin=1.0, higher_is_claimed=False) == "supported"
    assert decide(small_loss, margin=1.0, higher_is_claimed=False, floor=0.3) == "undetermined"
    se = np.std(d.draws, ddof=1)
    assert claim_p_value(d) == pytest.approx(2 * norm.cdf(-1.0 / se))  # 1.0 from 0, in bootstrap standard errors
    assert claim_p_value(d, margin=1.0) == pytest.approx(1.0) and claim_p_value(d) < 0.01
    with pytest.raises(ValueError, match="draws"):
        claim_p_value(worse)


def test_independent_bootstrap_matches_the_normal_interval_of_two_proportions():
    from dftnb.measure.stats import independent_bootstrap

    a = np.r_[np.ones(150), np.zeros(50)]  # 75%
    b = np.r_[np.ones(100), np.zeros(100)]  # 50%
    d = independent_bootstrap(a, b, n_boot=4000)
    half = 1.96 * np.sqrt(0.75 * 0.25 / 200 + 0.25 / 200)  # Wald interval of a difference of proportions
    assert d.mean == pytest.approx(0.25)
    assert d.ci_low == pytest.approx(0.25 - half, abs=0.01) and d.ci_high == pytest.approx(0.25 + half, abs=0.01)
    assert d.p_value < 0.01 and independent_bootstrap(a, a, n_boot=1000).p_value > 0.5
