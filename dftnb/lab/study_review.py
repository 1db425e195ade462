"""The first edition of the study re-read with the new instruments, from its committed rows only (no model, seconds).

The first edition's verdict table read one 95% interval per run and criterion. Three instruments of
:mod:`dftnb.measure.stats` change what those intervals can say:

* per corpus, pooled over the corpus's tokens (:func:`~dftnb.measure.stats.paired_block_bootstrap` given one corpus
  at a time): the first edition averaged the three corpora's log perplexity ratios with equal weights, so 8,000
  retention tokens (dialogue, technical documentation) weighed twice as much as 128,000 in-domain Shakespeare tokens;
* the seed floor (:func:`~dftnb.measure.stats.seed_floor`): what SFT already shows against SFT with another seed; a
  method effect must clear it (:func:`~dftnb.measure.stats.decide` widens each interval by it);
* multiplicity (:func:`~dftnb.measure.stats.holm`): one table holds dozens of verdicts, each read at 95%.

:func:`perplexity_by_corpus_table` recomputes the perplexity criterion that way from ``runs/*/token_nll.npz``;
:func:`overturned` puts each first-edition verdict next to what its own rows show once re-read (the per-corpus
perplexity, the HumanEval completions, the MAUVE calibration row and sample sizes, the reach of the SDS bar, the seed
floor); :func:`review_sections` writes both tables and the report's and README's sections
(:func:`dftnb.lab.study.write_documents` calls it).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..measure.metrics import BLIND_TEST_MIN_PER_SIDE, MAUVE_MIN_PER_SIDE
from ..measure.stats import (
    PairedDifference,
    claim_p_value,
    decide,
    holm,
    paired_block_bootstrap,
    seed_floor,
    verdict,
    wilson_interval,
)
from .plots import markdown_table
from .study_runs import METHODS, run_label

BLOCK, ROUNDS, SEED, ALPHA = 64, 2000, 0, 0.05
POOLED = "pooled"  # every token of every corpus, in stored order
ROLES = {"shakespeare": "in-domain", "dialogue": "retention", "techdocs": "retention", POOLED: "all tokens"}
REFERENCE = "sft"  # the method every run is compared with, seed by seed
FLOAT, ZERO = "%.5g", 1e-12  # as the study's own tables (stable digits across CPUs)
STATUSES = ("overturned", "stands", "cannot be decided with these rows")
# The first edition's criteria, as its tables/verdict.csv words them: metric -> (claim, margin, higher_is_claimed)
# ("perplexity" claims a lower value: its interval is negated before it is read)
FIRST_EDITION = {
    "SDS": ("style diversity gains >= 20 SDS points", 20.0, True),
    "MAUVE": ("samples closer to human text (MAUVE gain > 0)", 0.0, True),
    "MMLU": ("MMLU accuracy loss < 1 point", 1.0, False),
    "HumanEval": ("HumanEval pass@1 loss < 1 point", 1.0, False),
    "perplexity": ("lower perplexity on held-out text (change < 0%)", 0.0, False),
}
TITLE = ("What the first edition got wrong (re-read with per-corpus, seed-floor and multiplicity-corrected "
         "instruments)")


# ------------------------------------------------------------------------------------------------ the rows
def _run_key(name: str) -> tuple[int, int]:
    method, seed = name.rsplit("-s", 1)
    return (list(METHODS).index(method) if method in METHODS else len(METHODS), int(seed))


def _runs(study_dir: Path) -> list[str]:
    """Run folders with per-token NLLs, ordered by method (as :data:`METHODS`) then seed; ``base`` left out."""
    names = [p.parent.name for p in (Path(study_dir) / "runs").glob("*/token_nll.npz")]
    return sorted((n for n in names if n != "base" and "-s" in n), key=_run_key)


def _nll(study_dir: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(Path(study_dir) / "runs" / name / "token_nll.npz") as f:
        return {c: f[c].astype(np.float64) for c in f.files}


def _lower_is_claimed(d: PairedDifference) -> PairedDifference:
    """``reference − run`` from ``run − reference``: "lower perplexity" read as "higher is claimed"."""
    return PairedDifference(-d.mean, -d.ci_high, -d.ci_low, d.n, d.level, d.p_value,
                            None if d.draws is None else -d.draws)


def _pct(x: float) -> float:
    return float(100 * np.expm1(x))


def _pairs(runs: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(method pairs, seed pairs)``: every fine-tuned run with SFT of its seed (seed 0 when that seed has no SFT),
    and every two SFT seeds (later minus earlier)."""
    sft = [n for n in runs if n.rsplit("-s", 1)[0] == REFERENCE]
    if not sft:
        return [], []
    first = sft[0]
    methods = [(n, f"{REFERENCE}-s{n.rsplit('-s', 1)[1]}" if f"{REFERENCE}-s{n.rsplit('-s', 1)[1]}" in sft else first)
               for n in runs if n not in sft]
    seeds = [(b, a) for a, b in itertools.combinations(sft, 2)]
    return methods, seeds


def perplexity_by_corpus_table(study_dir: str | Path, block: int = BLOCK, n_boot: int = ROUNDS, seed: int = SEED,
                               alpha: float = ALPHA) -> pd.DataFrame:
    """The perplexity criterion ("lower perplexity than SFT") per corpus and pooled over all tokens.

    One row per (pair, unit): every fine-tuned run against SFT of the same seed, and the SFT seed pairs (kind
    ``seed floor``). ``change``: ``exp(mean ΔNLL) − 1`` in %, with its block-bootstrap 95% interval (``block``
    tokens, ``n_boot`` rounds, ``seed``) and two-sided p-value; ``floor``: the unit's seed floor (largest |change|
    between SFT seeds); ``holm_p``: Holm over every method row of the table; ``first_reading``: the plain interval
    read against 0 (as the first edition read it); ``verdict``: :func:`~dftnb.measure.stats.decide` with the floor
    and the Holm-adjusted p-value. Units shorter than two blocks are left out.
    """
    runs = _runs(Path(study_dir))
    methods, seeds = _pairs(runs)
    nll = {n: _nll(study_dir, n) for n in runs}
    rows = []
    for kind, pairs in (("seed floor", seeds), ("method", methods)):
        for run, ref in pairs:
            a, b = nll[run], nll[ref]
            corpora = [c for c in a if c in b]
            diffs = {c: a[c] - b[c] for c in corpora}
            diffs[POOLED] = np.concatenate([diffs[c] for c in corpora]) if corpora else np.zeros(0)
            for unit, diff in diffs.items():
                if diff.size < 2 * block:
                    continue
                d = paired_block_bootstrap({unit: diff}, block=block, n_boot=n_boot, seed=seed)
                rows.append({"model": run_label(run), "reference": run_label(ref), "kind": kind, "corpus": unit,
                             "role": ROLES.get(unit, "retention"), "tokens": int(diff.size), "_d": d})
    if not rows:
        return pd.DataFrame()
    floors = {u: seed_floor([r["_d"] for r in rows if r["kind"] == "seed floor" and r["corpus"] == u])
              for u in {r["corpus"] for r in rows if r["kind"] == "seed floor"}}
    tested = [r for r in rows if r["kind"] == "method"]
    adjusted = holm([claim_p_value(_lower_is_claimed(r["_d"])) for r in tested]) if tested else []
    for r, p in zip(tested, adjusted):
        r["holm_p"] = float(p)
    for r in rows:
        d, floor = r.pop("_d"), floors.get(r["corpus"], 0.0)
        lower = _lower_is_claimed(d)
        r.update(change=_pct(d.mean), ci_low=_pct(d.ci_low), ci_high=_pct(d.ci_high), p_value=d.p_value,
                 floor=_pct(floor))
        if r["kind"] == "method":
            r["first_reading"] = verdict(lower.ci_low, lower.ci_high, 0.0, True)
            r["verdict"] = decide(lower, 0.0, True, floor=floor, adjusted_p=r["holm_p"], alpha=alpha)
    columns = ["model", "reference", "kind", "corpus", "role", "tokens", "change", "ci_low", "ci_high", "p_value",
               "floor", "holm_p", "first_reading", "verdict"]
    return pd.DataFrame(rows).reindex(columns=columns)


# ------------------------------------------------------------------------------------ the first edition, re-read
def _method_of(label: str) -> str:
    return label.rsplit(" s", 1)[0]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _criterion(metric: str) -> str:
    return FIRST_EDITION[metric][0]


def _first_words(by_method: pd.DataFrame, metric: str) -> str | None:
    """The first edition's verdicts on one criterion, as its per-method table states them."""
    rows = by_method[by_method.criterion == _criterion(metric)]
    if rows.empty:
        return None
    groups = rows.groupby("verdict", sort=False).method.apply(list)
    if len(groups) == 1:
        return f"{groups.index[0]} for all {len(rows)} DFT methods"
    return "; ".join(f"{v} for {', '.join(m)}" for v, m in groups.items())


def _across_seeds(verdicts: list[str]) -> str:
    found = set(verdicts)
    return found.pop() if len(found) == 1 else "undetermined"


def _perplexity_rows(ppl: pd.DataFrame, by_method: pd.DataFrame) -> list[dict]:
    """One row per DFT method: the first edition's equal-weight verdict against the pooled-over-tokens one (every
    seed must agree), with each corpus's changes and verdicts."""
    out = []
    first = by_method[by_method.criterion == _criterion("perplexity")].set_index("method")
    tested = ppl[ppl.kind == "method"].assign(method=lambda d: d.model.map(_method_of))
    for method, g in tested.groupby("method", sort=False):
        if method not in first.index:
            continue
        f = first.loc[method]
        units = [POOLED] + [u for u in dict.fromkeys(g.corpus) if u != POOLED]
        parts, new = [], {}
        for unit in units:  # pooled first: the criterion's answer, then each corpus
            u = g[g.corpus == unit]
            new[unit] = _across_seeds(list(u.verdict))
            name = "pooled over all tokens" if unit == POOLED else f"{ROLES.get(unit, 'retention')} {unit}"
            parts.append(f"{name} {', '.join(f'{c:+.1f}' for c in u.change)}% → {new[unit]}")
        now = new[POOLED]
        out.append({"criterion": f"{_criterion('perplexity')}: {method}",
                    "first edition": f"{f.verdict} ({f.differences}% over {f.seeds} seed(s); the corpora "
                                     "weighted equally)",
                    "re-reading": "; ".join(parts),
                    "status": "stands" if now == f.verdict else "overturned"})
    return out


def _humaneval_row(study_dir: Path, by_method: pd.DataFrame, verdicts: pd.DataFrame) -> dict | None:
    found = {p.parent.name: _jsonl(p) for p in sorted((study_dir / "runs").glob("*/humaneval.jsonl"))}
    if not found or _first_words(by_method, "HumanEval") is None:
        return None
    empty = {n: sum(not str(r.get("completion", "")).strip() for r in rows) for n, rows in found.items()}
    passed = {n: sum(bool(r.get("passed")) for r in rows) for n, rows in found.items()}
    total = {n: len(rows) for n, rows in found.items()}
    named = [n for n in ("base", f"{REFERENCE}-s0") if n in found]
    others = [n for n in found if n not in named]
    shares = [100 * empty[n] / total[n] for n in found]
    text = ("empty completions: " + ", ".join(f"{run_label(n)} {empty[n]}/{total[n]}" for n in named)
            + (f", the other {len(others)} runs {min(empty[n] for n in others)}–{max(empty[n] for n in others)}"
               if others else "")
            + f" ({min(shares):.0f}–{max(shares):.0f}% of the problems); passes: "
            + (", ".join(f"{run_label(n)} {passed[n]}/{total[n]}" for n in found if passed[n]) or "none")
            + "; an empty completion cannot pass, so 0% says little about the models' code")
    notes = sorted({n for n in verdicts.loc[verdicts.criterion == _criterion("HumanEval"), "note"].dropna() if n})
    return {"criterion": _criterion("HumanEval"),
            "first edition": _first_words(by_method, "HumanEval") + (f" ({'; '.join(notes)})" if notes else ""),
            "re-reading": text, "status": STATUSES[2]}


def wilson_size(accuracy: float, low: float, high: float, max_n: int = 20_000) -> int | None:
    """The number of texts behind a stored blind-test accuracy and its Wilson interval (all in %, 5 significant
    digits): the smallest ``n`` whose ``k = round(p n)`` reproduces all three; ``None`` if none does."""
    for n in range(2, max_n + 1):
        k = round(accuracy / 100 * n)
        if abs(100 * k / n - accuracy) > 5e-3 * max(1.0, accuracy / 10):
            continue
        lo, hi = wilson_interval(k, n)
        if abs(100 * lo - low) < 0.01 and abs(100 * hi - high) < 0.01:
            return n
    return None


def _mauve_row(study_dir: Path, by_method: pd.DataFrame, tables: Path) -> dict | None:
    cal_path, paired_path = tables / "calibration.csv", tables / "paired.csv"
    if _first_words(by_method, "MAUVE") is None or not cal_path.exists() or not paired_path.exists():
        return None
    cal = pd.read_csv(cal_path).set_index("row")
    intact, shuffled = "human text (other half)", "human text, words shuffled"
    if intact not in cal.index or shuffled not in cal.index:
        return None
    i, s = cal.loc[intact], cal.loc[shuffled]
    paired = pd.read_csv(paired_path)
    m = paired[paired.metric == "MAUVE"]
    width = float((m.ci_high - m.ci_low).median())
    prompts = int(m.n.median())
    samples = json.loads((study_dir / "runs" / "base" / "samples.json").read_text(encoding="utf-8"))["temperature"]
    groups = samples.get("1", samples.get("1.0", next(iter(samples.values()))))
    model_side = sum(len(g) for g in groups)
    table = pd.read_csv(tables / "table.csv")
    sizes = [wilson_size(r.blind_test, r.blind_low, r.blind_high) for r in table.dropna(subset=["blind_test"])
             .itertuples()]
    per_side = min((n // 2 for n in sizes if n), default=None)
    checks = ""
    caption = (tables / "calibration.md").read_text(encoding="utf-8").split("\n", 1)[0] \
        if (tables / "calibration.md").exists() else ""
    found = re.findall(r"(\w+) (PASS|FAIL)", caption)
    if found:
        checks = "; calibration checks " + ", ".join(f"{k} {v}" for k, v in found)
    side = (f"the human reference holds {per_side} texts (read back from the blind test's Wilson intervals, which "
            f"balance both sides) against {model_side} model samples at T = 1 ({len(groups)} prompts x "
            f"{len(groups[0])})" if per_side else f"{model_side} model samples per side at T = 1")
    fewest = per_side or model_side
    return {"criterion": _criterion("MAUVE"),
            "first edition": _first_words(by_method, "MAUVE") + checks + " (word order not among them)",
            "re-reading": (f"word-shuffled human text scores MAUVE {s.mauve:.3f}, intact human text {i.mauve:.3f} "
                           f"(the blind test does tell them apart: {s.blind_test:.0f}% vs {i.blind_test:.0f}%); "
                           f"paired MAUVE intervals over {prompts} prompts are {width:.2f} wide (median); {side}: "
                           f"the smaller side is {'below' if fewest < MAUVE_MIN_PER_SIDE else 'above'} MAUVE's "
                           f"{MAUVE_MIN_PER_SIDE:,} and {'below' if fewest < BLIND_TEST_MIN_PER_SIDE else 'above'} "
                           f"the blind test's {BLIND_TEST_MIN_PER_SIDE} texts per side"),
            "status": STATUSES[2]}


def _sds_row(by_method: pd.DataFrame, tables: Path) -> dict | None:
    cal_path, table_path = tables / "calibration.csv", tables / "table.csv"
    if _first_words(by_method, "SDS") is None or not cal_path.exists() or not table_path.exists():
        return None
    cal = pd.read_csv(cal_path)
    curve = cal[cal.row.str.startswith("base") & cal.temperature.notna() & cal.sds.notna()].sort_values("temperature")
    table = pd.read_csv(table_path).set_index("model")
    ref = f"{run_label(REFERENCE + '-s0')}"
    if curve.empty or ref not in table.index:
        return None
    margin = FIRST_EDITION["SDS"][1]
    top = curve.loc[curve.sds.idxmax()]
    hot = curve[curve.temperature > 1]
    bar = float(table.loc[ref, "sds"]) + margin
    everything = pd.concat([table.sds.dropna(), curve.set_index("row").sds])
    frontier = tables / "frontier.csv"
    if frontier.exists():
        f = pd.read_csv(frontier)
        everything = pd.concat([everything, f.set_index(f.model + " " + f.setting.astype(str)).sds.dropna()])
    status = STATUSES[2] if bar > everything.max() else "stands"
    return {"criterion": _criterion("SDS"), "first edition": _first_words(by_method, "SDS"),
            "re-reading": ("SDS saturates: the base model at T = "
                           + "/".join(f"{t:g}" for t in hot.temperature) + ": "
                           + "/".join(f"{v:.1f}" for v in hot.sds)
                           + f" (highest {top.sds:.1f} at T = {top.temperature:g}); {ref} scores "
                           f"{table.loc[ref, 'sds']:.1f}, so +{margin:g} points means {bar:.1f}, "
                           f"{bar - everything.max():.1f} above the highest SDS of any row of the study "
                           f"({everything.max():.1f}, {everything.idxmax()}): no model could pass the bar"),
            "status": status}


def _floor_row(ppl: pd.DataFrame, verdicts: pd.DataFrame, tables: Path) -> dict | None:
    """The first edition's decided verdicts re-read with each criterion's seed floor (from its own paired table)."""
    paired_path = tables / "paired.csv"
    if not paired_path.exists() or verdicts.empty:
        return None
    paired = pd.read_csv(paired_path)
    ref = run_label(REFERENCE + "-s0")
    seeds = paired[paired.model.map(_method_of).eq(_method_of(ref)) & (paired.model != ref)]
    if seeds.empty:
        return None
    floors = seeds.assign(size=seeds.difference.abs()).groupby("metric", sort=False)["size"].max()
    by_claim = {_criterion(m): m for m in FIRST_EDITION}
    flipped, decided = [], 0
    for r in verdicts.itertuples():
        metric = by_claim.get(r.criterion)
        if metric is None or r.verdict not in ("supported", "refuted"):
            continue
        decided += 1
        _, margin, higher = FIRST_EDITION[metric]
        floor = float(floors.get(metric, 0.0))
        lo, hi = (-r.ci_high, -r.ci_low) if metric == "perplexity" else (r.ci_low, r.ci_high)
        now = verdict(lo - floor, hi + floor, margin, True if metric == "perplexity" else higher)
        if now != r.verdict:
            flipped.append(f"{r.model} {metric} ({r.verdict} → {now})")
    worst = seeds.loc[seeds[seeds.metric == "perplexity"].difference.abs().idxmax()] \
        if (seeds.metric == "perplexity").any() else None
    units = {"SDS": " points", "MMLU": " points", "HumanEval": " points", "perplexity": "%"}
    text = ""
    if worst is not None:
        excludes = worst.ci_low > 0 or worst.ci_high < 0
        text = (f"{worst.model} − {worst.reference} (the same method, other seed): perplexity "
                f"{worst.difference:+.2f}% [{worst.ci_low:+.2f}, {worst.ci_high:+.2f}]"
                f"{', the interval excludes 0' if excludes else ''}; ")
    text += ("seed floors (largest absolute SFT seed difference): "
             + ", ".join(f"{m} {v:.2f}{units.get(m, '')}" for m, v in floors.items() if v > 0)
             + f"; widened by them, {len(flipped)} of the {decided} decided verdicts become undetermined"
             + (f": {'; '.join(flipped)}" if flipped else ""))
    tested = ppl[ppl.kind == "method"] if len(ppl) else ppl
    if len(tested):
        text += (f"; Holm over the {len(tested)} tests of the per-corpus perplexity table leaves "
                 f"{int((tested.holm_p < ALPHA).sum())} below {ALPHA} (p-values from the bootstrap standard "
                 "error)")
    return {"criterion": "seed floor and multiplicity",
            "first edition": (f"{len(verdicts)} verdicts, each from one 95% interval, read against the margin only "
                              "(no seed floor, no multiplicity correction)"),
            "re-reading": text, "status": "overturned" if flipped else "stands"}


def overturned(study_dir: str | Path, ppl: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per first-edition verdict or instrument: ``criterion``, what the ``first edition`` said (its
    verdict tables' words), what the ``re-reading`` of the same committed rows finds, and its ``status``
    (:data:`STATUSES`). ``ppl``: :func:`perplexity_by_corpus_table` when already computed."""
    study_dir = Path(study_dir)
    tables = study_dir / "tables"
    columns = ["criterion", "first edition", "re-reading", "status"]
    if not (tables / "verdict.csv").exists() or not (tables / "verdict_by_method.csv").exists():
        return pd.DataFrame(columns=columns)
    verdicts = pd.read_csv(tables / "verdict.csv", keep_default_na=False)
    if not verdicts.criterion.isin([claim for claim, _, _ in FIRST_EDITION.values()]).any():
        return pd.DataFrame(columns=columns)  # tables of another edition: nothing of the first one to re-read
    verdicts = verdicts.assign(**{c: pd.to_numeric(verdicts[c]) for c in ("difference", "ci_low", "ci_high")})
    by_method = pd.read_csv(tables / "verdict_by_method.csv", keep_default_na=False)
    ppl = perplexity_by_corpus_table(study_dir) if ppl is None else ppl
    rows = _perplexity_rows(ppl, by_method) if len(ppl) else []
    rows += [r for r in (_humaneval_row(study_dir, by_method, verdicts), _mauve_row(study_dir, by_method, tables),
                         _sds_row(by_method, tables), _floor_row(ppl, verdicts, tables)) if r]
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------------------------- documents
@dataclass
class Review:
    full: str  # the report's section (results/study/README.md)
    short: str  # the README's version


def _save(df: pd.DataFrame, shown: pd.DataFrame, name: str, caption: str, base: Path) -> str:
    floats = df.select_dtypes("float").columns
    df = df.assign(**{c: df[c].mask(df[c].abs() < ZERO, 0.0) for c in floats})
    df.to_csv(base / f"{name}.csv", index=False, float_format=FLOAT)
    md = markdown_table(shown)
    (base / f"{name}.md").write_text(f"{caption}\n\n{md}\n", encoding="utf-8")
    return md


def _shown_perplexity(ppl: pd.DataFrame) -> pd.DataFrame:
    """The long table (``tables/review_perplexity.md``): one row per pair and unit."""
    return pd.DataFrame({
        "model − reference": [f"{m} − {r}" for m, r in zip(ppl.model, ppl.reference)],
        "corpus": [f"{c} ({role})" for c, role in zip(ppl.corpus, ppl.role)],
        "tokens": [f"{t:,}" for t in ppl.tokens],
        "perplexity change % [95% CI]": [f"{c:+.1f} [{lo:+.1f}, {hi:+.1f}]"
                                         for c, lo, hi in zip(ppl.change, ppl.ci_low, ppl.ci_high)],
        "seed floor %": [f"{f:.2f}" for f in ppl.floor],
        "Holm p": ["" if p != p else f"{p:.3f}" for p in ppl.holm_p],
        "first reading → with floor and Holm": ["seed floor" if k != "method" else f"{a} → {b}"
                                                for k, a, b in zip(ppl.kind, ppl.first_reading, ppl.verdict)]})


def _compact_perplexity(ppl: pd.DataFrame) -> pd.DataFrame:
    """The report's table: one row per pair, one column per unit (change [95% CI] and the verdict), then the
    floor."""
    units = list(dict.fromkeys(ppl.corpus))
    units = [POOLED] * (POOLED in units) + [u for u in units if u != POOLED]
    rows = []
    for (model, ref), g in ppl.groupby(["model", "reference"], sort=False):
        g = g.set_index("corpus")
        row = {"model − reference": f"{model} − {ref}"}
        for u in units:
            r = g.loc[u] if u in g.index else None
            row[f"{u} ({ROLES.get(u, 'retention')})"] = "" if r is None else (
                f"{r.change:+.1f} [{r.ci_low:+.1f}, {r.ci_high:+.1f}]"
                + ("" if r.kind != "method" else f" {r.verdict}"))
        rows.append(row)
    floors = ppl.groupby("corpus").floor.first()
    rows.append({"model − reference": "seed floor (largest SFT seed difference)",
                 **{f"{u} ({ROLES.get(u, 'retention')})": f"{floors[u]:.2f}" for u in units}})
    return pd.DataFrame(rows)


def review_sections(study_dir: str | Path) -> Review | None:
    """Write ``tables/review.csv|md`` (:func:`overturned`) and ``tables/review_perplexity.csv|md``
    (:func:`perplexity_by_corpus_table`) and return the report's and the README's sections; ``None`` (nothing
    written) when the study has no first-edition verdict table or no SFT run with per-token NLLs yet."""
    study_dir = Path(study_dir)
    tables = study_dir / "tables"
    if not (tables / "verdict.csv").exists():
        return None
    ppl = perplexity_by_corpus_table(study_dir)
    if ppl.empty:
        return None
    review = overturned(study_dir, ppl)
    if review.empty:
        return None
    tested = ppl[ppl.kind == "method"]
    caption = (f"Perplexity change (%) vs SFT of the same seed, per corpus and pooled over all tokens: exp(mean "
               f"ΔNLL) − 1 with a non-overlapping {BLOCK}-token block bootstrap 95% interval ({ROUNDS:,} rounds, "
               f"seed {SEED}); the seed floor is the largest absolute change between two SFT seeds in that corpus; "
               f"the verdict on 'lower perplexity' is decide's: the interval widened by the floor, and Holm over "
               f"the table's {len(tested)} method rows, p < {ALPHA}.")
    _save(ppl, _shown_perplexity(ppl), "review_perplexity", caption, tables)
    counts = review.status.value_counts()
    statuses = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
    review_md = _save(review, review, "review", f"The first edition re-read from its own rows: {statuses}.", tables)
    ref = run_label(REFERENCE + "-s0")
    s0 = tested[tested.reference == ref]
    lead = ("The first edition weighted the held-out corpora equally, read each interval alone, against no seed "
            "floor, and took 0% HumanEval, MAUVE and a +20-point SDS bar at face value. ")
    if len(s0):
        main = run_label("dft_reverse_kl-s0")
        m = main if main in set(s0.model) else s0.model.iloc[0]
        g = s0[s0.model == m].set_index("corpus")
        corpora = [c for c in g.index if c != POOLED]
        equal = _pct(float(np.mean(np.log1p(g.loc[corpora, "change"] / 100))))
        lead += (f"Per corpus, {m} against {ref} changes perplexity by "
                 + ", ".join(f"{c} {g.loc[c, 'change']:+.1f}% ({g.loc[c, 'tokens']:,} tokens)" for c in corpora)
                 + f"; weighted equally that is {equal:+.1f}%")
        if POOLED in g.index:
            pooled = g.loc[POOLED]
            lead += (f", pooled over all tokens {pooled.change:+.1f}%"
                     + (", the opposite sign" if np.sign(pooled.change) != np.sign(equal) else ""))
        lead += ". "
    lead += (f"Perplexity verdicts below are pooled over all tokens, per seed against SFT of that seed, with the "
             f"seed floor and Holm, every seed agreeing; {statuses}.")
    full = "\n".join([f"## {TITLE}", "", lead, "", review_md, "", f"**Perplexity per corpus.** {caption} Long form: "
                      "[`tables/review_perplexity.md`](tables/review_perplexity.md).", "",
                      markdown_table(_compact_perplexity(ppl)), "",
                      "Computed from the committed rows by `dftnb.lab.study_review` "
                      "([`tables/review.csv`](tables/review.csv))."])
    short = "\n".join([f"**{TITLE}**", "", lead + " Per-corpus table: "
                       "[`results/study/README.md`](results/study/README.md).", "", review_md])
    return Review(full, short)
