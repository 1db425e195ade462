"""Retention: does fine-tuning on one corpus cost the model what it predicted well on text it never trains on?

Measures far from chance, paired token by token (or problem by problem) between two models.

**Per-token scores.** A corpus's texts are joined with blank lines into one token stream ``x_1 … x_N`` and scored
with sliding windows (:func:`dftnb.measure.metrics._window_plan`: the HF fixed-length recipe; every token but the
first is scored exactly once, with ``window − stride`` tokens of context or more). For each scored token ``j``, with
``z_j`` the logits given its window context ``c_j``:

* ``nll_j = −log p(x_j | c_j) = logsumexp(z_j) − z_j[x_j]`` (nats);
* ``hit_j = [argmax_v z_j[v] = x_j]`` (top-1 next-token accuracy; ties go to the lowest token id, as
  ``torch.argmax``).

**Per corpus, pooled over its tokens** (:func:`retention_by_corpus`): ``NLL = Σ_j nll_j / n``, perplexity
``exp(NLL)``, ``top-1 = Σ_j hit_j / n`` with ``n`` the corpus's scored tokens. Each corpus is its own row; no row
averages corpora. A claim about a corpus is a claim about its tokens, so long texts weigh what their tokens weigh.
Averaging per-corpus (or per-text) perplexities with equal weight instead gives a small corpus the weight of a
large one and, since ``exp`` is convex, lets one corpus's large perplexity dominate: an equal-weight mean can move in
the opposite direction from the pooled change over the tokens it summarises.

**Code** (:func:`solution_scores`): each HumanEval problem's canonical solution scored given its prompt. The prompt
and the solution are tokenised separately and their ids concatenated (the boundary tokenisation: a token spanning
the prompt's end and the solution's start is never formed, so exactly the solution's own tokens are scored); a
prompt too long for the model's context is cut from the left. Pooled: ``Σ_problems nll_sum / Σ tokens`` and
``Σ top1_hits / Σ tokens`` (ratios of sums, so a long solution weighs its tokens).

**Paired differences** (:func:`paired_retention`) of models A and B scored on the same tokens:
``d = mean_j (nll^A_j − nll^B_j) = log(PPL_A / PPL_B)`` nats/token, ``exp(d) − 1`` the relative change of
perplexity, and ``mean_j (hit^A_j − hit^B_j)`` the top-1 difference in points. Intervals come from a block bootstrap
of that corpus's tokens alone (:func:`dftnb.measure.stats.paired_block_bootstrap`; neighbouring tokens are
correlated); for the HumanEval solutions from a problem-level paired bootstrap that recomputes both models' ratios of
sums on the same resampled problems (:func:`dftnb.measure.stats.paired_statistic_bootstrap`). The p-value is the
two-sided bootstrap p-value of "no difference" (:func:`dftnb.measure.stats.bootstrap_p_value`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..modeling import model_device
from .metrics import _nll_at_temperatures
from .stats import paired_block_bootstrap, paired_statistic_bootstrap

SAME_TEXTS = "score both models on the same texts with the same tokenizer and max_tokens"
SOLUTION_CORPUS = "humaneval solutions"


@dataclass
class TokenScores:
    """Per-token NLL (nats, float64) and top-1 hits (bool) of one token stream, in stream order."""

    nll: np.ndarray
    top1: np.ndarray
    window: int | None = None
    stride: int | None = None

    def __post_init__(self):
        self.nll = np.asarray(self.nll, dtype=np.float64)
        self.top1 = np.asarray(self.top1, dtype=bool)
        if self.nll.ndim != 1 or self.nll.shape != self.top1.shape:
            raise ValueError(f"nll and top1 must be 1-D arrays of equal length, got {self.nll.shape} and "
                             f"{self.top1.shape}.")

    @property
    def tokens(self) -> int:
        return int(self.nll.size)

    @property
    def mean_nll(self) -> float:
        """Mean NLL over the tokens (nats/token)."""
        return float(self.nll.mean())

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def top1_rate(self) -> float:
        """Share of tokens whose argmax prediction was the next token."""
        return float(self.top1.mean())


def token_scores(
    model, tokenizer, texts: Sequence[str], window: int = 512, stride: int = 256, max_tokens: int | None = None,
    batch_size: int = 4,
) -> TokenScores:
    """:class:`TokenScores` of ``texts`` joined with blank lines (the stream of :func:`dftnb.measure.metrics.perplexity`,
    scored with the same windows; one forward pass per window gives both the NLL and the top-1 hit)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    (nll,), top1 = _nll_at_temperatures(model, tokenizer, texts, window, stride, [1.0], max_tokens, batch_size,
                                        return_top1=True)
    return TokenScores(nll, top1, window, stride)


def retention_by_corpus(
    model, tokenizer, texts_by_corpus: dict[str, Sequence[str]], window: int = 512, stride: int = 256,
    max_tokens: int | None = None, batch_size: int = 4,
):
    """Each corpus's pooled NLL, perplexity and top-1 (``{name: texts}``, e.g. from
    :func:`dftnb.lab.data.retention_texts`).

    Returns ``(DataFrame, {corpus: TokenScores})``: one row per corpus with ``corpus``, ``tokens`` (scored),
    ``nll`` (mean nats/token over the corpus's tokens), ``perplexity`` (``exp(nll)``), ``top1`` (fraction),
    ``window``, ``stride``. No row averages corpora (see the module docstring).
    """
    import pandas as pd

    if not texts_by_corpus:
        raise ValueError("retention_by_corpus needs at least one corpus: {name: texts}.")
    scores = {name: token_scores(model, tokenizer, texts, window, stride, max_tokens, batch_size)
              for name, texts in texts_by_corpus.items()}
    df = pd.DataFrame([{"corpus": name, "tokens": s.tokens, "nll": s.mean_nll, "perplexity": s.perplexity,
                        "top1": s.top1_rate, "window": window, "stride": stride} for name, s in scores.items()])
    return df, scores


# ------------------------------------------------------------------------------------------- HumanEval solutions
def _prompt_and_solution_ids(tokenizer, problem: dict, context: int | None) -> tuple[list[int], list[int]]:
    prompt = list(tokenizer(problem["prompt"], add_special_tokens=False).input_ids)
    solution = list(tokenizer(problem["canonical_solution"], add_special_tokens=False).input_ids)
    name = problem.get("task_id", "a problem")
    if not prompt or not solution:
        raise ValueError(f"{name}: the prompt and the solution must both tokenise to at least one token.")
    if context is not None and len(prompt) + len(solution) > context:
        if len(solution) + 1 > context:
            raise ValueError(f"{name}: the solution has {len(solution)} tokens, more than the model's context of "
                             f"{context} minus one prompt token; use a model with a longer context.")
        prompt = prompt[len(prompt) + len(solution) - context:]  # keep the prompt's end, next to the solution
    return prompt, solution


@torch.no_grad()
def solution_scores(model, tokenizer, problems: Sequence[dict], batch_size: int = 8):
    """Per-problem NLL and top-1 hits of each canonical solution's tokens given its prompt (HumanEval fields
    ``task_id``, ``prompt``, ``canonical_solution``, e.g. :func:`dftnb.measure.evals.load_humaneval`).

    Prompt and solution are tokenised separately and their ids concatenated, so exactly the solution's own tokens
    are scored (``tokens`` = its token count); a prompt longer than the model's context
    (``config.max_position_embeddings``) allows is cut from the left. Problems of similar length share a batch,
    right-padded under an attention mask. Returns a ``DataFrame`` with ``task_id``, ``tokens``, ``prompt_tokens``
    (after any cut), ``nll_sum`` (nats) and ``top1_hits``, in the order of ``problems``; the pooled summary is
    :func:`solution_summary`.
    """
    import pandas as pd

    if not problems:
        raise ValueError("solution_scores needs at least one problem (fields task_id, prompt, canonical_solution).")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    context = getattr(model.config, "max_position_embeddings", None)
    pairs = [_prompt_and_solution_ids(tokenizer, p, context) for p in problems]
    pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
    device = model_device(model)
    rows: dict[int, dict] = {}
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        length = max(len(pairs[i][0]) + len(pairs[i][1]) for i in chunk)
        ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq = pairs[i][0] + pairs[i][1]
            ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(chunk):
            p, s = len(pairs[i][0]), len(pairs[i][1])
            z = logits[row, p - 1 : p + s - 1].float()  # position t predicts token t + 1
            target = ids[row, p : p + s].to(z.device)
            nll = torch.logsumexp(z, dim=-1) - z.gather(-1, target[:, None]).squeeze(-1)
            rows[i] = {"task_id": problems[i].get("task_id", str(i)), "tokens": s, "prompt_tokens": p,
                       "nll_sum": float(nll.double().sum()), "top1_hits": int((z.argmax(-1) == target).sum())}
    return pd.DataFrame([rows[i] for i in range(len(pairs))])


def solution_summary(scores) -> dict:
    """Pooled totals of :func:`solution_scores`: ``problems``, ``tokens``, ``nll`` = Σ nll_sum / Σ tokens,
    ``perplexity`` = exp(nll), ``top1`` = Σ top1_hits / Σ tokens."""
    tokens = int(scores["tokens"].sum())
    nll = float(scores["nll_sum"].sum()) / tokens
    return {"problems": len(scores), "tokens": tokens, "nll": nll, "perplexity": math.exp(nll),
            "top1": float(scores["top1_hits"].sum()) / tokens}


# ----------------------------------------------------------------------------------------------- paired comparison
def _check_same_tokens(a: dict, b: dict) -> None:
    for side, scores in (("a", a), ("b", b)):
        if not isinstance(scores, dict) or not all(isinstance(s, TokenScores) for s in scores.values()):
            raise ValueError(f"{side} must be {{corpus: TokenScores}} (the second value returned by "
                             "retention_by_corpus).")
    if set(a) != set(b):
        raise ValueError(f"different corpora: a has {sorted(a)}, b has {sorted(b)}; {SAME_TEXTS}.")
    for name in a:
        if a[name].tokens != b[name].tokens:
            raise ValueError(f"corpus {name!r}: a scored {a[name].tokens} tokens, b {b[name].tokens}; {SAME_TEXTS}.")
        if (a[name].window, a[name].stride) != (b[name].window, b[name].stride):
            raise ValueError(f"corpus {name!r}: scored with window/stride {a[name].window}/{a[name].stride} and "
                             f"{b[name].window}/{b[name].stride}; score both models with the same windows.")


def _check_same_problems(a, b) -> None:
    if list(a["task_id"]) != list(b["task_id"]) or list(a["tokens"]) != list(b["tokens"]):
        raise ValueError("the two solution tables differ in problems or in tokens per problem; score both models on "
                         "the same problems with the same tokenizer.")


def _rows(corpus: str, nll_a, nll_b, nll_diff, top1_a, top1_b, top1_diff, n: int, units: str) -> list[dict]:
    """The three rows of one corpus: NLL (nats/token), perplexity change (%), top-1 (points)."""
    def pct(x: float) -> float:
        return 100.0 * math.expm1(x)

    common = {"corpus": corpus, "n": n, "units": units}
    return [
        {**common, "metric": "nll", "a": nll_a, "b": nll_b, "difference": nll_diff.mean, "ci_low": nll_diff.ci_low,
         "ci_high": nll_diff.ci_high, "p_value": nll_diff.p_value, "unit": "nats/token"},
        {**common, "metric": "perplexity", "a": math.exp(nll_a), "b": math.exp(nll_b),
         "difference": pct(nll_diff.mean), "ci_low": pct(nll_diff.ci_low), "ci_high": pct(nll_diff.ci_high),
         "p_value": nll_diff.p_value, "unit": "% change"},
        {**common, "metric": "top1", "a": 100 * top1_a, "b": 100 * top1_b, "difference": 100 * top1_diff.mean,
         "ci_low": 100 * top1_diff.ci_low, "ci_high": 100 * top1_diff.ci_high, "p_value": top1_diff.p_value,
         "unit": "points"},
    ]


def retention_differences(
    a: dict[str, TokenScores], b: dict[str, TokenScores], solutions_a=None, solutions_b=None, block: int = 64,
    n_boot: int = 2000, seed: int = 0, level: float = 0.95,
) -> list[tuple]:
    """``(corpus, NLL difference, top-1 difference, n, units)`` per corpus of ``a``/``b`` and, with the solution
    tables, for the HumanEval solutions: each difference a :class:`~dftnb.measure.stats.PairedDifference` of
    A − B with its bootstrap draws (nats/token; fraction of tokens), as :func:`paired_retention` tabulates them."""
    _check_same_tokens(a, b)
    if (solutions_a is None) != (solutions_b is None):
        raise ValueError("pass solution_scores tables for both models, or for neither.")
    boot = {"n_boot": n_boot, "level": level, "seed": seed}
    out = []
    for name in a:
        sa, sb = a[name], b[name]
        nll = paired_block_bootstrap({name: sa.nll - sb.nll}, block=block, **boot)
        top1 = paired_block_bootstrap({name: sa.top1.astype(np.float64) - sb.top1}, block=block, **boot)
        out.append((name, nll, top1, sa.tokens, "tokens"))
    if solutions_a is not None:
        _check_same_problems(solutions_a, solutions_b)
        tokens = solutions_a["tokens"].to_numpy(dtype=np.float64)
        sums = {side: {c: df[c].to_numpy(dtype=np.float64) for c in ("nll_sum", "top1_hits")}
                for side, df in (("a", solutions_a), ("b", solutions_b))}

        def ratio(side: str, column: str):  # the pooled ratio of sums over the problems at idx (with repeats)
            return lambda idx: sums[side][column][idx].sum() / tokens[idx].sum()

        nll = paired_statistic_bootstrap(ratio("a", "nll_sum"), ratio("b", "nll_sum"), len(tokens), **boot)
        top1 = paired_statistic_bootstrap(ratio("a", "top1_hits"), ratio("b", "top1_hits"), len(tokens), **boot)
        out.append((SOLUTION_CORPUS, nll, top1, len(tokens), "problems"))
    return out


def paired_retention(
    a: dict[str, TokenScores], b: dict[str, TokenScores], solutions_a=None, solutions_b=None, block: int = 64,
    n_boot: int = 2000, seed: int = 0, level: float = 0.95,
):
    """Model A − model B on the same tokens, per corpus, with paired bootstrap intervals and p-values.

    ``a``, ``b``: ``{corpus: TokenScores}`` of the two models (:func:`retention_by_corpus`); ``solutions_a``,
    ``solutions_b``: optional :func:`solution_scores` tables of the same HumanEval problems. Returns a ``DataFrame``
    with three rows per corpus: ``nll`` (``a``, ``b`` in nats/token, ``difference`` = mean per-token NLL
    difference), ``perplexity`` (``a``, ``b`` perplexities, ``difference`` = ``100 (exp(d) − 1)`` % change, interval
    endpoints transformed alike) and ``top1`` (percentages and their difference in points); columns ``corpus``,
    ``metric``, ``a``, ``b``, ``difference``, ``ci_low``, ``ci_high``, ``p_value``, ``unit``, ``n``, ``units``
    (what ``n`` counts). Token rows: block bootstrap with blocks of ``block`` tokens of that corpus alone; solution
    rows: problems resampled, both models' ratios of sums recomputed on the same draw. Positive NLL and perplexity
    differences mean A predicts worse than B, a negative top-1 difference that A ranks the next token first less often.
    """
    import pandas as pd

    rows = []
    for corpus, nll, top1, n, units in retention_differences(a, b, solutions_a, solutions_b, block, n_boot, seed,
                                                            level):
        if corpus == SOLUTION_CORPUS:
            pa, pb = solution_summary(solutions_a), solution_summary(solutions_b)
            rows += _rows(corpus, pa["nll"], pb["nll"], nll, pa["top1"], pb["top1"], top1, n, units)
        else:
            sa, sb = a[corpus], b[corpus]
            rows += _rows(corpus, sa.mean_nll, sb.mean_nll, nll, sa.top1_rate, sb.top1_rate, top1, n, units)
    columns = ["corpus", "metric", "a", "b", "difference", "ci_low", "ci_high", "p_value", "unit", "n", "units"]
    return pd.DataFrame(rows)[columns]
