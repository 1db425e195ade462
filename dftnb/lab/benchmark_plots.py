"""Chapter 06's figures, drawn from the tables of :func:`dftnb.lab.benchmark.benchmark`.

Every figure uses :func:`dftnb.lab.plots.figure` (constrained layout: labels never print over a neighbour panel),
one colour per method (:func:`dftnb.lab.plots.method_palette`), legends outside the data and units on every axis.
Each function saves its figure as ``<out>/figures/06_<name>.png`` when ``out`` is given and returns it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import plots

BLIND_LABEL = "blind test: % told apart from human (95% CI)"
UNITS = {"points": "difference (points)", "MAUVE": "difference (MAUVE, 0-1)", "% change": "difference (% change)"}


def _save(fig, name: str, out: str | Path | None):
    if out is not None:
        plots.save_figure(fig, name, out)
    return fig


def _errorbar(ax, x, lo, hi, y, color, label=None, horizontal=True, fmt="o"):
    # a percentile interval need not contain its point estimate (MAUVE's point averages k-means seeds that a
    # bootstrap round does not; the block bootstrap leaves out a corpus's last, partial block): the bar then ends
    # at the point on that side instead of crossing it
    err = [np.maximum(0, np.asarray(x) - np.asarray(lo)), np.maximum(0, np.asarray(hi) - np.asarray(x))]
    if horizontal:
        ax.errorbar(x, y, xerr=err, fmt=fmt, capsize=3, color=color, label=label)
    else:
        ax.errorbar(y, x, yerr=err, fmt=fmt, capsize=3, color=color, label=label)


def calibration_figure(calibration, human_sds: float | None = None, out: str | Path | None = None):
    """Left: the base model's SDS (95% CI) from greedy to the hottest temperature, with human text's SDS as a line.
    Right: the blind test of every calibration row (50% = indistinguishable from human text)."""
    ladder = calibration.dropna(subset=["temperature"])
    labels = [f"{t:g}" for t in ladder.temperature]  # short: "greedy" and "T=0.3" ran together
    fig, axes = plots.figure(2, width=5.2, height=3.6)
    _errorbar(axes[0], ladder.sds.to_numpy(), ladder.sds_ci_low, ladder.sds_ci_high, np.arange(len(ladder)),
              plots.method_color("base"), label="base model", horizontal=False, fmt="o-")
    if human_sds is not None and human_sds == human_sds:
        axes[0].axhline(human_sds, color=plots.method_color("human"), ls="--", label="human text")
    axes[0].set(xticks=range(len(ladder)), xticklabels=labels,
                xlabel="sampling temperature T of the base model (0 = greedy)", ylabel="Style Diversity Score (0-100, 95% CI)", title="diversity must rise with T")
    plots.legend_outside(axes[0])
    rows = calibration.assign(label=[r.replace("base, ", "") for r in calibration.row])
    _errorbar(axes[1], rows.blind_test.to_numpy(), rows.blind_low, rows.blind_high, np.arange(len(rows)),
              plots.method_color("base"))
    axes[1].axvline(50, color="grey", ls="--")
    axes[1].set(yticks=range(len(rows)), yticklabels=rows.label, xlabel=BLIND_LABEL, xlim=(0, 100),
                title="fidelity (50% = indistinguishable)")
    axes[1].invert_yaxis()
    return _save(fig, "06_calibration", out)


def table_figure(table, L: int, out: str | Path | None = None):
    """One row per model (and human text): SDS with its 95% CI, and the blind test with its 95% CI."""
    fig, axes = plots.figure(2, width=5.0, height=0.45 * len(table) + 1.6, sharey=True)
    y = np.arange(len(table))
    for i, r in enumerate(table.itertuples()):
        color = plots.method_color(r.model)
        _errorbar(axes[0], [r.sds], [r.sds_ci_low], [r.sds_ci_high], [i], color)
        _errorbar(axes[1], [r.blind_test], [r.blind_low], [r.blind_high], [i], color)
    axes[0].set(yticks=list(y), yticklabels=table.model, xlabel=f"Style Diversity Score (0-100, L={L} tokens, 95% CI)",
                xlim=(0, 100), title="diversity")
    axes[1].axvline(50, color="grey", ls="--")
    axes[1].set(xlabel=BLIND_LABEL, xlim=(0, 100), title="fidelity (50% = indistinguishable)")
    axes[0].invert_yaxis()
    return _save(fig, "06_sds", out)


def components_figure(table, out: str | Path | None = None):
    """The four SDS components (each 0-1) per model, one panel per component."""
    names = {"d": "d: distinct-1..4", "s": "s: 1 - Self-BLEU-4", "c": "c: 1 / gzip ratio", "v": "v: Vendi (MiniLM)"}
    fig, axes = plots.figure(4, width=3.0, height=0.4 * len(table) + 1.6, sharey=True)
    y = np.arange(len(table))
    colors = [plots.method_color(m) for m in table.model]
    for ax, (col, title) in zip(axes, names.items()):
        ax.barh(y, table[col], color=colors)
        ax.set(xlim=(0, 1), xlabel="score (0-1)", title=title)
    fig.supxlabel("component score (0-1, higher = more diverse)", fontsize=10)
    axes[0].set(yticks=list(y), yticklabels=table.model)
    axes[0].invert_yaxis()
    return _save(fig, "06_sds_components", out)


def all_zero_metrics(paired) -> list[str]:
    """Metrics whose every paired difference and interval bound is 0: no model differs from the reference on any
    item (e.g. every model solves the same HumanEval problems), so a panel of them would show nothing."""
    cols = ["difference", "ci_low", "ci_high"]
    return [m for m, g in paired.groupby("metric", sort=False) if np.allclose(g[cols].to_numpy(float), 0.0)]


def paired_figure(paired, reference: str = "SFT", out: str | Path | None = None):
    """A forest plot per metric of ``model − reference`` with its 95% interval, in the metric's unit; metrics that
    are all zeros (:func:`all_zero_metrics`) are left out. Returns ``(figure or None, left-out metrics)``."""
    empty = all_zero_metrics(paired)
    shown = paired[~paired.metric.isin(empty)]
    metrics = list(dict.fromkeys(shown.metric))
    if not metrics:
        return None, empty
    ncols = min(4, len(metrics))  # wrap into rows of four panels
    nrows = -(-len(metrics) // ncols)
    fig, axes = plots.figure(ncols, nrows, width=3.3, height=0.45 * shown.model.nunique() + 1.6, sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(metrics):]:
        fig.delaxes(ax)
    order = list(dict.fromkeys(shown.model))
    for ax, metric in zip(axes.flat, metrics):
        rows = shown[shown.metric == metric].set_index("model").reindex(order)
        for i, (name, r) in enumerate(rows.iterrows()):
            if r.difference == r.difference:
                _errorbar(ax, [r.difference], [r.ci_low], [r.ci_high], [i], plots.method_color(name))
        ax.axvline(0, color="grey", ls="--")
        unit = UNITS.get(str(rows.unit.dropna().iloc[0]), str(rows.unit.dropna().iloc[0]))
        ax.set(title=metric, xlabel=unit)
    fig.suptitle(f"model − {reference} on the same units, with its paired 95% interval")
    axes[0][0].set(yticks=range(len(order)), yticklabels=order)  # shared by every panel
    axes[0][0].invert_yaxis()
    return _save(fig, "06_paired", out), empty


def frontier_figure(frontier, out: str | Path | None = None):
    """SDS against MAUVE per model across sampling temperatures, each point labelled with its ``T``."""
    fig, axes = plots.figure(1, width=7.0, height=4.2)
    ax = axes
    palette = plots.method_palette(frontier.model.unique())
    for name, rows in frontier.groupby("model", sort=False):
        rows = rows.dropna(subset=["temperature"]).sort_values("temperature")
        ax.plot(rows.mauve, rows.sds, "o-", color=palette[name], label=name)
        plots.label_points(ax, rows.mauve, rows.sds, rows.temperature, fontsize=7)
    ax.set(xlabel="MAUVE vs held-out human text (0-1, higher = more human-like)",
           ylabel="Style Diversity Score (0-100)", title="labels: sampling temperature T")
    plots.legend_outside(ax)
    return _save(fig, "06_frontier", out)
