"""Chapter 03's solver-timing harness, support-size table and figures (dftnb.lab.solver_timing) on tiny inputs."""

import time

import numpy as np
import pandas as pd
import pytest
import torch

from dftnb.lab import plots
from dftnb.lab import solver_timing as st


def test_seconds_per_solve_divides_the_wall_time_by_the_solves():
    per = st.seconds_per_solve(lambda: time.sleep(0.05), 5)
    assert 0.009 <= per < 0.05


def test_sliced_w2_is_zero_for_equal_weights_and_positive_otherwise():
    torch.manual_seed(0)
    unit = torch.nn.functional.normalize(torch.randn(10, 4, dtype=torch.float64), dim=-1)
    ids = torch.tensor([1, 4, 7])
    a = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)  # last slot: the bucket at the origin
    b = torch.tensor([0.1, 0.2, 0.2, 0.5], dtype=torch.float64)
    assert st.sliced_w2(a, a, ids, unit) == pytest.approx(0.0, abs=1e-12)
    assert st.sliced_w2(a, b, ids, unit) > 1e-3


def test_time_solvers_times_every_solver_at_every_k():
    torch.manual_seed(0)
    student, embeddings = torch.randn(3, 40), torch.randn(40, 6)
    timing = st.time_solvers(student, embeddings, [4, 8], n_time=2, epsilon=0.1, n_iters=5, target_temperature=1.5)
    assert timing.k.tolist() == [4, 8]
    assert list(timing.columns) == ["k", "support", *st.SOLVERS]
    assert (timing.support >= timing.k).all()
    values = timing[list(st.SOLVERS)].to_numpy()
    assert np.isfinite(values).all() and (values > 0).all()


def _timing():
    return pd.DataFrame({"k": [8, 16, 32], "support": [9, 17, 33], "fast": [1e-4, 2e-4, 4e-4],
                         "slow": [1e-3, 4e-3, 1.6e-2], "too slow": [1e-2, 2e-2, 4e-2]})


def test_practical_support_finds_the_largest_k_within_budget():
    practical = st.practical_support(_timing(), budget_seconds=5e-3).set_index("solver")
    assert practical.loc["fast", "largest k within budget"] == 32
    assert bool(practical.loc["fast", "fits every k tried"])
    assert practical.loc["slow", "largest k within budget"] == 16
    assert not practical.loc["slow", "fits every k tried"]
    assert np.isnan(practical.loc["too slow", "largest k within budget"])
    assert practical.loc["slow", "share of budget at largest k"] == pytest.approx(1.6e-2 / 5e-3)


def test_practical_support_summary_says_what_the_table_shows():
    practical = st.practical_support(_timing(), budget_seconds=5e-3)
    text = st.practical_support_summary(practical, k_max=32)
    assert "up to k = 32" in text and "fast (8%)" in text
    assert "**slow** fits the budget up to k = 16" in text
    assert "**too slow** fits the budget at no k tried" in text
    assert "The slowest at k = 32 is too slow" in text


def test_time_per_solve_figure_has_log_axes_units_markers_and_an_outside_legend():
    timing = _timing()
    fig = st.plot_time_per_solve(timing, budget_seconds=5e-3)
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert "(s)" in ax.get_ylabel() and "k" in ax.get_xlabel()
    lines = ax.get_lines()
    assert len(lines) == 4  # three solvers and the budget
    assert len({line.get_marker() for line in lines[:3]}) == 3
    legend = ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1
    plots.close(fig)


def test_solver_styles_are_distinct():
    colors = [tuple(s["color"]) for s in st.SOLVER_STYLE.values()]
    markers = [s["marker"] for s in st.SOLVER_STYLE.values()]
    assert len(set(colors)) == len(colors) == len(set(markers)) == len(st.SOLVERS)


def _training():
    return pd.DataFrame({"objective": ["base (no training)", "reverse KL", "Sinkhorn W"],
                         "entropy (nats)": [4.0, 5.0, 7.0], "distinct-1": [0.5, 0.6, 0.7]})


def test_objective_comparison_draws_one_panel_per_metric_and_the_target_entropy():
    fig = st.plot_objective_comparison(_training(), target_entropy=6.0)
    assert len(fig.axes) == 2
    entropy_ax = fig.axes[0]
    assert entropy_ax.get_ylabel() == "nats"
    assert any(np.allclose(line.get_ydata(), 6.0) for line in entropy_ax.get_lines())
    bars = entropy_ax.patches
    assert bars[0].get_facecolor()[:3] == pytest.approx(plots.method_color("base"))
    plots.close(fig)


def test_entropy_sentence_compares_each_objective_with_the_target():
    text = st.entropy_sentence(_training(), target_entropy=6.0, steps=6)
    assert "base model 4.00, target 6.00 (gap +2.00)" in text
    assert "**reverse KL** reaches 5.00 (50% of the gap): it stays short of the target" in text
    assert "**Sinkhorn W** reaches 7.00 (150% of the gap): it overshoots the target" in text


def test_entropic_bias_figure_floors_rounding_level_gaps_on_log_axes():
    sink = pd.DataFrame({"eps": [0.01, 0.1, 1.0] * 2, "k": [8] * 3 + [16] * 3,
                         "relative gap": [-1e-9, 0.05, 2.0, 1e-4, 0.08, 3.0]})
    fig = st.plot_entropic_bias(sink, floor=1e-6)
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.01", "0.1", "1"]
    first = ax.get_lines()[0]
    assert np.min(first.get_ydata()) == pytest.approx(1e-6)  # the negative gap is drawn at the floor
    assert ax.get_legend() is not None and ax.get_legend().get_title().get_text() == "support k"
    plots.close(fig)
