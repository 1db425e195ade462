"""Chapter 02's harness: run log, per-step timing, curve figures and the sentences built from a run's numbers."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from dftnb.lab import plots
from dftnb.lab import training_runs as TR


def _history(loss0, loss1, ce0, ce1, h0, h1, steps=4):
    frac = [i / (steps - 1) for i in range(steps)]
    return pd.DataFrame({"step": range(1, steps + 1), "seconds": [0.5 * i for i in range(1, steps + 1)],
                         "loss": [loss0 + f * (loss1 - loss0) for f in frac],
                         "ce": [ce0 + f * (ce1 - ce0) for f in frac],
                         "entropy": [h0 + f * (h1 - h0) for f in frac]})


def test_step_seconds_is_the_median_step_and_falls_back_without_a_log():
    history = pd.DataFrame({"step": [1, 2, 3, 4], "seconds": [1.0, 2.0, 3.0, 10.0]})
    assert TR.step_seconds(history, 99.0, 4) == pytest.approx(1.0)  # one slow step does not move the median
    assert TR.step_seconds(pd.DataFrame({"step": [1]}), 8.0, 4) == pytest.approx(2.0)


def test_run_log_collects_histories_summary_and_controls(capsys):
    log = TR.RunLog(steps=4)
    hist = _history(1.0, 0.5, 4.0, 3.5, 3.0, 3.2)
    log.record("sft", "ce", hist, 2.0)
    log.record_control("bucket", {"entropy": 3.0, "ce": 4.0}, {"entropy": 2.9, "ce": 4.2}, hist)
    assert "sft" in capsys.readouterr().out
    assert set(log.history["method"]) == {"sft"} and len(log.history) == 4
    row = log.summary.iloc[0]
    assert row["objective (first)"] == pytest.approx(1.0) and row["entropy (last)"] == pytest.approx(3.2)
    assert row["median s/step"] == pytest.approx(0.5)
    control = log.control.iloc[0]
    assert control["Δ entropy"] == pytest.approx(-0.1) and control["Δ CE"] == pytest.approx(0.2)


def test_control_sentence_names_the_modes_that_stay_and_the_direction_of_the_one_that_moves():
    control = pd.DataFrame([
        {"tail": "uniform", "entropy before": 3.8, "entropy after": 2.4, "Δ entropy": -1.4, "CE before": 4.7,
         "CE after": 5.3, "Δ CE": 0.6},
        {"tail": "bucket", "entropy before": 3.8, "entropy after": 3.75, "Δ entropy": -0.05, "CE before": 4.7,
         "CE after": 4.76, "Δ CE": 0.06}])
    text = TR.control_sentence(control)
    assert "Within 0.1 nats of the starting model (entropy and CE): bucket." in text
    assert "The uniform tail moves the entropy most, down, by 1.40 nats" in text


def test_run_takeaway_compares_dft_with_sft_and_flags_a_rising_objective():
    log = TR.RunLog(steps=4)
    log.record("sft", "ce", _history(4.3, 3.9, 4.6, 4.2, 3.8, 3.7), 1.0)
    log.record("dft_reverse_kl", "reverse_kl", _history(0.19, 0.23, 4.6, 5.6, 3.8, 3.9), 1.0)
    log.record("gem", "gem", _history(1.0, 0.9, 4.6, 4.6, 3.8, 6.0), 1.0)
    lines = TR.run_takeaway(log.summary, ["sft", "dft_reverse_kl", "gem"], 4)
    assert lines[1].startswith("dft_reverse_kl") and "CE +1.00 nats" in lines[1] and "0.190 → 0.230" in lines[1]
    assert "DFT runs: next-token CE +1.00 nats on average" in lines[3] and "SFT: CE -0.40" in lines[3]
    assert "Most entropy gained: gem (+2.20 nats)" in lines[3]
    assert lines[4].startswith("On the last batch") and "1.40 to 1.40 nats above it." in lines[4]
    assert "chapter 01" not in lines[4]
    assert "do not show convergence" in lines[5] and "dft_reverse_kl went 0.190 → 0.230" in lines[5]
    assert len(lines) == 6  # sft and gem objectives fell: no rising-objective line
    with_gap = TR.run_takeaway(log.summary, ["sft", "dft_reverse_kl", "gem"], 4, target_gap=0.05)
    assert "far more than the 0.05 nats" in with_gap[4]
    assert "comparable to" in TR.run_takeaway(log.summary, ["sft", "dft_reverse_kl"], 4, target_gap=1.0)[3]
    assert "less than the 2.00" in TR.run_takeaway(log.summary, ["sft", "dft_reverse_kl"], 4, target_gap=2.0)[3]
    assert "0.10 nats better" in TR.run_takeaway(log.summary, ["sft", "dft_reverse_kl"], 4, target_gap=-0.1)[3]


def test_run_takeaway_says_when_a_dft_run_matches_sft_and_when_objectives_fall():
    log = TR.RunLog(steps=4)
    log.record("sft", "ce", _history(4.3, 3.9, 4.6, 4.2, 3.8, 3.7), 1.0)
    log.record("dft_forward_kl", "forward_kl", _history(0.8, 0.6, 4.6, 4.1, 3.8, 4.0), 1.0)
    log.record("dft_reverse_kl", "reverse_kl", _history(0.2, 0.1, 4.6, 4.5, 3.8, 3.9), 1.0)
    lines = TR.run_takeaway(log.summary, ["sft", "dft_forward_kl", "dft_reverse_kl"], 4)
    assert "dft_forward_kl ends at or below SFT's" in lines[4] and "-0.10 to +0.30 nats from SFT" in lines[4]
    assert lines[5].startswith("No DFT objective is higher") and "do not show convergence" not in lines[5]


def test_curve_figures_use_method_colours_dashed_controls_and_units():
    hist = pd.concat([_history(1, 0.5, 4, 3.5, 3, 3.2).assign(method="sft"),
                      _history(0.1, 0.1, 4, 4, 3, 3).assign(method="control (bucket)")], ignore_index=True)
    fig = TR.curve_figure(hist)
    ce_ax, h_ax = fig.axes[:2]
    assert ce_ax.get_ylabel().endswith("(nats)") and h_ax.get_ylabel().endswith("(nats)")
    sft, control = ce_ax.get_lines()[:2]
    assert tuple(sft.get_color()[:3]) == pytest.approx(plots.method_color("sft"))
    assert control.get_linestyle() == "--"
    assert h_ax.get_legend() is not None
    fig2 = TR.objective_figure(pd.concat([hist, hist[hist.method == "sft"].assign(method="dft_sorted_w1")]), ncols=3)
    assert fig2.axes[2].get_ylabel() == "training objective (probability mass)"
    assert [ax.get_title() for ax in fig2.axes if ax.axison] == ["sft", "control (bucket)", "dft_sorted_w1"]
    plots.close(fig)
    plots.close(fig2)


def test_target_ce_gap_interpolates_in_log_keys_and_clamps():
    sweep = pd.DataFrame({"datastore_keys": [16000, 4000], "nll_target": [4.42, 4.50], "nll_reference": [4.40, 4.40]})
    assert TR.target_ce_gap(sweep, 8000) == pytest.approx(0.06)  # halfway in log(keys) between 0.10 and 0.02
    assert TR.target_ce_gap(sweep, 1000) == pytest.approx(0.10) and TR.target_ce_gap(sweep, 64000) == pytest.approx(0.02)
