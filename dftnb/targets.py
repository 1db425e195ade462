"""Target distributions for DFT: three ways to build them, their storage and truncation (docs/design.md, targets).

The format is :class:`~dftnb.sparse_target.SparseTarget` (re-exported here): per position ``k`` token ids, their
log-probabilities and the tail mass ``r`` off the support, stored exactly (``1 - sum(exp(logprobs))`` from float16
log-probabilities loses every digit of a small ``r``). How a divergence reads the tail is its ``tail`` mode
(``"uniform"``, ``"bucket"``, ``"renormalize"``; :mod:`dftnb.sparse_target`).

A target dataset holds one row per sequence: ``input_ids`` (T,), ``labels`` (T,; ``-100`` where no loss) and
``target_ids``/``target_logprobs`` (T, k), where row ``t`` is the distribution of token ``t + 1`` given tokens
``<= t``, aligned with the model's logits at position ``t`` (``logits[:, :-1]`` vs ``labels[:, 1:]`` vs
``targets[:, :-1]``), plus ``target_tail_mass`` (T,). Its Arrow layout and the on-disk cache are
:mod:`dftnb.target_cache`: a token costs ``4k + 4`` bytes of target (260 B at k = 64, :func:`storage_bytes`) against
``2V`` bytes (98,304 B at V = 49,152) for a dense fp16 row. A target built with fewer than ``k`` distinct tokens
(a trie node that saw 3 continuations, a point mass, a few sampled tokens) fills the unused slots with distinct unused
ids at :func:`pad_logprob`, the floored tail log-probability, so the slots carry (numerically) no mass and everything
stays finite in fp16.

Sources:

* :func:`from_reference_model` - teacher forcing through a reference model, optionally behind a style prefix
  (context distillation, Askell et al. 2021; Snell et al. 2022); its top-k, or ``n`` tokens sampled from it
  (:meth:`SparseTarget.sampled_from_logits`, Anshumann et al., ACL 2025).
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

import numpy as np
import torch

from .datastore import KNNDatastore, build_datastore, knn_lm_mixture, knn_neighbours
from .modeling import (
    as_text_list,
    batches,
    forward_with_hidden,
    model_vocab_size,
    pad_right,
    pad_token_id,
    progress_bar,
)
from .sparse_target import (  # noqa: F401  (re-exported: the format is part of this module's API)
    IGNORE_INDEX,
    TAIL_EPS,
    TAIL_MODES,
    SparseTarget,
    TailParts,
    _as_float,
    batch_sparse_target,
    check_tail,
    pad_logprob,
    target_parts,
)
from .target_cache import id_dtype, rows_to_dataset, target_info, tokenizer_hash

SAMPLING = ("topk", "sampled")  # what a builder stores: the top-k of the distribution, or n tokens drawn from it


def _filler_ids(support: Sequence[int], n: int) -> list[int]:
    """The ``n`` smallest token ids not in ``support`` (distinct filler ids for unused slots)."""
    used, out, j = set(support), [], 0
    while len(out) < n:
        if j not in used:
            out.append(j)
        j += 1
    return out


# ----------------------------------------------------------------------------------------------------------------
# Storage and truncation error
# ----------------------------------------------------------------------------------------------------------------


def storage_bytes(k: int, vocab_size: int) -> int:
    """Bytes per token of a stored target: ``k`` ids (2 B uint16 if ``V <= 65,536``, else 4 B int32), ``k`` float16
    logprobs and the tail mass ``r`` as one float32 (4 B): ``4k + 4`` = 260 B at k = 64 and V = 49,152."""
    return k * (2 if id_dtype(vocab_size) == "uint16" else 4) + 2 * k + 4


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
        tail = row.get("target_tail_mass")
        target = SparseTarget.from_stored(np.asarray(row["target_ids"])[t], np.asarray(row["target_logprobs"])[t], V,
                                          None if tail is None else np.asarray(tail)[t])
        out.append(target.entropy().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _row(input_ids, labels, target: SparseTarget) -> dict:
    return {
        "input_ids": np.asarray(input_ids, dtype=np.int64),
        "labels": np.asarray(labels, dtype=np.int64),
        "target_ids": target.ids.cpu().numpy(),
        "target_logprobs": target.logprobs.float().cpu().numpy(),
        "target_tail_mass": target.stored_tail_mass().float().cpu().numpy(),
    }


def _check_temperature(temperature: float) -> float:
    """A finite temperature > 0 (``inf`` would turn every target into the uniform distribution, NaN into NaNs)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0 (1.0 keeps the model's distribution; inf would "
                         f"make every target uniform), got {temperature!r}.")
    return float(temperature)


def _check_sampling(sampling: str, n: int | None, k: int) -> None:
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}.")
    if sampling == "sampled" and n is not None and not (isinstance(n, int) and 1 <= n <= k):
        raise ValueError(f"n (tokens drawn per position) must be an int in [1, k={k}] so that every distinct token "
                         f"has a slot, got {n!r}; raise k or lower n.")


def _encode(tokenizer, item, max_length: int | None, add_special_tokens: bool = True) -> list[int]:
    ids = list(item) if not isinstance(item, str) else tokenizer(item, add_special_tokens=add_special_tokens)["input_ids"]
    return [int(i) for i in ids[:max_length]] if max_length else [int(i) for i in ids]


@torch.no_grad()
def reference_logits(model, tokenizer, texts_or_dataset, max_length: int = 128, batch_size: int = 4,
                     prefix: str | None = None) -> list[torch.Tensor]:
    """The model's float32 logits ``(T_i, V)`` on each text (truncated to ``max_length``): the full distributions
    that :func:`truncation_kl` compares a stored top-k against. With ``prefix`` the model reads ``prefix + text`` and
    the logits at the text's positions are returned, as :func:`from_reference_model` builds its targets."""
    prefix_ids = _encode(tokenizer, prefix, None) if prefix else []
    seqs = [s for s in (_encode(tokenizer, t, max_length, add_special_tokens=not prefix_ids)
                        for t in as_text_list(texts_or_dataset)) if s]
    out, P = [], len(prefix_ids)
    for batch in batches(seqs, batch_size):
        ids, mask = pad_right([prefix_ids + s for s in batch], pad_token_id(tokenizer), model.device)
        logits, _ = forward_with_hidden(model, ids, mask)
        out += [logits[b, P : P + len(s)].cpu() for b, s in enumerate(batch)]
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
    sampling: str = "topk",
    n: int | None = None,
    seed: int = 0,
):
    """Targets from a reference model under teacher forcing: ``q_t = top-k(softmax(z_t / T))`` of the reference
    logits ``z_t`` at every position of every text, with the exact tail mass ``r`` off the top-k.

    ``sampling="sampled"`` stores instead ``n`` tokens (default ``k``; ``n <= k``) drawn from ``softmax(z_t / T)``
    with their empirical frequencies and no tail (:meth:`SparseTarget.sampled_from_logits`, Anshumann et al., ACL
    2025): unbiased for the forward-KL gradient, biased for the other divergences. Draws are seeded with ``seed``
    (one ``torch.Generator`` for the whole call, so the result does not depend on the global RNG).

    With ``prefix`` (a few style exemplars, as text) this is context distillation (Askell et al., 2021; Snell et
    al., 2022, "Learning by Distilling Context"): the reference reads ``prefix + text`` and the target at text
    position ``t`` is ``p_ref(. | prefix, text_{<=t})``; the rows hold only the text tokens, so a student trained
    on them without the prefix learns to behave as if it had read it.

    ``texts_or_dataset``: a list of strings, a list of token-id lists (e.g. from :func:`pack_texts`), or a
    ``datasets.Dataset`` with a ``text`` column. Each text is truncated to ``max_length`` tokens; texts with fewer
    than 2 tokens carry no next-token target and are skipped (``target_info(ds)["skipped"]`` counts them).
    """
    V = model_vocab_size(model, tokenizer)
    _check_sampling(sampling, n, k)
    _check_temperature(temperature)
    generator = torch.Generator().manual_seed(seed) if sampling == "sampled" else None
    prefix_ids = _encode(tokenizer, prefix, None) if prefix else []
    if prefix is not None and not prefix_ids:
        raise ValueError("prefix tokenises to nothing; pass None for no prefix or a non-empty style prefix.")
    seqs = [_encode(tokenizer, t, max_length, add_special_tokens=not prefix_ids) for t in as_text_list(texts_or_dataset)]
    kept = [s for s in seqs if len(s) >= 2]
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max(map(len, kept), default=0)
    if context and kept and len(prefix_ids) + longest > context:
        plus = f" + the prefix's {len(prefix_ids)} tokens" if prefix_ids else ""
        raise ValueError(f"the longest text has {longest} tokens{plus}, more than the model's context length "
                         f"(max_position_embeddings = {context}); pass max_length <= {context - len(prefix_ids)}.")
    pad_id, P, rows = pad_token_id(tokenizer), len(prefix_ids), []
    for batch in progress_bar(batches(kept, batch_size), progress, "reference targets"):
        ids, mask = pad_right([prefix_ids + s for s in batch], pad_id, model.device)
        logits, _ = forward_with_hidden(model, ids, mask)
        for b, s in enumerate(batch):
            z = logits[b, P : P + len(s)]
            if sampling == "sampled":
                target = SparseTarget.sampled_from_logits(z.cpu(), n or k, temperature=temperature, k=k,
                                                          generator=generator)
            else:
                target = SparseTarget.from_logits(z, k, temperature)
            rows.append(_row(s, s, target))
    info = {"source": "reference", "max_length": max_length, "prefix": prefix, "temperature": temperature,
            "skipped": len(seqs) - len(kept), "sampling": sampling, "n": (n or k) if sampling == "sampled" else None}
    return rows_to_dataset(rows, k, V, {**info, "tokenizer_hash": tokenizer_hash(tokenizer)})


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


def counts_tail_mass(counts: Counter, k: int) -> float:
    """The mass :func:`counts_to_target` drops: ``1 - (sum of the top-k counts) / total``, exact from the counts."""
    kept = sorted(counts.values(), reverse=True)[:k]
    return 1.0 - sum(kept) / sum(counts.values())


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
        node_target = {node: (*counts_to_target(c, k, V), counts_tail_mass(c, k)) for node, c in trie.items()}
        distinct.append(len(set(map(tuple, completions))))
        P = len(prompt_ids)
        for comp in completions:
            seq = prompt_ids + comp
            placeholder = SparseTarget.point_mass(torch.tensor(seq[1:] + [end]), k, V)
            ids, logprobs = placeholder.ids.numpy().copy(), placeholder.logprobs.numpy().copy()
            tail = np.zeros(len(seq), dtype=np.float32)
            for j in range(len(comp)):
                ids[P - 1 + j], logprobs[P - 1 + j], tail[P - 1 + j] = node_target[tuple(comp[:j])]
            rows.append({"input_ids": np.array(seq), "labels": np.array([IGNORE_INDEX] * P + comp),
                         "target_ids": ids, "target_logprobs": logprobs, "target_tail_mass": tail})
    info = {"source": "samples", "n": n, "max_new_tokens": max_new_tokens, "temperature": temperature,
            "top_p": top_p, "seed": seed, "distinct_completions": distinct}
    return rows_to_dataset(rows, k, V, {**info, "tokenizer_hash": tokenizer_hash(tokenizer)})


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
    sampling: str = "topk",
    n: int | None = None,
    seed: int = 0,
    index: str = "auto",
):
    """Targets from a curated corpus through a kNN-LM (Khandelwal et al., ICLR 2020, "Generalization through
    Memorization"): ``q(w | x) = lam p_kNN(w | x) + (1 - lam) p_ref(w | x)`` with
    ``p_kNN(w | x) ∝ sum_{(k_i, v_i) in N(x), v_i = w} exp(-d(k_i, f(x)) / T)`` over the ``k_neighbors`` nearest
    datastore keys (:func:`build_datastore`: reference hidden states over ``corpus_texts``), stored as top-k.

    ``query_texts`` (strings or token-id lists, truncated to ``max_length``) should be disjoint from
    ``corpus_texts``: a query that is in the datastore retrieves itself and its own next token. ``knn_temperature``
    is on the scale of ``d``: SmolLM2-135M's squared distances to the nearest keys are ~400-2,500, so ``T = 100``
    spreads the weight over several neighbours (``T = 10`` puts ~80% on the nearest). ``block_size`` is the
    datastore's packing length; pass a prebuilt ``datastore`` to reuse one across query sets. ``sampling="sampled"``
    stores ``n`` tokens drawn from ``q`` instead of its top-k (as in :func:`from_reference_model`). ``index`` is
    the datastore's search (:func:`dftnb.datastore.faiss_index`: exact up to 65,536 keys, IVF-PQ beyond).
    """
    V = model_vocab_size(model, tokenizer)
    _check_sampling(sampling, n, k)
    generator = torch.Generator().manual_seed(seed) if sampling == "sampled" else None
    if datastore is None:
        datastore = build_datastore(model, tokenizer, corpus_texts, max_datastore_tokens, block_size, progress=progress,
                                    index=index)
    rows = []
    for s, logits, nbr_values, nbr_weights in _knn_queries(model, tokenizer, query_texts, datastore, k_neighbors,
                                                           knn_temperature, max_length, distance, batch_size,
                                                           progress):
        q = knn_lm_mixture(logits, nbr_values, nbr_weights, lam)
        target = (SparseTarget.sampled_from_probs(q.cpu(), n or k, k=k, generator=generator)
                  if sampling == "sampled" else SparseTarget.from_probs(q, k))
        rows.append(_row(s, s, target))
    info = {"source": "knn", "k_neighbors": k_neighbors, "lam": lam, "knn_temperature": knn_temperature,
            "distance": distance, "datastore_tokens": len(datastore), "max_length": max_length, "sampling": sampling,
            "datastore_index": type(datastore.index).__name__ if datastore.index is not None else "brute force",
            "n": (n or k) if sampling == "sampled" else None}
    return rows_to_dataset(rows, k, V, {**info, "tokenizer_hash": tokenizer_hash(tokenizer)})


def _knn_queries(model, tokenizer, query_texts, datastore, k_neighbors, knn_temperature, max_length, distance,
                 batch_size, progress):
    """Per query sequence (at least 2 tokens): ``(ids, reference logits (T, V), neighbour values, weights)``."""
    seqs = [s for s in (_encode(tokenizer, t, max_length) for t in as_text_list(query_texts)) if len(s) >= 2]
    for batch in progress_bar(batches(seqs, batch_size), progress, "kNN-LM targets"):
        ids, mask = pad_right(batch, pad_token_id(tokenizer), model.device)
        logits, hidden = forward_with_hidden(model, ids, mask, want_hidden=True)
        for b, s in enumerate(batch):
            values, weights = knn_neighbours(hidden[b, : len(s)], datastore, k_neighbors, knn_temperature, distance)
            yield s, logits[b, : len(s)], values, weights


def from_corpus_grid(
    model,
    tokenizer,
    query_texts,
    datastore: KNNDatastore,
    configs: Sequence[tuple[float, float]],
    k_neighbors: int = 16,
    knn_temperature: float = 100.0,
    k: int = 64,
    max_length: int = 128,
    distance: str = "squared_l2",
    batch_size: int = 4,
    progress: bool = False,
) -> dict[tuple[float, float], object]:
    """:func:`from_corpus` top-k targets for several ``(lam, target_temperature)`` configurations at the cost of one:
    the reference forward pass and the neighbour search are shared. For each configuration

        q = lam p_kNN + (1 - lam) p_ref,     q_tau ∝ q^(1 / tau)   (tau = target_temperature)

    and its top-``k`` with the exact tail mass. ``tau > 1`` flattens the target (the distillation temperature of
    Hinton et al. 2015 applied to the target only); ``lam`` moves it from the reference (0) to the corpus's
    neighbours alone (1; Khandelwal et al. 2020 use 0.25). Returns ``{(lam, tau): datasets.Dataset}`` in the order
    of ``configs``, all on the same rows (:func:`dftnb.target_statistics.target_statistics` measures them in one
    pass)."""
    configs = [(float(lam), _check_temperature(tau)) for lam, tau in configs]
    if not configs or len(set(configs)) != len(configs):
        raise ValueError(f"configs must be distinct (lam, target_temperature) pairs, got {configs!r}.")
    for lam, _ in configs:
        if not 0 <= lam <= 1:
            raise ValueError(f"lam must be in [0, 1] (0: the reference alone, 1: the neighbours alone), got {lam}.")
    V = model_vocab_size(model, tokenizer)
    rows = {c: [] for c in configs}
    for s, logits, values, weights in _knn_queries(model, tokenizer, query_texts, datastore, k_neighbors,
                                                   knn_temperature, max_length, distance, batch_size, progress):
        for lam, tau in configs:
            q = knn_lm_mixture(logits, values, weights, lam)
            if tau != 1.0:
                q = torch.softmax(q.double().clamp_min(1e-300).log() / tau, dim=-1)
            rows[(lam, tau)].append(_row(s, s, SparseTarget.from_probs(q, k)))
    out = {}
    for (lam, tau), r in rows.items():
        info = {"source": "knn", "k_neighbors": k_neighbors, "lam": lam, "target_temperature": tau,
                "knn_temperature": knn_temperature, "distance": distance, "datastore_tokens": len(datastore),
                "max_length": max_length, "sampling": "topk", "tokenizer_hash": tokenizer_hash(tokenizer),
                "datastore_index": type(datastore.index).__name__ if datastore.index is not None else "brute force"}
        out[(lam, tau)] = rows_to_dataset(r, k, V, info)
    return out
