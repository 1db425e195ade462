"""dftnb.measure.effective_temperature: scores read on a base curve whose answer is known."""

import math

import pytest

from dftnb.measure.effective_temperature import effective_temperature

T = [0.3, 0.7, 1.0, 1.3]
S = [40.0, 60.0, 72.0, 78.0]


def test_a_measured_point_maps_to_its_own_temperature_and_between_points_linearly():
    assert effective_temperature(T, S, 72.0).temperature == pytest.approx(1.0)
    assert effective_temperature(T, S, 66.0).temperature == pytest.approx(0.85)
    r = effective_temperature(T[::-1], S[::-1], 75.0, ci_low=72.0, ci_high=78.0)  # order of points does not matter
    assert r.position == "inside" and r.temperature == pytest.approx(1.15)
    assert r.ci_low == pytest.approx(1.0) and r.ci_high == pytest.approx(1.3)


def test_scores_outside_the_curve_are_named_not_extrapolated():
    hot = effective_temperature(T, S, 82.0)
    cold = effective_temperature(T, S, 10.0)
    assert math.isnan(hot.temperature) and hot.position == "above"
    assert math.isnan(cold.temperature) and cold.position == "below"


def test_a_curve_that_does_not_rise_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="saturated"):
        effective_temperature([0.7, 1.0, 1.3, 1.6], [60, 72, 82, 81.7], 70)
    with pytest.raises(ValueError, match=">= 2 finite"):
        effective_temperature([1.0], [70.0], 70)
