"""Target distributions for DFT (DESIGN.md §5): the sparse format, three ways to build it, and an offline cache.

``SparseTarget`` stores, per position, the top-k token ids and their log-probabilities; the remaining tail mass
``r = 1 - sum(exp(logprobs))`` is spread uniformly over the other ``V - k`` tokens, so every target is a proper
full-vocabulary distribution ``q_j = r / (V - k)`` off-support without ever storing ``V`` numbers per token.

Target datasets (``datasets.Dataset``, one row per sequence) have the columns

* ``input_ids`` (T,), ``labels`` (T,; equal to ``input_ids``, -100 where no loss, Hugging Face convention),
* ``target_ids`` (T, k) and ``target_logprobs`` (T, k): row ``t`` is the distribution of token ``t + 1`` given
  tokens ``<= t``, aligned with the model's logits at position ``t`` (``logits[:, :-1]`` vs ``labels[:, 1:]`` vs
  ``targets[:, :-1]``).

Ids are stored as ``uint16`` when ``V <= 65,536`` (``int32`` otherwise) and log-probabilities as ``float16``, in
fixed-size Arrow lists, so a token costs exactly ``4k`` bytes of target (256 B at k = 64) against ``2V`` bytes
(98,304 B at V = 49,152) for a dense fp16 row. A target built with fewer than ``k`` distinct tokens (a trie node
that saw 3 continuations, a point mass) fills the unused slots with distinct unused ids at :func:`pad_logprob`,
the floored tail log-probability, so the slots carry (numerically) no mass and everything stays finite in fp16.

Sources:

* :func:`from_reference_model` - teacher forcing through a reference model, optionally behind a style prefix
  (context distillation, Askell et al. 2021; Snell et al. 2022).
* :func:`from_samples` - ``n`` sampled completions per prompt, a prefix trie, and the empirical next-token
  distribution at each trie node.
* :func:`from_corpus` - a kNN-LM (Khandelwal et al., ICLR 2020) over a curated corpus mixed with the reference model.

:func:`build_or_load` caches a built dataset on disk with a ``dftnb_target.json`` sidecar (model, tokenizer hash,
corpus, k, source, vocabulary size, code version, parameters) and refuses or rebuilds a cache whose sidecar does
not match. :class:`dftnb.trainer.SparseTargetCollator` turns rows back into padded tensors and :func:`batch_sparse_target` into
a ``SparseTarget`` for the losses.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TAIL_EPS = 1e-12  # floor on the tail mass so log(r) stays finite
TARGET_FORMAT_VERSION = 1  # bump when the stored layout or a builder's maths changes: old caches become stale
SIDECAR = "dftnb_target.json"
REQUIRED_METADATA = ("model", "tokenizer_hash", "corpus", "k", "source", "vocab_size")
TARGET_COLUMNS = ("input_ids", "labels", "target_ids", "target_logprobs")
IGNORE_INDEX = -100


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


# ----------------------------------------------------------------------------------------------------------------
# Storage and truncation error
# ----------------------------------------------------------------------------------------------------------------


def id_dtype(vocab_size: int) -> str:
    """Arrow/NumPy dtype of stored ids: ``uint16`` when every id fits (``V <= 65,536``), else ``int32``."""
    return "uint16" if vocab_size <= 2**16 else "int32"


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


# ----------------------------------------------------------------------------------------------------------------
# The target dataset format
# ----------------------------------------------------------------------------------------------------------------


def target_features(k: int, vocab_size: int):
    """``datasets.Features`` of a target dataset; targets are fixed-size lists (no per-token Arrow offsets)."""
    from datasets import Features, List, Value

    ids = id_dtype(vocab_size)
    return Features(
        {
            "input_ids": List(Value(ids)),
            "labels": List(Value("int32")),
            "target_ids": List(List(Value(ids), length=k)),
            "target_logprobs": List(List(Value("float16"), length=k)),
        }
    )


def rows_to_dataset(rows: list[dict], k: int, vocab_size: int, info: dict | None = None):
    """Build a target ``datasets.Dataset`` from per-sequence NumPy rows (``input_ids`` (T,), ``labels`` (T,),
    ``target_ids`` (T, k), ``target_logprobs`` (T, k)); ``info`` (plus ``k`` and ``vocab_size``) is kept as JSON
    in ``dataset.info.description`` (read it back with :func:`target_info`)."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    if not rows:
        raise ValueError("no target rows to store: every input was empty or shorter than 2 tokens.")
    features = target_features(k, vocab_size)
    ids_np = np.dtype(id_dtype(vocab_size))
    lengths = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))

    def column(name, dtype, width=None):
        flat = np.concatenate([np.asarray(r[name]).reshape(-1) for r in rows]).astype(dtype)
        values = pa.array(flat)
        if width is not None:
            values = pa.FixedSizeListArray.from_arrays(values, width)
        return pa.ListArray.from_arrays(offsets, values)

    for r in rows:
        if np.asarray(r["target_ids"]).shape != (len(r["input_ids"]), k):
            raise ValueError(f"target rows must be (T, k={k}); got {np.asarray(r['target_ids']).shape}.")
    table = pa.Table.from_arrays(
        [
            column("input_ids", ids_np),
            column("labels", np.int32),
            column("target_ids", ids_np, k),
            column("target_logprobs", np.float16, k),
        ],
        schema=features.arrow_schema,
    )
    meta = {"k": k, "vocab_size": vocab_size, **(info or {})}
    ds_info = datasets.DatasetInfo(features=features, description=json.dumps({"dftnb_target": meta}))
    return datasets.Dataset(InMemoryTable(table), info=ds_info)


def target_info(dataset) -> dict:
    """The builder's record (``k``, ``vocab_size``, ``source``, parameters) kept in a target dataset's info."""
    try:
        return json.loads(dataset.info.description)["dftnb_target"]
    except (TypeError, ValueError, KeyError):
        raise ValueError(
            "this dataset carries no dftnb target info; build it with dftnb.targets.from_reference_model, "
            "from_samples or from_corpus (or load it with build_or_load)."
        ) from None


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


# ----------------------------------------------------------------------------------------------------------------
# Inputs: texts, tokens, model bookkeeping
# ----------------------------------------------------------------------------------------------------------------


def model_vocab_size(model, tokenizer=None) -> int:
    """The model's output vocabulary size; raises if ``tokenizer`` has ids the model cannot produce."""
    V = int(model.get_output_embeddings().weight.shape[0])
    if tokenizer is not None and len(tokenizer) > V:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {V}: they do not belong together; "
            "load the tokenizer that ships with the model."
        )
    return V


def _texts(texts_or_dataset) -> list:
    """A list of texts (or token-id lists) from a list, or from a ``datasets.Dataset`` with a ``text`` column."""
    if isinstance(texts_or_dataset, str):
        raise ValueError("pass a list of texts, not a single string (wrap it: [text]).")
    if hasattr(texts_or_dataset, "column_names"):
        if "text" not in texts_or_dataset.column_names:
            raise ValueError(f"dataset has no 'text' column (columns: {texts_or_dataset.column_names}).")
        texts_or_dataset = texts_or_dataset["text"]
    items = list(texts_or_dataset)
    if not items:
        raise ValueError("no texts given: pass a non-empty list of texts (or a dataset with a 'text' column).")
    return items


def _encode(tokenizer, item, max_length: int | None, add_special_tokens: bool = True) -> list[int]:
    ids = list(item) if not isinstance(item, str) else tokenizer(item, add_special_tokens=add_special_tokens)["input_ids"]
    return [int(i) for i in ids[:max_length]] if max_length else [int(i) for i in ids]


def pack_texts(tokenizer, texts, block_size: int, max_blocks: int | None = None, separator: str = "\n\n") -> list[list[int]]:
    """Concatenate the tokenised ``texts`` (joined by ``separator``) and cut them into full ``block_size`` blocks.

    Short documents (a Shakespeare speech is ~60 tokens) then fill every training row; tokenising lazily stops as
    soon as ``max_blocks`` blocks exist.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}.")
    sep = tokenizer(separator, add_special_tokens=False)["input_ids"] if separator else []
    blocks, buf = [], []
    for text in _texts(texts):
        buf += tokenizer(text, add_special_tokens=False)["input_ids"] + sep
        while len(buf) >= block_size:
            blocks.append(buf[:block_size])
            buf = buf[block_size:]
            if max_blocks is not None and len(blocks) >= max_blocks:
                return blocks
    if not blocks:
        raise ValueError(f"the texts hold fewer than block_size={block_size} tokens; pass more text or a smaller block.")
    return blocks


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer's full serialisation (vocabulary, merges, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def model_fingerprint(model) -> str:
    """sha256 over the model config and the raw bytes of every parameter (distinguishes seeds and fine-tunes)."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, p in model.state_dict().items():
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def target_metadata(model, tokenizer, *, source: str, corpus: str, k: int, model_name: str | None = None, **params) -> dict:
    """The cache key of a target build: what :func:`build_or_load` compares against the sidecar.

    ``model`` is ``model_name`` (or the config's ``_name_or_path``) plus a fingerprint of the weights; ``params``
    are the builder's arguments (sizes, temperature, prefix, lam, ...) and must be JSON-serialisable.
    """
    from . import __version__

    return {
        "model": model_name or getattr(model.config, "_name_or_path", "") or model.config.model_type,
        "model_fingerprint": model_fingerprint(model),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "corpus": corpus,
        "k": int(k),
        "source": source,
        "vocab_size": model_vocab_size(model, tokenizer),
        "code_version": f"dftnb-{__version__}/targets-v{TARGET_FORMAT_VERSION}",
        "params": json.loads(json.dumps(params)),
    }


def _progress(iterable, progress: bool, desc: str, total: int | None = None):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not progress, leave=False)


def _batches(items: list, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def _pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ``(input_ids, attention_mask)`` (positions of real tokens are unaffected)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first.")
    return int(pad)


@torch.no_grad()
def _forward(model, input_ids, attention_mask, want_hidden: bool = False):
    """Logits (float32) and, optionally, the final hidden states that enter the LM head (float32)."""
    captured = {}
    handle = None
    if want_hidden:
        head = model.get_output_embeddings()
        handle = head.register_forward_hook(lambda mod, args, out: captured.__setitem__("h", args[0]))
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    finally:
        if handle is not None:
            handle.remove()
    return logits, (captured["h"].float() if want_hidden else None)


@torch.no_grad()
def reference_logits(model, tokenizer, texts_or_dataset, max_length: int = 128, batch_size: int = 4) -> list[torch.Tensor]:
    """The model's float32 logits ``(T_i, V)`` on each text (truncated to ``max_length``): the full distributions
    that :func:`truncation_kl` compares a stored top-k against."""
    seqs = [s for s in (_encode(tokenizer, t, max_length) for t in _texts(texts_or_dataset)) if s]
    out = []
    for batch in _batches(seqs, batch_size):
        ids, mask = _pad(batch, _pad_id(tokenizer), model.device)
        logits, _ = _forward(model, ids, mask)
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
    seqs = [_encode(tokenizer, t, max_length, add_special_tokens=not prefix_ids) for t in _texts(texts_or_dataset)]
    kept = [s for s in seqs if len(s) >= 2]
    pad_id, P, rows = _pad_id(tokenizer), len(prefix_ids), []
    for batch in _progress(_batches(kept, batch_size), progress, "reference targets"):
        ids, mask = _pad([prefix_ids + s for s in batch], pad_id, model.device)
        logits, _ = _forward(model, ids, mask)
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
            pad_token_id=_pad_id(tokenizer),
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
    prompts = _texts(prompts)
    V = model_vocab_size(model, tokenizer)
    end = _pad_id(tokenizer) if tokenizer.eos_token_id is None else int(tokenizer.eos_token_id)
    rows, distinct = [], []
    for i, prompt in enumerate(_progress(prompts, progress, "sampled targets")):
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


@dataclass
class KNNDatastore:
    """kNN-LM datastore: ``keys`` (N, d) final hidden states (the LM head's input) at each corpus position and
    ``values`` (N,) the token that followed."""

    keys: torch.Tensor
    values: torch.Tensor

    def __len__(self) -> int:
        return int(self.values.shape[0])


@torch.no_grad()
def build_datastore(
    model, tokenizer, corpus_texts, max_datastore_tokens: int = 20_000, block_size: int = 128, batch_size: int = 8,
    progress: bool = False,
) -> KNNDatastore:
    """Run the reference model over ``corpus_texts`` packed into ``block_size`` blocks (:func:`pack_texts`) and
    store (hidden state at position t, token t + 1) for up to ``max_datastore_tokens`` positions.

    Cost: one forward pass per token (~600 tokens/s for the 135M model on 2 CPU cores) and ``4 d`` bytes per key
    (2.3 KB at d = 576), so the CPU default holds tens of thousands of tokens, not a whole corpus.
    """
    if max_datastore_tokens < 1:
        raise ValueError(f"max_datastore_tokens must be >= 1, got {max_datastore_tokens}.")
    n_blocks = math.ceil(max_datastore_tokens / (block_size - 1))
    blocks = pack_texts(tokenizer, corpus_texts, block_size, n_blocks)
    keys, values, n = [], [], 0
    for batch in _progress(_batches(blocks, batch_size), progress, "kNN datastore"):
        ids, mask = _pad(batch, _pad_id(tokenizer), model.device)
        _, hidden = _forward(model, ids, mask, want_hidden=True)
        keys.append(hidden[:, :-1].reshape(-1, hidden.shape[-1]).cpu())
        values.append(ids[:, 1:].reshape(-1).cpu())
        n += values[-1].numel()
        if n >= max_datastore_tokens:
            break
    return KNNDatastore(torch.cat(keys)[:max_datastore_tokens], torch.cat(values)[:max_datastore_tokens])


@torch.no_grad()
def knn_neighbours(
    queries: torch.Tensor, datastore: KNNDatastore, k_neighbors: int, temperature: float,
    distance: str = "squared_l2", chunk: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kNN-LM retrieval: for each query the ``k_neighbors`` nearest keys, returned as their ``values``
    (M, K) and normalised weights ``softmax(-d(key, query) / temperature)`` (M, K), float32.

    ``d`` is the squared Euclidean distance (what the reference implementation's FAISS index returns) or, with
    ``distance="l2"``, the Euclidean distance. Search is exact: candidates from ``||q||^2 - 2 q.k + ||k||^2`` by
    matrix product, then their distances recomputed directly; at scale one uses an approximate FAISS index
    (IVF/PQ) instead, as Khandelwal et al. do for 100M+ keys.
    """
    if distance not in ("squared_l2", "l2"):
        raise ValueError(f"distance must be 'squared_l2' or 'l2', got {distance!r}.")
    if temperature <= 0:
        raise ValueError(f"knn_temperature must be > 0, got {temperature}.")
    if not 1 <= k_neighbors <= len(datastore):
        raise ValueError(f"k_neighbors must be in [1, {len(datastore)}] (datastore size), got {k_neighbors}.")
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
    seqs = [s for s in (_encode(tokenizer, t, max_length) for t in _texts(query_texts)) if len(s) >= 2]
    rows = []
    for batch in _progress(_batches(seqs, batch_size), progress, "kNN-LM targets"):
        ids, mask = _pad(batch, _pad_id(tokenizer), model.device)
        logits, hidden = _forward(model, ids, mask, want_hidden=True)
        for b, s in enumerate(batch):
            nbr_values, nbr_weights = knn_neighbours(hidden[b, : len(s)], datastore, k_neighbors, knn_temperature,
                                                     distance)
            q = knn_lm_mixture(logits[b, : len(s)], nbr_values, nbr_weights, lam)
            rows.append(_row(s, s, SparseTarget.from_probs(q, k)))
    info = {"source": "knn", "k_neighbors": k_neighbors, "lam": lam, "knn_temperature": knn_temperature,
            "distance": distance, "datastore_tokens": len(datastore), "max_length": max_length}
    return rows_to_dataset(rows, k, V, info)


# ----------------------------------------------------------------------------------------------------------------
# Offline cache
# ----------------------------------------------------------------------------------------------------------------


class StaleTargetCacheError(RuntimeError):
    """A target cache on disk was built from something else (model, tokenizer, corpus, k, code, parameters)."""


def target_cache_path(cache: str | os.PathLike) -> Path:
    """A bare name goes under ``cache_dir()/targets/``; anything with a path separator is used as given."""
    from .models import cache_dir

    cache = str(cache)
    return Path(cache) if (os.sep in cache or "/" in cache) else cache_dir() / "targets" / cache


def read_sidecar(path: str | os.PathLike) -> dict | None:
    side = Path(path) / SIDECAR
    return json.loads(side.read_text()) if side.exists() else None


def _mismatched_keys(stored: dict, wanted: dict) -> list[str]:
    return sorted(key for key in set(stored) | set(wanted) if stored.get(key) != wanted.get(key))


def build_or_load(
    cache: str | os.PathLike, metadata: dict, builder: Callable[[], object], rebuild: str = "auto"
):
    """Load a cached target dataset whose sidecar matches ``metadata``, otherwise build, save and load it.

    ``cache``: a name under ``cache_dir()/targets`` or a folder path. ``metadata``: the cache key, normally from
    :func:`target_metadata` (must hold ``model, tokenizer_hash, corpus, k, source, vocab_size``). ``rebuild``:

    * ``"auto"``  - a missing or mismatching cache is (re)built; a matching one is loaded;
    * ``"never"`` - a mismatching or missing cache raises :class:`StaleTargetCacheError` naming the keys;
    * ``"always"`` - rebuild regardless.

    A folder without a sidecar was not written here and is never overwritten. The dataset is written to a
    temporary folder and renamed into place, so an interrupted build leaves the previous cache intact.
    Returns the memory-mapped dataset from ``datasets.load_from_disk``.
    """
    import datasets

    if rebuild not in ("auto", "never", "always"):
        raise ValueError(f"rebuild must be 'auto', 'never' or 'always', got {rebuild!r}.")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"target cache metadata lacks {missing}; build it with dftnb.targets.target_metadata(...).")
    wanted = json.loads(json.dumps(metadata))
    path = target_cache_path(cache)
    how = f"call build_or_load(..., rebuild='auto') to rebuild it, or delete {path}"
    if path.exists():
        side = read_sidecar(path)
        if side is None:
            raise StaleTargetCacheError(
                f"{path} exists but has no {SIDECAR}: it was not written by dftnb.targets and will not be "
                "overwritten; move it away or choose another cache name."
            )
        stale = _mismatched_keys(side.get("metadata", {}), wanted)
        if not stale and rebuild != "always":
            return datasets.load_from_disk(str(path))
        if stale and rebuild == "never":
            diffs = "; ".join(f"{key}: cached {side['metadata'].get(key)!r} != wanted {wanted.get(key)!r}"
                              for key in stale)
            raise StaleTargetCacheError(f"target cache {path} is stale ({diffs}); {how}.")
    elif rebuild == "never":
        raise StaleTargetCacheError(f"no target cache at {path} and rebuild='never'; {how}.")
    dataset = builder()
    absent = [c for c in TARGET_COLUMNS if c not in getattr(dataset, "column_names", [])]
    if absent:
        raise ValueError(f"the builder returned no target dataset (missing columns {absent}); return a Dataset "
                         "from from_reference_model / from_samples / from_corpus.")
    info = target_info(dataset)
    if info["k"] != wanted["k"] or info["vocab_size"] != wanted["vocab_size"]:
        raise ValueError(f"built k={info['k']}, V={info['vocab_size']} but the metadata says k={wanted['k']}, "
                         f"V={wanted['vocab_size']}: pass the same k to the builder and to target_metadata.")
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    tokens = int(sum(len(x) for x in dataset["input_ids"]))
    (tmp / SIDECAR).write_text(json.dumps({"metadata": wanted, "rows": len(dataset), "tokens": tokens,
                                           "builder_info": info}, indent=2))
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(path)
    return datasets.load_from_disk(str(path))


def arrow_bytes(path: str | os.PathLike) -> int:
    """Total size of the ``.arrow`` data files of a dataset saved with ``save_to_disk``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*.arrow"))


# ----------------------------------------------------------------------------------------------------------------
# From a collated batch (dftnb.trainer.SparseTargetCollator) back to a SparseTarget
# ----------------------------------------------------------------------------------------------------------------


def batch_sparse_target(batch: dict, vocab_size: int) -> SparseTarget:
    """The ``SparseTarget`` (B, T, k) of a collated batch (validated: ids in range, unique, mass <= 1)."""
    return SparseTarget(batch["target_ids"].long(), batch["target_logprobs"].float(), vocab_size)


# ----------------------------------------------------------------------------------------------------------------
# The targets the training chapter uses
# ----------------------------------------------------------------------------------------------------------------

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
    from .data import corpus_texts

    if profile not in SHAKESPEARE_TARGET_SIZES:
        raise ValueError(f"profile must be one of {tuple(SHAKESPEARE_TARGET_SIZES)}, got {profile!r}.")
    n_seqs, seq_len = SHAKESPEARE_TARGET_SIZES[profile]
    meta = target_metadata(model, tokenizer, source="reference", corpus="shakespeare/train", k=k,
                           model_name=model_name, sequences=n_seqs, seq_len=seq_len, packing="\n\n", prefix=None)

    def build():
        blocks = pack_texts(tokenizer, corpus_texts("shakespeare", "train"), seq_len, n_seqs)
        return from_reference_model(model, tokenizer, blocks, k=k, max_length=seq_len, progress=progress)

    return build_or_load(f"shakespeare-train-reference-k{k}-{profile}", meta, build, rebuild)
