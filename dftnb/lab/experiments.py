"""What the chapters run: target sweeps, sampling grids and the machine description of every table caption.

An orchestration module, like :mod:`dftnb.lab.benchmark` (chapter 06's evaluation, comparisons and verdict): it imports
the method (targets, losses, trainer, sampling, denoise) and the measurements (metrics, evals); none of them imports
it. Sizes that several chapters share live here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..measure.metrics import (
    distinct_n,
    perplexity,
    self_bleu,
    style_diversity_score,
)
from ..sampling import sampler_kwargs
from ..target_cache import build_or_load, target_metadata
from ..targets import from_reference_model
from .data import corpus_texts, pack_texts
from .models import generate

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
    from ..trainer import SparseTargetCollator, final_hidden_states, student_stats

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


# ------------------------------------------------------------------------------------------ table captions
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


# ------------------------------------------------------------------------------------------- the trained denoiser
@torch.no_grad()
@torch.no_grad()
def greedy_continuations(model, tokenizer, prompts: list[str], n_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(prompt ids, prompt + greedy continuation)`` per prompt: ``generate(do_sample=False)`` with exactly
    ``n_tokens`` new tokens. Computed once, it can be passed to :func:`greedy_agreement` and
    :func:`greedy_fixed_point_share` for several ``S``."""
    pairs = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
        pairs.append((ids, model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens,
                                          min_new_tokens=n_tokens, do_sample=False)))
    return pairs


def _greedy_pairs(model, tokenizer, prompts, n_tokens, greedy):
    if greedy is None:
        return greedy_continuations(model, tokenizer, prompts, n_tokens)
    if len(greedy) != len(prompts) or any(g.shape[1] != ids.shape[1] + n_tokens for ids, g in greedy):
        raise ValueError(f"greedy must be greedy_continuations(model, tokenizer, prompts, n_tokens={n_tokens}) for "
                         f"these {len(prompts)} prompts; compute it again or pass greedy=None.")
    return greedy


def greedy_matches(model, tokenizer, prompts: list[str], n_tokens: int, block_size: int, steps: int, K: float,
                   schedule: str = "cosine", greedy=None) -> list[torch.Tensor]:
    """Per prompt, a boolean vector over its ``n_tokens`` new tokens: whether the token the denoiser returns at zero
    noise (argmax projection, *soft* ``softmax(±K)`` inputs) equals the same model's greedy one
    (``generate(do_sample=False)``, or ``greedy`` from :func:`greedy_continuations`)."""
    from ..denoise import denoise_generate

    matches = []
    for ids, greedy_ids in _greedy_pairs(model, tokenizer, prompts, n_tokens, greedy):
        denoised = denoise_generate(model, tokenizer, ids, max_new_tokens=n_tokens, block_size=block_size,
                                    steps=steps, K=K, schedule=schedule, noise_scale=0.0, projection="argmax",
                                    hard_onehot_at_zero_noise=False, eos_token_id=[])
        matches.append(denoised[0, ids.shape[1]:] == greedy_ids[0, ids.shape[1]:])
    return matches


def greedy_agreement(model, tokenizer, prompts: list[str], n_tokens: int, block_size: int, steps: int, K: float,
                     schedule: str = "cosine", greedy=None) -> float:
    """Share of the tokens of :func:`greedy_matches` that equal greedy, over ``prompts`` and ``n_tokens`` new tokens
    each: 1.0 is the zero-noise invariant (docs/design.md, denoiser)."""
    matches = greedy_matches(model, tokenizer, prompts, n_tokens, block_size, steps, K, schedule, greedy)
    return sum(int(m.sum()) for m in matches) / (n_tokens * len(prompts))


@torch.no_grad()
def greedy_fixed_point_share(model, tokenizer, prompts: list[str], n_tokens: int, block_size: int, K: float,
                             alpha_bar: float, greedy=None) -> float:
    """Share of the greedy continuation's tokens that the denoiser's *last* zero-noise step returns when its block
    inputs already are that continuation: each block ``b`` of ``generate(do_sample=False)``'s ``n_tokens`` new tokens
    is fed as ``softmax(sqrt(ᾱ) · K · (2 · onehot - 1)) · E`` after the hard prompt and earlier blocks (as the sampler's
    cache holds them), and position ``i`` of the block is read from input position ``i - 1``.

    1.0 means greedy decoding is a fixed point of the soft-input iteration at ``ᾱ`` (the sampler's last step reads
    ``ᾱ = alpha_bar(1, S)``); :func:`greedy_agreement` additionally needs the iteration to *reach* it from the noise
    end of the schedule. One forward pass per block, and no derailing: a wrong token here does not move the inputs
    of the next ones, so it separates "cannot read a soft input" from "does not converge in S steps". ``greedy``:
    as in :func:`greedy_agreement`."""
    from ..denoise_training import DenoiserConfig, block_inputs_embeds

    config = DenoiserConfig(block_size=block_size, K=K, noise_scale=0.0, min_prefix=1)
    equal = 0
    for ids, full in _greedy_pairs(model, tokenizer, prompts, n_tokens, greedy):
        for start in range(ids.shape[1], full.shape[1], block_size):
            length = min(block_size, full.shape[1] - start)
            cut = full[:, : start + block_size] if length == block_size else torch.cat(
                [full, full.new_zeros(1, block_size - length)], dim=1)  # a short last block: pad, read `length`
            embeds = block_inputs_embeds(model, cut, torch.tensor([start]), torch.tensor([float(alpha_bar)]), config)
            logits = model(inputs_embeds=embeds).logits[0, start - 1: start - 1 + length]
            equal += int((logits.argmax(-1) == full[0, start: start + length]).sum())
    return equal / (n_tokens * len(prompts))


def fidelity_row(samples_per_prompt: list[list[str]], human_features, ppl_model, tokenizer, embedder) -> dict:
    """:func:`diversity_quality` (distinct-n, Self-BLEU, perplexity under ``ppl_model``) plus MAUVE of the samples
    against human text (MiniLM features ``human_features``, :func:`dftnb.measure.metrics.mauve_score`)."""
    from ..measure.metrics import mauve_score

    row = diversity_quality(samples_per_prompt, ppl_model, tokenizer)
    texts = [t for group in samples_per_prompt for t in group if t.strip()]
    row["mauve"] = mauve_score(embedder.encode(texts), human_features)
    return row


def at_matched_diversity(reference, distinct: float, columns=("perplexity", "mauve")) -> dict:
    """``columns`` of ``reference`` (rows of one sampler at several temperatures) interpolated linearly in
    ``distinct`` at ``distinct`` (log-linearly for perplexity); outside the measured range the nearest row's value
    and ``extrapolated=True``."""
    ref = reference.sort_values("distinct")
    x = ref["distinct"].to_numpy()
    out = {"extrapolated": bool(distinct < x[0] or distinct > x[-1])}
    for col in columns:
        y = ref[col].to_numpy(dtype=float)
        if col == "perplexity":
            out[col] = float(np.exp(np.interp(distinct, x, np.log(y))))
        else:
            out[col] = float(np.interp(distinct, x, y))
    return out
