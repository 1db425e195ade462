"""Chapter 06's sentences, built from its tables: the verdict at this size, the calibration rows read aloud and the
committed step-time ratios.

:func:`verdict_at_size` re-reads :func:`dftnb.lab.benchmark.claim_verdict` with what the calibration rows say is
reachable: a diversity gain of ``m`` SDS points over the reference can only be observed if some calibration row
(the base model at any temperature, or human text) scores at least ``m`` points above the reference's SDS. When
``max(SDS of the calibration rows) − SDS(reference) < m`` no model could have met the margin, so the criterion reads
*cannot decide at this size* instead of *refuted*.
"""

from __future__ import annotations

import re
from pathlib import Path

from .benchmark import CANNOT_DECIDE, CRITERIA, verdict_text

STEP_TIME_ROW = "| DFT/SFT training-step time"


def reachable_sds_gain(table, calibration, reference: str = "SFT") -> float:
    """``max(SDS over the calibration rows and human text) − SDS(reference)``: the largest diversity gain over the
    reference that this run's samples show to be attainable."""
    sds = [*calibration["sds"].dropna(), *table.loc[table.model == "human text", "sds"].dropna()]
    return float(max(sds) - float(table.set_index("model").loc[reference, "sds"]))


def verdict_at_size(verdict_table, table, calibration, reference: str = "SFT", criteria: dict = CRITERIA):
    """``(text, table)``: ``verdict_table`` (from ``claim_verdict``) with the SDS criterion marked
    :data:`CANNOT_DECIDE` where the margin is out of reach (:func:`reachable_sds_gain`), per-model and overall
    verdicts recomputed: *refuted* if any criterion is refuted, *supported* if all are, else *cannot decide at this
    size* when an unreachable criterion is among the open ones, else *undetermined*."""
    claim, margin, _ = criteria["SDS"]
    reach = reachable_sds_gain(table, calibration, reference)
    out = verdict_table.copy()
    if reach < margin:
        hit = out.criterion == claim.format(m=margin, ref=reference)
        out.loc[hit, "verdict"] = CANNOT_DECIDE
        out.loc[hit, "note"] = (f"the calibration rows reach at most {reach:+.1f} SDS points over {reference}, "
                                f"below the {margin:g}-point margin")
    extra = (f" The SDS margin is {margin:g} points; this run's calibration rows span at most {reach:+.1f} points "
             f"over {reference}.")
    return verdict_text(out, reference, emphasis="**", extra=extra), out


def calibration_takeaway(checks: dict[str, bool]) -> str:
    """One sentence from :func:`dftnb.lab.benchmark.calibration_checks`."""
    said = {"sds_ordered": "the SDS orders greedy < T=0.3 < ... < T=1.3 with disjoint intervals",
            "human_halves_alike": "the two human halves are alike (blind test CI contains 50%, highest MAUVE)",
            "hot_sampling_unlike": "T=2 samples are less human-like than T=1 on both fidelity columns",
            "blind_test_sized": "the blind test reads >= 200 texts per side and tells word-shuffled human text from "
                                "human text at that size",
            "mauve_sized": "MAUVE reads >= 1,000 texts per side (otherwise it is descriptive, out of the verdict)",
            "retention_sees_shuffling": "top-1 accuracy on the retention corpora drops when their words are "
                                        "shuffled (disjoint intervals)",
            "humaneval_extracts": "fewer than 10% of the base model's HumanEval completions are empty or "
                                  "unparsable"}
    passed = [said[k] for k, ok in checks.items() if ok]
    failed = [said[k] for k, ok in checks.items() if not ok]
    text = f"Calibration: {len(passed)} of {len(checks)} checks pass."
    if passed:
        text += " Holds: " + "; ".join(passed) + "."
    if failed:
        text += " Fails: " + "; ".join(failed) + ", so the columns behind it cannot rank methods in this run."
    return text


def shuffle_takeaway(calibration) -> str:
    """What shuffling the words of human text does to the two fidelity columns, from the calibration rows
    ``human text (other half)`` and ``human text, words shuffled``."""
    rows = calibration.set_index("row")
    half, shuf = rows.loc["human text (other half)"], rows.loc["human text, words shuffled"]
    seen = shuf.blind_low > 50
    text = (f"Shuffled human text: blind test {shuf.blind_test:.0f}% [{shuf.blind_low:.0f}, {shuf.blind_high:.0f}] "
            f"against {half.blind_test:.0f}% [{half.blind_low:.0f}, {half.blind_high:.0f}] for intact human text; "
            f"MAUVE {shuf.mauve:.3f} against {half.mauve:.3f}. ")
    if seen:
        text += ("The classifier does tell shuffled passages from human ones (its interval lies above 50%), but "
                 f"only {shuf.blind_test - 50:.0f} points above chance: mean-pooled MiniLM embeddings are close to "
                 "a bag of words, so word order is a weak signal for both columns.")
    else:
        text += ("The classifier cannot tell shuffled passages from human ones (its interval contains 50%): "
                 "mean-pooled MiniLM embeddings are close to a bag of words, so neither column sees word order.")
    return text + (" Perplexity under the base model, which this chapter does not compute for shuffled text, would "
                   "see word order directly.")


def committed_step_time(readme: str | Path) -> str | None:
    """The committed DFT/SFT step-time row of ``benchmarks/README.md`` as Markdown (what was measured, the goal, the
    measured ratios and the command), or ``None`` when the file has no such row."""
    path = Path(readme)
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith(STEP_TIME_ROW):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if len(cells) < 4:
                return None
            what, goal, measured, command = cells[:4]
            measured = re.sub(r"[:;,]?\s*see below\.?$", "", measured)  # the README's own pointer, not this page's
            return (f"**{what}** (goal {goal}), from `benchmarks/README.md`, reproduced by {command}:\n\n"
                    f"{measured}")
    return None


def table_takeaway(table, reference: str = "SFT") -> str:
    """One sentence from the benchmark table: each model's SDS and blind test next to the reference's."""
    models = table[table.model != "human text"].set_index("model")
    ref = models.loc[reference]
    lo, hi = models.sds.idxmin(), models.sds.idxmax()
    text = (f"SDS ranges from {models.sds[lo]:.1f} ({lo}) to {models.sds[hi]:.1f} ({hi}), {reference} at "
            f"{ref.sds:.1f} [{ref.sds_ci_low:.1f}, {ref.sds_ci_high:.1f}]; ")
    overlap = [m for m, r in models.iterrows() if m != reference
               and r.sds_ci_low <= ref.sds_ci_high and ref.sds_ci_low <= r.sds_ci_high]
    text += (f"{len(overlap)} of {len(models) - 1} models have an SDS interval overlapping {reference}'s (overlap is "
             f"not equality: see the paired differences). "
             f"Blind test: {models.blind_test.min():.0f}-{models.blind_test.max():.0f}% told apart from human text.")
    return text


def paired_takeaway(paired, left_out: list[str] = (), reference: str = "SFT") -> str:
    """Markdown: per metric, how many models' intervals exclude 0 (and in which direction), and why a metric's
    panel was left out (every difference and bound 0)."""
    lines = []
    for metric, group in paired.groupby("metric", sort=False):
        if metric in left_out:
            lines.append(f"- **{metric}**: no panel. Every model scores exactly as {reference} on each of the "
                         f"{int(group.n.max())} items (all differences and interval bounds are 0), so this column "
                         f"cannot tell the models apart at this size.")
            continue
        above = group[group.ci_low > 0].model.tolist()
        below = group[group.ci_high < 0].model.tolist()
        text = f"- **{metric}** ({group.unit.iloc[0]}): "
        if not above and not below:
            text += f"every interval contains 0, so no difference from {reference} is detectable here."
        else:
            parts = ([f"above {reference}: {', '.join(above)}"] if above else []) + (
                [f"below {reference}: {', '.join(below)}"] if below else [])
            rest = len(group) - len(above) - len(below)
            text += "; ".join(parts) + (f"; the other {rest} intervals contain 0." if rest else ".")
        lines.append(text)
    return "\n".join(lines)


def frontier_takeaway(frontier, table_temperature: float = 1.0) -> str:
    """One sentence from the frontier: per temperature step, for how many models the SDS rises out of the previous
    temperature's 95% interval (``sds > sds_ci_high`` of the colder row; without interval columns, any increase),
    and which model has the highest SDS and the highest MAUVE at ``table_temperature``."""
    rows = frontier.dropna(subset=["temperature"])
    upper = "sds_ci_high" if "sds_ci_high" in rows else "sds"
    steps: dict[tuple[float, float], tuple[list[str], list[str]]] = {}
    for model, group in rows.groupby("model", sort=False):
        group = group.sort_values("temperature")
        for (_, cold), (_, hot) in zip(group.iterrows(), group.iloc[1:].iterrows()):
            rose, flat = steps.setdefault((cold.temperature, hot.temperature), ([], []))
            (rose if hot.sds > cold[upper] else flat).append(model)
    swept = [m for m, g in rows.groupby("model", sort=False) if g.temperature.nunique() > 1]
    rising = [m for m in swept if not any(m in flat for _, flat in steps.values())]
    text = (f"Counting a step as a rise only when the SDS leaves the colder temperature's interval, it rises with "
            f"every temperature step for {len(rising)} of the {len(swept)} models sampled at several temperatures")
    parts = []
    for (cold, hot), (rose, flat) in sorted(steps.items()):
        part = f"T = {cold:g} → {hot:g}: {len(rose)} of {len(rose) + len(flat)}"
        if flat and rose:
            part += f" (flat within its interval: {', '.join(flat)})"
        elif flat:
            part += " (flat within the interval)"
        parts.append(part)
    text += " (" + "; ".join(parts) + ")." if parts else "."
    at = rows[rows.temperature == table_temperature].set_index("model")
    if len(at):
        text += (f" At T = {table_temperature:g} the most diverse samples are {at.sds.idxmax()}'s (SDS "
                 f"{at.sds.max():.1f}) and the most human-like {at.mauve.idxmax()}'s (MAUVE {at.mauve.max():.3f})")
        text += "; the same model leads both." if at.sds.idxmax() == at.mauve.idxmax() else \
            "; no model leads both."
    return text
