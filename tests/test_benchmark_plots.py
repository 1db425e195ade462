"""dftnb.lab.benchmark_plots and benchmark_reading: chapter 06's figures and sentences from hand-made tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from dftnb.lab import benchmark_plots, benchmark_reading, plots  # noqa: E402

MODELS = ["base", "SFT", "DFT (reverse KL)", "GEM"]


def _calibration(sds=(40.0, 50.0, 60.0, 65.0)):
    rows = [{"row": f"base, T = {t:g}", "temperature": t, "sds": s, "sds_ci_low": s - 2, "sds_ci_high": s + 2,
             "mauve": 0.5, "blind_test": 70.0, "blind_low": 60.0, "blind_high": 80.0}
            for t, s in zip((0.3, 0.7, 1.0, 1.3), sds)]
    rows += [{"row": "human text (other half)", "temperature": np.nan, "sds": np.nan, "mauve": 0.9,
              "blind_test": 50.0, "blind_low": 40.0, "blind_high": 60.0},
             {"row": "human text, words shuffled", "temperature": np.nan, "sds": np.nan, "mauve": 0.88,
              "blind_test": 64.0, "blind_low": 57.0, "blind_high": 71.0}]
    return pd.DataFrame(rows)


def _table(sft_sds=58.0, human_sds=62.0):
    rows = [{"model": m, "sds": sft_sds + i, "sds_ci_low": sft_sds + i - 3, "sds_ci_high": sft_sds + i + 3,
             "d": 0.9, "s": 0.8, "c": 0.4, "v": 0.3, "mauve": 0.4, "blind_test": 80.0 - i, "blind_low": 70.0 - i,
             "blind_high": 90.0 - i, "mmlu": 30.0} for i, m in enumerate(MODELS)]
    rows.append({"model": "human text", "sds": human_sds, "sds_ci_low": human_sds - 2, "sds_ci_high": human_sds + 2,
                 "d": 0.9, "s": 0.9, "c": 0.5, "v": 0.4, "mauve": 0.9, "blind_test": 50.0, "blind_low": 40.0,
                 "blind_high": 60.0, "mmlu": np.nan})
    return pd.DataFrame(rows)


def _paired():
    rows = []
    for m in ("base", "DFT (reverse KL)", "GEM"):
        rows.append({"model": m, "metric": "SDS", "difference": 1.0, "ci_low": -1.0, "ci_high": 3.0, "unit": "points",
                     "n": 12})
        rows.append({"model": m, "metric": "HumanEval", "difference": 0.0, "ci_low": 0.0, "ci_high": 0.0,
                     "unit": "points", "n": 10})
        rows.append({"model": m, "metric": "perplexity", "difference": -5.0, "ci_low": -7.0, "ci_high": -3.0,
                     "unit": "% change", "n": 3000})
    return pd.DataFrame(rows)


def _labels(fig):
    return [t.get_text() for ax in fig.axes for t in (ax.xaxis.label, ax.yaxis.label)]


def test_all_zero_panels_are_dropped_and_units_labelled(tmp_path):
    fig, empty = benchmark_plots.paired_figure(_paired(), out=tmp_path)
    assert empty == ["HumanEval"]
    assert [ax.get_title() for ax in fig.axes] == ["SDS", "perplexity"]
    assert any("% change" in label for label in _labels(fig)) and any("(points)" in label for label in _labels(fig))
    assert (tmp_path / "figures" / "06_paired.png").exists()
    assert benchmark_plots.paired_figure(_paired()[lambda p: p.metric == "HumanEval"])[0] is None
    text = benchmark_reading.paired_takeaway(_paired(), empty)
    assert "**HumanEval**: no panel" in text and "below SFT: base, DFT (reverse KL), GEM" in text
    assert "every interval contains 0" in text
    plt.close("all")


def test_figures_use_constrained_layout_method_colours_and_units(tmp_path):
    table, calibration = _table(), _calibration()
    figs = [benchmark_plots.calibration_figure(calibration, 62.0, out=tmp_path),
            benchmark_plots.table_figure(table, 48, out=tmp_path),
            benchmark_plots.components_figure(table, out=tmp_path)]
    frontier = pd.DataFrame([{"model": m, "temperature": t, "sds": 50 + 10 * t, "mauve": 0.5 - 0.1 * t}
                             for m in MODELS for t in (0.7, 1.0)])
    figs.append(benchmark_plots.frontier_figure(frontier, out=tmp_path))
    for fig in figs:
        assert fig.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine"
    assert any("(0-100" in label for label in _labels(figs[0]))
    legend = figs[3].axes[0].get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > 0  # outside, to the right of the data
    line = next(li for li in figs[3].axes[0].get_lines() if li.get_label() == "SFT")
    assert np.allclose(matplotlib.colors.to_rgb(line.get_color()), plots.method_color("SFT"))
    assert len(list((tmp_path / "figures").glob("06_*.png"))) == 4
    plt.close("all")


ARTICLE_SDS = {"SDS": ("style diversity gains >= {m:g} SDS points", 20.0, True)}  # the seed's bar, out of reach


def _verdict_table():
    claim, margin, _ = ARTICLE_SDS["SDS"]
    return pd.DataFrame([
        {"model": "DFT (reverse KL)", "criterion": claim.format(m=margin), "difference": 1.0, "ci_low": -1.0,
         "ci_high": 3.0, "verdict": "refuted", "note": ""},
        {"model": "DFT (reverse KL)", "criterion": "lower perplexity", "difference": -5.0, "ci_low": -7.0,
         "ci_high": -3.0, "verdict": "supported", "note": ""},
    ])


def test_verdict_cannot_decide_when_the_margin_is_out_of_reach():
    table, calibration = _table(sft_sds=58.0, human_sds=62.0), _calibration()
    assert benchmark_reading.reachable_sds_gain(table, calibration) == pytest.approx(65.0 - 59.0)  # SFT is row 1
    text, out = benchmark_reading.verdict_at_size(_verdict_table(), table, calibration, criteria=ARTICLE_SDS)
    assert out.verdict.tolist() == [benchmark_reading.CANNOT_DECIDE, "supported"]
    assert "CANNOT DECIDE AT THIS SIZE" in text and "+6.0" in text


def test_verdict_keeps_refuted_when_the_margin_is_reachable():
    table, calibration = _table(sft_sds=30.0), _calibration(sds=(40.0, 50.0, 60.0, 80.0))
    text, out = benchmark_reading.verdict_at_size(_verdict_table(), table, calibration, criteria=ARTICLE_SDS)
    assert out.verdict.tolist() == ["refuted", "supported"]
    assert "**REFUTED**" in text


def test_sentences_follow_the_numbers(tmp_path):
    text = benchmark_reading.shuffle_takeaway(_calibration())
    assert "64% [57, 71]" in text and "does tell" in text and "14 points above chance" in text
    calm = _calibration()
    calm.loc[calm.row == "human text, words shuffled", ["blind_test", "blind_low"]] = [52.0, 45.0]
    assert "cannot tell" in benchmark_reading.shuffle_takeaway(calm)
    assert "does not compute for shuffled text" in text
    checks = {"sds_ordered": True, "human_halves_alike": False, "hot_sampling_unlike": True}
    said = benchmark_reading.calibration_takeaway(checks)
    assert said.startswith("Calibration: 2 of 3 checks pass.") and "Fails" in said
    said = benchmark_reading.table_takeaway(_table())
    assert "from 58.0 (base) to 61.0 (GEM)" in said and "3 of 3 models" in said and "overlap is not equality" in said and "77-80%" in said
    readme = tmp_path / "README.md"
    readme.write_text("| what | goal | result | how |\n| DFT/SFT training-step time (x) | ≤ 1.05 | **1.02** | `cmd` |\n")
    shown = benchmark_reading.committed_step_time(readme)
    assert "**1.02**" in shown and "≤ 1.05" in shown
    readme.write_text("| what | goal | result | how |\n| DFT/SFT training-step time (x) | ≤ 1.05 | **1.02**, earlier 1.10: "
                      "see below | `cmd` |\n")
    assert benchmark_reading.committed_step_time(readme).endswith("**1.02**, earlier 1.10")
    assert benchmark_reading.committed_step_time(tmp_path / "missing.md") is None


def test_frontier_takeaway_reads_the_ordering():
    frontier = pd.DataFrame([{"model": m, "temperature": t, "sds": base + 10 * t, "mauve": 0.5 - 0.1 * t + 0.01 * i}
                             for i, (m, base) in enumerate([("SFT", 50), ("GEM", 55)]) for t in (0.7, 1.0, 1.3)])
    frontier.loc[(frontier.model == "GEM") & (frontier.temperature == 1.3), "sds"] = 0.0  # GEM falls at T = 1.3
    text = benchmark_reading.frontier_takeaway(frontier)
    assert text.startswith("Counting a step as a rise only when the SDS leaves the colder temperature's interval, it "
                           "rises with every temperature step for 1 of the 2 models sampled at several temperatures "
                           "(T = 0.7 → 1: 2 of 2; T = 1 → 1.3: 1 of 2 (flat within its interval: GEM)).")
    assert "GEM's (SDS 65.0)" in text and "GEM's (MAUVE 0.410)" in text and "the same model leads both" in text


def test_frontier_takeaway_counts_a_step_inside_the_colder_interval_as_flat():
    rows = [("base", 1.0, 79.5, 82.0), ("base", 1.3, 85.9, 87.2), ("base", 2.0, 85.9, 86.5),
            ("SFT", 1.0, 81.8, 83.5), ("SFT", 1.3, 85.4, 86.5)]
    frontier = pd.DataFrame([{"model": m, "temperature": t, "sds": sds, "sds_ci_low": sds - 2, "sds_ci_high": high,
                              "mauve": 0.5} for m, t, sds, high in rows])
    frontier.loc[frontier.temperature == 2.0, "sds"] = 85.93  # above 85.9, inside [.., 87.2]
    text = benchmark_reading.frontier_takeaway(frontier)
    assert "every temperature step for 1 of the 2 models sampled at several temperatures" in text
    assert "T = 1 → 1.3: 2 of 2; T = 1.3 → 2: 0 of 1 (flat within the interval))." in text


def test_calibration_figure_temperature_ticks_do_not_run_together(tmp_path):
    temperatures = (0.0, 0.3, 0.7, 1.0, 1.3, 2.0)
    calibration = pd.DataFrame([{"row": "base, greedy" if t == 0 else f"base, T = {t:g}", "temperature": t,
                                 "sds": 40.0 + 8 * i, "sds_ci_low": 38.0 + 8 * i, "sds_ci_high": 42.0 + 8 * i,
                                 "mauve": 0.5, "blind_test": 70.0, "blind_low": 60.0, "blind_high": 80.0}
                                for i, t in enumerate(temperatures)])
    humans = _calibration()
    calibration = pd.concat([calibration, humans[humans.temperature.isna()]], ignore_index=True)
    with matplotlib.rc_context():
        plots.setup()
        fig = benchmark_plots.calibration_figure(calibration, 62.0, out=tmp_path)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ticks = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels() if t.get_text()]
        assert len(ticks) == len(temperatures)
        assert all(b.x0 - a.x1 >= 8 for a, b in zip(ticks, ticks[1:]))  # about a character between neighbours
        assert "0 = greedy" in fig.axes[0].get_xlabel()
        plots.close(fig)
