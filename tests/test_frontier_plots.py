"""Diversity-quality frontier figures and sentences (dftnb.lab.frontier_plots) on tiny tables."""

import numpy as np
import pandas as pd
import pytest

from dftnb.lab import frontier_plots as fp
from dftnb.lab import plots


def _table(model="base", scale=1.0):
    rows = []
    for level, (t, h) in enumerate([(0.5, 1.0), (1.0, 2.5), (2.0, 5.0)]):
        rows += [
            dict(model=model, sampler="temperature", knob="T", value=t, level=level, distinct=0.3 + 0.2 * level,
                 self_bleu=0.5 - 0.1 * level, sds=np.nan, perplexity=scale * 10 * 4.0 ** level),
            dict(model=model, sampler="min_p", knob="T", value=t, level=level, distinct=0.3 + 0.1 * level,
                 self_bleu=0.5 - 0.05 * level, sds=np.nan, perplexity=scale * 10 * 2.0 ** level),
            dict(model=model, sampler="target_entropy", knob="H*", value=h, level=level, distinct=0.4 + 0.1 * level,
                 self_bleu=0.4, sds=np.nan, perplexity=scale * 10 * 5.0 ** level),
        ]
    return pd.DataFrame(rows)


def test_diversity_metrics_drop_a_column_of_only_nan():
    assert fp.diversity_metrics(_table()) == ["distinct", "self_bleu"]


def test_frontier_figure_suptitle_clears_every_y_label():
    import matplotlib

    with matplotlib.rc_context():
        plots.setup()  # the chapters' theme (larger fonts)
        table = _table().assign(sds=lambda t: 80.0 + 5 * t.level)
        fig = fp.frontier_figure(table, title="Base model: each sampler from cold to hot")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        title = fig._suptitle.get_window_extent(renderer)
        for ax in fig.axes:
            assert not ax.yaxis.label.get_window_extent(renderer).overlaps(title), ax.get_ylabel()
        plots.close(fig)


def test_point_labels_name_the_knob():
    table = _table()
    assert fp.point_labels(table.iloc[[0, 2]]) == ["T=0.5", "H*=1"]
    frontier = pd.DataFrame({"temperature": [0.7, 1.3]})
    assert fp.point_labels(frontier, knob="temperature") == ["T=0.7", "T=1.3"]


def test_frontier_figure_draws_a_labelled_line_per_sampler_with_the_legend_outside():
    table = _table()
    fig = fp.frontier_figure(table)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.get_lines()) == 3
        assert len(ax.texts) == len(table)  # one knob label per point
        assert ax.get_xscale() == "log"  # perplexity spans a factor 250
        assert "perplexity" in ax.get_xlabel() and ax.get_ylabel()
    legend = fig.axes[-1].get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["temperature", "min_p", "target_entropy"]
    assert fig.axes[0].get_legend() is None
    colors = {tuple(line.get_color()) for line in fig.axes[0].get_lines()}
    assert len(colors) == 3
    plots.close(fig)


def test_frontier_figure_joins_points_from_cold_to_hot():
    table = _table().sample(frac=1.0, random_state=0)
    fig = fp.frontier_figure(table, metrics=["distinct"])
    line = next(line for line in fig.axes[0].get_lines() if line.get_label() == "temperature")
    assert list(line.get_xdata()) == [10.0, 40.0, 160.0]
    plots.close(fig)


def test_frontier_figure_takes_the_method_colours_for_models_and_a_mauve_axis():
    both = pd.concat([_table(), _table("DFT reverse KL", scale=1.2)], ignore_index=True)
    assert fp.group_colors(both, "model")["DFT reverse KL"] == plots.method_color("dft_reverse_kl")
    frontier = pd.DataFrame({"model": ["sft"] * 3, "temperature": [0.7, 1.0, 1.3], "mauve": [0.5, 0.6, 0.55],
                             "sds": [20.0, 30.0, 40.0]})
    fig = fp.frontier_figure(frontier, x="mauve", metrics=["sds"], hue="model", knob="temperature")
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear" and "MAUVE" in ax.get_xlabel()
    assert [t.get_text() for t in ax.texts] == ["T=0.7", "T=1", "T=1.3"]
    assert ax.get_lines()[0].get_color() == plots.method_color("sft")
    plots.close(fig)


def test_perplexity_ranking_and_sentence_at_the_hottest_level():
    ranking = fp.perplexity_ranking(_table())
    assert ranking.sampler.tolist() == ["min_p", "temperature", "target_entropy"]
    assert ranking["perplexity / plain temperature"].tolist() == pytest.approx([0.25, 1.0, 25 / 16])
    text = fp.ranking_sentence(ranking, "T = 2")
    assert text.startswith("At T = 2, perplexity from lowest to highest: min_p (T=2): 40.0")
    assert "**min_p** keeps it lowest" in text
    assert "Below plain temperature: min_p; above it: target_entropy" in text


def test_model_comparison_and_sentence_name_the_direction():
    both = pd.concat([_table(), _table("DFT", scale=1.5)], ignore_index=True)
    comparison = fp.model_comparison(both, "base", "DFT", value=1.1)
    row = comparison.set_index("metric").loc["perplexity"]
    assert (row["base"], row["DFT"], row["difference"]) == pytest.approx((40.0, 60.0, 20.0))
    assert comparison.attrs["setting"] == "plain temperature at T = 1"
    text = fp.comparison_sentence(comparison, "base", "DFT")
    assert text.startswith("With plain temperature at T = 1, the samples")
    assert "**DFT** have a higher (worse) perplexity" in text and "60.0 against 40.0 (1.50x)" in text
    better = fp.comparison_sentence(fp.model_comparison(both, "DFT", "base"), "DFT", "base")
    assert "lower (better)" in better
