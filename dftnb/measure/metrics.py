"""Measures of generated and held-out text: diversity, perplexity, fidelity (docs/design.md, metrics).

* Lexical diversity: :func:`distinct_n`, :func:`self_bleu`, :func:`compression_diversity`; semantic diversity:
  :func:`vendi_score`; together the Style Diversity Score :func:`style_diversity_score` (0-100, bootstrap CI).
* Sliding-window perplexity: :func:`perplexity`, :func:`perplexity_by_corpus` (macro over the three corpora).
* Style fidelity to human text: :func:`mauve_score` and the classifier two-sample test
  :func:`classifier_two_sample_test` on sentence embeddings; :func:`shuffle_words` for their calibration rows.

Accuracy harnesses (HumanEval, MMLU) are :mod:`dftnb.measure.evals`; the loops that evaluate whole models and build the
tables are :mod:`dftnb.lab.experiments`. Whitespace tokens are the unit of every lexical diversity measure here
(``text.split()``), so models with different tokenizers and human text are measured on the same scale.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..modeling import model_device
from .stats import wilson_interval


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
    """Style Diversity Score (SDS, 0-100) of ``samples_per_prompt[prompt][sample]`` (docs/design.md, metrics).

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


# ------------------------------------------------------------------------------------- style fidelity to human text
def _features(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim != 2 or len(x) < 2 or not np.isfinite(x).all():
        raise ValueError(f"features must be a finite (n >= 2, dim) array, e.g. embedder.encode(texts); got {x.shape}.")
    return x.astype(np.float32)


@contextlib.contextmanager
def _silent_stderr():
    """Silence file descriptor 2 (FAISS's k-means prints its size warnings from C++, past ``sys.stderr``)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def mauve_score(p_features, q_features, num_buckets: int | str = "auto", seeds: Sequence[int] = range(5)) -> float:
    """MAUVE (Pillutla et al., NeurIPS 2021) between two sets of texts given as feature vectors, in (0, 1].

    Both sets are quantised together by k-means (``num_buckets`` clusters; ``"auto"`` = a tenth of the points),
    and MAUVE is the area under the divergence curve ``(exp(−5 KL(Q‖R_λ)), exp(−5 KL(P‖R_λ)))``,
    ``R_λ = λP + (1−λ)Q``: 1 when the two histograms coincide, near 0 when they do not overlap. Computed by the
    ``mauve-text`` package on the given features (e.g. MiniLM sentence embeddings), so no model is downloaded.
    With a few hundred texts per side one k-means run moves the score by ±0.1, so the score is the mean over the
    k-means ``seeds``; compare it with calibration rows (two halves of the human set, shuffled-word text) computed
    the same way.
    """
    import mauve
    from threadpoolctl import threadpool_limits

    p, q = _features(p_features), _features(q_features)
    scores = []
    # one BLAS thread: the matrices are small, and threads spinning against a busy core slowed each call 100-fold
    with _silent_stderr(), threadpool_limits(1):
        for seed in seeds:
            out = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=num_buckets, device_id=-1,
                                      verbose=False, seed=int(seed))
            scores.append(float(out.mauve))
    if not scores:
        raise ValueError("mauve_score needs at least one k-means seed.")
    return float(np.mean(scores))


# Sizes below which a fidelity score is descriptive only, never a verdict: the blind test's Wilson interval is
# ±7 points at 200 texts per side; MAUVE's k-means histogram needs thousands (Pillutla et al. 2021 use 5,000).
BLIND_TEST_MIN_PER_SIDE = 200
MAUVE_MIN_PER_SIDE = 1000


@dataclass
class TwoSampleTest:
    """Cross-validated accuracy of a classifier telling two sets apart (0.5 = indistinguishable)."""

    accuracy: float
    ci_low: float
    ci_high: float
    n: int  # texts classified (both sets, after balancing)
    correct: np.ndarray | None = field(default=None, repr=False, compare=False)  # per text: classified right
    # positions in the given p and q sets of the texts classified: correct[:n] belongs to p[p_index], the rest to
    # q[q_index] (per-text outcomes for paired or per-prompt resampling)
    p_index: np.ndarray | None = field(default=None, repr=False, compare=False)
    q_index: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def per_side(self) -> int:
        return self.n // 2

    @property
    def decisive(self) -> bool:
        """Enough texts per side (:data:`BLIND_TEST_MIN_PER_SIDE`) for the accuracy to enter a verdict."""
        return self.per_side >= BLIND_TEST_MIN_PER_SIDE


def classifier_two_sample_test(p_features, q_features, folds: int = 5, seed: int = 0) -> TwoSampleTest:
    """The "blind test": can a logistic regression on the features tell set ``p`` (model samples) from set ``q``
    (human text)? Classifier two-sample test (Lopez-Paz & Oquab, ICLR 2017).

    The larger set is subsampled (seeded) to the size of the smaller, so chance is exactly 50%; every text is
    predicted once by a model trained on the other ``folds − 1`` stratified folds, and the accuracy comes with a
    Wilson 95% interval. 50% means indistinguishable, 100% trivially separable.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    p, q = _features(p_features), _features(q_features)
    n = min(len(p), len(q))
    if n < folds:
        raise ValueError(f"need at least folds={folds} texts per set, got {len(p)} and {len(q)}.")
    rng = np.random.default_rng(seed)
    p_index, q_index = rng.permutation(len(p))[:n], rng.permutation(len(q))[:n]
    p, q = p[p_index], q[q_index]
    x, y = np.vstack([p, q]), np.r_[np.zeros(n), np.ones(n)]
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=cv)
    correct = int((pred == y).sum())
    lo, hi = wilson_interval(correct, 2 * n)
    return TwoSampleTest(correct / (2 * n), lo, hi, 2 * n, pred == y, p_index, q_index)


def shuffle_words(texts: Sequence[str], seed: int = 0) -> list[str]:
    """Each text with its words in a random order: same vocabulary, no syntax (a calibration row that a fidelity
    measure must score as clearly worse than the text itself)."""
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        words = text.split()
        out.append(" ".join(words[i] for i in rng.permutation(len(words))))
    return out


def human_reference_capacity(texts: Sequence[str], n: int, length: int) -> int:
    """How many groups of ``n`` passages of ``length`` words :func:`human_reference_samples` can cut from
    ``texts`` (each group is one block of ``n * length`` consecutive words)."""
    return len([w for t in texts for w in _words(t)]) // (n * length)


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
    n_blocks = len(words) // block  # = human_reference_capacity(texts, n, length), without splitting twice
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
    model, tokenizer, texts, window, stride, temperatures, max_tokens, batch_size, separator="\n\n",
    return_top1: bool = False,
):
    """Per-token NLL at each temperature, in stream order (one forward pass per window serves them all).

    ``return_top1=True`` returns ``(nlls, top1)`` instead, ``top1`` the boolean array (same order) of "the argmax of
    the logits is the next token" from the same forward passes; ties go to the lowest token id (``torch.argmax``).
    """
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
    device = model_device(model)
    plan = _window_plan(ids.numel(), window, stride)
    pieces: list[list[tuple[int, torch.Tensor]]] = [[] for _ in temperatures]
    hits: list[tuple[int, torch.Tensor]] = []
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
                    pieces[t_index].append((score_from, -token_logp[row, score_from - begin - 1 :].double().cpu()))
            if return_top1:
                top1 = logits.argmax(dim=-1) == batch[:, 1:]
                hits += [(score_from, top1[row, score_from - begin - 1 :].cpu())
                         for row, (begin, _end, score_from) in enumerate(chunk)]
    nlls = [_in_stream_order(p) for p in pieces]
    return (nlls, _in_stream_order(hits)) if return_top1 else nlls


def _in_stream_order(pieces: list[tuple[int, torch.Tensor]]) -> np.ndarray:
    """The per-window pieces ``(first scored position, values)`` concatenated in stream order."""
    return torch.cat([x for _, x in sorted(pieces, key=lambda item: item[0])]).numpy()


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

    ``texts`` are joined with blank lines into one token stream (as in the transformers guide "Perplexity of
    fixed-length models"), optionally cut to its first ``max_tokens`` tokens, and scored with windows of
    ``window`` tokens moved by ``stride`` (see :func:`_window_plan`): every token but the first is scored once,
    with ``window - stride`` tokens of context or more (fewer inside the first window); ``stride == window`` gives
    disjoint windows (cheapest, least context). ``temperature`` scores ``softmax(logits / temperature)`` instead of
    the model's own distribution.
    """
    (nll,) = _nll_at_temperatures(model, tokenizer, texts, window, stride, [temperature], max_tokens, batch_size)
    return math.exp(nll.mean())


def perplexity_by_corpus(
    model,
    tokenizer,
    texts_by_corpus: dict[str, Sequence[str]],
    window: int = 512,
    stride: int = 256,
    max_tokens: int | None = None,
    temperatures: Sequence[float] = (1.0,),
    batch_size: int = 4,
    return_token_nll: bool = False,
):
    """Sliding-window perplexity of each corpus of ``texts_by_corpus`` (``{name: texts}``, e.g. the test splits from
    :func:`dftnb.lab.data.load_corpus`) and their macro-average (unweighted mean over corpora).

    Returns a ``pandas.DataFrame`` with, per temperature, one row per corpus plus a ``"macro"`` row; columns
    ``temperature``, ``corpus``, ``perplexity``, ``tokens`` (scored tokens), ``window``, ``stride``.
    ``max_tokens`` caps each corpus's token stream (its first tokens, in the split's deterministic order) to fit a
    CPU budget. Each window is run through the model once for all ``temperatures`` (perplexity of
    ``softmax(logits / T)``). ``return_token_nll=True`` returns
    ``(df, {corpus: per-token NLL at the first temperature})`` as well, in stream order: two models with the same
    tokenizer score the same tokens, so their differences pair token by token
    (:func:`dftnb.measure.stats.paired_block_bootstrap`).
    """
    import pandas as pd

    temperatures = [float(t) for t in temperatures]
    rows, token_nll = [], {}
    for name, texts in texts_by_corpus.items():
        texts = list(texts)
        nll = _nll_at_temperatures(model, tokenizer, texts, window, stride, temperatures, max_tokens, batch_size)
        token_nll[name] = nll[0]
        rows += [
            {"temperature": t, "corpus": name, "perplexity": math.exp(v.mean()), "tokens": v.size}
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
    return (df, token_nll) if return_token_nll else df


