"""Diversity-quality frontiers: one line per sampler (or model) through its settings from cold to hot, each point
labelled with its knob (``T=2``), and the sentences a chapter prints about them.

A frontier table has one row per setting, a quality column on the x axis (perplexity of the samples under the base
model, or MAUVE) and one or more diversity columns (distinct-n, Self-BLEU, SDS); ``knob``/``value`` (or a
``temperature`` column) say which setting a row is. Chapter 04 plots the sampler frontiers of
:func:`dftnb.lab.experiments.sampler_frontier`; chapter 06's MAUVE/SDS frontier has the same shape.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from . import plots

# Axis labels with their units / direction for the columns a frontier table can hold.
AXIS_LABELS = {
    "perplexity": "perplexity under the base model\n(lower = better)",
    "distinct": "distinct-1..4\n(share of distinct n-grams, up = diverse)",
    "self_bleu": "Self-BLEU-4\n(0-1, down = diverse)",
    "sds": "Style Diversity Score\n(0-100, up = diverse)",
    "mauve": "MAUVE vs human text\n(0-1, higher = more human-like)",
}
DIVERSITY = ("distinct", "self_bleu", "sds")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_DASHES = ("-", "--", ":", "-.")


def diversity_metrics(table: pd.DataFrame) -> list[str]:
    """The diversity columns of ``table`` that hold at least one number (a panel of only NaN is not drawn)."""
    return [m for m in DIVERSITY if m in table and table[m].notna().any()]


def point_labels(rows: pd.DataFrame, knob: str = "value") -> list[str]:
    """``"T=2"`` / ``"H*=5"`` per row: the knob's name from the ``knob`` column when the table has one (chapter 04),
    else ``"T"`` for the value in column ``knob`` (a ``temperature`` column, chapter 06)."""
    names = rows["knob"] if knob == "value" and "knob" in rows else ["T"] * len(rows)
    return [f"{name}={value:g}" for name, value in zip(names, rows[knob])]


def group_colors(table: pd.DataFrame, hue: str) -> dict:
    """One colour per ``hue`` value: the chapters' method colours for models (``plots.method_palette``), the
    colour-blind palette in order of appearance otherwise (samplers)."""
    names = list(dict.fromkeys(table[hue]))
    if hue == "model":  # "DFT reverse KL" -> the colour of dft_reverse_kl
        keys = {n: n if plots.method_key(n) else str(n).lower().replace(" ", "_") for n in names}
        palette = plots.method_palette(list(keys.values()))
        return {n: palette[keys[n]] for n in names}
    return dict(zip(names, sns.color_palette("colorblind", max(len(names), 1))))


def draw_frontier(ax, table: pd.DataFrame, x: str, y: str, hue: str = "sampler", style: str | None = None,
                  knob: str = "value", order: str = "level", colors: dict | None = None, label: bool = True) -> None:
    """Draw one line per ``(hue, style)`` group of ``table`` on ``ax``, its points joined in ``order`` (cold to hot),
    a marker per ``hue`` value and a line style per ``style`` value, each point labelled (:func:`point_labels`)."""
    colors = colors or group_colors(table, hue)
    markers = {name: _MARKERS[i % len(_MARKERS)] for i, name in enumerate(colors)}
    styles = list(dict.fromkeys(table[style])) if style else [None]
    dashes = {name: _DASHES[i % len(_DASHES)] for i, name in enumerate(styles)}
    for keys, rows in table.groupby([hue] + ([style] if style else []), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        rows = rows.sort_values(order if order in rows else knob)
        name = " · ".join(str(k) for k in keys)
        ax.plot(rows[x], rows[y], marker=markers[keys[0]], linestyle=dashes[keys[1] if style else None],
                color=colors[keys[0]], label=name, markersize=6)
        if label:
            plots.label_points(ax, rows[x], rows[y], point_labels(rows, knob), fontsize=7)


def frontier_figure(table: pd.DataFrame, x: str = "perplexity", metrics: list[str] | None = None,
                    hue: str = "sampler", style: str | None = None, knob: str = "value", log_x: bool | None = None,
                    title: str | None = None, width: float = 5.0, height: float = 4.0):
    """One panel per diversity metric (default: :func:`diversity_metrics`) against the quality column ``x``, lines
    by :func:`draw_frontier`, axis labels from :data:`AXIS_LABELS`, one legend outside the last panel. ``log_x``
    defaults to a log axis for perplexity when its values span more than a factor 3 (plain numbers on the ticks).
    Returns the figure."""
    from matplotlib import ticker

    metrics = metrics or diversity_metrics(table)
    fig, axes = plots.figure(ncols=len(metrics), width=width, height=height, squeeze=False)
    colors = group_colors(table, hue)
    span = table[x].max() / table[x].min() if (table[x] > 0).all() else 0.0
    log_x = (x == "perplexity" and span > 3) if log_x is None else log_x
    for ax, metric in zip(axes[0], metrics):
        draw_frontier(ax, table, x, metric, hue=hue, style=style, knob=knob, colors=colors)
        xlabel = AXIS_LABELS.get(x, x)
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            xlabel = xlabel[:-1] + ", log scale)" if xlabel.endswith(")") else xlabel + " (log scale)"
        ax.set(xlabel=xlabel, ylabel=AXIS_LABELS.get(metric, metric))
    plots.legend_outside(axes[0][-1], title=" · ".join([hue] + ([style] if style else [])), fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def perplexity_ranking(table: pd.DataFrame, level: int | None = None) -> pd.DataFrame:
    """The settings of one ``level`` (default: the hottest) sorted by perplexity, lowest first, with the ratio to
    plain temperature's perplexity at that level (``NaN`` when plain temperature is not in the table)."""
    level = int(table.level.max()) if level is None else level
    rows = table[table.level == level].sort_values("perplexity")
    plain = rows.loc[rows.sampler == "temperature", "perplexity"]
    ratio = rows.perplexity / float(plain.iloc[0]) if len(plain) else np.nan
    return rows.assign(**{"perplexity / plain temperature": ratio})[
        ["sampler", "knob", "value", "perplexity", "perplexity / plain temperature"]].reset_index(drop=True)


def ranking_sentence(ranking: pd.DataFrame, where: str = "the hottest setting") -> str:
    """Markdown: which samplers keep perplexity lowest at the setting of ``ranking`` (:func:`perplexity_ranking`,
    described by ``where``), and which of them beat or lose to plain temperature there."""
    setting = ", ".join(f"{r.sampler} ({r.knob}={r.value:g}): {r.perplexity:,.1f}" for r in ranking.itertuples())
    lowest = ranking.iloc[0]
    text = (f"At {where}, perplexity from lowest to highest: {setting}. "
            f"**{lowest.sampler}** keeps it lowest.")
    ratio = ranking["perplexity / plain temperature"]
    if ratio.notna().any():
        below = ranking.sampler[ratio < 1].tolist()
        above = ranking.sampler[ratio > 1].tolist()
        text += (f" Below plain temperature: {', '.join(below) or 'none'}; above it: {', '.join(above) or 'none'}"
                 " (a sampler above plain temperature does not keep the samples more probable there).")
    return text


def model_comparison(table: pd.DataFrame, reference: str, other: str, sampler: str = "temperature",
                     value: float = 1.0) -> pd.DataFrame:
    """``reference`` against ``other`` model (values of the ``model`` column) for one ``sampler`` at the setting
    nearest ``value``: one row per diversity metric and perplexity, columns for both models and ``other - reference``."""
    rows = table[table.sampler == sampler]
    nearest = rows.value.iloc[int(np.argmin(np.abs(rows.value.to_numpy() - value)))]
    rows = rows[rows.value == nearest].set_index("model")
    metrics = ["perplexity"] + diversity_metrics(rows)
    out = pd.DataFrame({"metric": metrics, reference: [float(rows.loc[reference, m]) for m in metrics],
                        other: [float(rows.loc[other, m]) for m in metrics]})
    out["difference"] = out[other] - out[reference]
    knob = rows["knob"].iloc[0]
    name = "plain temperature" if sampler == "temperature" else sampler
    out.attrs["setting"] = f"{name} at {knob} = {nearest:g}"
    return out


def comparison_sentence(comparison: pd.DataFrame, reference: str, other: str) -> str:
    """Markdown: is ``other``'s perplexity higher or lower than ``reference``'s at the compared setting, by how much,
    and what the diversity columns did (:func:`model_comparison`)."""
    row = comparison.set_index("metric")
    ppl_ref, ppl_other = row.loc["perplexity", reference], row.loc["perplexity", other]
    word = "higher (worse)" if ppl_other > ppl_ref else "lower (better)"
    text = (f"With {comparison.attrs.get('setting', 'the same setting')}, the samples of **{other}** have a {word} "
            f"perplexity under the base model than those of {reference}: {ppl_other:,.1f} against {ppl_ref:,.1f} "
            f"({ppl_other / ppl_ref:.2f}x).")
    changes = [f"{m} {row.loc[m, reference]:.3g} → {row.loc[m, other]:.3g}" for m in row.index if m != "perplexity"]
    if changes:
        text += " Diversity, " + reference + " → " + other + ": " + "; ".join(changes) + "."
    return text
