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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..measure.effective_temperature import effective_temperature
from ..measure.evals import HumanEvalResult
from ..measure.metrics import (
    MAUVE_MIN_PER_SIDE,
    classifier_two_sample_test,
    mauve_score,
    shuffle_words,
    style_diversity_score,
    text_length,
    truncate_text,
)
from ..measure.retention import retention_differences
from ..measure.stats import (
    independent_bootstrap,
    mcnemar,
    minimum_detectable_difference,
    paired_block_bootstrap,
    paired_bootstrap,
    paired_statistic_bootstrap,
)
from ..methods import labels as method_labels
from .benchmark_checks import (  # noqa: F401  (GREEDY and the temperatures: read as benchmark.<name> too)
    CALIBRATION_TEMPERATURES,
    FIDELITY_CHECK_TEMPERATURE,
    GREEDY,
    calibration_checks,
    measure_checks,
)
from .data import CORPORA, RETENTION_CORPORA, corpus_texts
from .evaluation import ModelEvaluation, evaluate_model, sample_at_temperatures  # noqa: F401  (re-exported)

HELD_OUT_SPLITS = ("validation", "test")  # the training corpus's splits no model was trained on

# Per profile: prompts per corpus, samples per prompt, new tokens (= L), temperatures of the fine-tuned models, those
# of the base model's calibration rows (smoke: no greedy row, a random model's greedy output is one repeated token),
# HumanEval problems (None = all 164) and new tokens, perplexity tokens per corpus (None = whole split), window,
# stride, MMLU questions per subject (None = all) and subjects (None = all 57), bootstrap rounds (per-prompt means;
# set statistics such as MAUVE use a fifth of them); fidelity_per_corpus: prompts per corpus sampled at the table
# temperature for the blind test (>= per_corpus; 3 x fidelity_per_corpus x n >= 200 texts per side outside smoke);
# retention_tokens: tokens per retention corpus (None = all of it); solutions: HumanEval canonical solutions scored
# (None = all 164).
SIZES = {
    "smoke": dict(per_corpus=2, n=4, new_tokens=16, temperatures=[1.0], calibration=[0.3, 0.7, 1.0, 1.3, 2.0],
                  he_problems=2, he_tokens=16,
                  ppl_tokens=256, window=64, stride=32, mmlu_limit=1,
                  mmlu_subjects=["anatomy", "astronomy", "college_biology", "world_religions"], n_boot=250,
                  fidelity_per_corpus=2, retention_tokens=256, solutions=2),
    # 12 prompts x 8 samples x 32 tokens for the SDS; the blind test reads 27 prompts x 8 = 216 samples per model at
    # the table temperature. The fine-tuned models are sampled at the table temperature only and read against the
    # base model's calibration ladder (T_eff); one MMLU question per subject: chapter 06 stays within 15 minutes
    # on 2 cores (the study profile samples every model at every temperature).
    "default": dict(per_corpus=4, n=8, new_tokens=32, temperatures=[1.0],
                    calibration=[*CALIBRATION_TEMPERATURES, FIDELITY_CHECK_TEMPERATURE], he_problems=10, he_tokens=160,
                    ppl_tokens=1024, window=256, stride=128, mmlu_limit=1, mmlu_subjects=None, n_boot=1000,
                    fidelity_per_corpus=9, retention_tokens=1024, solutions=20),
    "gpu": dict(per_corpus=16, n=16, new_tokens=128, temperatures=[0.7, 1.0, 1.3, 1.6],
                calibration=[*CALIBRATION_TEMPERATURES, FIDELITY_CHECK_TEMPERATURE], he_problems=None,
                he_tokens=384, ppl_tokens=None, window=1024, stride=512, mmlu_limit=None, mmlu_subjects=None,
                n_boot=2000, fidelity_per_corpus=16, retention_tokens=None, solutions=None),
    "study": dict(per_corpus=8, n=16, new_tokens=64, temperatures=[0.7, 1.0, 1.3, 1.6],
                  calibration=[*CALIBRATION_TEMPERATURES, FIDELITY_CHECK_TEMPERATURE], he_problems=None,
                  he_tokens=256, ppl_tokens=None, window=512, stride=384, mmlu_limit=36, mmlu_subjects=None,
                  n_boot=2000, fidelity_per_corpus=8, retention_tokens=None, solutions=None),
}
IN_DOMAIN = "shakespeare"  # the corpus every model is fine-tuned on: its held-out perplexity measures learning

# The registry methods chapter 02 fine-tunes, each into <out>/models/<method> (dftnb.methods.METHOD_REGISTRY).
CHAPTER_02_METHODS = ("sft", "dft_reverse_kl", "dft_forward_kl", "dft_sorted_w1", "gem")
# The seed floor: chapter 02's SFT trained again with seed + 1 (data order), sampled with seed + 1. Its difference
# from SFT is what re-running the baseline alone produces; a method effect must clear it (stats.decide).
FLOOR_LABEL, FLOOR_RUN = "SFT, seed 1", "sft_seed1"
# Table row label -> folder under <out>/models/ written by chapter 02 (None: the starting model itself).
BENCHMARK_RUNS = {"base": None, **{label: m for m, label in method_labels(CHAPTER_02_METHODS).items()}}
# What chapter 06 evaluates: those, and the seed floor's second SFT (a run of a registry method, not a method)
CHAPTER_06_RUNS = {**BENCHMARK_RUNS, FLOOR_LABEL: FLOOR_RUN}


def trained_model_dirs(out: str | Path, runs: dict[str, str | None] = CHAPTER_06_RUNS,
                       optional: Sequence[str] = (FLOOR_LABEL,)) -> dict[str, Path | None]:
    """``{label: <out>/models/<run>}`` for the fine-tuned models of chapter 02; a clear error if any is missing,
    except the ``optional`` ones (the seed floor's second SFT, which chapter 02 runs of older versions did not
    train): those are left out with a printed note, and the verdict then has no seed floor."""
    out = Path(out)
    dirs = {label: (None if run is None else out / "models" / run) for label, run in runs.items()}
    missing = [label for label, p in dirs.items() if p is not None and not (p / "config.json").exists()]
    if [m for m in missing if m not in optional]:
        raise FileNotFoundError(
            f"fine-tuned models missing: {[str(dirs[m]) for m in missing]}. Run notebook 02 first with the same "
            f"profile and out_dir, e.g. `python -m dftnb.lab.runner --profile <profile> --out {out} --only 02`."
        )
    for label in missing:
        print(f"{label}: not found at {dirs.pop(label)}; rerun notebook 02 to train it (no seed floor without it)")
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


def fidelity_prompts(per_corpus: int, fidelity_per_corpus: int, corpora: Sequence[str] = CORPORA) -> list[str]:
    """The prompts sampled beyond the SDS's for the blind test: of each corpus, the openings
    ``per_corpus .. fidelity_per_corpus − 1`` of :func:`diversity_prompts` (none when the two are equal)."""
    if fidelity_per_corpus <= per_corpus:
        return []
    every = diversity_prompts(corpora, per_corpus=fidelity_per_corpus)
    return [p for i in range(len(corpora))
            for p in every[i * fidelity_per_corpus + per_corpus : (i + 1) * fidelity_per_corpus]]


def held_out_texts(name: str, splits: Sequence[str] | None = None) -> list[str]:
    """The texts of corpus ``name`` that no chapter trains on: by default the validation and test splits of the
    training corpus (:data:`IN_DOMAIN`) and every split of a retention corpus (no model trains on those), which
    gives the blind test enough human passages."""
    if splits is None:
        splits = ("train", *HELD_OUT_SPLITS) if name in RETENTION_CORPORA else HELD_OUT_SPLITS
    return [t for split in splits for t in corpus_texts(name, split)]


def held_out_passages(
    length: int, per_corpus: int | None = None, corpora: Sequence[str] = CORPORA, seed: int = 0, tokenizer=None,
    cap: int | None = None, splits: Sequence[str] | None = None,
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

    def fidelity(self, features, with_test: bool = False):
        blind = classifier_two_sample_test(features, self.human, seed=self.seed)
        row = {"mauve": mauve_score(features, self.human), "blind_test": 100 * blind.accuracy,
               "blind_low": 100 * blind.ci_low, "blind_high": 100 * blind.ci_high, "blind_n": blind.per_side}
        return (row, blind) if with_test else row

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


def _retention_columns(ev: ModelEvaluation) -> dict:
    """Top-1 (%) and perplexity of every retention corpus and of the HumanEval solutions, pooled over tokens."""
    cols = {}
    for corpus, scores in ev.retention.items():
        cols[f"top1_{corpus}"], cols[f"ppl_{corpus}"] = 100 * scores.top1_rate, scores.perplexity
    if ev.solutions is not None:
        tokens = ev.solutions["tokens"].sum()
        cols["top1_solutions"] = 100 * ev.solutions["top1_hits"].sum() / tokens
        cols["ppl_solutions"] = float(np.exp(ev.solutions["nll_sum"].sum() / tokens))
    return cols


def _humaneval_columns(he: HumanEvalResult | None) -> dict:
    share = getattr(he, "empty_share", None)
    if share is None:
        return {"humaneval_unusable": float("nan")}
    return {"humaneval_unusable": 100 * (he.empty_share + he.unparsable_share)}


def base_curve(calibration) -> tuple[list[float], list[float]]:
    """The base model's SDS over the calibration ladder (greedy = T 0 .. 1.3), cut where it stops rising: the
    curve :func:`dftnb.measure.effective_temperature.effective_temperature` reads scores on."""
    t, s = [], []
    if "sds" not in calibration:
        return t, s
    temps = calibration.dropna(subset=["temperature", "sds"]).set_index("temperature")["sds"]
    for temperature in sorted(temps.index):
        if s and temps.loc[temperature] <= s[-1]:
            break
        t.append(float(temperature))
        s.append(float(temps.loc[temperature]))
    return t, s


def _effective_temperatures(rows: list[dict], calibration) -> None:
    t, s = base_curve(calibration)
    for row in rows:
        if len(t) < 2 or row.get("sds") != row.get("sds"):
            row.update(t_eff=float("nan"), t_eff_low=float("nan"), t_eff_high=float("nan"), t_eff_position="n/a")
            continue
        e = effective_temperature(t, s, row["sds"], row["sds_ci_low"], row["sds_ci_high"])
        row.update(t_eff=e.temperature, t_eff_low=e.ci_low, t_eff_high=e.ci_high, t_eff_position=e.position)


@dataclass
class Benchmark:
    """Chapter 06's four tables (DataFrames), the length ``L`` every text was cut to, the checks the calibration
    rows pass or fail (:func:`calibration_checks`) and the bootstrap draws behind each paired row (for
    :func:`claim_verdict`'s multiplicity correction)."""

    table: object  # one row per model at table_temperature (+ human text)
    calibration: object  # base model at CALIBRATION_TEMPERATURES and FIDELITY_CHECK_TEMPERATURE, human rows
    frontier: object  # SDS, MAUVE, perplexity of every model at every sampled temperature
    paired: object  # every model minus the reference, paired, one row per (model, metric)
    L: int
    checks: dict = field(default_factory=dict)
    draws: dict = field(default_factory=dict, repr=False)  # (model, metric) -> bootstrap draws in the row's unit


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
    mauve_pairs: bool | None = None,
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
    reference, 50 = indistinguishable) with its Wilson CI and ``blind_n`` texts per side (the table row adds the
    evaluation's ``fidelity_samples``); ``perplexity`` of the held-out text of the training corpus (:data:`IN_DOMAIN`)
    at T = 1; ``top1_<corpus>``/``ppl_<corpus>`` of each retention corpus and of the HumanEval ``solutions``, pooled
    over tokens; ``humaneval_unusable`` (% of HumanEval completions empty or unparsable); ``t_eff`` (with interval
    and position): the base model's temperature whose samples are as diverse (:func:`base_curve`).
    """
    import pandas as pd

    halves = [(c[: len(c) // 2], c[len(c) // 2 :]) for c in human]
    scorer = _Scorer(embedder, L, [a for a, _ in halves], tokenizer, n_boot, seed)
    by_name = {ev.name: ev for ev in evaluations}
    rows, frontier, calibration, kept = [], [], [], {}
    for ev in evaluations:
        if table_temperature not in ev.samples:
            raise ValueError(f"{ev.name}: no samples at table_temperature={table_temperature}; add it to temperatures.")
        in_domain = ev.perplexity[ev.perplexity.corpus == IN_DOMAIN].set_index("temperature")["perplexity"]
        for t, groups in sorted(ev.samples.items()):
            row, sds, feats = scorer.row(groups)
            ppl = float(in_domain.loc[t]) if t in in_domain.index else float("nan")
            if ev.name == calibration_model:
                label = "greedy" if t == GREEDY else f"T = {t:g}"
                calibration.append({"row": f"{ev.name}, {label}", "temperature": t, **row})
            if t != GREEDY:
                frontier.append({"model": ev.name, "sampler": "temperature", "temperature": t, **row,
                                 "perplexity": ppl})
            if t == table_temperature:
                # the table row's fidelity reads every sample at this temperature (the SDS's and the extra ones)
                every = np.vstack([feats, scorer.features(ev.fidelity_samples)]) if ev.fidelity_samples else feats
                fid, blind = scorer.fidelity(every, with_test=True)
                row = {**row, **fid}
                kept[ev.name] = (groups, sds, feats, blind)
                rows.append({
                    "model": ev.name,
                    **_accuracy_columns("mmlu", ev.mmlu.accuracy if ev.mmlu else None,
                                        ev.mmlu.n_questions if ev.mmlu else 0),
                    **_accuracy_columns("humaneval", ev.humaneval.pass_at_1_greedy if ev.humaneval else None,
                                        ev.humaneval.n_problems if ev.humaneval else 0),
                    **row, "perplexity": float(in_domain.loc[1.0]), **_retention_columns(ev),
                    **_humaneval_columns(ev.humaneval), "L": L,
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
    calibration = pd.DataFrame(calibration)
    _effective_temperatures(rows, calibration)
    table_mauve = {r["model"]: r["mauve"] for r in rows}
    draws = {}
    if mauve_pairs is None:  # a paired MAUVE interval only where MAUVE may decide (each round reruns k-means)
        mauve_pairs = min([len(scorer.human), *(len(k[2]) for k in kept.values())]) >= MAUVE_MIN_PER_SIDE
    paired = paired_differences(by_name, kept, scorer, reference, n_boot, seed, table_mauve, references, draws,
                                mauve_pairs)
    table = pd.DataFrame(rows)
    checks = {**calibration_checks(calibration), **measure_checks(table, calibration, by_name.get(calibration_model),
                                                                  n_boot, seed)}
    return Benchmark(table, calibration, pd.DataFrame(frontier), paired, L, checks, draws)


PAIRED_COLUMNS = ["model", "reference", "metric", "difference", "ci_low", "ci_high", "unit", "n", "over", "p_value", "mdd"]


def paired_differences(by_name, kept, scorer, reference, n_boot, seed, table_mauve, references=None, draws=None,
                       mauve_pairs: bool = True):
    """One row per (model, metric): ``model − reference`` (or ``references[model]``) in ``unit`` with its paired
    95% interval over ``n`` units (``over``); ``p_value`` (McNemar's for the accuracy benchmarks, the bootstrap's
    otherwise) and the minimum detectable difference ``mdd`` (points, at the reference's accuracy) for the accuracy
    benchmarks (see :func:`benchmark`). Metrics: SDS; MAUVE when ``mauve_pairs`` (its bootstrap reruns k-means
    every round: :func:`benchmark` pairs it by default only at :data:`dftnb.measure.metrics.MAUVE_MIN_PER_SIDE`
    texts per side, where MAUVE may decide; below, the table's MAUVE stays descriptive); ``blind test`` (the *reduction* of the
    blind-test accuracy, reference − model, points: positive = harder to tell from human text); MMLU, HumanEval;
    ``perplexity (<training corpus>)`` and, per retention corpus and the HumanEval solutions, ``perplexity (<c>)``
    (% change) and ``top-1 (<c>)`` (points), each pooled over that corpus's tokens alone. ``draws`` (a dict) receives
    each row's bootstrap draws in the row's unit."""
    import pandas as pd

    references = references or {}
    draws = {} if draws is None else draws
    rows = []

    def add(name, ref_name, metric, d, over, unit, scale=lambda x: x, **extra):
        rows.append({"model": name, "reference": ref_name, "metric": metric, "difference": scale(d.mean),
                     "ci_low": scale(d.ci_low), "ci_high": scale(d.ci_high), "n": d.n, "over": over,
                     "p_value": d.p_value, "unit": unit, **extra})
        if d.draws is not None:
            draws[(name, metric)] = scale(np.asarray(d.draws))

    def mauve_of(feats):
        rounds = itertools.count(seed)  # one k-means seed per round, the same for both models

        def stat(idx):
            take = np.concatenate([np.arange(i * per_prompt, (i + 1) * per_prompt) for i in idx])
            return mauve_score(feats[take], scorer.human, seeds=(next(rounds),))
        return stat

    for name, (groups, sds, feats, blind) in kept.items():
        ref_name = references.get(name, reference)
        if name == ref_name or ref_name not in kept:
            continue
        _, ref_sds, ref_feats, ref_blind = kept[ref_name]
        ref_ev = by_name[ref_name]
        per_prompt = len(groups[0])
        ev = by_name[name]
        d = paired_bootstrap([p["sds"] for p in sds.per_prompt], [p["sds"] for p in ref_sds.per_prompt],
                             n_boot=n_boot, seed=seed)
        add(name, ref_name, "SDS", d, "prompts", "points")
        if mauve_pairs:
            d = paired_statistic_bootstrap(mauve_of(feats), mauve_of(ref_feats), len(groups),
                                           n_boot=max(50, n_boot // 5), seed=seed,
                                           point=table_mauve[name] - table_mauve[ref_name])
            add(name, ref_name, "MAUVE", d, "prompts (both rescored)", "MAUVE")
        if blind is not None and ref_blind is not None:
            d = independent_bootstrap(ref_blind.correct, blind.correct, n_boot=n_boot, seed=seed)
            add(name, ref_name, "blind test", d, "texts classified (cross-validated)", "points",
                lambda x: 100 * x)
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
            add(name, ref_name, metric, m.difference, "questions" if metric == "MMLU" else "problems", "points",
                lambda x: 100 * x, mdd=100 * minimum_detectable_difference(float(np.mean(b)), len(a)))
            rows[-1]["p_value"] = m.p_value
        percent = lambda x: 100 * np.expm1(x)  # noqa: E731  (nats/token -> % change of perplexity)
        if IN_DOMAIN in ev.token_nll and IN_DOMAIN in ref_ev.token_nll:
            diffs = {IN_DOMAIN: ev.token_nll[IN_DOMAIN] - ref_ev.token_nll[IN_DOMAIN]}
            d = paired_block_bootstrap(diffs, block=64, n_boot=n_boot, seed=seed)
            add(name, ref_name, f"perplexity ({IN_DOMAIN})", d, "tokens (blocks of 64)", "% change", percent)
        if ev.retention and ref_ev.retention:
            for corpus, d_nll, d_top1, _n, units in paired_retention_draws(ev, ref_ev, n_boot, seed):
                add(name, ref_name, f"perplexity ({corpus})", d_nll, units, "% change", percent)
                add(name, ref_name, f"top-1 ({corpus})", d_top1, units, "points", lambda x: 100 * x)
    df = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    return df


def paired_retention_draws(ev: ModelEvaluation, ref: ModelEvaluation, n_boot: int, seed: int):
    """``(corpus, NLL difference, top-1 difference, n, units)`` of ``ev`` − ``ref`` per retention corpus and for the
    HumanEval solutions (:func:`dftnb.measure.retention.retention_differences`, blocks of 64 tokens)."""
    if set(ev.retention) == set(ref.retention) and any(
            ev.retention[c].tokens != ref.retention[c].tokens for c in ev.retention):
        raise ValueError(f"{ev.name} and {ref.name} scored different token counts; evaluate both with the same "
                         "retention_tokens.")
    return retention_differences(ev.retention, ref.retention, ev.solutions, ref.solutions, block=64, n_boot=n_boot,
                                 seed=seed)


# Moved to their own modules (read as benchmark.<name> too): the checks and the verdict, display and storage.
_MOVED = {
    "benchmark_verdict": ("CRITERIA", "claim_verdict", "CANNOT_DECIDE", "verdict_text"),
    "benchmark_display": ("training_cost_ratio", "display_table", "display_retention", "display_calibration",
                          "display_paired", "save_tables"),
}


def __getattr__(name: str):
    import importlib

    for module, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(f"{__package__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
