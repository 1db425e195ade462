"""dftnb.lab.denoiser_timing: the median timer, the speed table on a tiny model and the verdict's four cases."""

from __future__ import annotations

import itertools

import pytest
import torch

from dftnb.lab import denoiser_timing
from dftnb.lab.models import tiny_model


def test_median_seconds_takes_the_median_of_the_runs():
    ticks = itertools.chain.from_iterable([(0.0, 3.0), (10.0, 11.0), (20.0, 22.0)])  # runs of 3, 1 and 2 s
    calls = []
    got = denoiser_timing.median_seconds(lambda: calls.append(1), repeats=3, clock=lambda: next(ticks))
    assert got == pytest.approx(2.0)
    assert len(calls) == 3
    with pytest.raises(ValueError):
        denoiser_timing.median_seconds(lambda: None, repeats=0)


def test_speed_table_rows_and_call_counts():
    model, tokenizer = tiny_model(seed=0, hidden_size=32, num_layers=1)
    ids = torch.tensor([[1, 2, 3]])
    table = denoiser_timing.speed_table(model, tokenizer, ids, n_tokens=4, block_size=4, steps=[4, 2], K=5.0,
                                        repeats=1, machine="test")
    assert table["generator"].str.startswith("autoregressive").tolist() == [True, False, False]
    assert table["calls per token"].tolist() == pytest.approx([1.0, 5 / 4, 3 / 4])
    assert (table["tokens/s"] > 0).all() and table["relative to AR"].iloc[0] == 1.0
    assert set(table.machine) == {"test"}
    text = denoiser_timing.speed_takeaway(table, 4)
    assert "S = 4" in text and "S = 2" in text and "0.75 calls per token" in text


@pytest.mark.parametrize("speed, mauve, ar_mauve, start, word", [
    (1.3, 0.40, 0.45, "Goal met", "within"),
    (1.3, 0.03, 0.45, "Goal not met", "bought with"),
    (0.8, 0.40, 0.45, "Goal not met", "below"),
    (0.8, 0.03, 0.45, "Goal not met", "below"),
])
def test_fast_sampling_verdict_needs_speed_and_quality(speed, mauve, ar_mauve, start, word):
    text = denoiser_timing.fast_sampling_verdict(speed, mauve, ar_mauve, steps=2, block_size=8)
    assert text.startswith(start) and word in text
    assert f"{speed:.2f}x" in text and f"{mauve:.2f}" in text


def test_denoiser_figures_have_units_outside_legends_and_objective_colours(tmp_path):
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from dftnb.lab import denoiser_plots, plots

    steps = pd.DataFrame({"step": [1, 2, 3], "input_entropy": [0.8, 1.0, 0.1], "pred_entropy": [5.0, 3.0, 1.0]})
    noise = pd.DataFrame({"sampler": ["a", "b"], "perplexity": [10.0, 30.0], "distinct": [0.5, 0.8],
                          "self_bleu": [0.4, 0.1]})
    history = pd.DataFrame({"step": [1, 2, 1, 2], "ce": [3.0, 2.5, 3.1, 2.4],
                            "objective": ["CE", "CE", "DFT (forward KL)", "DFT (forward KL)"]})
    quality = pd.DataFrame({"sampler": ["autoregressive T=0.7", "autoregressive T=1", "denoiser CE, S=2"],
                            "denoiser": ["", "", "CE"], "steps S": [math.nan, math.nan, 2.0],
                            "distinct": [0.5, 0.7, 0.6], "perplexity": [20.0, 40.0, 90.0], "mauve": [0.6, 0.5, 0.1]})
    figs = [denoiser_plots.entropy_figure(steps, 49152, 3, out=tmp_path),
            denoiser_plots.noise_figure(noise, out=tmp_path),
            denoiser_plots.training_figure(history, "t", out=tmp_path),
            denoiser_plots.quality_figure(quality, out=tmp_path)]
    assert len(list((tmp_path / "figures").glob("05_*.png"))) == 4
    for fig in figs:
        labels = [ax.xaxis.label.get_text() + ax.yaxis.label.get_text() for ax in fig.axes]
        assert all(label for label in labels)
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert legends and all(leg.get_bbox_to_anchor().x0 > 0 for leg in legends)
    assert "(nats)" in figs[0].axes[0].yaxis.label.get_text()
    lines = {li.get_label(): li for li in figs[2].axes[0].get_lines()}
    assert matplotlib.colors.to_rgb(lines["CE"].get_color()) == pytest.approx(plots.method_color("sft"))
    quality_legend = [t.get_text() for t in figs[3].axes[1].get_legend().get_texts()]
    assert "CE" in quality_legend and "autoregressive (T grid)" in quality_legend
    plt.close("all")


def test_call_cost_is_seconds_per_call_over_an_autoregressive_call():
    assert denoiser_timing.call_cost(0.44, 1.125) == pytest.approx(2.02, abs=0.01)
    assert denoiser_timing.call_cost(8.0 / 9.0, 9.0 / 8.0) == pytest.approx(1.0)  # extra positions free


def _invariant(untrained, dft):
    import pandas as pd

    return pd.DataFrame([{"denoiser": name, "steps S": s, "tokens equal to greedy": v}
                         for name, values in (("untrained", untrained), ("DFT", dft))
                         for s, v in zip((8, 16, 32), values)])


def test_more_steps_sentence_counts_a_rise_only_beyond_one_token():
    flat = denoiser_timing.more_steps_sentence(_invariant([7 / 48, 5 / 48, 8 / 48], [12 / 48] * 3), n_tokens=48)
    assert flat.startswith("In this run more steps do not raise the share for any denoiser (S = 8 → 16 → 32:")
    assert "untrained 15% → 10% → 17%" in flat and "48 tokens measured" in flat
    rises = denoiser_timing.more_steps_sentence(_invariant([7 / 48, 5 / 48, 8 / 48], [12 / 48, 20 / 48, 30 / 48]), 48)
    assert rises.startswith("More steps raise the share by more than one token for DFT (")


def test_fewer_steps_sentence_follows_the_measured_shares():
    best = {"untrained": 7 / 48, "DFT": 12 / 48}
    close = denoiser_timing.fewer_steps_sentence({"untrained": 8 / 48, "DFT": 11 / 48}, best, 4, 8, 48)
    assert "stays within 2 tokens" in close and "buys nothing yet" in close
    worse = denoiser_timing.fewer_steps_sentence({"untrained": 2 / 48, "DFT": 11 / 48}, best, 4, 8, 48)
    assert worse.startswith("With S < B the Jacobi argument no longer covers the block")


def test_mauve_caveat_flags_a_mauve_that_disagrees_with_perplexity():
    assert "24 short texts is unstable" in denoiser_timing.mauve_caveat(0.96, 0.67, 200.0, 40.0, 24)
    assert denoiser_timing.mauve_caveat(0.96, 0.67, 60.0, 40.0, 24) == ""  # perplexity within 3x
    assert denoiser_timing.mauve_caveat(0.10, 0.67, 200.0, 40.0, 24) == ""  # MAUVE agrees: worse


def test_quality_figure_panel_titles_and_x_labels_do_not_collide(tmp_path):
    import matplotlib
    import pandas as pd

    from dftnb.lab import denoiser_plots, plots

    quality = pd.DataFrame([  # perplexities of a tiny model: log-axis ticks like 4.95x10^4 take room
        {"sampler": "autoregressive T=1", "denoiser": "", "steps S": float("nan"), "distinct": 1.0,
         "perplexity": 47600.0, "mauve": 0.3},
        {"sampler": "autoregressive T=1.3", "denoiser": "", "steps S": float("nan"), "distinct": 1.0,
         "perplexity": 47700.0, "mauve": 0.29},
        {"sampler": "denoiser CE, S=8", "denoiser": "CE", "steps S": 8, "distinct": 1.0, "perplexity": 49700.0,
         "mauve": 0.69},
        {"sampler": "denoiser CE, S=4", "denoiser": "CE", "steps S": 4, "distinct": 1.0, "perplexity": 48400.0,
         "mauve": 0.49},
        {"sampler": "denoiser untrained, S=8", "denoiser": "untrained", "steps S": 8, "distinct": 1.0,
         "perplexity": 47700.0, "mauve": 0.3},
        {"sampler": "denoiser DFT (forward KL), S=8", "denoiser": "DFT (forward KL)", "steps S": 8, "distinct": 1.0,
         "perplexity": 49200.0, "mauve": 0.5},
    ])
    with matplotlib.rc_context():
        plots.setup()
        fig = denoiser_plots.quality_figure(quality, out=tmp_path)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        left, right = (ax.title.get_window_extent(renderer) for ax in fig.axes[:2])
        assert not left.overlaps(right)
        for ax in fig.axes[:2]:  # an x label wider than its panel runs into the neighbour's
            assert ax.xaxis.label.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width
        plots.close(fig)
