"""Chapter 03's solver timings: seconds per optimal-transport solve against the support size k, the largest k each
solver affords within a per-token budget, and the time-per-solve figure.

One *solve* is one token position: the reduced problem of :func:`dftnb.losses.ot_problems`, the union of the student's
and the target's top-k plus one tail bucket per side (about ``2k + 1`` slots), with the cosine ground cost
``C_ij = 1 - cos(E_i, E_j)`` of the token embeddings ``E``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.ticker import NullFormatter

from .. import losses, transport
from ..targets import SparseTarget
from . import plots

# Column names of the timing table, in the order of the figure's legend.
EMD = "exact EMD (ot.emd2)"
SINKHORN_POT = "Sinkhorn (ot.sinkhorn2)"
SLICED = "sliced W2 (ot)"
SINKHORN_POT_BATCH = "Sinkhorn batched (ot.batch)"
SINKHORN_BATCH = "Sinkhorn batched (dftnb)"
SINKHORN_LOSS = "Sinkhorn loss fwd+bwd (dftnb)"
SORTED_LOSS = "sorted ULD fwd+bwd (dftnb)"
SOLVERS = (EMD, SINKHORN_POT, SLICED, SINKHORN_POT_BATCH, SINKHORN_BATCH, SINKHORN_LOSS, SORTED_LOSS)

# One colour *and* one marker per solver (colour-blind palette, no two neighbours alike); POT's per-problem solvers
# are solid lines, the batched tensor solvers dashed, the training losses (forward + backward) dotted.
_PALETTE = sns.color_palette("colorblind", 10)
SOLVER_STYLE = {
    EMD: dict(color=_PALETTE[0], marker="o", linestyle="-"),
    SINKHORN_POT: dict(color=_PALETTE[1], marker="s", linestyle="-"),
    SLICED: dict(color=_PALETTE[7], marker="D", linestyle="-"),
    SINKHORN_POT_BATCH: dict(color=_PALETTE[2], marker="^", linestyle="--"),
    SINKHORN_BATCH: dict(color=_PALETTE[4], marker="v", linestyle="--"),
    SINKHORN_LOSS: dict(color=_PALETTE[3], marker="P", linestyle=":"),
    SORTED_LOSS: dict(color=_PALETTE[9], marker="X", linestyle=":"),
}


def seconds_per_solve(fn: Callable[[], object], n_solves: int) -> float:
    """Wall-clock seconds of one call of ``fn`` divided by the ``n_solves`` problems it solves."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n_solves


def sliced_w2(a: torch.Tensor, b: torch.Tensor, ids: torch.Tensor, unit: torch.Tensor, n_projections: int = 64,
              seed: int = 0) -> float:
    """Sliced W2 between ``a`` and ``b`` as weights on the point cloud of unit embeddings ``unit[ids]``, the tail
    bucket (if ``len(a) > len(ids)``) at the origin: the mean over random directions θ of the 1-D W2 between the
    projections ``<x, θ>`` (``ot.sliced_wasserstein_distance``)."""
    import ot

    extra = torch.zeros(len(a) - len(ids), unit.shape[1], dtype=unit.dtype, device=unit.device)
    points = torch.cat([unit[ids], extra])
    return float(ot.sliced_wasserstein_distance(points, points, a, b, n_projections=n_projections, seed=seed))


def time_solvers_at(k: int, student_logits: torch.Tensor, embeddings: torch.Tensor, *, n_time: int, epsilon: float,
                    n_iters: int, target_temperature: float) -> dict:
    """One row of :func:`time_solvers`: seconds per solve of each solver in :data:`SOLVERS` at support size ``k``."""
    import ot

    student = student_logits.double()
    n_pos = student.shape[0]
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    target = SparseTarget.from_logits(student.float(), k, temperature=target_temperature)
    problems = [(a.detach(), b.detach(), M, ids)
                for a, b, M, ids in losses.ot_problems(student, target, embeddings.double(), k=k)]
    few = problems[:n_time]
    row = {"k": k, "support": int(np.mean([len(p[0]) for p in problems]))}
    row[EMD] = seconds_per_solve(lambda: [ot.emd2(a, b, M) for a, b, M, _ in few], len(few))
    row[SINKHORN_POT] = seconds_per_solve(
        lambda: [ot.sinkhorn2(a, b, M, epsilon, method="sinkhorn_log", numItermax=n_iters, stopThr=0)
                 for a, b, M, _ in few], len(few))
    row[SLICED] = seconds_per_solve(lambda: [sliced_w2(a, b, ids, unit) for a, b, _, ids in few], len(few))
    logp = torch.log_softmax(student.float(), -1)
    log_a, log_b, C, _ = transport.sinkhorn_support(logp, target, embeddings.float(), k=k)
    row[SINKHORN_POT_BATCH] = seconds_per_solve(
        lambda: ot.batch.solve_batch(C, epsilon, log_a.exp(), log_b.exp(), max_iter=n_iters, tol=0,
                                     method="log_sinkhorn"), n_pos)
    with torch.no_grad():
        row[SINKHORN_BATCH] = seconds_per_solve(lambda: transport.sinkhorn_cost(log_a, log_b, C, epsilon, n_iters),
                                                n_pos)
    z = student.float().clone().requires_grad_(True)
    row[SINKHORN_LOSS] = seconds_per_solve(
        lambda: losses.sinkhorn(z, target, embeddings=embeddings.float(), k=k, epsilon=epsilon,
                                n_iters=n_iters).sum().backward(), n_pos)
    row[SORTED_LOSS] = seconds_per_solve(lambda: losses.wasserstein_sorted(z, target).sum().backward(), n_pos)
    return row


def time_solvers(student_logits: torch.Tensor, embeddings: torch.Tensor, ks, *, n_time: int, epsilon: float,
                 n_iters: int, target_temperature: float) -> pd.DataFrame:
    """Seconds per solve of each solver in :data:`SOLVERS` at each support size ``k`` in ``ks``.

    The pairs are ``p = softmax(student_logits)`` and the target ``q = top_k(softmax(student_logits / τ))`` + uniform
    tail. POT's per-problem solvers (EMD, Sinkhorn with ``n_iters`` iterations, sliced W2) run on the first
    ``n_time`` positions one at a time; the batched solvers and the losses run on all positions at once. Returns one
    row per ``k``: ``k``, ``support`` (mean number of slots of a reduced problem) and one column per solver.
    """
    return pd.DataFrame([time_solvers_at(k, student_logits, embeddings, n_time=n_time, epsilon=epsilon,
                                         n_iters=n_iters, target_temperature=target_temperature) for k in ks])


def practical_support(timing: pd.DataFrame, budget_seconds: float) -> pd.DataFrame:
    """Per solver, the largest tried ``k`` whose seconds per solve are within ``budget_seconds``.

    Columns: ``solver``; ``largest k within budget`` (``NaN`` when even the smallest ``k`` is over budget);
    ``fits every k tried`` (the column above is then only a lower bound); ``seconds per solve at largest k`` and
    ``share of budget at largest k`` = seconds / budget at the largest ``k`` tried (below 1 = within budget).
    """
    solvers = [c for c in timing.columns if c not in ("k", "support")]
    timing = timing.sort_values("k")
    k_max = timing.k.max()
    rows = []
    for solver in solvers:
        within = timing[solver] <= budget_seconds
        at_max = float(timing[solver][timing.k == k_max].iloc[0])
        rows.append({
            "solver": solver,
            "largest k within budget": float(timing.k[within].max()) if within.any() else np.nan,
            "fits every k tried": bool(within.all()),
            "seconds per solve at largest k": at_max,
            "share of budget at largest k": at_max / budget_seconds,
        })
    return pd.DataFrame(rows)


def practical_support_summary(practical: pd.DataFrame, k_max: int) -> str:
    """A Markdown paragraph that says what the :func:`practical_support` table shows: which solvers fit the budget
    at every ``k`` tried (up to ``k_max``), which run out of budget and where, and which is the slowest at ``k_max``."""
    fits = practical[practical["fits every k tried"]]
    limited = practical[~practical["fits every k tried"]]
    parts = []
    if len(fits):
        names = ", ".join(f"{s} ({share:.0%})" for s, share in zip(fits.solver, fits["share of budget at largest k"]))
        parts.append(f"**Within budget at every k tried (up to k = {k_max})**, share of the budget used at "
                     f"k = {k_max} in brackets: {names}. For these the table gives only a lower bound: on this "
                     "machine the solve does not limit k in this range.")
    for _, row in limited.iterrows():
        largest = row["largest k within budget"]
        where = f"up to k = {int(largest)}" if np.isfinite(largest) else "at no k tried"
        parts.append(f"**{row.solver}** fits the budget {where} ({row['share of budget at largest k']:.1f}x the "
                     f"budget at k = {k_max}).")
    slowest = practical.loc[practical["share of budget at largest k"].idxmax()]
    parts.append(f"The slowest at k = {k_max} is {slowest.solver}, at "
                 f"{slowest['share of budget at largest k']:.0%} of the budget.")
    return "\n\n".join(parts)


def plot_time_per_solve(timing: pd.DataFrame, budget_seconds: float | None = None, title: str | None = None):
    """Seconds per solve against ``k`` on log-log axes, one colour + marker per solver (:data:`SOLVER_STYLE`),
    legend outside the data; with ``budget_seconds``, a horizontal line at the per-token budget. Returns the figure."""
    fig, ax = plots.figure(width=6.0, height=4.0)
    solvers = [c for c in timing.columns if c not in ("k", "support")]
    timing = timing.sort_values("k")
    spare = iter(zip(sns.color_palette("dark", len(solvers)), "osD^vPX*h<>"))  # for solvers without a style
    for solver in solvers:
        style = SOLVER_STYLE.get(solver) or dict(zip(("color", "marker"), next(spare)), linestyle="-")
        ax.plot(timing.k, timing[solver], label=solver, markersize=6, **style)
    if budget_seconds is not None:
        ax.axhline(budget_seconds, color="black", linewidth=1.0, linestyle="-.", label="budget per token")
    ax.set(xscale="log", yscale="log", xlabel="support size k (top-k of each distribution)",
           ylabel="seconds per solve (s)", title=title or "Time per solve (one token position)")
    ax.set_xticks(list(timing.k))
    ax.set_xticklabels([str(int(k)) for k in timing.k])
    ax.minorticks_off()
    plots.legend_outside(ax, title="solver", fontsize=8)
    return fig


# Chapter 03's fine-tuning objectives -> the method whose colour they take in every chapter.
OBJECTIVE_METHODS = {"base (no training)": "base", "reverse KL": "dft_reverse_kl", "forward KL": "dft_forward_kl",
                     "Sinkhorn W": "dft_sinkhorn"}
# The y-axis unit of each metric panel of :func:`plot_objective_comparison`.
METRIC_UNITS = {"entropy (nats)": "nats", "forward KL to target": "nats", "Sinkhorn W to target": "cost (1 - cos)",
                "distinct-1": "share of distinct unigrams", "distinct-2": "share of distinct bigrams"}


def plot_objective_comparison(training: pd.DataFrame, target_entropy: float | None = None):
    """One bar panel per metric column of ``training`` (one row per objective, column ``objective``), bars in the
    methods' colours (:data:`OBJECTIVE_METHODS`), y units from :data:`METRIC_UNITS`; with ``target_entropy``, a dashed
    line on the entropy panel at the target's entropy (nats). Returns the figure."""
    metrics = [c for c in training.columns if c != "objective"]
    fig, axes = plots.figure(ncols=len(metrics), width=2.6, height=3.4, squeeze=False)
    colors = [plots.method_color(OBJECTIVE_METHODS.get(o, o)) for o in training.objective]
    for ax, metric in zip(axes[0], metrics):
        ax.bar(range(len(training)), training[metric], color=colors)
        ax.set_xticks(range(len(training)))
        ax.set_xticklabels(training.objective, rotation=60, ha="right")
        ax.set_title(metric, fontsize=10)
        ax.set_ylabel(METRIC_UNITS.get(metric, ""))
        if metric.startswith("entropy") and target_entropy is not None:
            ax.axhline(target_entropy, color="black", linestyle="--", linewidth=1.0)
            ax.set_title(f"{metric}\n(dashed: target, {target_entropy:.2f})", fontsize=10)
    return fig


def entropy_sentence(training: pd.DataFrame, target_entropy: float, steps: int, column: str = "entropy (nats)") -> str:
    """Markdown: the student's entropy before and after ``steps`` steps of each objective against the target's
    entropy (nats): how much of the gap to the target each objective closed, and whether it overshot. The first row
    of ``training`` is the untrained model."""
    base = float(training[column].iloc[0])
    parts = [f"Held-out entropy (nats): base model {base:.2f}, target {target_entropy:.2f} "
             f"(gap {target_entropy - base:+.2f})."]
    for objective, h in zip(training.objective.iloc[1:], training[column].iloc[1:]):
        closed = (h - base) / (target_entropy - base) if target_entropy != base else np.nan
        verdict = ("overshoots the target" if (h - target_entropy) * (target_entropy - base) > 0
                   else "moves away from the target" if closed < 0 else "stays short of the target")
        parts.append(f"After {steps} steps, **{objective}** reaches {h:.2f} ({closed:.0%} of the gap): it "
                     f"{verdict}.")
    return " ".join(parts)


def plot_entropic_bias(sinkhorn_rows: pd.DataFrame, floor: float = 1e-6):
    """The relative gap ``(<T_ε, C> - EMD) / EMD`` of Sinkhorn against ε, one line per support size ``k`` (median
    and interquartile band over positions), on log-log axes. Gaps below ``floor`` (a converged ε whose gap is at
    rounding level, possibly negative) are drawn at ``floor``. Columns used: ``eps``, ``k``, ``relative gap``."""
    rows = sinkhorn_rows.assign(**{"relative gap": sinkhorn_rows["relative gap"].clip(lower=floor)})
    fig, ax = plots.figure(width=6.0, height=4.0)
    sns.lineplot(data=rows, x="eps", y="relative gap", hue="k", style="k", markers=True, dashes=False,
                 estimator="median", errorbar=("pi", 50), palette="colorblind", ax=ax)
    eps = sorted(rows.eps.unique())
    ax.set(xscale="log", yscale="log", xlabel="entropic regularisation ε (cost units, 1 - cos)",
           ylabel=f"(Sinkhorn - EMD) / EMD\n(relative gap, floored at {floor:g})",
           title="Entropic bias of <T_ε, C> against exact EMD")
    ax.set_xticks(eps)
    ax.set_xticklabels([f"{e:g}" for e in eps])
    ax.xaxis.set_minor_formatter(NullFormatter())
    plots.legend_outside(ax, title="support k")
    return fig
