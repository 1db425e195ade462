"""Evaluation metrics (DESIGN.md §8): lexical diversity, the Style Diversity Score, sliding-window perplexity.

Whitespace tokens are the unit of every lexical diversity measure here (``text.split()``), so models with
different tokenizers and human text are measured on the same scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

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


@torch.no_grad()
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
    if isinstance(texts, str):
        texts = [texts]
    if not texts or not any(t.strip() for t in texts):
        raise ValueError("perplexity needs at least one non-empty text; check the corpus split is not empty.")
    if window < 2 or not 1 <= stride <= window:
        raise ValueError(f"need window >= 2 and 1 <= stride <= window, got window={window}, stride={stride}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and window > max_pos:
        raise ValueError(f"window={window} exceeds the model's max_position_embeddings={max_pos}; lower the window.")
    ids = tokenizer(separator.join(texts), add_special_tokens=False, return_tensors="pt").input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise ValueError("the texts tokenise to fewer than 2 tokens; nothing to score.")
    device = _model_device(model)
    plan = _window_plan(ids.numel(), window, stride)
    nll, count = 0.0, 0
    # Windows of equal length are batched; only the last one can be shorter.
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for w in plan:
        groups.setdefault(w[1] - w[0], []).append(w)
    for _, windows in sorted(groups.items()):
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            batch = torch.stack([ids[b:e] for b, e, _ in chunk]).to(device)
            logits = model(input_ids=batch).logits.float() / temperature
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            token_logp = logp.gather(-1, batch[:, 1:, None]).squeeze(-1)  # log p(x_j | x_<j), j = 1..len-1
            for row, (begin, _end, score_from) in enumerate(chunk):
                scored = token_logp[row, score_from - begin - 1 :]
                nll -= float(scored.double().sum())
                count += scored.numel()
    return nll, count


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
