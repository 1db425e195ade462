"""Paired comparisons: is method A different from method B on the *same* prompts, questions and tokens?

Two rows whose 95% intervals overlap can still differ clearly when they are compared unit by unit, because most of
each row's interval is the spread of the units themselves (easy and hard prompts, questions). So every method is
compared with the reference (SFT) on the differences of paired units:

* :func:`paired_bootstrap` - mean difference ``mean_i (a_i − b_i)`` of per-unit scores (per-prompt SDS, per-token
  log-likelihood …) with a percentile bootstrap interval over units (Efron & Tibshirani 1993; Koehn 2004 for its
  use in NLP);
* :func:`mcnemar` - two classifiers' accuracies on the same questions: the discordant counts, McNemar's exact
  (binomial) p-value and a paired bootstrap interval of the accuracy difference (McNemar 1947);
* :func:`verdict` - reads an interval against a margin: *supported*, *refuted* or *undetermined* (the interval
  contains values on both sides of the margin).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return PairedDifference(float(diff.mean()), float(lo), float(hi), int(diff.size), level)


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
