"""Chapter 02's harness: the kNN-LM training targets, the log of every run (history, summary, control), the curve
figures and the takeaway sentences built from a run's numbers.

The training itself is :func:`dftnb.trainer.train_method`; this module only collects and reports what it returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import plots
from .data import corpus_texts, pack_texts

# keys in chapter 02's kNN-LM datastore per profile (chapter 01 places this size on its datastore-scaling curve)
KNN_DATASTORE_KEYS = {"smoke": 1_000, "default": 8_000, "gpu": 200_000}
CONTROL_PREFIX = "control"
CURVE_LABELS = {  # column -> y label with its unit
    "loss": "training objective (nats)",
    "ce": "cross-entropy on the next token (nats)",
    "entropy": "student entropy H(p) (nats)",
}


def knn_training_targets(model, tokenizer, profile: str, *, k: int, lam: float, knn_temperature: float,
                         blocks: int, seq_len: int, datastore: int, k_neighbors: int, model_name: str | None = None):
    """Chapter 02's kNN-LM targets, cached by :func:`dftnb.target_cache.build_or_load`: the queries are ``blocks``
    packed blocks of ``seq_len`` tokens from the first half of the Shakespeare train split, the datastore holds up to
    ``datastore`` keys from the second half (no query retrieves itself), ``q = λ p_kNN + (1 − λ) p_ref``.
    Returns ``(dataset, seconds to build or load)``."""
    from .. import target_cache as TC
    from ..targets import from_corpus

    texts = corpus_texts("shakespeare", "train")
    half = len(texts) // 2
    queries = pack_texts(tokenizer, texts[:half], seq_len, blocks)
    meta = TC.target_metadata(
        model, tokenizer, source="knn", corpus="shakespeare/train", k=k, model_name=model_name,
        query_blocks=len(queries), seq_len=seq_len, datastore_tokens=datastore, k_neighbors=k_neighbors, lam=lam,
        knn_temperature=knn_temperature, split="queries 1st half, keys 2nd half",
    )
    start = time.perf_counter()
    rows = TC.build_or_load(
        f"shakespeare-train-knn-k{k}-{profile}", meta,
        lambda: from_corpus(model, tokenizer, texts[half:], queries, k_neighbors=k_neighbors, lam=lam,
                            knn_temperature=knn_temperature, k=k, max_datastore_tokens=datastore, max_length=seq_len,
                            block_size=seq_len),
    )
    return rows, time.perf_counter() - start


def step_seconds(history: pd.DataFrame, seconds: float, steps: int) -> float:
    """Median seconds per optimiser step, ``median_i (t_i − t_{i−1}) / (s_i − s_{i−1})`` over the logged cumulative
    time ``t`` and steps ``s`` (robust to one slow step on a busy machine); ``seconds / steps`` without a log."""
    if "seconds" in history and len(history) > 2:
        return float((history["seconds"].diff() / history["step"].diff()).dropna().median())
    return seconds / steps


@dataclass
class RunLog:
    """Every run of the chapter: its history (one frame per run, column ``method`` = the run's name), a summary
    row (first and last objective, CE and entropy, median s/step) and, for control runs, a before/after row."""

    steps: int
    histories: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    controls: list = field(default_factory=list)

    def record(self, run: str, divergence: str, history: pd.DataFrame, seconds: float) -> None:
        """Add one run's ``history`` (from ``train_method``) and print one line with its wall time."""
        history = history.assign(method=run)
        self.histories.append(history)
        first, last = history.iloc[0], history.iloc[-1]
        self.rows.append({"run": run, "divergence": divergence, "objective (first)": first["loss"],
                          "objective (last)": last["loss"], "CE (first)": first["ce"], "CE (last)": last["ce"],
                          "entropy (first)": first["entropy"], "entropy (last)": last["entropy"],
                          "median s/step": step_seconds(history, seconds, self.steps)})
        print(f"{run:42s} {self.steps} steps in {seconds:5.1f} s")

    def record_control(self, tail: str, before: dict, after: dict, history: pd.DataFrame) -> None:
        """A control run's change on the fixed rows: ``before``/``after`` are ``entropy_and_ce`` dicts."""
        self.controls.append({"tail": tail, "entropy before": before["entropy"], "entropy after": after["entropy"],
                              "Δ entropy": after["entropy"] - before["entropy"], "CE before": before["ce"],
                              "CE after": after["ce"], "Δ CE": after["ce"] - before["ce"],
                              "objective (first)": history.iloc[0]["loss"],
                              "objective (last)": history.iloc[-1]["loss"]})

    @property
    def history(self) -> pd.DataFrame:
        return pd.concat(self.histories, ignore_index=True)

    @property
    def summary(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    @property
    def control(self) -> pd.DataFrame:
        return pd.DataFrame(self.controls)


def _style(run: str) -> dict:
    if run.startswith(CONTROL_PREFIX):
        shade = {"uniform": 0.25, "bucket": 0.5, "renormalize": 0.7}
        grey = next((v for m, v in shade.items() if m in run), 0.5)
        return {"color": (grey, grey, grey), "ls": "--", "marker": None}
    return {"color": plots.method_color(run), "ls": "-", "marker": "o"}


def curve_figure(history: pd.DataFrame, metrics=("ce", "entropy")):
    """One panel per metric over the optimiser step, every run in its method colour (control runs dashed grey),
    y labels with units, one legend outside the last panel."""
    fig, axes = plots.figure(len(metrics), 1, width=4.6, height=3.4)
    axes = list(axes) if len(metrics) > 1 else [axes]
    for ax, metric in zip(axes, metrics):
        for run, df in history.groupby("method", sort=False):
            style = _style(run)
            ax.plot(df["step"], df[metric], label=run, color=style["color"], ls=style["ls"], marker=style["marker"],
                    markersize=3)
        ax.set(xlabel="optimiser step", ylabel=CURVE_LABELS.get(metric, metric))
    plots.legend_outside(axes[-1], title="run")
    return fig


def objective_figure(history: pd.DataFrame, ncols: int = 4):
    """The training objective of each run in a panel of its own (the objectives have different scales)."""
    runs = list(dict.fromkeys(history["method"]))
    nrows = -(-len(runs) // ncols)
    fig, axes = plots.figure(ncols, nrows, width=3.0, height=2.4)
    axes = [axes] if len(runs) == 1 else list(axes.reshape(-1))
    for ax, run in zip(axes, runs):
        df = history[history["method"] == run]
        style = _style(run)
        ax.plot(df["step"], df["loss"], color=style["color"], ls=style["ls"], marker=style["marker"], markersize=3)
        unit = "probability mass" if run.startswith("dft_sorted_w1") else "nats"  # sorted W1 sums |p − q|
        ax.set(title=run, xlabel="optimiser step", ylabel=f"training objective ({unit})")
        ax.ticklabel_format(axis="y", useOffset=False)
    for ax in axes[len(runs):]:
        ax.axis("off")
    return fig


def control_sentence(control: pd.DataFrame, tolerance: float = 0.1) -> str:
    """What each tail mode's control did to the fixed rows, and which modes stay within ``tolerance`` nats."""
    c = control.set_index("tail")
    parts = [f"{mode}: entropy {r['entropy before']:.2f} → {r['entropy after']:.2f} nats ({r['Δ entropy']:+.2f}), "
             f"CE {r['CE before']:.2f} → {r['CE after']:.2f} ({r['Δ CE']:+.2f})" for mode, r in c.iterrows()]
    stays = [m for m, r in c.iterrows() if abs(r["Δ entropy"]) <= tolerance and abs(r["Δ CE"]) <= tolerance]
    moved = max(c.index, key=lambda m: abs(c.loc[m, "Δ entropy"]))
    text = "Trained toward its own targets, " + "; ".join(parts) + ". "
    text += (f"Within {tolerance} nats of the starting model (entropy and CE): "
             + (", ".join(stays) if stays else "no mode") + f". The {moved} tail moves the entropy most")
    if moved not in stays:
        direction = "down" if c.loc[moved, "Δ entropy"] < 0 else "up"
        text += f", {direction}, by {abs(c.loc[moved, 'Δ entropy']):.2f} nats: the storage format alone did that."
    else:
        text += "."
    return text


def target_ce_gap(sweep: pd.DataFrame, keys: int) -> float:
    """How many nats of next-token CE the kNN-LM target loses against the reference with a store of ``keys`` keys:
    ``nll_target - nll_reference`` from chapter 01's datastore sweep, interpolated linearly in log(keys) (clamped to
    the sweep's smallest and largest store)."""
    s = sweep.sort_values("datastore_keys")
    return float(np.interp(np.log(keys), np.log(s["datastore_keys"].to_numpy(float)),
                           (s["nll_target"] - s["nll_reference"]).to_numpy(float)))


def run_takeaway(summary: pd.DataFrame, runs: list[str], steps: int, target_gap: float | None = None) -> list[str]:
    """One sentence per fine-tuning run (entropy, next-token CE and objective, first → last logged step), one comparing
    the DFT runs' mean CE change with SFT's and naming the run that gained most entropy, one comparing the runs' CE on
    the last batch (the same batch for every run) and one on whether the DFT objectives fell over the run.

    ``target_gap``, if given, is how many nats of next-token CE the DFT targets themselves lose against the reference
    (chapter 01); the last-batch sentence compares the runs' gap above SFT with it."""
    s = summary.set_index("run").loc[list(runs)]
    d_h = s["entropy (last)"] - s["entropy (first)"]
    d_ce = s["CE (last)"] - s["CE (first)"]
    lines = [f"{run:16s} entropy {d_h[run]:+.2f} nats, next-token CE {d_ce[run]:+.2f} nats, objective "
             f"{s.loc[run, 'objective (first)']:.3f} → {s.loc[run, 'objective (last)']:.3f} over {steps} steps"
             for run in runs]
    dft = [r for r in runs if r.startswith("dft_")]
    if dft:
        lines.append(f"DFT runs: next-token CE {d_ce[dft].mean():+.2f} nats on average (entropy "
                     f"{d_h[dft].min():+.2f} to {d_h[dft].max():+.2f}); "
                     + (f"SFT: CE {d_ce['sft']:+.2f}. " if "sft" in runs else "")
                     + f"Most entropy gained: {d_h.idxmax()} ({d_h.max():+.2f} nats).")
        if "sft" in runs:
            above = s.loc[dft, "CE (last)"] - s.loc["sft", "CE (last)"]
            if above.min() > 0:
                line = (f"On the last batch, which every run sees, SFT ends with a lower next-token CE than every DFT "
                        f"run: they end {above.min():.2f} to {above.max():.2f} nats above it")
                if target_gap is not None and target_gap <= 0:
                    line += (f", although the target itself predicts the text {-target_gap:.2f} nats better than the "
                             "reference (chapter 01)")
                elif target_gap is not None:
                    size = ("far more than" if above.min() > 2 * target_gap else
                            "less than" if above.max() < target_gap else "comparable to")
                    line += (f", {size} the {target_gap:.2f} nats by which the target itself predicts the text worse "
                             "than the reference (chapter 01)")
            else:
                below = [r for r in dft if above[r] <= 0]
                line = (f"On the last batch, which every run sees, {' and '.join(below)} "
                        f"{'ends' if len(below) == 1 else 'end'} at or below SFT's next-token CE (the DFT runs end "
                        f"{above.min():+.2f} to {above.max():+.2f} nats from SFT)")
            lines.append(line + ".")
        rose = [r for r in dft if s.loc[r, "objective (last)"] > s.loc[r, "objective (first)"]]
        if rose:
            lines.append(f"In {steps} steps the DFT runs do not show convergence on their targets: the objective of "
                         + ", ".join(f"{r} went {s.loc[r, 'objective (first)']:.3f} → {s.loc[r, 'objective (last)']:.3f}"
                                     for r in rose) + ".")
        else:
            lines.append(f"No DFT objective is higher at step {steps} than at the first logged step; first and last "
                         "are different batches, so this is a trend, not a measured convergence on the targets.")
    rising = [r for r in runs if r not in dft and s.loc[r, "objective (last)"] > s.loc[r, "objective (first)"]]
    if rising:
        lines.append("Objective higher at the last logged step than at the first: " + ", ".join(rising)
                     + " (first and last are different batches, so this compares two batches as much as two models).")
    return lines
