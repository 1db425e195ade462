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
