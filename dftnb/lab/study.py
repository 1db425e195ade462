"""The study: the seed article's claim tested with a budget that can answer it, resumable run by run.

    make study                                         # = python -m dftnb.lab.study --profile study
    python -m dftnb.lab.study --profile study --list       # the plan: which pieces are done
    python -m dftnb.lab.study --profile study --report     # only the tables, figures, report and README section
    python -m dftnb.lab.study --profile study --documents  # only the report and README section, from the tables
    python -m dftnb.lab.study --profile smoke --results build/study-smoke    # the whole pipeline in a few minutes

:func:`run_study` runs every unfinished piece of :func:`dftnb.lab.study_runs.plan` (a finished piece is skipped), then
:func:`report`: the tables, figures, the full report and the README section, computed from the stored rows of
``results/study/`` only.

Nothing here touches a trained model: every number comes from the files :mod:`dftnb.lab.study` wrote (samples, per-token
NLLs, per-question MMLU scores, per-problem HumanEval outcomes, training logs, provenance), scored with
:func:`dftnb.lab.benchmark.benchmark`. Rerunning it on the same files gives the same bytes.

* ``tables/``: the table (one row per run at T = 1), calibration rows, paired differences (each run minus SFT of the
  same seed), the temperature frontier, the verdict per run and per method over seeds, seed variance, full-set MMLU,
  tuning and cost; each as CSV and Markdown.
* ``figures/frontier.png``: diversity (SDS) against fidelity (MAUVE; perplexity of the samples under the base model)
  for the base model, SFT and the two main DFT variants at T = 0.7 ... 1.6, with dynamic-temperature and
  target-entropy sampling as extra points.
* ``results/study/README.md``: the full report (:func:`write_documents`, from the stored tables only): the paragraph
  for a sceptical reader, every table, the figure, tuning.
* the repository's ``README.md``: its section between ``<!-- study:begin -->`` and ``<!-- study:end -->`` is replaced
  by the verdict table and the figure, with a link to the full report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..measure.evals import HumanEvalResult, summarize_mmlu
from ..measure.stats import mcnemar, minimum_detectable_difference
from .benchmark import (
    SIZES,
    ModelEvaluation,
    benchmark,
    calibration_checks,
    claim_verdict,
    common_length,
    display_calibration,
    display_paired,
    display_table,
    held_out_passages,
    held_out_texts,
)
from .data import CORPORA
from .plots import markdown_table
from .study_review import review_sections
from .study_runs import (
    FRONTIER,
    METHODS,
    PROFILES,
    README_BEGIN,
    README_END,
    REPO,
    RESULTS,
    Study,
    plan,
    run_label,
    run_pieces,
)

# Stored tables keep 5 significant digits and write values that are zero up to float64 rounding as 0: their 6th-7th
# digits (and a Vendi component of 6e-19 vs 5e-18) depend on how the CPU rounds float32 reductions (AMD EPYC and
# Intel Xeon differ), so more digits would make a regeneration on another CPU rewrite the committed files.
FLOAT = "%.5g"
ZERO = 1e-12
SAMPLER_TAGS = {"dynatemp": "dyn", "target": "H*"}  # point labels of the extra samplers in the frontier figure


# ------------------------------------------------------------------------------------------- reading the rows
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_evaluation(run_dir: Path) -> tuple[ModelEvaluation, dict]:
    """A run's :class:`~dftnb.lab.benchmark.ModelEvaluation` and its extra-sampler samples, from its stored files."""
    samples = json.loads((run_dir / "samples.json").read_text(encoding="utf-8"))
    nll = np.load(run_dir / "token_nll.npz")
    mm = run_dir / "mmlu.jsonl"
    he = run_dir / "humaneval.jsonl"
    humaneval = None
    if he.exists():
        rows = _jsonl(he)
        humaneval = HumanEvalResult(pass_at_1_greedy=float(np.mean([r["passed"] for r in rows])), pass_at_k={},
                                    n_problems=len(rows), n_samples=1, per_problem=rows)
    ev = ModelEvaluation(
        name=run_label(run_dir.name),
        samples={float(t): g for t, g in samples["temperature"].items()},
        perplexity=pd.read_csv(run_dir / "perplexity.csv"),
        humaneval=humaneval,
        mmlu=summarize_mmlu(_jsonl(mm), 0, "cloze", "char") if mm.exists() else None,
        token_nll={c: nll[c].astype(np.float64) for c in nll.files},
    )
    return ev, samples.get("extra", {})


def finished_runs(study: Study) -> list[str]:
    """Run names with a ``provenance.json``, in plan order."""
    return [name for kind, name in plan(study.profile) if kind == "run" and study.done(kind, name)]


def method_of(label: str) -> str:
    """``"DFT (reverse KL) s1"`` -> ``"DFT (reverse KL)"``."""
    return label.rsplit(" s", 1)[0] if label != "base" else label


# -------------------------------------------------------------------------------------------------- tables
def seed_verdict(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per method and criterion over its seeds: *supported* / *refuted* only when every seed's paired interval
    says so, otherwise *undetermined*; with the seeds' differences."""
    rows = []
    frame = verdicts.assign(method=verdicts.model.map(method_of))
    for (method, criterion), g in frame.groupby(["method", "criterion"], sort=False):
        found = set(g.verdict)
        outcome = found.pop() if len(found) == 1 else "undetermined"
        rows.append({"method": method, "criterion": criterion, "seeds": len(g),
                     "differences": ", ".join(f"{d:+.2f}" for d in g.difference), "verdict": outcome})
    return pd.DataFrame(rows)


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each method's headline numbers."""
    metrics = ["sds", "mauve", "blind_test", "perplexity", "mmlu", "humaneval"]
    frame = table[table.model != "human text"].assign(method=table.model.map(method_of))
    rows = []
    for method, g in frame.groupby("method", sort=False):
        row = {"method": method, "seeds": len(g)}
        for m in metrics:
            row[m] = float(g[m].mean())
            row[f"{m}_sd"] = float(g[m].std(ddof=1)) if len(g) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def display_seeds(seeds: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"method": seeds["method"], "seeds": seeds["seeds"]})
    for m, label, spec in (("sds", "SDS", ".1f"), ("mauve", "MAUVE", ".3f"), ("blind_test", "blind test %", ".0f"),
                           ("perplexity", "perplexity", ".2f"), ("mmlu", "MMLU %", ".1f")):
        out[label] = [f"{v:{spec}}" + ("" if sd != sd else f" ± {sd:{spec}}")
                      for v, sd in zip(seeds[m], seeds[f"{m}_sd"])]
    return out


def full_mmlu_table(study: Study) -> pd.DataFrame:
    """Full-set MMLU of the runs that have it, each compared with SFT s0 on the same questions (McNemar)."""
    found = {run_label(n): _jsonl(study.results / "runs" / n / "mmlu_full.jsonl")
             for k, n in plan(study.profile) if k == "mmlu-full" and study.done(k, n)}
    results = {label: summarize_mmlu(rows, 0, "cloze", "char") for label, rows in found.items()}
    ref = results.get("SFT s0")
    rows = []
    for label, r in results.items():
        row = {"model": label, "questions": r.n_questions, "accuracy": 100 * r.accuracy, "ci_low": 100 * r.ci[0],
               "ci_high": 100 * r.ci[1], "macro": 100 * r.macro_accuracy, "macro_low": 100 * r.macro_ci[0],
               "macro_high": 100 * r.macro_ci[1]}
        if ref is not None and label != "SFT s0":
            mine, theirs = r.correct, ref.correct
            ids = [i for i in mine if i in theirs]
            m = mcnemar([mine[i] for i in ids], [theirs[i] for i in ids], n_boot=1000, seed=0)
            row.update(vs_sft=100 * m.difference.mean, vs_sft_low=100 * m.difference.ci_low,
                       vs_sft_high=100 * m.difference.ci_high, p_value=m.p_value,
                       mdd=100 * minimum_detectable_difference(ref.accuracy, len(ids)))
        rows.append(row)
    return pd.DataFrame(rows)


def tuning_table(study: Study) -> pd.DataFrame:
    rows = []
    for kind, name in plan(study.profile):
        if kind == "tune" and study.done(kind, name):
            p = json.loads((study.results / "tuning" / f"{name}.json").read_text())
            rows.append({"method": p["method"], "learning_rate": p["learning_rate"], "steps": p["steps"],
                         "validation_objective": p["validation_objective"], "wall_s": p["wall_s"]})
    df = pd.DataFrame(rows)
    if len(df):
        complete = df.groupby("method").learning_rate.transform("count") == len(study.profile.learning_rates)
        best = df.loc[df[complete].groupby("method").validation_objective.idxmin(), ["method", "learning_rate"]]
        df["chosen"] = [(m, lr) in set(map(tuple, best.values)) for m, lr in zip(df.method, df.learning_rate)]
    return df


def cost_table(study: Study, runs: list[str]) -> pd.DataFrame:
    """Training wall time and median seconds per step per run, and its ratio to SFT of the same seed (seed 0 else)."""
    rows = []
    for name in runs:
        if name == "base":
            continue
        prov = json.loads((study.results / "runs" / name / "provenance.json").read_text())
        hist = study.results / "runs" / name / "training.csv"
        step = float("nan")
        if hist.exists():
            h = pd.read_csv(hist)
            if "seconds" in h and len(h) > 2:
                step = float((h["seconds"].diff() / h["step"].diff()).dropna().median())
        rows.append({"run": run_label(name), "train_s": prov["train_s"], "eval_s": prov["eval_s"],
                     "median_step_s": step, "train_tokens": prov.get("train_tokens")})
    df = pd.DataFrame(rows)
    if len(df):
        sft = {r.run.rsplit(" s", 1)[-1]: r.median_step_s for r in df[df.run.str.startswith("SFT")].itertuples()}
        if "0" in sft:  # paired like every other comparison: SFT of the same seed, seed 0 for single-seed methods
            df["step_ratio_vs_sft"] = [s / sft.get(r.rsplit(" s", 1)[-1], sft["0"]) for r, s in
                                       zip(df.run, df.median_step_s)]
    return df


# ------------------------------------------------------------------------------------------------- figures
def frontier_figure(frontier: pd.DataFrame, sample_ppl: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    from .plots import setup

    setup()
    data = frontier.merge(sample_ppl, on=["model", "setting"], how="left")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, x, label in ((axes[0], "mauve", "MAUVE vs held-out human text (higher = more human-like)"),
                         (axes[1], "base_perplexity", "perplexity of the samples under the base model")):
        temp = data[data.sampler == "temperature"].sort_values("temperature")
        sns.lineplot(data=temp, x=x, y="sds", hue="model", marker="o", sort=False, ax=ax)
        other = data[data.sampler != "temperature"]
        if len(other):
            sns.scatterplot(data=other, x=x, y="sds", hue="model", style="sampler", s=90, ax=ax, legend=False)
        for r in data.itertuples():
            tag = f"T={r.temperature:g}" if r.sampler == "temperature" else SAMPLER_TAGS.get(r.sampler.split()[0],
                                                                                              r.sampler)
            ax.annotate(tag, (getattr(r, x), r.sds), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("SDS (0-100)")
    axes[1].set_xscale("log")
    axes[1].xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axes[1].xaxis.set_minor_formatter(NullFormatter())  # decades only: the samples' perplexities span 1 to 10^5
    if axes[1].get_legend() is not None:
        axes[1].get_legend().remove()
    fig.suptitle("Diversity vs fidelity as the temperature rises (points: dynamic temperature, target entropy)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


# -------------------------------------------------------------------------------------------------- report
def _save(df: pd.DataFrame, shown: pd.DataFrame | None, name: str, caption: str, base: Path) -> str:
    base.mkdir(parents=True, exist_ok=True)
    floats = df.select_dtypes("float").columns
    df = df.assign(**{c: df[c].mask(df[c].abs() < ZERO, 0.0) for c in floats})
    df.to_csv(base / f"{name}.csv", index=False, float_format=FLOAT)
    md = markdown_table(shown if shown is not None else df)
    (base / f"{name}.md").write_text(f"{caption}\n\n{md}\n", encoding="utf-8")
    return md


def report(study: Study, readme: Path | None = REPO / "README.md") -> dict:
    """Write ``tables/``, ``figures/``, then the full report and the README section (:func:`write_documents`) from the
    stored rows; returns the tables."""
    from ..measure.metrics import human_reference_capacity, human_reference_samples
    from .models import load_embedder, load_tokenizer

    _check_markers(readme)
    runs = finished_runs(study)
    todo = [f"{k} {n}" for k, n in plan(study.profile) if not study.done(k, n)]
    base = study.results / "tables"
    tables = {"tuning": tuning_table(study)}
    if not tables["tuning"].empty:
        _save(tables["tuning"], None, "tuning", "Tuning: the same learning rates for every method, "
              "validation objective after the proxy run (lowest chosen).", base)
    if "base" not in runs or not any(r.startswith("sft-") for r in runs):
        write_documents(study, readme)
        return tables
    S = SIZES[study.profile.evaluation]
    loaded = {name: load_evaluation(study.results / "runs" / name) for name in runs}
    evaluations = [ev for ev, _ in loaded.values()]
    extra = {ev.name: x for ev, x in loaded.values() if x}
    tokenizer = load_tokenizer("embedded")
    sets = [g for ev in evaluations for g in ev.samples.values()] + [g for x in extra.values() for g in x.values()]
    L = common_length(sets, cap=S["new_tokens"], tokenizer=tokenizer)
    per_corpus = S["per_corpus"] * S["n"]
    human = held_out_passages(L, per_corpus=None, cap=2 * per_corpus, seed=0, tokenizer=tokenizer)
    # the SDS row of human text: as many groups of n passages per corpus as the smallest held-out split holds (the
    # dialogue corpus is short), the same number from each corpus so the mix matches the prompts'
    n_groups = min(S["per_corpus"], *(human_reference_capacity(held_out_texts(name), S["n"], L) for name in CORPORA))
    human_groups = [g for name in CORPORA for g in human_reference_samples(
        held_out_texts(name), n=S["n"], length=L, n_prompts=n_groups, seed=0, tokenizer=tokenizer)]
    labels = {ev.name for ev in evaluations}
    references = {}
    for ev in evaluations:
        seed = ev.name.rsplit(" s", 1)[-1] if ev.name != "base" else "0"
        same_seed = f"SFT s{seed}" in labels and not ev.name.startswith("SFT ")  # SFT seeds: against seed 0
        references[ev.name] = f"SFT s{seed}" if same_seed else "SFT s0"
    bench = benchmark(evaluations, load_embedder(), L, human=human, human_groups=human_groups, reference="SFT s0",
                      references=references, extra_samples=extra, n_boot=S["n_boot"], seed=0, tokenizer=tokenizer,
                      mauve_pairs=True)  # the first edition's tables were made with its paired MAUVE rows
    checks = calibration_checks(bench.calibration)
    frontier = bench.frontier.assign(setting=[f"T={t:g}" if s == "temperature" else s
                                              for s, t in zip(bench.frontier.sampler, bench.frontier.temperature)])
    sample_ppl = pd.concat([pd.read_csv(study.results / "runs" / n / "sample_perplexity.csv").assign(model=run_label(n))
                            for n in runs], ignore_index=True)
    frontier_runs = {run_label(n) for n in FRONTIER}
    frontier = frontier[frontier.model.isin(frontier_runs)].merge(sample_ppl, on=["model", "setting"], how="left")
    tables.update(table=bench.table, calibration=bench.calibration, paired=bench.paired, frontier=frontier)
    verdicts = ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in checks.items())
    caption = (f"Study ({study.profile_name} profile): {len(runs)} models, samples cut to L = {bench.L} tokens; "
               f"human text's SDS row from {n_groups} groups of {S['n']} passages per corpus; "
               f"calibration checks: {verdicts}.")
    _save(bench.table, display_table(bench.table), "table", caption, base)
    _save(bench.calibration, display_calibration(bench.calibration), "calibration", caption, base)
    _save(bench.paired, display_paired(bench.paired), "paired",
          ("Each run minus SFT of the same seed (seed 0 for single-seed methods), paired 95% intervals; SFT s1 and s2 "
           "minus SFT s0 are the seed-to-seed floor."), base)
    _save(frontier, None, "frontier", "Frontier points (SDS, MAUVE, perplexity of the samples under the base model).",
          base)
    if bench.paired.model.astype(str).str.startswith("DFT").any():
        text, verdicts = claim_verdict(bench.paired, reference="SFT")
        tables["verdict"] = verdicts
        tables["verdict_by_method"] = seed_verdict(verdicts)
        _save(verdicts, None, "verdict", text.splitlines()[0], base)
        _save(tables["verdict_by_method"], None, "verdict_by_method",
              "Verdict per method over its seeds (supported/refuted only when every seed agrees).", base)
    tables["seeds"] = seed_summary(bench.table)
    _save(tables["seeds"], display_seeds(tables["seeds"]), "seeds", "Mean ± standard deviation over seeds (T = 1).",
          base)
    tables["mmlu_full"] = full_mmlu_table(study)
    if len(tables["mmlu_full"]):
        _save(tables["mmlu_full"], None, "mmlu_full",
              "All 14,042 MMLU questions (0-shot cloze); difference to SFT s0 by McNemar.", base)
    tables["cost"] = cost_table(study, runs)
    _save(tables["cost"], None, "cost", "Training and evaluation wall time per run.", base)
    if len(frontier):
        frontier_figure(frontier.drop(columns="base_perplexity"), sample_ppl, study.results / "figures" / "frontier.png")
    tables["checks"] = checks
    if "verdict_by_method" in tables:
        provs = [json.loads((study.results / "runs" / n / "provenance.json").read_text()) for n in runs]
        hours = sum(time_split(study, provs).values()) / 3600
        tables["summary"] = reviewer_paragraph(study, runs, tables, hours, finished=not todo)
        (base / "summary.md").write_text(tables["summary"] + "\n", encoding="utf-8")
    write_documents(study, readme)
    return tables


TARGET_READERS = {m for m in METHODS if m.startswith("dft_") or m == "self_target"}  # SFT and GEM read no target


def _model_name(profile) -> str:
    return "SmolLM2-135M-Instruct" if profile.model == "embedded" else profile.model


def _methods_by_verdict(by_method: pd.DataFrame, criterion: str) -> str:
    rows = by_method[by_method.criterion == criterion]
    parts = []
    for outcome in ("supported", "refuted", "undetermined"):
        names = [f"{r.method} ({r.differences})" for r in rows.itertuples() if r.verdict == outcome]
        if names:
            parts.append(f"{outcome} for {', '.join(names)}")
    return "; ".join(parts)


def reviewer_paragraph(study: Study, runs: list[str], tables: dict, hours: float, finished: bool = False) -> str:
    """One paragraph for a sceptical reader, written from the stored tables only: what was trained and how much,
    what each criterion of the claim shows (per method, every seed must agree), the cost, and what the study does
    not show (limits fixed by its design, plus the ones the data reveal: metrics without power, failed
    calibration checks)."""
    p = study.profile
    trained = [n for n in runs if n != "base"]
    methods = sorted({n.rsplit("-s", 1)[0] for n in trained}, key=list(METHODS).index)
    seeds = {m: sum(1 for n in trained if n.rsplit("-s", 1)[0] == m) for m in methods}
    parts = [f"**For a sceptical reader.** {len(trained)} fine-tuned models of {_model_name(p)} (float32, CPU): "
             + ", ".join(f"{METHODS[m][0]} ({seeds[m]} seed{'s' if seeds[m] > 1 else ''})" for m in methods)
             + f", each trained on the same {p.train_tokens:,} tokens of Shakespeare ({p.steps} steps) with the "
             f"learning rate its own {p.tune_steps}-step proxy picked from {len(p.learning_rates)} rates by one "
             f"rule, then scored on the same prompts, questions and problems as SFT of the same seed; {hours:.1f} h "
             f"of wall time on 2 CPU cores{'' if finished else ' so far'}."]
    by_method = tables.get("verdict_by_method")
    if by_method is not None and len(by_method):
        for criterion in dict.fromkeys(by_method.criterion):
            parts.append(f"*{criterion}*: {_methods_by_verdict(by_method, criterion)}.")
    full = tables.get("mmlu_full")
    if full is not None and len(full) and "vs_sft" in full:
        for r in full.dropna(subset=["vs_sft"]).itertuples():
            parts.append(f"On all {r.questions:,} MMLU questions {r.model} scores {r.accuracy:.1f}% "
                         f"({r.vs_sft:+.2f} [{r.vs_sft_low:+.2f}, {r.vs_sft_high:+.2f}] points vs SFT s0, "
                         f"McNemar p = {r.p_value:.2f}).")
    cost = tables.get("cost")
    if cost is not None and len(cost) and "step_ratio_vs_sft" in cost:
        ratios = cost[~cost.run.str.startswith("SFT")].assign(method=lambda d: d.run.map(method_of))
        med = ratios.groupby("method", sort=False).step_ratio_vs_sft.median()
        targets = study.results / "targets.json"
        sft_train = cost[cost.run.str.startswith("SFT")].train_s.median()
        cost_text = ("Cost: a training step takes " + ", ".join(f"{v:.2f}x" for v in med.values)
                     + f" SFT's ({', '.join(med.index)}; each run's median step over SFT of the same seed, median over "
                     "seeds; the machine was not reserved for timing, `benchmarks/step_time.py` is the controlled "
                     "measurement)")
        rkl = METHODS["dft_reverse_kl"][0]
        if targets.exists() and sft_train == sft_train and rkl in med:
            t = json.loads(targets.read_text())["wall_s"]
            e2e = t / sft_train + med[rkl]
            readers = sum(1 for k, n in plan(p) if k == "run" and n.rsplit("-s", 1)[0] in TARGET_READERS)
            shared = t / readers / sft_train + med[rkl]
            cost_text += (f"; building the targets once (kNN-LM over {p.datastore_tokens:,} keys for every training "
                          f"token, and the control's self targets) took {t:,.0f} s, so one {rkl} run costs "
                          f"(targets + training) / SFT training = {e2e:.1f}x end to end, "
                          + ("within" if e2e <= 1.3 else "beyond") + " the seed's +20-30%, or "
                          f"{shared:.2f}x with the targets shared by the plan's {readers} runs that read them")
        parts.append(cost_text + ".")
    limits = [f"one model ({_model_name(p)})", "one style corpus", f"{p.train_tokens:,} training tokens (a CPU-sized budget)",
              "kNN-LM targets only"]
    checks = tables.get("checks") or {}
    if checks and not checks.get("sds_ordered", True):
        limits.append("SDS did not order the calibration temperatures, so its differences do not rank methods")
    table = tables.get("table")
    if table is not None and "humaneval" in table and (table.humaneval.fillna(0) == 0).all():
        limits.append("HumanEval is 0 for every model: a floor check with no power")
    full = tables.get("mmlu_full")
    best = max([*(table.mmlu if table is not None and "mmlu" in table else []),
                *(full.accuracy if full is not None and "accuracy" in full else [])], default=float("nan"))
    if best < 35:
        limits.append(f"MMLU is near chance for every model (at most {best:.1f}%, subset and full set), so an "
                      "accuracy loss is measured near the floor")
    parts.append("It does not show: " + "; ".join(limits) + ".")
    return " ".join(parts)


def time_split(study: Study, provs: list[dict]) -> dict[str, float]:
    """Wall seconds spent per kind of work: targets, tuning, training, evaluation, full-set MMLU."""
    def wall(paths):
        return sum(json.loads(p.read_text()).get("wall_s", 0.0) for p in paths if p.exists())

    return {"targets": wall([study.results / "targets.json"]),
            "tuning": wall(sorted((study.results / "tuning").glob("*.json"))),
            "training": sum(p.get("train_s", 0.0) for p in provs),
            "evaluation": sum(p.get("eval_s", 0.0) for p in provs),
            "full MMLU": wall(sorted((study.results / "runs").glob("*/mmlu_full_provenance.json")))}


def _check_markers(readme: Path | None) -> None:
    if readme is None or not readme.exists():
        return
    text = readme.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_BEGIN} ... {README_END} section for the study; add the two "
                         "markers where the results belong (or pass readme=None).")


REPORT = "README.md"  # the full report, generated into the study's results folder
SECTIONS = (("verdict", "verdict_by_method", "Verdict per method (all seeds must agree)"),
            ("table", "table", "Table (T = 1)"), ("paired", "paired", "Paired differences vs SFT"),
            ("seeds", "seeds", "Seed variance"), ("mmlu_full", "mmlu_full", "Full MMLU"),
            ("calibration", "calibration", "Calibration rows"), ("cost", "cost", "Cost"))


def _stored_table(path: Path) -> str | None:
    """The Markdown table of a ``tables/<name>.md`` file written by :func:`_save` (``caption``, blank line, table)."""
    if not path.exists():
        return None
    return path.read_text(encoding="utf-8").split("\n\n", 1)[1].removesuffix("\n")


def _tuning_markdown(study: Study) -> str | None:
    """The tuning table as the report shows it (method, learning rate with * for the chosen one, objective)."""
    path = study.results / "tables" / "tuning.csv"
    if not path.exists():
        return None
    t = pd.read_csv(path)
    if not len(t):
        return None
    chosen = t["chosen"] if "chosen" in t else [False] * len(t)
    return markdown_table(pd.DataFrame({
        "method": [METHODS[m][0] for m in t.method],
        "learning rate": [f"{lr:g}{' *' if c else ''}" for lr, c in zip(t.learning_rate, chosen)],
        "validation objective": t.validation_objective.map(lambda v: f"{v:.4f}")}))


def _provenance_line(study: Study, runs: list[str], todo: list[str]) -> str | None:
    provs = [json.loads((study.results / "runs" / n / "provenance.json").read_text()) for n in runs]
    if not provs:
        return None
    last = max(provs, key=lambda p: p["finished"])
    commits = sorted({p["commit"][:7] for p in provs if p.get("commit")})
    split = time_split(study, provs)
    return (f"Study profile, last run finished {last['finished'][:10]}; commits {', '.join(commits)}; "
            f"machine: {last['machine']}. {len(runs)} models evaluated. Wall time{'' if not todo else ' so far'}: "
            + ", ".join(f"{k} {v / 3600:.2f} h" for k, v in split.items())
            + f" (total {sum(split.values()) / 3600:.1f} h). Generated by `python -m dftnb.lab.study --report` "
            "from `results/study/`.")


def _in_progress(todo: list[str]) -> list[str]:
    if not todo:
        return []
    return ["", f"**In progress:** {len(todo)} piece(s) of the plan are not finished yet "
            f"({', '.join(todo[:6])}{' ...' if len(todo) > 6 else ''}); `make study` resumes them. The "
            "tables below hold only the finished runs and are not the study's answer until the plan is done."]


def write_documents(study: Study, readme: Path | None = REPO / "README.md") -> tuple[str, str | None]:
    """Write the full report (``<results>/README.md``) and the README's section between the study markers (the
    verdict table and the frontier figure), both from the stored ``tables/`` and ``runs/`` files only: no model,
    no embedder, so it takes a second and gives the same bytes for the same files. Returns both texts (the
    section is ``None`` without a README)."""
    _check_markers(readme)
    runs = finished_runs(study)
    todo = [f"{k} {n}" for k, n in plan(study.profile) if not study.done(k, n)]
    scored = "base" in runs and any(r.startswith("sft-") for r in runs)  # what report() needs to score anything
    tables = study.results / "tables"
    md = {key: _stored_table(tables / f"{name}.md") for key, name, _ in SECTIONS} if scored else {}
    figure = (study.results / "figures" / "frontier.png").exists() and scored
    header = _provenance_line(study, runs, todo)
    review = review_sections(study.results) if scored else None  # writes tables/review*.csv|md

    lines = ["# The study: the claim tested at a size that can answer it", "",
             "Generated from the files in this folder by `python -m dftnb.lab.study --report` (do not edit by hand); "
             "how the study runs and how to regenerate it: [`../README.md`](../README.md)."]
    lines += ["", header] if header else []
    lines += _in_progress(todo)
    if scored:
        p = study.profile
        lines += ["", f"Every fine-tuned model: {p.train_tokens:,} training tokens ({p.steps} steps of {p.batch} x "
                  f"{p.block_size}-token Shakespeare blocks) from {_model_name(p)}, kNN-LM style-manifold "
                  f"targets (top-{p.k}, `{p.tail}` tail), learning rate tuned for each method over "
                  f"{', '.join(f'{lr:g}' for lr in p.learning_rates)} by the same rule."]
        summary = tables / "summary.md"
        if summary.exists():
            lines += ["", summary.read_text(encoding="utf-8").removesuffix("\n")]
        if review:
            lines += ["", review.full]
        for key, _, title in SECTIONS:
            if md.get(key):
                lines += ["", f"**{title}**", "", md[key]]
        if figure:
            lines += ["", "![frontier](figures/frontier.png)"]
    elif runs:
        lines += ["", f"Finished so far: {', '.join(run_label(n) for n in runs)}."]
    else:
        lines += ["", "No run has finished yet."]
    tuning = _tuning_markdown(study)
    if tuning:
        lines += ["", "**Tuning** (validation objective after the proxy run; * chosen)", "", tuning]
    full = "\n".join(lines) + "\n"
    study.results.mkdir(parents=True, exist_ok=True)
    (study.results / REPORT).write_text(full, encoding="utf-8")
    if readme is None or not readme.exists():
        return full, None
    section = [README_BEGIN, ""]
    if header:
        section += [f"{len(runs)} models of the study profile evaluated{' so far' if todo else ''}; "
                    f"the full report (the paragraph for a sceptical reader, every table, tuning and cost) is "
                    f"[`results/study/{REPORT}`](results/study/{REPORT}), generated with this section by "
                    "`python -m dftnb.lab.study --report`."]
    section += _in_progress(todo)
    if md.get("verdict"):
        section += ["", "**Verdict per method (all seeds must agree)**", "", md["verdict"]]
    if review:
        section += ["", review.short]
    if figure:
        section += ["", "![frontier](results/study/figures/frontier.png)"]
    if not header:
        section += ["", "No run has finished yet."]
    section += ["", README_END]
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + "\n".join(section) + text[end:], encoding="utf-8")
    return full, "\n".join(section)


def committed_results(results: str | Path = RESULTS, profile: str = "study") -> str:
    """The stored study as Markdown (what chapter 06's last section renders): the progress of the plan, then each
    table the report wrote, without running anything."""
    study = Study(profile, results)
    pieces = plan(study.profile)
    done = [f"{k} {n}" for k, n in pieces if study.done(k, n)]
    parts = [f"**{len(done)} of {len(pieces)} pieces of the study plan are finished** (`results/study/`; "
             f"`make study` runs the rest)."]
    summary = study.results / "tables" / "summary.md"
    if summary.exists():
        parts.append(summary.read_text(encoding="utf-8").strip())
    for name, title in (("verdict_by_method", "Verdict per method"), ("table", "Table"), ("paired", "Paired"),
                        ("seeds", "Seed variance"), ("mmlu_full", "Full MMLU"), ("calibration", "Calibration"),
                        ("tuning", "Tuning"), ("cost", "Cost")):
        path = study.results / "tables" / f"{name}.md"
        if path.exists():
            parts.append(f"#### {title}\n\n{path.read_text(encoding='utf-8')}")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------------- driver
def run_study(profile: str = "study", results: str | Path = RESULTS, work: str | Path | None = None,
              report_only: bool = False, log=print) -> Study:
    """Run every unfinished piece in order, then the report. A finished piece is skipped."""
    study = Study(profile, results, work)
    if not report_only:
        run_pieces(study, plan(study.profile), log, "study")
    report(study, readme=REPO / "README.md" if study.results.resolve() == RESULTS.resolve() else None)
    return study


def status(profile: str = "study", results: str | Path = RESULTS) -> list[dict]:
    """The plan with each piece's state."""
    study = Study(profile, results)
    return [{"kind": k, "name": n, "done": study.done(k, n)} for k, n in plan(study.profile)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="study")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the stored rows (default results/study)")
    parser.add_argument("--work", default=None, help="folder for models and checkpoints (default .cache/study/<profile>)")
    parser.add_argument("--list", action="store_true", help="print the plan and which pieces are done")
    parser.add_argument("--report", action="store_true",
                        help="only regenerate the tables, figures, report and README section (scores every run again)")
    parser.add_argument("--documents", action="store_true",
                        help="only rewrite results/study/README.md and the README section from the stored tables "
                             "(seconds; no model)")
    args = parser.parse_args(argv)
    import os

    from .runner import HEADLESS_ENV, quiet

    os.environ[HEADLESS_ENV] = "1"  # no progress bars in the log
    quiet()
    if args.list:
        for row in status(args.profile, args.results):
            print(f"{'done' if row['done'] else 'todo'}  {row['kind']:9s} {row['name']}")
        return
    if args.documents:
        results = Path(args.results)
        write_documents(Study(args.profile, results), REPO / "README.md" if results.resolve() == RESULTS.resolve()
                        else None)
        return
    run_study(args.profile, args.results, args.work, report_only=args.report,
              log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])
