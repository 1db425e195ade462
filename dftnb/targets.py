"""Target distributions for DFT: the sparse format and three ways to build it (docs/design.md, targets).

``SparseTarget`` stores, per position, the top-k token ids and their log-probabilities; the remaining tail mass
``r = 1 - sum(exp(logprobs))`` is spread uniformly over the other ``V - k`` tokens, so every target is a proper
full-vocabulary distribution ``q_j = r / (V - k)`` off-support without ever storing ``V`` numbers per token.

A target dataset holds one row per sequence: ``input_ids`` (T,), ``labels`` (T,; ``-100`` where no loss) and
``target_ids``/``target_logprobs`` (T, k), where row ``t`` is the distribution of token ``t + 1`` given tokens
``<= t``, aligned with the model's logits at position ``t`` (``logits[:, :-1]`` vs ``labels[:, 1:]`` vs
``targets[:, :-1]``). Its Arrow layout and the on-disk cache are :mod:`dftnb.target_cache`: a token costs ``4k``
bytes of target (256 B at k = 64) against ``2V`` bytes (98,304 B at V = 49,152) for a dense fp16 row. A target
built with fewer than ``k`` distinct tokens (a trie node that saw 3 continuations, a point mass) fills the unused
slots with distinct unused ids at :func:`pad_logprob`, the floored tail log-probability, so the slots carry
(numerically) no mass and everything stays finite in fp16.

Sources:

* :func:`from_reference_model` - teacher forcing through a reference model, optionally behind a style prefix
  (context distillation, Askell et al. 2021; Snell et al. 2022).
* :func:`from_samples` - ``n`` sampled completions per prompt, a prefix trie, and the empirical next-token
  distribution at each trie node.
* :func:`from_corpus` - a kNN-LM (Khandelwal et al., ICLR 2020, :mod:`dftnb.datastore`) over a curated corpus
  mixed with the reference model.

:class:`dftnb.trainer.SparseTargetCollator` turns rows back into padded tensors and :func:`batch_sparse_target`
into a ``SparseTarget`` for the losses.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import as_text_list
from .datastore import KNNDatastore, build_datastore, knn_lm_mixture, knn_neighbours
from .models import batches, forward_with_hidden, model_vocab_size, pad_right, pad_token_id, progress_bar
from .target_cache import id_dtype, rows_to_dataset, target_info

TAIL_EPS = 1e-12  # floor on the tail mass so log(r) stays finite
IGNORE_INDEX = -100  # label of a position without loss (the Hugging Face convention)


def pad_logprob(vocab_size: int, k: int) -> float:
    """Log-probability stored in unused target slots: ``log(eps / (V - k))``, the floored tail log-probability.

    A slot at this value carries ``eps / (V - k)`` mass (1e-12 / 49,088 ~ 2e-17 at k = 64), the same as any
    off-support token of a target whose tail mass is floored, so padding never changes the dense distribution
    beyond float precision; the value (about -38.4) survives float16 storage to within 0.02.
    """
    return math.log(TAIL_EPS / max(vocab_size - k, 1))


def _filler_ids(support: Sequence[int], n: int) -> list[int]:
    """The ``n`` smallest token ids not in ``support`` (distinct filler ids for unused slots)."""
    used, out, j = set(support), [], 0
    while len(out) < n:
        if j not in used:
            out.append(j)
        j += 1
    return out


@dataclass
class SparseTarget:
    """Top-k target distribution with an implicit uniform tail.

    Attributes:
        ids: ``(..., k)`` int64 token ids, unique along the last axis (sorted by descending probability when built
            by :meth:`from_logits`).
        logprobs: ``(..., k)`` float log-probabilities of those ids; ``sum(exp(logprobs)) <= 1``.
        vocab_size: ``V``, the size of the full vocabulary.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    vocab_size: int

    def __post_init__(self):
        self.validate()

    @property
    def k(self) -> int:
        return int(self.ids.shape[-1])

    def tail_mass(self) -> torch.Tensor:
        """``r = max(1 - sum_i exp(logprobs_i), eps)``, shape ``(...)``; zero tail tokens when ``k == V``."""
        r = 1.0 - self.logprobs.exp().sum(-1)
        return r.clamp_min(TAIL_EPS)

    def tail_logprob(self) -> torch.Tensor:
        """Log-probability of each off-support token, ``log(r / (V - k))``; ``-inf`` when ``k == V``."""
        n_tail = self.vocab_size - self.k
        if n_tail == 0:
            return torch.full(self.logprobs.shape[:-1], float("-inf"), dtype=self.logprobs.dtype)
        return self.tail_mass().log() - torch.log(torch.tensor(float(n_tail), dtype=self.logprobs.dtype))

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int, temperature: float = 1.0) -> SparseTarget:
        """Keep the exact top-k log-probabilities of ``softmax(logits / temperature)`` (the tail mass is what is left)."""
        if k < 1 or k > logits.shape[-1]:
            raise ValueError(f"k must be in [1, V={logits.shape[-1]}], got k={k}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if not torch.isfinite(logits).all():
            raise ValueError("logits contain NaN or Inf; check the reference model's dtype (use float32) and inputs.")
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        top, ids = logp.topk(k, dim=-1)
        return cls(ids=ids, logprobs=top, vocab_size=logits.shape[-1])

    @classmethod
    def from_probs(cls, probs: torch.Tensor, k: int) -> SparseTarget:
        """Top-k of a dense ``(..., V)`` probability tensor; zero-probability slots get :func:`pad_logprob`.

        Used for mixtures built in probability space (the kNN-LM ``q = lam p_kNN + (1 - lam) p_ref``) and for
        empirical distributions with fewer than ``k`` non-zero entries.
        """
        V = probs.shape[-1]
        if k < 1 or k > V:
            raise ValueError(f"k must be in [1, V={V}], got k={k}.")
        if not torch.isfinite(probs).all() or (probs < 0).any():
            raise ValueError("probs must be finite and >= 0; pass probabilities (softmax output), not logits.")
        mass = probs.double().sum(-1)
        if ((mass - 1).abs() > 1e-3).any():
            raise ValueError(
                f"probs sum to {float(mass.min()):.4f}..{float(mass.max()):.4f}, not 1; normalise them first."
            )
        top, ids = probs.float().topk(k, dim=-1)
        floor = pad_logprob(V, k)
        logprobs = torch.where(top > 0, top.clamp_min(1e-45).log(), torch.full_like(top, floor))
        return cls(ids=ids, logprobs=logprobs, vocab_size=V)

    @classmethod
    def point_mass(cls, token_ids: torch.Tensor, k: int, vocab_size: int) -> SparseTarget:
        """All mass on ``token_ids`` (shape ``(...)``): slot 0 holds the token at logprob 0, the ``k - 1`` other
        slots hold the smallest other ids at :func:`pad_logprob` (placeholder for positions that carry no loss)."""
        token_ids = torch.as_tensor(token_ids, dtype=torch.long)
        fill = torch.arange(k - 1, dtype=torch.long)
        fill = fill + (fill >= token_ids.unsqueeze(-1)).long()  # skip the token itself: ids stay distinct
        ids = torch.cat([token_ids.unsqueeze(-1), fill.expand(*token_ids.shape, k - 1)], dim=-1)
        logprobs = torch.full(ids.shape, pad_logprob(vocab_size, k), dtype=torch.float32)
        logprobs[..., 0] = 0.0
        return cls(ids=ids, logprobs=logprobs, vocab_size=vocab_size)

    @classmethod
    def from_stored(cls, ids, logprobs, vocab_size: int) -> SparseTarget:
        """From stored columns (uint16/int32 ids, float16 logprobs; tensors, arrays or lists): int64 + float32."""
        ids = torch.as_tensor(np.asarray(ids).astype(np.int64))
        logprobs = torch.as_tensor(np.asarray(logprobs, dtype=np.float32))
        return cls(ids=ids, logprobs=logprobs, vocab_size=vocab_size)

    def to_dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Full ``(..., V)`` probabilities (tests and plots only: this is what the sparse form avoids storing)."""
        n_tail = self.vocab_size - self.k
        r = (1.0 - self.logprobs.to(dtype).exp().sum(-1)).clamp_min(TAIL_EPS)  # tail_mass() in ``dtype``
        fill = r / n_tail if n_tail else torch.zeros(self.logprobs.shape[:-1], dtype=dtype)
        dense = fill.unsqueeze(-1).expand(*self.logprobs.shape[:-1], self.vocab_size).clone()
        dense.scatter_(-1, self.ids.long(), self.logprobs.to(dtype).exp())
        return dense

    def entropy(self) -> torch.Tensor:
        """Shannon entropy in nats of the full distribution, support plus uniform tail, in float64:
        ``H = -sum_i q_i log q_i - r log(r / (V - k))``, shape ``(...)``."""
        lp = self.logprobs.double()
        h = -(lp.exp() * lp).sum(-1)
        if self.vocab_size > self.k:
            r = (1.0 - lp.exp().sum(-1)).clamp_min(TAIL_EPS)  # the floored tail mass, as in to_dense
            h = h - r * torch.log(r / (self.vocab_size - self.k))
        return h

    def validate(self) -> None:
        """Raise ``ValueError`` naming the fix if ids/logprobs are malformed or the mass is outside [0, 1]."""
        if self.ids.shape != self.logprobs.shape:
            raise ValueError(f"ids {tuple(self.ids.shape)} and logprobs {tuple(self.logprobs.shape)} must have the same shape.")
        if self.ids.ndim == 0 or self.k == 0:
            raise ValueError("a SparseTarget needs at least one id per position (k >= 1).")
        if self.k > self.vocab_size:
            raise ValueError(f"k={self.k} exceeds vocab_size={self.vocab_size}.")
        if self.ids.numel():
            lo, hi = int(self.ids.min()), int(self.ids.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(
                    f"target ids span [{lo}, {hi}] but vocab_size is {self.vocab_size}: the target was built with a "
                    "different tokenizer; rebuild it with the student's tokenizer."
                )
        if torch.isnan(self.logprobs).any() or (self.logprobs == float("inf")).any():
            raise ValueError("target logprobs contain NaN or +Inf; rebuild the target (use float32 reference logits).")
        if (self.logprobs > 1e-6).any():
            raise ValueError("target logprobs must be <= 0 (probabilities <= 1); pass log-probabilities, not logits.")
        mass = self.logprobs.double().exp().sum(-1)
        if (mass > 1 + 1e-3).any():
            raise ValueError(
                f"target mass sums to {float(mass.max()):.4f} > 1 at some position; the logprobs are not normalised "
                "(use SparseTarget.from_logits or log_softmax before top-k)."
            )
        if self.k > 1:
            srt = self.ids.sort(-1).values
            if (srt[..., 1:] == srt[..., :-1]).any():
                raise ValueError("target ids must be unique per position; merge duplicate ids before building the target.")

    def __getitem__(self, index) -> SparseTarget:
        return SparseTarget(self.ids[index], self.logprobs[index], self.vocab_size)

    def to(self, device=None, dtype: torch.dtype | None = None) -> SparseTarget:
        return SparseTarget(self.ids.to(device), self.logprobs.to(device=device, dtype=dtype), self.vocab_size)


def target_parts(target: SparseTarget, dtype: torch.dtype):
    """``(ids, log q_S, log t, V - k)`` with ``log t = log(r / (V - k))`` per row, or ``None`` when ``k == V``."""
    ids = target.ids.long()
    logq = target.logprobs.to(dtype)
    n_tail = target.vocab_size - target.k
    if n_tail == 0:
        return ids, logq, None, 0
    tail_mass = (1.0 - logq.exp().sum(-1)).clamp_min(TAIL_EPS)
    return ids, logq, tail_mass.log() - math.log(n_tail), n_tail


def batch_sparse_target(batch: dict, vocab_size: int) -> SparseTarget:
    """The ``SparseTarget`` (B, T, k) of a collated batch (validated: ids in range, unique, mass <= 1)."""
    return SparseTarget(batch["target_ids"].long(), batch["target_logprobs"].float(), vocab_size)


# ----------------------------------------------------------------------------------------------------------------
# Storage and truncation error
# ----------------------------------------------------------------------------------------------------------------


def storage_bytes(k: int, vocab_size: int) -> int:
    """Bytes per token of a stored top-k target: ``k`` ids (2 B uint16 if ``V <= 65,536``, else 4 B int32) plus
    ``k`` float16 logprobs. The tail mass is implied, so nothing else is stored."""
    return k * (2 if id_dtype(vocab_size) == "uint16" else 4) + 2 * k


def dense_storage_bytes(vocab_size: int, bytes_per_value: int = 2) -> int:
    """Bytes per token of a dense target row (``V`` float16 values by default)."""
    return vocab_size * bytes_per_value


@torch.no_grad()
def truncation_kl_curve(logits: torch.Tensor, ks: Sequence[int], temperature: float = 1.0, chunk: int = 256) -> torch.Tensor:
    """``KL(p || q_k)`` for every ``k`` in ``ks``, in nats (float64): the information lost by storing
    ``p = softmax(logits / T)`` as its top-k with a uniform tail. Returns shape ``(len(ks), *logits.shape[:-1])``.

    On the support ``S_k`` (top-k) ``q_k = p``, so only the tail contributes:
    ``KL = sum_{j not in S_k} p_j log p_j - r log(r' / (V - k))`` with ``r = sum_{j not in S_k} p_j`` and
    ``r' = max(r, eps)`` the floored tail mass :class:`SparseTarget` uses. Zero when ``k == V``. One sort per chunk
    serves every ``k`` (cumulative sums over the sorted probabilities).
    """
    V = logits.shape[-1]
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1 or max(ks) > V:
        raise ValueError(f"every k must be in [1, V={V}], got {ks}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or Inf; check the model's dtype (use float32) and inputs.")
    flat = logits.reshape(-1, V)
    out = torch.zeros(len(ks), flat.shape[0], dtype=torch.float64)
    cols = torch.tensor(ks) - 1
    for i in range(0, flat.shape[0], chunk):
        logp = torch.log_softmax(flat[i : i + chunk].double() / temperature, dim=-1)
        total = (logp.exp() * logp).sum(-1, keepdim=True)
        top = logp.topk(max(ks), dim=-1).values
        cum_p = top.exp().cumsum(-1)[:, cols]
        cum_plogp = (top.exp() * top).cumsum(-1)[:, cols]
        r = (1.0 - cum_p).clamp_min(0.0)
        n_tail = (V - torch.tensor(ks, dtype=torch.float64)).clamp_min(1.0)
        kl = (total - cum_plogp) - r * torch.log(r.clamp_min(TAIL_EPS) / n_tail)
        kl[:, torch.tensor(ks) == V] = 0.0
        out[:, i : i + chunk] = kl.clamp_min(0.0).T
    return out.reshape(len(ks), *logits.shape[:-1])


def truncation_kl(logits: torch.Tensor, k: int, temperature: float = 1.0, chunk: int = 256) -> torch.Tensor:
    """``KL(p || q_k)`` per position for one ``k`` (see :func:`truncation_kl_curve`); shape ``logits.shape[:-1]``."""
    return truncation_kl_curve(logits, [k], temperature, chunk)[0]


def loss_positions(labels: Sequence[int]) -> np.ndarray:
    """Positions ``t`` whose target is read by a loss: those with ``labels[t + 1] != -100`` (the causal shift)."""
    labels = np.asarray(labels)
    return np.flatnonzero(labels[1:] != IGNORE_INDEX)


def target_entropies(dataset) -> np.ndarray:
    """Entropy (nats, float64) of every target a loss reads (:func:`loss_positions`), over all rows of ``dataset``."""
    V = target_info(dataset)["vocab_size"]
    out = []
    for row in dataset:
        t = loss_positions(row["labels"])
        target = SparseTarget.from_stored(np.asarray(row["target_ids"])[t], np.asarray(row["target_logprobs"])[t], V)
        out.append(target.entropy().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _row(input_ids, labels, target: SparseTarget) -> dict:
    return {
        "input_ids": np.asarray(input_ids, dtype=np.int64),
        "labels": np.asarray(labels, dtype=np.int64),
        "target_ids": target.ids.cpu().numpy(),
        "target_logprobs": target.logprobs.float().cpu().numpy(),
    }


def _encode(tokenizer, item, max_length: int | None, add_special_tokens: bool = True) -> list[int]:
    ids = list(item) if not isinstance(item, str) else tokenizer(item, add_special_tokens=add_special_tokens)["input_ids"]
    return [int(i) for i in ids[:max_length]] if max_length else [int(i) for i in ids]


@torch.no_grad()
def reference_logits(model, tokenizer, texts_or_dataset, max_length: int = 128, batch_size: int = 4) -> list[torch.Tensor]:
    """The model's float32 logits ``(T_i, V)`` on each text (truncated to ``max_length``): the full distributions
    that :func:`truncation_kl` compares a stored top-k against."""
    seqs = [s for s in (_encode(tokenizer, t, max_length) for t in as_text_list(texts_or_dataset)) if s]
    out = []
    for batch in batches(seqs, batch_size):
        ids, mask = pad_right(batch, pad_token_id(tokenizer), model.device)
        logits, _ = forward_with_hidden(model, ids, mask)
        out += [logits[b, : len(s)].cpu() for b, s in enumerate(batch)]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Source (a): reference model under teacher forcing, optionally with a style prefix
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def from_reference_model(
    model,
    tokenizer,
    texts_or_dataset,
    k: int = 64,
    max_length: int = 128,
    prefix: str | None = None,
    batch_size: int = 4,
    temperature: float = 1.0,
    progress: bool = False,
):
    """Targets from a reference model under teacher forcing: ``q_t = top-k(softmax(z_t / T))`` of the reference
    logits ``z_t`` at every position of every text.

    With ``prefix`` (a few style exemplars, as text) this is context distillation (Askell et al., 2021; Snell et
    al., 2022, "Learning by Distilling Context"): the reference reads ``prefix + text`` and the target at text
    position ``t`` is ``p_ref(. | prefix, text_{<=t})``; the rows hold only the text tokens, so a student trained
    on them without the prefix learns to behave as if it had read it.

    ``texts_or_dataset``: a list of strings, a list of token-id lists (e.g. from :func:`pack_texts`), or a
    ``datasets.Dataset`` with a ``text`` column. Each text is truncated to ``max_length`` tokens; texts with fewer
    than 2 tokens carry no next-token target and are skipped (``target_info(ds)["skipped"]`` counts them).
    """
    V = model_vocab_size(model, tokenizer)
    prefix_ids = _encode(tokenizer, prefix, None) if prefix else []
    if prefix is not None and not prefix_ids:
        raise ValueError("prefix tokenises to nothing; pass None for no prefix or a non-empty style prefix.")
    seqs = [_encode(tokenizer, t, max_length, add_special_tokens=not prefix_ids) for t in as_text_list(texts_or_dataset)]
    kept = [s for s in seqs if len(s) >= 2]
    pad_id, P, rows = pad_token_id(tokenizer), len(prefix_ids), []
    for batch in progress_bar(batches(kept, batch_size), progress, "reference targets"):
        ids, mask = pad_right([prefix_ids + s for s in batch], pad_id, model.device)
        logits, _ = forward_with_hidden(model, ids, mask)
        for b, s in enumerate(batch):
            target = SparseTarget.from_logits(logits[b, P : P + len(s)], k, temperature)
            rows.append(_row(s, s, target))
    info = {"source": "reference", "max_length": max_length, "prefix": prefix, "temperature": temperature,
            "skipped": len(seqs) - len(kept)}
    return rows_to_dataset(rows, k, V, info)


# ----------------------------------------------------------------------------------------------------------------
# Source (b): sampled completions -> prefix trie -> empirical next-token distributions
# ----------------------------------------------------------------------------------------------------------------


def prefix_trie_counts(sequences: Iterable[Sequence[int]]) -> dict[tuple[int, ...], Counter]:
    """Next-token counts at every node of the prefix trie of ``sequences``.

    ``counts[prefix][w]`` = number of sequences that start with ``prefix`` and continue with ``w``. The root is
    ``()``; a node that every sequence ends at has no entry. Example: ``[[1, 2, 3], [1, 2, 4], [1, 5]]`` gives
    ``{(): {1: 3}, (1,): {2: 2, 5: 1}, (1, 2): {3: 1, 4: 1}}``.
    """
    counts: dict[tuple[int, ...], Counter] = {}
    for seq in sequences:
        seq = tuple(int(t) for t in seq)
        for j, token in enumerate(seq):
            counts.setdefault(seq[:j], Counter())[token] += 1
    return counts


def counts_to_target(counts: Counter, k: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The empirical distribution ``counts / total`` truncated to its top-k as ``(ids (k,), logprobs (k,))``.

    Ties are broken by token id. With more than ``k`` distinct tokens the dropped mass becomes the uniform tail;
    with fewer, the unused slots hold the smallest unused ids at :func:`pad_logprob` (tail mass 0, floored).
    """
    if not counts or any(c <= 0 for c in counts.values()):
        raise ValueError("counts must be a non-empty mapping of token -> positive count.")
    total = sum(counts.values())
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    ids = [t for t, _ in top]
    logprobs = [math.log(c / total) for _, c in top]
    fill = _filler_ids(ids, k - len(ids))
    return (np.array(ids + fill, dtype=np.int64),
            np.array(logprobs + [pad_logprob(vocab_size, k)] * len(fill), dtype=np.float32))


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def _cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for j, t in enumerate(tokens):
        if t in eos:
            return tokens[: j + 1]
    return tokens


@torch.no_grad()
def sample_completions(
    model, tokenizer, prompt: str, n: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
    seed: int = 0,
) -> tuple[list[int], list[list[int]]]:
    """``(prompt_ids, completions)``: ``n`` completions sampled with ``generate(do_sample=True)`` from the full
    (``top_k=0``) tempered, nucleus-truncated distribution, each cut after its first EOS (kept: stopping is a token).
    ``prompt`` is a string or a list of token ids. Seeded with ``seed`` without disturbing the caller's RNG state."""
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be >= 1, got n={n}, max_new_tokens={max_new_tokens}.")
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature > 0 and top_p in (0, 1], got {temperature}, {top_p}.")
    prompt_ids = _encode(tokenizer, prompt, None)
    if not prompt_ids:
        raise ValueError("empty prompt: every prompt needs at least one token.")
    ids = torch.tensor([prompt_ids], device=model.device)
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, num_return_sequences=n,
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=0,
            pad_token_id=pad_token_id(tokenizer),
        )
    eos = _eos_ids(model, tokenizer)
    return prompt_ids, [_cut_at_eos(row[len(prompt_ids):].tolist(), eos) for row in out]


def from_samples(
    model,
    tokenizer,
    prompts: Sequence[str],
    n: int = 16,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    k: int = 64,
    seed: int = 0,
    progress: bool = False,
):
    """Targets from ``n`` sampled completions per prompt: the empirical next-token distribution of a prefix trie.

    For each prompt the completions (cut after EOS) form a trie (:func:`prefix_trie_counts`); each completion
    becomes one row ``prompt + completion`` whose target at the position before completion token ``j`` is the
    trie node ``completion[:j]``'s ``counts / total`` (:func:`counts_to_target`), the Monte-Carlo estimate of the
    model's (tempered, top-p) distribution there; a node visited by ``c`` completions appears in ``c`` rows, so the
    loss weighs nodes by how often sampling reaches them. Prompt tokens have ``labels = -100``; their targets and
    the last position's are placeholders (:meth:`SparseTarget.point_mass` on the next token / EOS) that no loss
    reads. Prompt ``i`` (a string or a list of token ids) is sampled with seed ``seed + i``.
    """
    prompts = as_text_list(prompts)
    V = model_vocab_size(model, tokenizer)
    end = pad_token_id(tokenizer) if tokenizer.eos_token_id is None else int(tokenizer.eos_token_id)
    rows, distinct = [], []
    for i, prompt in enumerate(progress_bar(prompts, progress, "sampled targets")):
        prompt_ids, completions = sample_completions(model, tokenizer, prompt, n, max_new_tokens, temperature, top_p,
                                                     seed + i)
        trie = prefix_trie_counts(completions)
        node_target = {node: counts_to_target(c, k, V) for node, c in trie.items()}
        distinct.append(len(set(map(tuple, completions))))
        P = len(prompt_ids)
        for comp in completions:
            seq = prompt_ids + comp
            placeholder = SparseTarget.point_mass(torch.tensor(seq[1:] + [end]), k, V)
            ids, logprobs = placeholder.ids.numpy().copy(), placeholder.logprobs.numpy().copy()
            for j in range(len(comp)):
                ids[P - 1 + j], logprobs[P - 1 + j] = node_target[tuple(comp[:j])]
            rows.append({"input_ids": np.array(seq), "labels": np.array([IGNORE_INDEX] * P + comp),
                         "target_ids": ids, "target_logprobs": logprobs})
    info = {"source": "samples", "n": n, "max_new_tokens": max_new_tokens, "temperature": temperature,
            "top_p": top_p, "seed": seed, "distinct_completions": distinct}
    return rows_to_dataset(rows, k, V, info)


# ----------------------------------------------------------------------------------------------------------------
# Source (c): curated corpus -> kNN-LM datastore, mixed with the reference model
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def from_corpus(
    model,
    tokenizer,
    corpus_texts,
    query_texts,
    k_neighbors: int = 16,
    lam: float = 0.25,
    knn_temperature: float = 100.0,
    k: int = 64,
    max_datastore_tokens: int = 20_000,
    max_length: int = 128,
    block_size: int = 128,
    distance: str = "squared_l2",
    batch_size: int = 4,
    datastore: KNNDatastore | None = None,
    progress: bool = False,
):
    """Targets from a curated corpus through a kNN-LM (Khandelwal et al., ICLR 2020, "Generalization through
    Memorization"): ``q(w | x) = lam p_kNN(w | x) + (1 - lam) p_ref(w | x)`` with
    ``p_kNN(w | x) ∝ sum_{(k_i, v_i) in N(x), v_i = w} exp(-d(k_i, f(x)) / T)`` over the ``k_neighbors`` nearest
    datastore keys (:func:`build_datastore`: reference hidden states over ``corpus_texts``), stored as top-k.

    ``query_texts`` (strings or token-id lists, truncated to ``max_length``) should be disjoint from
    ``corpus_texts``: a query that is in the datastore retrieves itself and its own next token. ``knn_temperature``
    is on the scale of ``d``: SmolLM2-135M's squared distances to the nearest keys are ~400-2,500, so ``T = 100``
    spreads the weight over several neighbours (``T = 10`` puts ~80% on the nearest). ``block_size`` is the
    datastore's packing length; pass a prebuilt ``datastore`` to reuse one across query sets.
    """
    V = model_vocab_size(model, tokenizer)
    if datastore is None:
        datastore = build_datastore(model, tokenizer, corpus_texts, max_datastore_tokens, block_size, progress=progress)
    seqs = [s for s in (_encode(tokenizer, t, max_length) for t in as_text_list(query_texts)) if len(s) >= 2]
    rows = []
    for batch in progress_bar(batches(seqs, batch_size), progress, "kNN-LM targets"):
        ids, mask = pad_right(batch, pad_token_id(tokenizer), model.device)
        logits, hidden = forward_with_hidden(model, ids, mask, want_hidden=True)
        for b, s in enumerate(batch):
            nbr_values, nbr_weights = knn_neighbours(hidden[b, : len(s)], datastore, k_neighbors, knn_temperature,
                                                     distance)
            q = knn_lm_mixture(logits[b, : len(s)], nbr_values, nbr_weights, lam)
            rows.append(_row(s, s, SparseTarget.from_probs(q, k)))
    info = {"source": "knn", "k_neighbors": k_neighbors, "lam": lam, "knn_temperature": knn_temperature,
            "distance": distance, "datastore_tokens": len(datastore), "max_length": max_length}
    return rows_to_dataset(rows, k, V, info)
