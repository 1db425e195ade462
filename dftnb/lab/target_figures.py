"""Chapters 00 and 01: what a target keeps, drawn and put into words, and the cached datastore-scaling sweep.

Figures use :mod:`dftnb.lab.plots` (constrained layout, legends outside the data); every sentence is built from the
values it is given, so a chapter's prose follows the run that printed it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots

HIGHLIGHT = plots.METHOD_COLORS["dft_reverse_kl"]  # the actual next token, in every panel
OTHER = plots.METHOD_COLORS["sft"]
SCALING_CACHE_VERSION = 1


# --- chapter 00: one-hot vs soft target ------------------------------------------------------------------------
def _barh(ax, tokens, values, highlight, log: bool = False):
    y = np.arange(len(tokens))
    colors = [HIGHLIGHT if h else OTHER for h in highlight]
    # on a log axis bars start a factor 3 below the smallest one and the axis spans at least a decade (one label)
    left = min(min(v for v in values if v > 0) / 3, max(values) / 30) if log else 0.0
    ax.barh(y, [max(v, left) - left for v in values], left=left, color=colors)
    ax.set_yticks(y, tokens)
    ax.invert_yaxis()
    if log:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor labels collide on short ranges
    ax.set_ylabel("")


def one_hot_vs_soft_figure(tokens: list[str], one_hot: list[float], soft: list[float], is_answer: list[bool],
                           soft_label: str = "DFT soft target"):
    """Two panels on the same tokens: the SFT one-hot target (linear 0–1 axis) and a soft target on a **log**
    probability axis of its own, so a 1e-5 bar is as visible as a 0.3 one; the corpus's answer is highlighted."""
    from matplotlib.patches import Patch

    fig, axes = plots.figure(2, 1, width=4.6, height=0.28 * len(tokens) + 1.3)
    _barh(axes[0], tokens, one_hot, is_answer)
    axes[0].set(xlim=(0, 1.05), xlabel="probability (linear axis)", title="SFT one-hot target")
    _barh(axes[1], tokens, soft, is_answer, log=True)
    axes[1].set(xlabel="probability (log axis)", title=soft_label)
    fig.legend(handles=[Patch(color=HIGHLIGHT, label="the corpus's next token"), Patch(color=OTHER, label="other")],
               loc="outside lower center", ncols=2, frameon=False)
    return fig


def self_target_sentence(answer: str, answer_rank: int, q_answer: float, tail_value: float, k: int,
                         n_tail: int) -> str:
    """What a target built from the model's own top-``k`` says about the corpus's next token (rank 1 = argmax)."""
    if answer_rank > k:
        where = (f"The model ranks the corpus's next token {answer!r} only {answer_rank:,}th, outside its top {k}, so "
                 f"this target gives it {q_answer:.1e}: exactly the uniform tail value {tail_value:.1e} that each of "
                 f"the other {n_tail:,} unstored tokens gets. Such a target keeps everything the model believes "
                 "*except* the answer.")
    else:
        where = (f"The model ranks the corpus's next token {answer!r} {answer_rank}th, inside its top {k}, so this "
                 f"target keeps it with {q_answer:.1e}, what the model already gives it.")
    return (where + " And it is the model itself, stored sparsely: training the model toward it has nothing to "
            "teach (chapter 02's control run measures how far it still moves). The DFT targets of chapters 01–02 "
            "come from somewhere else: a style prefix, samples, a curated corpus.")


# --- chapter 01: one position under every source ---------------------------------------------------------------
def one_position_frame(targets: dict, label_id: int, decode, top: int = 8) -> pd.DataFrame:
    """Tidy rows ``source, token, q, label`` for the ``top`` stored tokens of each dense-able target in ``targets``
    (``{source: SparseTarget}`` of one position), plus the actual next token ``label_id`` wherever it is not
    among them, so every panel shows its bar. Unused (padding) slots are skipped."""
    from ..sparse_target import pad_logprob

    rows = []
    for source, target in targets.items():
        dense = target.to_dense().reshape(-1)
        unused = pad_logprob(target.vocab_size, target.k) + 1  # padding slots hold no mass
        slots = zip(target.ids.reshape(-1).tolist()[:top], target.logprobs.reshape(-1).tolist()[:top])
        shown = [i for i, lp in slots if lp > unused]
        shown = list(dict.fromkeys(shown))
        if label_id not in shown:
            shown.append(label_id)
        rows += [{"source": source, "token": repr(decode([i])), "q": float(dense[i]), "label": i == label_id}
                 for i in shown]
    return pd.DataFrame(rows)


def one_position_figure(frame: pd.DataFrame, context: str, ncols: int = 3):
    """One panel per source (wrapped to ``ncols`` columns), each on its own log probability axis; the actual next
    token is the same colour in every panel, explained by one legend in the spare panel."""
    from matplotlib.patches import Patch

    sources = list(dict.fromkeys(frame["source"]))
    nrows = -(-(len(sources) + 1) // ncols)
    fig, axes = plots.figure(ncols, nrows, width=3.6, height=2.9)
    axes = np.atleast_1d(axes).reshape(-1)
    for ax, source in zip(axes, sources):
        df = frame[frame["source"] == source]
        _barh(ax, df["token"].tolist(), df["q"].tolist(), df["label"].tolist(), log=True)
        ax.set(title=source, xlabel="q(token), log axis")
    for ax in axes[len(sources):]:
        ax.axis("off")
    axes[len(sources)].legend(handles=[Patch(color=HIGHLIGHT, label="actual next token"),
                                       Patch(color=OTHER, label="other stored tokens")], loc="center", frameon=False)
    fig.suptitle(f"context: …{context!r}")
    return fig


# --- chapter 01: datastore scaling, cached -----------------------------------------------------------------------
def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def scaling_cache_key(model, tokenizer, corpus_texts: list[str], query_ids: list[list[int]], **params) -> dict:
    """What the datastore-scaling sweep depends on: model weights and tokenizer (fingerprints), the corpus and query
    tokens (sha256), every sweep parameter, the cache format version and the dftnb version."""
    from .. import __version__
    from ..records import model_fingerprint
    from ..target_cache import tokenizer_hash

    return {"model_fingerprint": model_fingerprint(model), "tokenizer_hash": tokenizer_hash(tokenizer),
            "corpus_sha": _digest(list(corpus_texts)), "queries_sha": _digest([list(map(int, q)) for q in query_ids]),
            "version": SCALING_CACHE_VERSION, "code_version": __version__,
            "params": json.loads(json.dumps(params, default=list))}


def cached_datastore_scaling(model, tokenizer, corpus_texts: list[str], query_ids: list[list[int]],
                             sizes: tuple[int, ...], cache_root: str | Path | None = None, **params) -> pd.DataFrame:
    """:func:`dftnb.datastore.datastore_scaling`, computed once per key (:func:`scaling_cache_key`) and read back
    from ``<cache_dir()>/datastore_scaling/<key>.csv`` afterwards (``make prepare`` warms it for a workshop)."""
    from ..datastore import datastore_scaling
    from ..modeling import cache_dir

    key = scaling_cache_key(model, tokenizer, corpus_texts, query_ids, sizes=list(sizes), **params)
    folder = Path(cache_root) if cache_root is not None else cache_dir() / "datastore_scaling"
    path = folder / f"{_digest(key)}.csv"
    if path.exists():
        return pd.read_csv(path)
    table = datastore_scaling(model, tokenizer, corpus_texts, query_ids, sizes, **params)
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    path.with_suffix(".json").write_text(json.dumps(key, indent=1) + "\n")
    return table


def datastore_scaling_figure(scaling: pd.DataFrame):
    """Three panels over the datastore size: hit rate, the target's loss on the text next to the reference's (both
    in the legend), and KL(q ‖ p_ref)."""
    fig, axes = plots.figure(3, 1, width=4.2, height=3.4)
    x = scaling["datastore_keys"]
    axes[0].plot(x, scaling["hit_rate"], marker="o", color=OTHER)
    axes[0].set(ylabel="Pr[next token among neighbours]")
    axes[1].plot(x, scaling["nll_target"], marker="o", color=OTHER, label="kNN-LM target q")
    axes[1].axhline(scaling["nll_reference"].iloc[0], color=plots.METHOD_COLORS["base"], ls="--",
                    label="reference alone")
    axes[1].set(ylabel="−log q(next token) (nats)")
    fig.legend(*axes[1].get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
    axes[2].plot(x, scaling["kl_target_reference"], marker="o", color=OTHER)
    axes[2].set(ylabel="KL(q ‖ p_ref) (nats)")
    for ax in axes:
        ax.set(xscale="log", xlabel="datastore keys")
    return fig


def datastore_scaling_sentence(scaling: pd.DataFrame, training_store: int | None = None,
                               who: str = "Chapter 02") -> str:
    """The sweep in words: hit rate and loss at the smallest and largest store, where (if anywhere) the kNN-LM
    target starts to predict the text better than the reference alone, and where a ``training_store`` of that
    many keys falls (``who`` trains on it)."""
    s = scaling.sort_values("datastore_keys")
    first, last = s.iloc[0], s.iloc[-1]
    ref = float(first["nll_reference"])
    better = s[s["nll_target"] < s["nll_reference"]]
    text = (f"The hit rate goes from {first['hit_rate']:.0%} at {int(first['datastore_keys']):,} keys to "
            f"{last['hit_rate']:.0%} at {int(last['datastore_keys']):,}, and the target's loss on the text from "
            f"{first['nll_target']:.2f} to {last['nll_target']:.2f} nats against the reference's {ref:.2f}. "
            f"KL(q ‖ p_ref) goes from {first['kl_target_reference']:.2f} to {last['kl_target_reference']:.2f} nats. ")
    if better.empty:
        text += "**No store of this sweep makes the kNN-LM target a better predictor of the text than the reference.**"
        threshold = None
    else:
        threshold = int(better["datastore_keys"].iloc[0])
        worse = s[s["datastore_keys"] < threshold]
        text += (f"**The kNN-LM target predicts the text better than the reference alone only from {threshold:,} "
                 f"keys on; at {int(worse['datastore_keys'].iloc[-1]):,} keys and below it is worse.**" if len(worse)
                 else "**The kNN-LM target predicts the text better than the reference alone at every size of this "
                 "sweep.**")
    if training_store is not None:
        below = threshold is None or training_store < threshold
        text += (f" {who} trains on a store of {training_store:,} keys: "
                 + ("on the worse side. Its kNN-LM targets add what similar contexts continue with, but on average "
                    "they predict the next token less well than the model already does, so a DFT run toward them is "
                    "expected to *raise* the cross-entropy on the text: its runs show what such a target does to "
                    "the student's distribution, not a better predictor."
                    if below else "on the better side: its targets predict the text at least as well as the reference."))
    return text


# --- chapter 01, section 8: bias at equal storage and the self-target fixed point, in words -----------------------
def bias_summary(bias: pd.DataFrame) -> str:
    """:func:`dftnb.target_bias.gradient_error`'s table in words: cosine and relative error of each top-k mode at the
    largest and smallest k, their truncation KL, and sampled targets (single draw and mean of draws) at equal bytes."""
    b = bias.set_index(["target", "k or n"])
    sizes = sorted(bias["k or n"].unique())
    lo, hi = sizes[0], sizes[-1]
    mean_col = next((c for c in bias.columns if c.startswith("relative error, mean of")), None)
    modes = ["top-k uniform", "top-k bucket", "top-k renormalize"]
    at_hi = {m: b.loc[(m, hi)] for m in modes}
    worst = min(modes, key=lambda m: at_hi[m]["cosine"])
    text = (f"At $k = {hi}$ the forward-KL gradient of a top-$k$ target has cosine "
            + ", ".join(f"{at_hi[m]['cosine']:.3f} ({m[6:]})" for m in modes)
            + " with the dense target's, relative error "
            + ", ".join(f"{at_hi[m]['relative error']:.2f}" for m in modes) + f". The least aligned is {worst[6:]}. "
            f"At $k = {lo}$ the bucket's cosine is {b.loc[('top-k bucket', lo)]['cosine']:.3f} against "
            f"{b.loc[('top-k uniform', lo)]['cosine']:.3f} for the uniform tail. The truncation KL, what the sparse "
            f"objective charges the distribution it was built from, is {at_hi['top-k uniform']['truncation KL']:.2f} "
            f"nats per token for the uniform tail at $k = {hi}$ ({b.loc[('top-k uniform', lo)]['truncation KL']:.2f} at "
            f"$k = {lo}$), a pull toward a flat tail that does not vanish at the teacher itself (chapter 02's control shows what "
            f"it does in training), and "
            f"{abs(at_hi['top-k bucket']['truncation KL']):.1e} for the bucket.")
    if "sampled" in b.index.get_level_values(0):
        s = b.loc[("sampled", hi)]
        best = max(modes, key=lambda m: at_hi[m]["cosine"])
        text += (f" A sampled target of $n = {hi}$ draws (same bytes) has cosine {s['cosine']:.3f} and relative error "
                 f"{s['relative error']:.2f}")
        if mean_col:
            m = int(mean_col.rsplit(" ", 1)[-1])
            text += (f"; the mean of {m} draws {s[mean_col]:.2f} ({s[mean_col] / s['relative error']:.2f} of it; "
                     f"pure noise would give $1/\\sqrt{{{m}}}$ = {m ** -0.5:.2f}), while a top-$k$ target's error does "
                     "not shrink with draws at all")
        verdict = "better" if at_hi[best]["cosine"] > s["cosine"] else "worse"
        text += (f". Per training step, {int(at_hi[best]['bytes/token'])} bytes buy a {verdict} gradient as a "
                 f"top-{hi} {best[6:]} target than as {hi} samples; the sampled target's advantage is that its bias is "
                 "zero, which matters for long training, where noise averages out and bias does not.")
    return text


def self_target_summary(table: pd.DataFrame, k: int) -> str:
    """:func:`dftnb.target_bias.self_target_gradients`'s table in words: mean gradient norm per position for each
    tail mode and divergence, and how the sampled targets' norm shrinks with draws."""
    t = table.set_index(["target", "tail", "divergence"])["mean ‖∇z D‖"]

    def g(target, tail, div):
        return float(t[(target, tail, div)])

    top = f"top-{k}"
    text = (f"Mean self-target gradient norm per position: bucket {g(top, 'bucket', 'forward_kl'):.1e} (forward KL) "
            f"and {g(top, 'bucket', 'reverse_kl'):.1e} (reverse KL), i.e. float64 rounding; uniform tail "
            f"{g(top, 'uniform', 'forward_kl'):.1e} and {g(top, 'uniform', 'reverse_kl'):.1e}; renormalize "
            f"{g(top, 'renormalize', 'forward_kl'):.1e} and {g(top, 'renormalize', 'reverse_kl'):.1e}.")
    single = [i for i in t.index if i[0].startswith("sampled") and "mean of" not in i[0]]
    means = [i for i in t.index if "mean of" in i[0]]
    if single and means:
        s_name, m_name = single[0][0], means[0][0]
        draws = int(m_name.rsplit(" ", 1)[-1])
        f1, fm = g(s_name, "uniform", "forward_kl"), g(m_name, "uniform", "forward_kl")
        r1, rm = g(s_name, "uniform", "reverse_kl"), g(m_name, "uniform", "reverse_kl")
        text += (f" A single sampled target ({s_name[8:]}) gives {f1:.3f} under forward KL and the mean of {draws} "
                 f"draws {fm:.3f} ({fm / f1:.2f} of it; zero in expectation would shrink it like $1/\\sqrt{{{draws}}}$ "
                 f"= {draws ** -0.5:.2f}); under reverse KL the mean goes from {r1:.3f} to {rm:.3f} "
                 f"({rm / r1:.2f} of it)")
        biased = rm / r1 > 2 * draws ** -0.5  # far above what averaging noise would leave
        text += (": it barely shrinks, because the undrawn tokens have $q = 0$ up to the floor, a bias no number of "
                 "draws removes." if biased else ": here it shrinks like noise.")
    return text


def bias_figure(bias: pd.DataFrame):
    """Cosine and relative error of each target's forward-KL gradient against the dense one, over the bytes per
    token it stores (ticks at the measured sizes), one shared legend outside the data."""
    import seaborn as sns
    from matplotlib.ticker import NullFormatter

    fig, axes = plots.figure(2, 1, width=4.8, height=3.6)
    ticks = sorted(int(b) for b in bias["bytes/token"].unique())
    for ax, metric in zip(axes, ["cosine", "relative error"]):
        sns.lineplot(data=bias, x="bytes/token", y=metric, hue="target", style="target", markers=True, dashes=False,
                     ax=ax)
        ax.set(xscale="log", xlabel="bytes per token (log axis)", ylabel=f"{metric} (vs the dense gradient)",
               title=f"forward-KL gradient: {metric}")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[1].set(yscale="log")
    axes[0].get_legend().remove()
    plots.legend_outside(axes[1], title="target")
    return fig
