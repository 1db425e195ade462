"""Paired comparisons: is method A different from method B on the *same* prompts, questions and tokens?

Two rows whose 95% intervals overlap can still differ clearly when they are compared unit by unit, because most of
each row's interval is the spread of the units themselves (easy and hard prompts, questions). So every method is
compared with the reference (SFT) on the differences of paired units:

* :func:`paired_bootstrap` - mean difference ``mean_i (a_i − b_i)`` of per-unit scores (per-prompt SDS, per-token
  log-likelihood …) with a percentile bootstrap interval over units (Efron & Tibshirani 1993; Koehn 2004 for its
  use in NLP);
* :func:`mcnemar` - two classifiers' accuracies on the same questions: the discordant counts, McNemar's exact
  (binomial) p-value and a paired bootstrap interval of the accuracy difference (McNemar 1947);
* :func:`paired_statistic_bootstrap` - the same resampling for a statistic of a whole set (MAUVE of a model's
  samples against human text): prompts are resampled, and both methods' statistics are recomputed on the same
  resampled prompts;
* :func:`paired_block_bootstrap` - per-token differences (log-likelihoods of the same test tokens), resampled in
  contiguous, non-overlapping blocks because neighbouring tokens are correlated (block bootstrap, Carlstein 1986);
* :func:`minimum_detectable_difference` - the accuracy difference a benchmark of ``n`` items can detect at all;
* :func:`verdict` - reads an interval against a margin: *supported*, *refuted* or *undetermined* (the interval
  contains values on both sides of the margin);
* :func:`seed_floor`, :func:`holm`, :func:`benjamini_hochberg`, :func:`decide` - what a verdict table needs on
  top: the difference two seeds of the *same* method already show (the floor a method effect must clear), and a
  multiplicity correction over every verdict read from one table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

VERDICTS = ("supported", "refuted", "undetermined")


@dataclass
class PairedDifference:
    """``mean(a − b)`` over paired units with its bootstrap interval."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    level: float = 0.95
    p_value: float | None = None  # two-sided bootstrap p-value of "no difference" (see bootstrap_p_value)
    draws: np.ndarray | None = field(default=None, repr=False, compare=False)  # the bootstrap differences


def _paired_arrays(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired scores must be two 1-D sequences of equal length (one value per shared unit), got shapes "
            f"{a.shape} and {b.shape}; score both methods on the same prompts/questions."
        )
    if a.size < 2:
        raise ValueError(f"need at least 2 paired units for an interval, got {a.size}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores contain NaN or Inf; drop or fix those units in both methods first.")
    return a, b


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> PairedDifference:
    """Mean of the per-unit differences ``a_i − b_i`` and its percentile bootstrap interval over units.

    Units are resampled with replacement *as pairs*, so what two methods share per unit (a hard prompt, an easy
    question) cancels in the difference.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot} is too few resamples for a {level:.0%} interval; use >= 1000.")
    a, b = _paired_arrays(a, b)
    diff = a - b
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, diff.size, size=(n_boot, diff.size))].mean(axis=1)
    return _interval(boot, float(diff.mean()), int(diff.size), level)


@dataclass
class McNemar:
    """Accuracy difference of two classifiers on the same items."""

    accuracy_a: float
    accuracy_b: float
    only_a: int  # items A gets right and B wrong
    only_b: int  # items B gets right and A wrong
    p_value: float  # two-sided exact McNemar test (binomial on the discordant pairs)
    difference: PairedDifference  # accuracy_a − accuracy_b with a paired bootstrap interval


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], n_boot: int = 2000, seed: int = 0) -> McNemar:
    """McNemar's test for paired correctness (e.g. two models on the same MMLU questions).

    Only discordant items carry information: under "no difference" each of the ``n = only_a + only_b`` of them is
    equally likely to favour either model, so the two-sided p-value is ``min(1, 2·P[Bin(n, ½) ≤ min(only_a,
    only_b)])``.
    """
    a, b = _paired_arrays(np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool))
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    n = only_a + only_b
    k = min(only_a, only_b)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    return McNemar(float(a.mean()), float(b.mean()), only_a, only_b, p, paired_bootstrap(a, b, n_boot, seed=seed))


def verdict(ci_low: float, ci_high: float, margin: float = 0.0, higher_is_claimed: bool = True) -> str:
    """Read a paired interval of ``method − reference`` against the claim "the difference is beyond ``margin``".

    With ``higher_is_claimed`` the claim is ``difference > margin`` (e.g. an SDS gain of at least 20 points):
    *supported* when the whole interval lies above the margin, *refuted* when it lies below, *undetermined* when it
    contains the margin. With ``higher_is_claimed=False`` the claim is ``difference > −margin`` read as "no worse
    than ``margin``" (e.g. accuracy loss under 1 point): *supported* when the interval lies above ``−margin``,
    *refuted* when it lies below.
    """
    if not ci_low <= ci_high:
        raise ValueError(f"need ci_low <= ci_high, got [{ci_low}, {ci_high}].")
    threshold = margin if higher_is_claimed else -margin
    if ci_low > threshold:
        return "supported"
    if ci_high < threshold:
        return "refuted"
    return "undetermined"


def bootstrap_p_value(boot: Sequence[float], null: float = 0.0) -> float:
    """Two-sided bootstrap p-value of "the difference is ``null``": twice the share of bootstrap draws on the far
    side of ``null`` from the bulk, ``min(1, 2 (1 + #{draws on the smaller side}) / (1 + B))`` (the percentile
    interval's dual: the 95% interval excludes ``null`` roughly when p < 0.05; Davison & Hinkley 1997, §4.4; the
    ``+1`` keeps p > 0 with ``B`` draws)."""
    boot = np.asarray(boot, dtype=np.float64)
    if boot.ndim != 1 or boot.size < 1:
        raise ValueError("bootstrap_p_value needs a 1-D array of bootstrap draws.")
    side = min(int((boot <= null).sum()), int((boot >= null).sum()))
    return float(min(1.0, 2 * (1 + side) / (1 + boot.size)))


def interval_from_draws(draws: Sequence[float], point: float, n: int, level: float = 0.95) -> PairedDifference:
    """A :class:`PairedDifference` of ``point`` with the percentile interval and bootstrap p-value of ``draws``
    (bootstrap differences computed by the caller, e.g. over several kinds of units resampled together)."""
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim != 1 or draws.size < 2 or not np.isfinite(draws).all():
        raise ValueError("interval_from_draws needs a 1-D array of at least 2 finite bootstrap draws.")
    return _interval(draws, float(point), int(n), level)


def _interval(boot: np.ndarray, point: float, n: int, level: float) -> PairedDifference:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return PairedDifference(float(point), float(lo), float(hi), int(n), level, bootstrap_p_value(boot), boot)


def paired_statistic_bootstrap(
    statistic_a, statistic_b, n_units: int, n_boot: int = 200, level: float = 0.95, seed: int = 0,
    point: float | None = None,
) -> PairedDifference:
    """``statistic_a(all) − statistic_b(all)`` (or the given ``point``) with a percentile interval over resampled
    units.

    ``statistic_x(indices)`` computes a set-level score (e.g. MAUVE) from the units (prompts) at ``indices`` (with
    repeats); each bootstrap round draws one index vector and feeds it to both, so the interval is of the
    *paired* difference. Set-level statistics cost a computation per round: a few hundred rounds give a usable
    95% interval. ``point`` replaces the plain difference when the statistic is itself an average a round cannot
    afford (MAUVE over several k-means seeds; each round then uses one).
    """
    if n_units < 2:
        raise ValueError(f"need at least 2 paired units for an interval, got {n_units}.")
    if n_boot < 50:
        raise ValueError(f"n_boot={n_boot} is too few resamples for an interval; use >= 200.")
    if point is None:
        everything = np.arange(n_units)
        point = statistic_a(everything) - statistic_b(everything)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        idx = rng.integers(0, n_units, size=n_units)
        boot.append(statistic_a(idx) - statistic_b(idx))
    return _interval(np.asarray(boot), point, n_units, level)


def paired_block_bootstrap(
    diffs_by_group: dict[str, Sequence[float]] | Sequence[Sequence[float]],
    block: int = 64,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Mean over groups (corpora) of the mean per-token difference, with a non-overlapping block bootstrap interval.

    Each group's differences (in stream order) are cut into consecutive, non-overlapping blocks of ``block`` tokens
    (Carlstein 1986; the last, shorter block is dropped from the resampling but not from the point estimate); a round
    resamples each group's blocks with replacement, so the correlation of neighbouring tokens stays inside a block.
    For NLL differences ``nll_a − nll_b`` the statistic is the mean log perplexity ratio, ``exp(mean) − 1`` the
    relative change of the perplexity. With several groups each group weighs the same, whatever its size: pass one
    group at a time for a per-corpus answer pooled over that corpus's tokens (what a corpus-level claim needs).
    """
    groups = list(diffs_by_group.values()) if isinstance(diffs_by_group, dict) else list(diffs_by_group)
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    if not arrays or any(a.ndim != 1 or a.size < 2 * block for a in arrays):
        raise ValueError(
            f"every group needs a 1-D array of at least 2 blocks ({2 * block} tokens); got sizes "
            f"{[a.size for a in arrays]}. Score more tokens or lower block."
        )
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("per-token differences contain NaN or Inf; score both models on the same finite tokens.")
    point = float(np.mean([a.mean() for a in arrays]))
    rng = np.random.default_rng(seed)
    block_means = [a[: a.size // block * block].reshape(-1, block).mean(axis=1) for a in arrays]
    boot = np.mean([m[rng.integers(0, m.size, size=(n_boot, m.size))].mean(axis=1) for m in block_means], axis=0)
    return _interval(boot, point, sum(a.size for a in arrays), level)


def minimum_detectable_difference(p: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy difference (as a fraction) that a two-sided test at level ``alpha`` detects with
    probability ``power`` on ``n`` items per model at base accuracy ``p``: ``(z_{1−α/2} + z_power) ·
    sqrt(2 p (1 − p) / n)`` (normal approximation, two independent samples; pairing can only lower it).
    ``p`` is clamped to ``[1/n, 1 − 1/n]`` so a 0/n benchmark still reports the resolution it has."""
    from statistics import NormalDist

    if n < 1:
        raise ValueError(f"need n >= 1 items, got {n}.")
    p = min(max(p, 1 / n), 1 - 1 / n) if n > 1 else 0.5
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return float(z * math.sqrt(2 * p * (1 - p) / n))


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (Wilson, JASA 1927) of a binomial proportion ``k / n``, 95% by default:
    ``(p + z²/2n ± z·sqrt(p(1 − p)/n + z²/4n²)) / (1 + z²/n)``, clipped to [0, 1] and to contain ``p`` against
    rounding."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need n >= 1 and 0 <= k <= n, got k={k}, n={n}.")
    p, z2 = k / n, z * z
    centre, half = p + z2 / (2 * n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # the interval contains p by construction; clip so rounding at p = 0 or 1 cannot put it a hair outside
    return max(0.0, min(p, (centre - half) / (1 + z2 / n))), min(1.0, max(p, (centre + half) / (1 + z2 / n)))


# ----------------------------------------------------------------------------------- many verdicts from one table
def _p_array(p_values: Sequence[float]) -> np.ndarray:
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or not np.isfinite(p).all() or ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must be a 1-D sequence of numbers in [0, 1], got {p_values!r}.")
    return p


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: with ``p_(1) ≤ … ≤ p_(m)``,
    ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))``. Rejecting where ``p̃ < α`` controls the family-wise error
    rate at ``α`` under any dependence between the tests."""
    p = _p_array(p_values)
    m, order = p.size, np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (1995), in the input order: ``p̃_(i) = min_{j ≥ i} min(1, m p_(j) / j)``.
    Rejecting where ``p̃ < q`` controls the false discovery rate at ``q`` for independent or positively dependent
    tests (less strict than :func:`holm`)."""
    p = _p_array(p_values)
    m, order = p.size, np.argsort(p, kind="stable")
    ranked = m * p[order] / np.arange(1, m + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    out = np.empty(m)
    out[order] = adjusted
    return out


def seed_floor(null_differences: Sequence[PairedDifference | float]) -> float:
    """The seed-to-seed floor of a criterion: the largest ``|difference|`` between two runs of the *same* method that
    differ only in their seeds (data order, sampling seed), e.g. SFT s1 − SFT s0 and SFT s2 − SFT s0, measured with
    the same protocol as the method comparisons. A method effect smaller than this is indistinguishable from
    re-running the baseline; :func:`decide` asks the whole interval to clear it."""
    values = [d.mean if isinstance(d, PairedDifference) else float(d) for d in null_differences]
    if not values or not np.isfinite(values).all():
        raise ValueError("seed_floor needs at least one finite seed-to-seed difference (e.g. SFT s1 − SFT s0).")
    return float(np.max(np.abs(values)))


def claim_p_value(difference: PairedDifference, margin: float = 0.0, higher_is_claimed: bool = True) -> float:
    """Two-sided p-value of "the difference equals the claim's threshold" (``margin``, or ``−margin`` for a "no
    worse than" claim): the normal approximation with the bootstrap's standard error,
    ``p = 2 Φ(−|d − threshold| / sd(draws))`` (Efron & Tibshirani 1993, ch. 12). It is the p-value :func:`holm`
    adjusts across a verdict table: counting draws (:func:`bootstrap_p_value`) cannot go below ``2 / (B + 1)``,
    and Holm multiplies the smallest p by the number of rows, so with dozens of rows a count-based p could never
    pass. A zero-width bootstrap gives 0 (or 1 when the difference sits exactly on the threshold)."""
    from statistics import NormalDist

    if difference.draws is None:
        raise ValueError("this PairedDifference carries no bootstrap draws; compute it with dftnb.measure.stats.")
    gap = difference.mean - (margin if higher_is_claimed else -margin)
    se = float(np.std(difference.draws, ddof=1))
    if se == 0 or not np.isfinite(se):
        return 1.0 if gap == 0 else 0.0
    return float(2 * NormalDist().cdf(-abs(gap) / se))


def decide(
    difference: PairedDifference,
    margin: float = 0.0,
    higher_is_claimed: bool = True,
    floor: float = 0.0,
    adjusted_p: float | None = None,
    alpha: float = 0.05,
) -> str:
    """:func:`verdict` with the two guards a table of many verdicts needs.

    * the seed floor: the interval is widened by ``floor`` on both sides before it is read against the margin, so
      *supported* "higher" needs ``ci_low > margin + floor`` (with margin 0: beyond 0 *and* beyond the floor) and
      *refuted* needs ``ci_high < margin − floor``; a difference within the floor of the threshold is no more than
      what re-running the baseline with other seeds produces;
    * multiplicity: with ``adjusted_p`` (:func:`holm` over the table's :func:`claim_p_value` values) a verdict other
      than *undetermined* also needs ``adjusted_p < alpha``.
    """
    if floor < 0 or not np.isfinite(floor):
        raise ValueError(f"floor must be a finite |difference| >= 0 (seed_floor), got {floor}.")
    raw = verdict(difference.ci_low - floor, difference.ci_high + floor, margin, higher_is_claimed)
    if raw != "undetermined" and adjusted_p is not None and not adjusted_p < alpha:
        return "undetermined"
    return raw


def independent_bootstrap(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> PairedDifference:
    """``mean(a) − mean(b)`` of two *independent* sets of per-unit scores (e.g. per-text correctness of two blind
    tests, each model's own samples against the same human set) with a percentile bootstrap interval: each round
    resamples ``a`` and ``b`` separately. ``n`` is the smaller set's size."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or min(a.size, b.size) < 2:
        raise ValueError(f"need two 1-D sets of at least 2 scores each, got shapes {a.shape} and {b.shape}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("scores contain NaN or Inf; drop or fix those units first.")
    rng = np.random.default_rng(seed)
    boot = (a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
            - b[rng.integers(0, b.size, size=(n_boot, b.size))].mean(axis=1))
    return _interval(boot, float(a.mean() - b.mean()), int(min(a.size, b.size)), level)
