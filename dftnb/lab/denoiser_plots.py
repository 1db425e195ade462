"""Chapter 05's figures: the denoising trace, noise against diversity and quality, denoiser training and the trained
denoisers' quality at matched diversity.

Every figure uses :func:`dftnb.lab.plots.figure` (constrained layout), legends outside the data and units on every
axis; the trained denoisers take their objective's colour (:func:`dftnb.lab.plots.method_color`: CE is SFT's).
Each function saves ``<out>/figures/05_<name>.png`` when ``out`` is given and returns the figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import seaborn as sns

from ..denoise import alpha_bar
from . import plots


def _save(fig, name: str, out: str | Path | None):
    if out is not None:
        plots.save_figure(fig, name, out)
    return fig


def denoiser_palette(names) -> dict:
    """``{denoiser label: colour}``: "untrained" is the base model's grey, "CE" SFT's colour, DFT labels theirs."""
    return {n: plots.method_color("base" if n == "untrained" else n) for n in dict.fromkeys(names)}


def entropy_figure(steps_table, vocab_size: int, steps: int, schedule: str = "cosine",
                   out: str | Path | None = None):
    """Left: mean entropy (nats) of the input distribution ``softmax(x_t)`` and of the model's prediction at each
    denoising step, with ``ln V`` (a uniform input) as a line. Right: the schedule's ``ᾱ`` fed at each step."""
    long = steps_table.melt(id_vars=["step"], value_vars=["input_entropy", "pred_entropy"],
                            var_name="distribution", value_name="entropy (nats)")
    long["distribution"] = long.distribution.map({"input_entropy": "input softmax(x_t)",
                                                  "pred_entropy": "model prediction"})
    fig, axes = plots.figure(2, width=5.2, height=3.6)
    sns.lineplot(data=long, x="step", y="entropy (nats)", hue="distribution", marker="o", ax=axes[0])
    axes[0].axhline(math.log(vocab_size), ls=":", c="grey", label="ln V (uniform)")
    axes[0].set(xlabel="denoising step (1 = first)", title="block entropy per step (mean over positions)")
    plots.legend_outside(axes[0])
    ticks = list(range(1, steps + 1))
    axes[1].plot(ticks, [alpha_bar(t, steps, schedule) for t in range(steps, 0, -1)], "o-", color="grey")
    axes[1].set(xlabel="denoising step (1 = first)", ylabel="ᾱ of the input (signal fraction, 0-1)",
                title=f"{schedule} schedule: signal fed at each step")
    return _save(fig, "05_denoising_entropy", out)


def noise_figure(noise_table, out: str | Path | None = None):
    """Diversity (distinct-1..4; Self-BLEU-4) against perplexity under the base model, one marker per sampler."""
    fig, axes = plots.figure(2, width=4.8, height=3.8)
    palette = dict(zip(noise_table.sampler, sns.color_palette("colorblind", len(noise_table))))
    for ax, (col, label, title) in zip(axes, [("distinct", "distinct-1..4 (0-1)", "higher = more diverse"),
                                              ("self_bleu", "Self-BLEU-4 (0-1)", "lower = more diverse")]):
        sns.scatterplot(data=noise_table, x="perplexity", y=col, hue="sampler", style="sampler", palette=palette,
                        s=90, ax=ax, legend=ax is axes[1])
        ax.set(xscale="log", xlabel="perplexity (log scale)", ylabel=label, title=title)
    fig.supxlabel("perplexity of the samples under the base model (lower = more likely text)", fontsize=10)
    plots.legend_outside(axes[1], title="sampler")
    return _save(fig, "05_noise_diversity_quality", out)


def training_figure(history, title: str, out: str | Path | None = None):
    """Cross-entropy of the block tokens (nats) per training step, one line per objective."""
    fig, ax = plots.figure(1, width=6.0, height=3.4)
    sns.lineplot(data=history, x="step", y="ce", hue="objective", marker="o", ax=ax,
                 palette=denoiser_palette(history.objective))
    ax.set(xlabel="training step", ylabel="CE of the block tokens (nats)", title=title)
    plots.legend_outside(ax, title="objective")
    return _save(fig, "05_denoiser_training", out)


def quality_figure(quality, out: str | Path | None = None):
    """Perplexity and MAUVE against distinct-n: the autoregressive temperature grid as a grey line (labelled by
    ``T``), each denoiser (colour) at each step count (marker); the legend sits outside both panels."""
    ar = quality[quality.denoiser == ""]
    dn = quality[quality.denoiser != ""].assign(**{"steps": lambda q: q["steps S"].map(lambda s: f"S={int(s)}")})
    temps = [float(s.split("T=")[1]) for s in ar.sampler]
    fig, axes = plots.figure(2, width=5.0, height=3.8)
    for ax, metric, label, title in (
        (axes[0], "perplexity", "perplexity under the base model\n(log scale)", "Perplexity (lower = better)"),
        (axes[1], "mauve", "MAUVE vs human Shakespeare (0-1)", "MAUVE (higher = better)"),
    ):
        ax.plot(ar.distinct, ar[metric], "o-", color="grey", label="autoregressive (T grid)")
        plots.label_points(ax, ar.distinct, ar[metric], temps, fontsize=7)
        sns.scatterplot(data=dn, x="distinct", y=metric, hue="denoiser", style="steps", s=90, ax=ax,
                        palette=denoiser_palette(dn.denoiser), legend=ax is axes[1])
        ax.set(xlabel="distinct-1..4\n(0-1, higher = more diverse)", ylabel=label, title=title)
    axes[0].set_yscale("log")
    plots.legend_outside(axes[1])
    return _save(fig, "05_denoiser_quality", out)
