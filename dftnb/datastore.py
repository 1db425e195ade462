"""The kNN-LM datastore behind corpus targets (Khandelwal et al., "Generalization through Memorization: Nearest
Neighbor Language Models", ICLR 2020).

Keys are the reference model's final hidden states (the LM head's input) at every position of a curated corpus,
values the token that followed. For a query position the ``k`` nearest keys vote for their values with weights
``softmax(−d / T)``, giving ``p_kNN``; the target is ``q = λ·p_kNN + (1−λ)·p_ref`` (:func:`knn_lm_mixture`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .modeling import batches, forward_with_hidden, pack_texts, pad_right, pad_token_id, progress_bar

# Largest datastore searched exactly by default (:func:`faiss_index` ``kind="auto"``). An exact search reads every
# key: N·d multiply-adds per query, against about 2·135M for the 135M model's forward pass per token; at d = 576 the
# search stays under 20% of the forward pass up to about 94k keys, and fp32 keys cost 2.3 KB each. Beyond 65,536
# keys the index is IVF-PQ: the query visits ``nprobe`` of ``nlist`` inverted lists and compares 64-byte product
# codes instead of keys.
EXACT_MAX_KEYS = 65_536
INDEX_KINDS = ("auto", "flat", "ivfflat", "ivfpq", "none")


@dataclass
class KNNDatastore:
    """kNN-LM datastore: ``keys`` (N, d) final hidden states (the LM head's input) at each corpus position and
    ``values`` (N,) the token that followed; ``index``, when set, a FAISS index over the keys that
    :func:`knn_neighbours` searches instead of the keys themselves (``keys`` may then be ``None``: an IVF-PQ index
    keeps only 64-byte codes)."""

    keys: torch.Tensor | None
    values: torch.Tensor
    index: object | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def key_bytes(self) -> float:
        """Bytes per key of what a search reads: the index's codes (PQ), its stored vectors (flat) or the fp32 keys."""
        if self.index is None:
            return float(self.keys.element_size() * self.keys.shape[1])
        import faiss

        if isinstance(self.index, faiss.IndexIVFPQ):
            return float(self.index.pq.code_size)
        return float(4 * self.index.d)


def faiss_index(keys: torch.Tensor, kind: str = "auto", nlist: int | None = None, m: int = 64, nbits: int = 8,
                nprobe: int = 32, seed: int = 0, train_size: int = 65_536):
    """A FAISS index over ``keys`` (N, d) for squared-L2 search (Johnson et al., "Billion-scale similarity search
    with GPUs", 2019).

    ``"flat"``: exact (``IndexFlatL2``). ``"ivfpq"``: an inverted file of ``nlist`` k-means cells (default
    ``4·sqrt(N)``), each key stored as ``m`` sub-vector codes of ``nbits`` bits (``m·nbits/8`` = 64 bytes per key at
    the defaults, against ``4·d`` = 2,304 for fp32 keys at d = 576), trained on ``train_size`` keys (at least 40
    per list) drawn with ``seed``; a search visits ``nprobe`` cells. At 200k SmolLM2 keys the 64-byte codes, not
    the probing, bound the recall of the 16 nearest keys at about 0.71 (``benchmarks/datastore.py``). ``"ivfflat"``:
    the same inverted file over the uncompressed keys (``IndexIVFFlat``: distances exact, only the ``nprobe`` cells
    searched, so the recall is bounded by the probing alone; 4·d bytes per key). ``"auto"``: flat up to
    :data:`EXACT_MAX_KEYS` keys, IVF-PQ beyond.
    """
    import faiss
    import numpy as np

    if kind not in INDEX_KINDS[:-1]:
        raise ValueError(f"index kind must be one of {INDEX_KINDS[:-1]}, got {kind!r}.")
    x = np.ascontiguousarray(keys.detach().cpu().float().numpy())
    n, d = x.shape
    if kind == "auto":
        kind = "flat" if n <= EXACT_MAX_KEYS else "ivfpq"
    faiss.omp_set_num_threads(torch.get_num_threads())
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
        index.add(x)
        return index
    if kind == "ivfpq" and d % m:
        raise ValueError(f"IVF-PQ needs the key dimension {d} to be a multiple of m={m}; choose m dividing {d}.")
    nlist = nlist or max(1, int(4 * math.sqrt(n)))
    if n < 39 * nlist or (kind == "ivfpq" and n < 2**nbits * 39 // 4):
        raise ValueError(f"{n} keys are too few to train {kind} with nlist={nlist}, nbits={nbits}; use kind='flat'.")
    if kind == "ivfflat":
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    else:
        index = faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, nlist, m, nbits)
        index.pq.cp.seed = seed
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(n, size=min(n, max(train_size, 40 * nlist)), replace=False)]  # FAISS asks 39 per list
    index.cp.seed = seed
    index.train(sample)
    index.add(x)
    index.nprobe = min(nprobe, nlist)
    return index


@torch.no_grad()
def build_datastore(
    model, tokenizer, corpus_texts, max_datastore_tokens: int = 20_000, block_size: int = 128, batch_size: int = 8,
    progress: bool = False, index: str = "auto",
) -> KNNDatastore:
    """Run the reference model over ``corpus_texts`` packed into ``block_size`` blocks (:func:`pack_texts`) and
    store (hidden state at position t, token t + 1) for up to ``max_datastore_tokens`` positions.

    Cost: one forward pass per token (~600 tokens/s for the 135M model on 2 CPU cores). ``index`` (see
    :func:`faiss_index`; ``"none"`` = brute-force search over the fp32 keys) decides how it is searched: ``"auto"``
    keeps small stores exact and compresses large ones to 64-byte product codes (the fp32 keys are then dropped).
    """
    if max_datastore_tokens < 1:
        raise ValueError(f"max_datastore_tokens must be >= 1, got {max_datastore_tokens}.")
    if index not in INDEX_KINDS:
        raise ValueError(f"index must be one of {INDEX_KINDS}, got {index!r}.")
    n_blocks = math.ceil(max_datastore_tokens / (block_size - 1))
    blocks = pack_texts(tokenizer, corpus_texts, block_size, n_blocks)
    keys, values, n = [], [], 0
    for batch in progress_bar(batches(blocks, batch_size), progress, "kNN datastore"):
        ids, mask = pad_right(batch, pad_token_id(tokenizer), model.device)
        _, hidden = forward_with_hidden(model, ids, mask, want_hidden=True)
        keys.append(hidden[:, :-1].reshape(-1, hidden.shape[-1]).cpu())
        values.append(ids[:, 1:].reshape(-1).cpu())
        n += values[-1].numel()
        if n >= max_datastore_tokens:
            break
    store = KNNDatastore(torch.cat(keys)[:max_datastore_tokens], torch.cat(values)[:max_datastore_tokens])
    if index != "none":
        import faiss

        store.index = faiss_index(store.keys, index)
        if not isinstance(store.index, faiss.IndexFlat):
            store.keys = None  # an inverted file of product codes replaces them
    return store


@torch.no_grad()
def knn_neighbours(
    queries: torch.Tensor, datastore: KNNDatastore, k_neighbors: int, temperature: float,
    distance: str = "squared_l2", chunk: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kNN-LM retrieval: for each query the ``k_neighbors`` nearest keys, returned as their ``values``
    (M, K) and normalised weights ``softmax(-d(key, query) / temperature)`` (M, K), float32.

    ``d`` is the squared Euclidean distance (what the reference implementation's FAISS index returns) or, with
    ``distance="l2"``, the Euclidean distance. Search is exact: candidates from ``||q||^2 - 2 q.k + ||k||^2`` by
    matrix product, then their distances recomputed directly. With ``datastore.index`` (:func:`faiss_index`) the
    index answers instead: exact for ``IndexFlatL2``, approximate for IVF-PQ (its distances are those of the
    product codes, as in Khandelwal et al.'s 100M-key datastores).
    """
    if distance not in ("squared_l2", "l2"):
        raise ValueError(f"distance must be 'squared_l2' or 'l2', got {distance!r}.")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"knn_temperature must be a finite number > 0 (inf weighs every neighbour alike), got "
                         f"{temperature}.")
    if not 1 <= k_neighbors <= len(datastore):
        raise ValueError(f"k_neighbors must be in [1, {len(datastore)}] (datastore size), got {k_neighbors}.")
    if datastore.index is not None:
        dist, idx = datastore.index.search(queries.detach().cpu().float().contiguous().numpy(), k_neighbors)
        if (idx < 0).any():
            raise RuntimeError("the FAISS index returned fewer than k_neighbors keys; raise its nprobe.")
        d = torch.from_numpy(dist).to(queries.device).clamp_min(0)
        d = d if distance == "squared_l2" else d.sqrt()
        idx = torch.from_numpy(idx).to(queries.device)
        return datastore.values.to(queries.device)[idx], torch.softmax(-d / temperature, dim=-1)
    keys = datastore.keys.to(queries.device, torch.float32)
    key_sq = (keys * keys).sum(-1)
    vals, weights = [], []
    for i in range(0, queries.shape[0], chunk):
        q = queries[i : i + chunk].float()
        approx = (q * q).sum(-1, keepdim=True) - 2 * q @ keys.T + key_sq
        idx = approx.topk(k_neighbors, dim=-1, largest=False).indices
        d = ((keys[idx] - q.unsqueeze(1)) ** 2).sum(-1)
        d = d if distance == "squared_l2" else d.sqrt()
        weights.append(torch.softmax(-d / temperature, dim=-1))
        vals.append(datastore.values.to(queries.device)[idx])
    return torch.cat(vals), torch.cat(weights)


def knn_lm_mixture(ref_logits: torch.Tensor, nbr_values: torch.Tensor, nbr_weights: torch.Tensor, lam: float) -> torch.Tensor:
    """``q = lam p_kNN + (1 - lam) p_ref`` as dense (M, V) float32 probabilities, where
    ``p_kNN(w) = sum_{neighbours with value w} weight`` and ``p_ref = softmax(ref_logits)`` (Khandelwal et al., eq. 2)."""
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1], got {lam}.")
    q = (1 - lam) * torch.softmax(ref_logits.float(), dim=-1)
    return q.scatter_add_(-1, nbr_values.long(), lam * nbr_weights.float())


@torch.no_grad()
def datastore_scaling(
    model, tokenizer, corpus_texts, query_ids: list[list[int]], sizes: tuple[int, ...], k_neighbors: int = 16,
    knn_temperature: float = 100.0, lam: float = 0.25, large_index: str = "ivfflat", block_size: int = 128,
):
    """What a bigger datastore changes in the kNN-LM target, on fixed held-out query positions.

    One datastore of ``max(sizes)`` keys is built (:func:`build_datastore`); each size uses its first ``n`` keys
    (nested stores), searched exactly up to :data:`EXACT_MAX_KEYS` keys and with ``large_index`` beyond. For every
    query position with a known next token ``y`` the target is ``q = λ p_kNN + (1 − λ) p_ref`` (:func:`knn_lm_mixture`).
    One row per size, means over the positions:

    * ``neighbour_sq_dist``: squared L2 distance to the nearest key (never grows with n under exact search);
    * ``hit_rate``: fraction of positions where ``y`` is among the neighbours' values (``p_kNN(y) > 0``);
    * ``p_knn_y``: ``p_kNN(y)``; ``nll_target`` and ``nll_reference``: ``−log q(y)`` and ``−log p_ref(y)`` (nats);
    * ``entropy_target``: ``H(q)``; ``kl_target_reference``: ``KL(q ‖ p_ref)``, how far the target moves from the
      reference.
    """
    import pandas as pd

    from .modeling import pad_token_id

    if not sizes or min(sizes) < k_neighbors:
        raise ValueError(f"every datastore size must hold at least k_neighbors={k_neighbors} keys, got {sizes}.")
    store = build_datastore(model, tokenizer, corpus_texts, max(sizes), block_size, index="none")
    if len(store) < max(sizes):
        raise ValueError(f"the corpus gave only {len(store)} datastore tokens, fewer than the largest size "
                         f"{max(sizes)}; pass smaller sizes or a larger corpus.")
    ids, mask = pad_right([q for q in query_ids if len(q) > 1], pad_token_id(tokenizer), model.device)
    logits, hidden = forward_with_hidden(model, ids, mask, want_hidden=True)
    keep = mask[:, 1:].bool().reshape(-1).cpu()
    queries = hidden[:, :-1].reshape(-1, hidden.shape[-1]).cpu()[keep]
    ref_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).cpu()[keep]
    y = ids[:, 1:].reshape(-1).cpu()[keep]
    log_ref = torch.log_softmax(ref_logits.double(), dim=-1)
    rows = []
    for n in sorted(sizes):
        kind = "flat" if n <= EXACT_MAX_KEYS else large_index
        sub = KNNDatastore(store.keys[:n], store.values[:n])
        sub.index = faiss_index(sub.keys, kind)
        values, weights = knn_neighbours(queries, sub, k_neighbors, knn_temperature)
        dist, _ = sub.index.search(queries.float().contiguous().numpy(), 1)
        p_knn_y = (weights * (values == y[:, None])).sum(-1).double()
        q = knn_lm_mixture(ref_logits, values, weights, lam).double()
        log_q = q.clamp_min(1e-300).log()
        rows.append({
            "datastore_keys": n, "index": kind, "positions": int(y.numel()),
            "neighbour_sq_dist": float(dist[:, 0].mean()),
            "hit_rate": float((p_knn_y > 0).double().mean()),
            "p_knn_y": float(p_knn_y.mean()),
            "nll_target": float(-log_q.gather(-1, y[:, None]).mean()),
            "nll_reference": float(-log_ref.gather(-1, y[:, None]).mean()),
            "entropy_target": float(-(q * log_q).sum(-1).mean()),
            "kl_target_reference": float((q * (log_q - log_ref)).sum(-1).mean()),
        })
    return pd.DataFrame(rows)
