"""Chapter 05's speed measurements: denoised tokens per second against ``generate()``, and their honest reading.

A block of ``B`` tokens costs ``S + 1`` model calls (``S`` denoising steps over ``B - 1`` positions and one call that
extends the prompt cache), so the denoiser makes ``(S + 1) / B`` calls per token against 1 for autoregressive
decoding. :func:`speed_table` times both on one prompt at batch 1 (median of ``repeats`` runs);
:func:`fast_sampling_verdict` reads a speed-up next to the quality the same setting reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

SPEED_GOAL = 1.2  # tokens/s of the denoiser at S < B over autoregressive sampling
MAUVE_TOLERANCE = 0.1  # MAUVE of a few dozen texts per side moves by about this much between runs


def median_seconds(fn: Callable[[], object], repeats: int = 3, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (seconds)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}.")
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return sorted(times)[len(times) // 2]


def speed_table(model, tokenizer, ids, n_tokens: int, block_size: int, steps: Sequence[int], K: float,
                schedule: str = "cosine", repeats: int = 3, label: str = "denoiser", machine: str | None = None,
                min_p: float = 0.05):
    """One row for ``generate()`` at temperature 1 and one per ``S`` in ``steps`` for the denoiser (``σ = 1``,
    sampled projection with min-``p``), each producing ``n_tokens`` tokens after ``ids``. Columns: ``generator``,
    ``steps S``, ``calls per token`` (``(S + 1) / B``; 1 for ``generate``), ``tokens/s`` (``n_tokens`` over the
    median seconds), ``relative to AR`` (AR seconds over the denoiser's: > 1 is faster) and ``machine``."""
    import pandas as pd
    import torch

    from ..denoise import denoise_generate
    from ..sampling import sampler_kwargs

    mask = torch.ones_like(ids)
    ar = median_seconds(lambda: model.generate(ids, attention_mask=mask, max_new_tokens=n_tokens,
                                               min_new_tokens=n_tokens,
                                               **sampler_kwargs("temperature", temperature=1.0)), repeats)
    rows = [{"generator": "autoregressive sampling (generate)", "steps S": float("nan"), "calls per token": 1.0,
             "tokens/s": n_tokens / ar, "relative to AR": 1.0}]
    for s in steps:
        dn = median_seconds(lambda s=s: denoise_generate(model, tokenizer, ids, max_new_tokens=n_tokens, eos_token_id=[],
                                                     block_size=block_size, steps=s, K=K, schedule=schedule,
                                                     noise_scale=1.0, projection="sample", min_p=min_p), repeats)
        rows.append({"generator": f"{label} B={block_size}, S={s}", "steps S": s,
                     "calls per token": (s + 1) / block_size, "tokens/s": n_tokens / dn, "relative to AR": ar / dn})
    return pd.DataFrame(rows).assign(machine=machine or "")


def speed_takeaway(speed, block_size: int) -> str:
    """One sentence from a :func:`speed_table`: each denoiser row's speed relative to AR and its call count."""
    parts = [f"S = {int(r['steps S'])}: {r['relative to AR']:.2f}x autoregressive ({r['calls per token']:.2f} calls "
             f"per token, so one denoiser call costs {call_cost(r['relative to AR'], r['calls per token']):.1f}x an "
             f"autoregressive call on this machine)" for _, r in speed.dropna(subset=["steps S"]).iterrows()]
    return f"Denoiser with B = {block_size}, " + "; ".join(parts) + "."


def call_cost(relative_speed: float, calls_per_token: float) -> float:
    """Seconds of one denoiser call over one autoregressive call: a denoised token takes ``1 / relative_speed``
    autoregressive token-times and ``calls_per_token`` calls, so a call costs ``1 / (relative_speed * calls_per_token)``
    autoregressive calls (1 = the extra ``B - 1`` positions are free)."""
    return 1.0 / (relative_speed * calls_per_token)


def more_steps_sentence(invariant, n_tokens: int, column: str = "tokens equal to greedy") -> str:
    """Markdown: does a denoiser's zero-noise share rise with its step count ``S`` (columns ``denoiser``, ``steps S``,
    ``column`` of chapter 05's invariant table)? A rise counts only when the best larger ``S`` beats the smallest
    ``S`` by more than one of the ``n_tokens`` measured tokens."""
    token = 1.0 / n_tokens
    shares, risers = [], []
    for name, rows in invariant.sort_values("steps S").groupby("denoiser", sort=False):
        values = rows[column].tolist()
        shares.append(f"{name} " + " → ".join(f"{v:.0%}" for v in values))
        if max(values[1:], default=values[0]) > values[0] + token + 1e-12:
            risers.append(name)
    s_values = " → ".join(str(int(v)) for v in sorted(invariant["steps S"].unique()))
    measured = f"(S = {s_values}: {'; '.join(shares)}; {n_tokens} tokens measured, one token ≈ {token:.0%})"
    if not risers:
        return f"In this run more steps do not raise the share for any denoiser {measured}."
    return f"More steps raise the share by more than one token for {', '.join(risers)} {measured}."


def fewer_steps_sentence(shares: dict, best: dict, steps: int, block_size: int, n_tokens: int, tokens: int = 2) -> str:
    """Markdown for exercise 3: the zero-noise share at ``S = steps < B`` against each denoiser's best share at
    ``S >= B``. When every denoiser stays within ``tokens`` of the ``n_tokens`` measured tokens of its best (or above
    it), the Jacobi guarantee of ``S >= B`` buys nothing yet at this training; otherwise ``S < B`` costs tokens."""
    margin = tokens / n_tokens + 1e-12
    if all(shares[name] >= best[name] - margin for name in shares):
        return (f"At S = {steps} < B = {block_size} every denoiser stays within {tokens} tokens of its best S ≥ B share "
                f"({n_tokens} tokens measured): at K = 5 they read the soft inputs so poorly that the Jacobi guarantee "
                f"of S ≥ B buys nothing yet.")
    return ("With S < B the Jacobi argument no longer covers the block: the last positions are committed from inputs "
            "that were themselves guesses, and the first steps of the cosine schedule feed inputs with almost no "
            "signal (ᾱ near 0). Training helps only where the model can read its input.")


def mauve_caveat(mauve: float, ar_mauve: float, perplexity: float, ar_perplexity: float, n_texts: int,
                 factor: float = 3.0) -> str:
    """A warning when a denoiser's MAUVE beats the autoregressive MAUVE at the same distinct-n although its perplexity
    is at least ``factor`` times the autoregressive one: MAUVE of a few dozen short texts is unstable. Else ``""``."""
    if mauve > ar_mauve and perplexity >= factor * ar_perplexity:
        return (f"MAUVE on {n_texts} short texts is unstable: this row disagrees with its perplexity "
                f"({perplexity / ar_perplexity:.1f}x autoregressive) and its samples.")
    return ""


def fast_sampling_verdict(relative_speed: float, mauve: float, ar_mauve: float, steps: int, block_size: int,
                          goal: float = SPEED_GOAL, tolerance: float = MAUVE_TOLERANCE) -> str:
    """The verdict on "faster than ``generate()`` at the same quality" for the denoiser at ``S = steps``: the speed
    goal (``relative_speed >= goal``) counts only if its MAUVE is within ``tolerance`` of the autoregressive MAUVE
    at the same distinct-n (``mauve >= ar_mauve - tolerance``); otherwise the speed was bought with quality."""
    fast = relative_speed >= goal
    kept = mauve >= ar_mauve - tolerance
    speed = f"at S = {steps} < B = {block_size} the denoiser runs at {relative_speed:.2f}x autoregressive"
    quality = f"MAUVE {mauve:.2f} against {ar_mauve:.2f} for autoregressive samples at the same distinct-n"
    if fast and kept:
        return f"Goal met: {speed} (goal {goal:g}x) with {quality} (within {tolerance:g})."
    if fast:
        return (f"Goal not met: {speed}, above the {goal:g}x speed goal, but its {quality}: the speed is bought "
                f"with text far less like human text, so it is not the same quality faster.")
    if kept:
        return f"Goal not met: {speed}, below the {goal:g}x speed goal, although its {quality} holds."
    return f"Goal not met: {speed}, below the {goal:g}x speed goal, and its {quality}."
