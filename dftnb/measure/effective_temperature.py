"""The base model's effective temperature: a diversity score read on the base model's own temperature curve.

A diversity score such as the SDS (:func:`dftnb.measure.metrics.style_diversity_score`) saturates: on
SmolLM2-135M it stops rising near 82 while the samples turn into text a classifier tells from human text almost
every time. A fixed bar ("+20 points") can then be out of reach of every model and sampler. Reading a score on the
base model's curve instead answers a question that has an answer:

    T_eff(s) = the temperature T at which the base model's samples score s,

found by linear interpolation between the measured points ``(T_i, s_i)`` of that curve. "Fine-tuned model M at
T = 1 is as diverse as the base model at T_eff = 1.12" says how much hotter the base model must run to match it;
whether M is *better* than a hotter base model is then a question of fidelity at that diversity (a frontier),
not of the score alone. The interval of a score maps to an interval of ``T_eff`` through the same (monotone) curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class EffectiveTemperature:
    """``T_eff`` of a score on the base curve, with the bounds of its interval; ``position`` says where it fell."""

    temperature: float  # nan when the score lies outside the curve's range
    ci_low: float
    ci_high: float
    position: str  # "inside", "below" (less diverse than the curve's coldest point), "above" (hotter than its hottest)


def _curve(temperatures: Sequence[float], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    t, s = np.asarray(temperatures, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if t.ndim != 1 or t.shape != s.shape or t.size < 2 or not (np.isfinite(t).all() and np.isfinite(s).all()):
        raise ValueError(
            "the base curve needs >= 2 finite (temperature, score) points of equal count, e.g. the calibration "
            f"rows at T = 0.3, 0.7, 1.0, 1.3; got temperatures {list(temperatures)} and scores {list(scores)}."
        )
    order = np.argsort(t)
    t, s = t[order], s[order]
    if (np.diff(t) <= 0).any() or (np.diff(s) <= 0).any():
        raise ValueError(
            f"the base curve must rise strictly with temperature to be inverted, got scores {s.round(3).tolist()} at "
            f"T = {t.tolist()}; drop the saturated points (where the score stops rising) or measure with more samples."
        )
    return t, s


def _invert(t: np.ndarray, s: np.ndarray, value: float) -> tuple[float, str]:
    if value < s[0]:
        return float("nan"), "below"
    if value > s[-1]:
        return float("nan"), "above"
    return float(np.interp(value, s, t)), "inside"


def effective_temperature(
    temperatures: Sequence[float], scores: Sequence[float], score: float, ci_low: float | None = None,
    ci_high: float | None = None,
) -> EffectiveTemperature:
    """The base model's temperature whose samples are as diverse as ``score`` (see the module docstring).

    ``temperatures``/``scores``: the base model's curve (strictly rising; a clear error otherwise). ``ci_low`` /
    ``ci_high``: the score's interval, mapped through the same curve (a bound beyond the curve's range maps to the
    range's end temperature, so the interval is then open on that side). A score outside the curve's range has
    ``temperature = nan`` and ``position`` "below" or "above": extend the curve instead of extrapolating.
    """
    t, s = _curve(temperatures, scores)
    point, position = _invert(t, s, float(score))
    lo = float(np.interp(ci_low, s, t)) if ci_low is not None else point
    hi = float(np.interp(ci_high, s, t)) if ci_high is not None else point
    return EffectiveTemperature(point, lo, hi, position)
