"""SSD-LM-style block denoising sampler for any Hugging Face causal LM (docs/design.md, samplers).

Han et al. 2023, "SSD-LM: Semi-autoregressive Simplex-based Diffusion Language Model for Text Generation and
Modular Control" (ACL). A block of ``B`` future positions is held as logits ``x`` on the vocabulary simplex; a token
``w`` is the almost-one-hot vector ``x0 = K·(2·onehot(w) - 1)`` ("±K"). Starting from pure noise, each of ``S``
steps (``t = S, ..., 1``)

1. feeds ``softmax(x_t) · E`` (``E`` the input embedding matrix) as ``inputs_embeds`` after the fixed prefix, whose
   KV cache is computed once per block and rolled back (cropped) after every step;
2. reads the model's prediction for block position ``i`` from the logits at position ``i - 1`` (position 0 from the
   prefix's last logits);
3. truncates it (top-p and/or min-p, generate's own warpers) and projects to ``±K`` around the argmax or a sampled
   token;
4. re-noises on the schedule: ``x_{t-1} = sqrt(ᾱ_{t-1}) · x0 + noise_scale · sqrt(1 - ᾱ_{t-1}) · K · ε``,
   ``ε ~ N(0, I)``, with the cosine schedule ``ᾱ(t) = f(t) / f(0)``, ``f(t) = cos²((t/S + s)/(1 + s) · π/2)``,
   ``s = 0.008`` (Nichol & Dhariwal 2021), or the linear ``ᾱ(t) = 1 - t/S``.

The tokens projected at ``t = 1`` are the block; blocks are appended semi-autoregressively.

Zero-noise invariant: with ``noise_scale = 0``, argmax projection and ``S >= B``, step ``s`` fixes block position
``s - 1`` (a Jacobi iteration on the greedy recurrence), so the result is exactly the greedy continuation -- provided
the inputs are one-hot to float precision. ``softmax`` of a ``±K`` vector puts ``e^K / (e^K + (V-1) e^-K)`` on the top
token (0.31 at ``K = 5``, ``V = 49,152``), so a causal LM not trained on soft inputs needs ``K >> ½ ln V``;
``hard_onehot_at_zero_noise=True`` feeds the hard one-hot ``E[argmax x_t]`` when ``noise_scale = 0`` instead.
SSD-LM's ``K = 5`` works for SSD-LM because its model was trained on such inputs; the default here is ``K = ln V``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, MinPLogitsWarper, TopPLogitsWarper

from .sampling import entropy_nats

COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal's cosine schedule
SCHEDULES = ("cosine", "linear")
PROJECTIONS = ("sample", "argmax")


def alpha_bar(t: float, steps: int, schedule: str = "cosine") -> float:
    """Signal fraction ``ᾱ(t)`` at step ``t`` of ``steps`` (``ᾱ(0) = 1``, ``ᾱ(steps) = 0`` up to rounding)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
    x = t / steps
    if schedule == "linear":
        return min(max(1.0 - x, 0.0), 1.0)
    f = math.cos((x + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    f0 = math.cos(COSINE_OFFSET / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    return min(max(f / f0, 0.0), 1.0)


def simplex_logits(tokens: torch.Tensor, vocab_size: int, k: float) -> torch.Tensor:
    """The almost-one-hot ``±K`` representation: ``K`` at ``tokens``, ``-K`` elsewhere, shape ``(..., V)``."""
    x = torch.full((*tokens.shape, vocab_size), -k, dtype=torch.float32, device=tokens.device)
    return x.scatter_(-1, tokens.unsqueeze(-1), k)


def noisy_simplex(
    tokens: torch.Tensor, vocab_size: int, k: float, alpha_bar, noise_scale: float = 1.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The noised simplex representation ``x_t = sqrt(ᾱ) · x0 + σ · sqrt(1 - ᾱ) · K · ε`` of ``tokens`` (SSD-LM's
    forward process, Han et al. 2023, with noise scale ``σ``), ``x0 = K · (2 · onehot - 1)``.

    ``alpha_bar`` is a float or a tensor that broadcasts against ``(..., L, V)`` (one ``ᾱ`` per row: shape
    ``(rows, 1, 1)``); ``noise`` is ``ε`` of shape ``(..., L, V)``, needed when ``σ > 0``. The sampler re-noises its
    projection with this function and the denoiser's training (:mod:`dftnb.denoise_training`) noises the clean block
    with it, so both feed the model the same inputs.
    """
    a = torch.as_tensor(alpha_bar, dtype=torch.float64, device=tokens.device)  # coefficients in float64, then float32
    x = a.sqrt().to(torch.float32) * simplex_logits(tokens, vocab_size, k)
    if noise_scale > 0:
        if noise is None:
            raise ValueError("noise_scale > 0 needs the Gaussian noise ε (a tensor shaped like the simplex logits).")
        x = x + (noise_scale * k * (1 - a).clamp_min(0).sqrt()).to(torch.float32) * noise
    return x


def simplex_embeds(x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """``softmax(x) · E``: what the model reads for simplex logits ``x`` ``(..., V)`` (``E`` the ``(V, d)`` input
    embedding matrix), in the embedding's dtype."""
    return torch.softmax(x, dim=-1).to(embedding.dtype) @ embedding


def top_token_mass(k: float, vocab_size: int) -> float:
    """``softmax`` mass of the top token of a ``±K`` vector: ``1 / (1 + (V - 1) e^{-2K})``."""
    return 1.0 / (1.0 + (vocab_size - 1) * math.exp(-2.0 * k))


@dataclass
class DenoiseTrace:
    """One record per (block, step): the input noise level, entropies and tokens, for plots of the denoising.

    Each record has ``block``, ``step`` (1..S), ``t``, ``alpha_bar`` (ᾱ of the *input* ``x_t``), ``input_entropy``
    (entropy of ``softmax(x_t)`` per position, nats; 0 where the hard one-hot was fed), ``pred_entropy`` (entropy of
    the model's predicted distribution per position, before truncation), ``argmax`` (the predicted argmax tokens) and
    ``tokens`` (the projected tokens), tensors of shape ``(batch, block_length)`` on the CPU.
    """

    records: list[dict] = field(default_factory=list)

    def to_frame(self, tokenizer=None, row: int = 0):
        """A ``pandas.DataFrame`` with one line per (block, step) for batch row ``row``; ``text`` is the decoded
        argmax when a tokenizer is given."""
        import pandas as pd

        lines = []
        for rec in self.records:
            line = {
                "block": rec["block"],
                "step": rec["step"],
                "t": rec["t"],
                "alpha_bar": rec["alpha_bar"],
                "input_entropy": float(rec["input_entropy"][row].mean()),
                "pred_entropy": float(rec["pred_entropy"][row].mean()),
            }
            if tokenizer is not None:
                line["argmax_text"] = tokenizer.decode(rec["argmax"][row].tolist())
                line["projected_text"] = tokenizer.decode(rec["tokens"][row].tolist())
            lines.append(line)
        return pd.DataFrame(lines)


def _validate(max_new_tokens, block_size, steps, k, schedule, top_p, min_p, projection, noise_scale) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}; use steps >= block_size for the greedy fixed point.")
    if not k > 0:
        raise ValueError(f"K (simplex scale) must be > 0, got {k}; SSD-LM uses 5, an untrained LM needs K >> ½ ln V.")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if min_p is not None and not 0 <= min_p <= 1:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}.")
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}.")
    if not noise_scale >= 0:
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale}; 0 disables the noise, 1 is SSD-LM's.")


def _truncation(top_p: float | None, min_p: float | None) -> LogitsProcessorList:
    warpers = LogitsProcessorList()
    if top_p is not None and top_p < 1:
        warpers.append(TopPLogitsWarper(top_p=top_p))
    if min_p is not None and min_p > 0:
        warpers.append(MinPLogitsWarper(min_p=min_p))
    return warpers


def _crop(cache, n_tokens: int) -> None:
    """Drop the last ``n_tokens`` positions of ``cache`` in place (undo a denoising step's forward pass)."""
    if n_tokens == 0:
        return
    if not hasattr(cache, "crop"):
        raise RuntimeError(
            f"the model's cache ({type(cache).__name__}) cannot be rolled back with crop(); the denoiser needs a "
            "DynamicCache-style cache (transformers >= 4.56 causal LMs)."
        )
    try:
        cache.crop(-n_tokens)
    except (RuntimeError, ValueError) as err:
        raise RuntimeError(
            f"could not roll back the KV cache ({err}); with sliding-window attention keep prompt + generated "
            "length below the window."
        ) from err


class _CachedForward:
    """Calls ``model`` with a KV cache under the keyword its ``forward`` takes (``cache`` in transformers >= 5.x,
    ``past_key_values`` before) and keeps only the logits needed."""

    def __init__(self, model):
        params = inspect.signature(model.forward).parameters
        self.model = model
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.has_logits_to_keep = "logits_to_keep" in params

    def __call__(self, cache=None, last_only: bool = False, **inputs):
        kwargs = dict(inputs, use_cache=True)
        if cache is not None:
            kwargs[self.cache_kw] = cache
        if last_only and self.has_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        new_cache = out.get("cache", None) if hasattr(out, "get") else None
        if new_cache is None:
            new_cache = out.past_key_values
        return out.logits, new_cache


def _eos_and_pad(model, tokenizer, eos_token_id, pad_token_id) -> tuple[list[int], int | None]:
    gen = getattr(model, "generation_config", None)
    eos = eos_token_id
    if eos is None and gen is not None:
        eos = gen.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    pad = pad_token_id
    if pad is None and gen is not None:
        pad = gen.pad_token_id
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id
    if pad is None and eos_ids:
        pad = eos_ids[0]
    return eos_ids, pad


@torch.no_grad()
def denoise_generate(
    model,
    tokenizer=None,
    input_ids: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    block_size: int = 8,
    steps: int = 16,
    K: float | None = None,
    schedule: str = "cosine",
    top_p: float | None = None,
    min_p: float | None = None,
    projection: str = "sample",
    noise_scale: float = 1.0,
    hard_onehot_at_zero_noise: bool = True,
    seed: int = 0,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    return_trace: bool = False,
):
    """Generate ``max_new_tokens`` after ``input_ids`` with the SSD-LM-style block denoiser (see module docstring).

    Args:
        model: a Hugging Face causal LM accepting ``inputs_embeds`` and ``past_key_values``.
        tokenizer: optional; used for EOS/padding ids when the model's generation config has none, and to decode
            the trace.
        input_ids: ``(batch, L)`` prompt ids, ``L >= 1``; rows of equal length (no padding).
        block_size: ``B``, positions denoised together. steps: ``S`` denoising steps per block.
        K: simplex scale of the ``±K`` representation; ``None`` means ``ln V``.
        schedule: ``"cosine"`` or ``"linear"`` ``ᾱ(t)``. noise_scale: multiplies the Gaussian term (0 = no noise).
        top_p, min_p: truncation of each prediction before projection (generate's warpers).
        projection: ``"sample"`` (sample the truncated prediction) or ``"argmax"``.
        hard_onehot_at_zero_noise: with ``noise_scale == 0`` feed ``E[argmax x_t]`` instead of ``softmax(x_t)·E``.
        seed: seeds a private generator for the noise and the sampling (same seed, same output).
        eos_token_id, pad_token_id: as in ``generate``; after a row's first EOS the rest is padding, and generation
            stops after the block in which every row has finished. Defaults come from the model's generation
            config (then the tokenizer); ``eos_token_id=[]`` disables stopping.
        return_trace: also return a :class:`DenoiseTrace`.

    Returns:
        ``(batch, L + n)`` LongTensor like ``generate`` (``n <= max_new_tokens``), or ``(ids, trace)``.
    """
    if input_ids is None or input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError("input_ids must be a non-empty (batch, L) tensor; an empty prompt needs at least a BOS token.")
    if attention_mask is not None and not bool((attention_mask == 1).all()):
        raise ValueError(
            "padded prompts are not supported by the denoiser (the block positions would be shifted); pass rows of "
            "equal length without padding, or denoise prompts one at a time."
        )
    embedding = model.get_input_embeddings().weight
    vocab_size = embedding.shape[0]
    k = math.log(vocab_size) if K is None else float(K)
    _validate(max_new_tokens, block_size, steps, k, schedule, top_p, min_p, projection, noise_scale)
    eos_ids, pad = _eos_and_pad(model, tokenizer, eos_token_id, pad_token_id)
    device = embedding.device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    warpers = _truncation(top_p, min_p)
    trace = DenoiseTrace()

    forward = _CachedForward(model)
    sequence = input_ids.to(device)
    batch = sequence.shape[0]
    logits, cache = forward(input_ids=sequence, last_only=True)
    prefix_logits = logits[:, -1].float()
    if prefix_logits.shape[-1] != vocab_size:
        raise ValueError(
            f"the model's logits have {prefix_logits.shape[-1]} entries but its input embedding has {vocab_size} "
            "rows; the denoiser needs the same vocabulary on both sides."
        )
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    generated = 0
    block_index = 0
    while generated < max_new_tokens:
        length = min(block_size, max_new_tokens - generated)
        block = _denoise_block(
            forward, cache, prefix_logits, embedding, length, steps, k, schedule, noise_scale,
            hard_onehot_at_zero_noise, warpers, projection, generator, trace, block_index, return_trace,
        )
        if eos_ids:
            is_eos = torch.isin(block, torch.tensor(eos_ids, device=device))
            after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
            padded = finished.unsqueeze(-1) | after_eos
            block = torch.where(padded, torch.full_like(block, pad), block)
            finished = finished | is_eos.any(-1)
        sequence = torch.cat([sequence, block], dim=1)
        generated += length
        block_index += 1
        if bool(finished.all()):
            break
        if generated < max_new_tokens:
            logits, cache = forward(cache=cache, input_ids=block, last_only=True)
            prefix_logits = logits[:, -1].float()
    if eos_ids and bool(finished.all()):
        sequence = _trim_finished(sequence, input_ids.shape[1], eos_ids)
    return (sequence, trace) if return_trace else sequence


def _trim_finished(sequence: torch.Tensor, prompt_length: int, eos_ids: list[int]) -> torch.Tensor:
    """Cut the columns after the last row's first EOS (``generate`` stops there too)."""
    new = sequence[:, prompt_length:]
    is_eos = torch.isin(new, torch.tensor(eos_ids, device=new.device))
    first = is_eos.float().argmax(-1)
    return sequence[:, : prompt_length + int(first.max()) + 1]


def _denoise_block(
    forward, cache, prefix_logits, embedding, length, steps, k, schedule, noise_scale, hard_onehot, warpers,
    projection, generator, trace, block_index, record,
) -> torch.Tensor:
    """Denoise one block of ``length`` positions; the cache holds the prefix and is left as it was found."""
    batch, vocab_size = prefix_logits.shape
    device = prefix_logits.device

    def gaussian() -> torch.Tensor:
        return torch.randn(batch, length, vocab_size, generator=generator, device=device)

    a_start = alpha_bar(steps, steps, schedule)
    x = (noise_scale * math.sqrt(1 - a_start) * k) * gaussian() if noise_scale > 0 else None
    if x is None:
        x = torch.zeros(batch, length, vocab_size, device=device)
    tokens = None
    for step, t in enumerate(range(steps, 0, -1), start=1):
        use_hard = hard_onehot and noise_scale == 0 and tokens is not None
        logits = prefix_logits.unsqueeze(1)
        if length > 1:
            if use_hard:
                inputs = embedding[tokens[:, : length - 1]]
            else:
                inputs = simplex_embeds(x[:, : length - 1], embedding)
            block_logits, cache = forward(cache=cache, inputs_embeds=inputs)
            _crop(cache, length - 1)
            logits = torch.cat([logits, block_logits.float()], dim=1)
        flat = logits.reshape(batch * length, vocab_size)
        truncated = warpers(None, flat) if len(warpers) else flat
        if projection == "argmax":
            tokens = truncated.argmax(-1)
        else:
            # Gumbel-max: argmax(z + G), G = -log(-log U), is an exact draw from softmax(z) (-inf stays out)
            uniform = torch.rand(truncated.shape, generator=generator, device=device).clamp_(min=1e-20)
            tokens = (truncated - torch.log(-torch.log(uniform))).argmax(-1)
        tokens = tokens.reshape(batch, length)
        if record:
            input_entropy = (
                torch.zeros(batch, length) if use_hard else entropy_nats(x).cpu()
            )
            trace.records.append(
                {
                    "block": block_index,
                    "step": step,
                    "t": t,
                    "alpha_bar": alpha_bar(t, steps, schedule),
                    "input_entropy": input_entropy,
                    "pred_entropy": entropy_nats(logits).cpu(),
                    "argmax": logits.argmax(-1).cpu(),
                    "tokens": tokens.cpu(),
                }
            )
        a_next = alpha_bar(t - 1, steps, schedule)
        noisy = noise_scale > 0 and a_next < 1
        x = noisy_simplex(tokens, vocab_size, k, a_next, noise_scale if noisy else 0.0, gaussian() if noisy else None)
    return tokens


def denoise_samples(
    model,
    tokenizer,
    prompts: list[str],
    n_per_prompt: int = 4,
    max_new_tokens: int = 32,
    seed: int = 0,
    fixed_length: bool = True,
    **denoise_kwargs,
) -> list[list[str]]:
    """``n_per_prompt`` denoised continuations per prompt (decoded, prompt excluded), as ``[prompt][sample]``.

    Each prompt is repeated ``n_per_prompt`` times in one batch (rows draw different noise from the same seeded
    generator; prompt ``i`` uses seed ``seed + i``). ``fixed_length=True`` disables EOS so every sample has
    ``max_new_tokens`` tokens, like :func:`dftnb.lab.models.generate`.
    """
    if not prompts or any(not p.strip() for p in prompts):
        raise ValueError("denoise_samples needs a non-empty list of non-empty prompts.")
    if fixed_length:
        denoise_kwargs.setdefault("eos_token_id", [])
    device = next(model.parameters()).device
    samples = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device).repeat(n_per_prompt, 1)
        out = denoise_generate(model, tokenizer, ids, max_new_tokens=max_new_tokens, seed=seed + i, **denoise_kwargs)
        samples.append(tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True))
    return samples
