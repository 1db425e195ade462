"""Chapter 06's reading: the checks every measure must pass before it ranks anything, and the verdict on the
seed's claim from the paired intervals (:func:`dftnb.lab.benchmark.paired_differences`), with the seed floor and a
multiplicity correction (:func:`dftnb.measure.stats.decide`, :func:`dftnb.measure.stats.holm`)."""

from __future__ import annotations

import numpy as np

from ..measure.metrics import BLIND_TEST_MIN_PER_SIDE
from ..measure.retention import SOLUTION_CORPUS
from ..measure.stats import (
    PairedDifference,
    benjamini_hochberg,
    claim_p_value,
    decide,
    holm,
)
from .benchmark import (
    FLOOR_LABEL,
    IN_DOMAIN,
)
from .data import RETENTION_CORPORA

# ------------------------------------------------------------------------------------------------- the verdict
CRITERIA = {
    # metric: (claim, margin, higher_is_claimed), read by stats.decide on the paired interval of DFT − reference
    # ("perplexity (...)" rows claim a *lower* value: their interval is negated first)
    "SDS": ("more style diversity than {ref} at the same temperature (SDS gain > {m:g})", 0.0, True),
    "blind test": ("samples harder to tell from human text (blind-test accuracy lower by > {m:g} points)", 0.0, True),
    "MMLU": ("MMLU accuracy loss < {m:g} point (floor check: near chance)", 1.0, False),
    "HumanEval": ("HumanEval pass@1 loss < {m:g} point (floor check)", 1.0, False),
    **{f"top-1 ({c})": (f"retention: {c} top-1 loss < {{m:g}} point", 1.0, False)
       for c in (*RETENTION_CORPORA, SOLUTION_CORPUS)},
    f"perplexity ({IN_DOMAIN})": (f"lower in-domain perplexity ({IN_DOMAIN}, change < {{m:g}}%)", 0.0, False),
}


def claim_verdict(paired, reference: str = "SFT", criteria: dict = CRITERIA, prefix: str = "DFT",
                  draws: dict | None = None, floor_model: str = FLOOR_LABEL, alpha: float = 0.05,
                  correction: str = "holm") -> tuple[str, object]:
    """``(text, table)``: the seed's claim read criterion by criterion from the paired intervals of every
    ``prefix`` model against ``reference`` (:func:`paired_differences`).

    Each row goes through :func:`dftnb.measure.stats.decide`: the interval is widened by the **seed floor** of its
    metric (``|floor_model − reference|``, the same comparison between two seeds of the reference method; 0 when
    that row is missing) and read against the criterion's margin; with ``draws`` (:attr:`Benchmark.draws`) every
    row's bootstrap p-value at its margin enters a **multiplicity correction** over the whole table (``"holm"``:
    family-wise error rate; ``"bh"``: Benjamini–Hochberg false discovery rate) and a verdict other than
    *undetermined* needs its adjusted p below ``alpha``. A blind test with fewer than
    :data:`BLIND_TEST_MIN_PER_SIDE` texts per side, and an accuracy benchmark with no discordant item at all, stay
    *undetermined* (no power). A model supports the claim when every criterion is supported, refutes it when any is
    refuted; the claim is supported if some DFT model supports it, refuted if every DFT model refutes it.
    """
    import pandas as pd

    dft = paired[paired.model.astype(str).str.startswith(prefix)]
    if dft.empty:
        raise ValueError(f"no paired rows for '{prefix} ...' models against {reference!r}: evaluate both first.")
    floors = paired[paired.model == floor_model].set_index("metric")["difference"].abs().to_dict()
    rows, diffs = [], []
    for _, r in dft.iterrows():
        if r.metric not in criteria:
            continue
        claim, margin, higher = criteria[r.metric]
        sign, higher = (-1.0, True) if r.metric.startswith("perplexity") else (1.0, higher)
        boot = (draws or {}).get((r.model, r.metric))
        d = PairedDifference(sign * r.difference, min(sign * r.ci_low, sign * r.ci_high),
                             max(sign * r.ci_low, sign * r.ci_high), int(r.get("n", 0)),
                             draws=None if boot is None else sign * np.asarray(boot))
        floor = floors.get(r.metric, 0.0)
        floor = 0.0 if floor != floor else float(floor)
        p = claim_p_value(d, margin, higher) if d.draws is not None else float("nan")
        rows.append({"model": r.model, "criterion": claim.format(m=margin, ref=reference), "metric": r.metric,
                     "difference": r.difference, "ci_low": r.ci_low, "ci_high": r.ci_high, "floor": floor, "p": p})
        diffs.append((d, margin, higher, r))
    table = pd.DataFrame(rows)
    ps = table["p"].to_numpy(dtype=float)
    adjusted = np.full(len(ps), np.nan)
    known = np.isfinite(ps)
    if known.any():
        adjusted[known] = (holm if correction == "holm" else benjamini_hochberg)(ps[known])
    table["p_adjusted"] = adjusted
    verdicts, notes = [], []
    for (d, margin, higher, r), floor, p_adj in zip(diffs, table["floor"], adjusted):
        outcome = decide(d, margin, higher, floor, None if p_adj != p_adj else p_adj, alpha)
        note = f"seed floor ±{floor:.2f}" if floor else ""
        mdd = r.get("mdd", float("nan"))
        if r.metric == "blind test" and d.n < 2 * BLIND_TEST_MIN_PER_SIDE and outcome != "undetermined":
            outcome, note = "undetermined", f"no power: {d.n // 2} texts per side"
        if outcome == "supported" and r.ci_low == r.ci_high and mdd == mdd and mdd > margin:
            # no discordant item at all (e.g. every model scores 0): the zero-width interval shows no power, not no loss
            outcome, note = "undetermined", f"no power: detects only ±{mdd:.0f} points"
        verdicts.append(outcome)
        notes.append(note)
    table["verdict"], table["note"] = verdicts, notes
    return verdict_text(table, reference), table


CANNOT_DECIDE = "cannot decide at this size"


def verdict_text(table, reference: str = "SFT", emphasis: str = "", extra: str = "") -> str:
    """The verdict table read aloud: a model is *refuted* if any criterion is, *supported* if all are, else
    :data:`CANNOT_DECIDE` if a criterion was marked so (its margin is out of reach of any model at this size), else
    *undetermined*; the claim is supported if some model supports it, refuted if every model refutes it.
    ``emphasis`` wraps the overall verdict (``"**"`` in Markdown), ``extra`` follows the first sentence."""
    per_model = {}
    for model, group in table.groupby("model", sort=False):
        found = set(group.verdict)
        per_model[model] = ("refuted" if "refuted" in found else "supported" if found == {"supported"}
                            else CANNOT_DECIDE if CANNOT_DECIDE in found else "undetermined")
    values = set(per_model.values())
    overall = ("supported" if "supported" in values else "refuted" if values == {"refuted"}
               else CANNOT_DECIDE if CANNOT_DECIDE in values else "undetermined")
    how = ("paired 95% intervals widened by the seed floor, Holm-corrected over the table"
           if "p_adjusted" in table else "paired 95% intervals")
    lines = [f"Verdict on the claim (DFT: more style diversity, no accuracy or retention loss, vs "
             f"{reference}), from {how}: {emphasis}{overall.upper()}{emphasis}.{extra}"]
    for model, outcome in per_model.items():
        parts = [f"{r.criterion}: {r.verdict} ({r.difference:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
                 f"{'; ' + r.note if r.note else ''})" for r in table[table.model == model].itertuples()]
        lines.append(f"- {model}: {outcome.upper()}. " + "; ".join(parts) + ".")
    return "\n".join(lines)
