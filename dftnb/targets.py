"""Target distributions for DFT (DESIGN.md §5).

``SparseTarget`` stores, per position, the top-k token ids and their log-probabilities; the remaining tail mass
``r = 1 - sum(exp(logprobs))`` is spread uniformly over the other ``V - k`` tokens, so every target is a proper
full-vocabulary distribution ``q_j = r / (V - k)`` off-support without ever storing ``V`` numbers per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TAIL_EPS = 1e-12  # floor on the tail mass so log(r) stays finite


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

    def to_dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Full ``(..., V)`` probabilities (tests and plots only: this is what the sparse form avoids storing)."""
        n_tail = self.vocab_size - self.k
        fill = (self.tail_mass().to(dtype) / n_tail) if n_tail else torch.zeros(self.logprobs.shape[:-1], dtype=dtype)
        dense = fill.unsqueeze(-1).expand(*self.logprobs.shape[:-1], self.vocab_size).clone()
        dense.scatter_(-1, self.ids.long(), self.logprobs.to(dtype).exp())
        return dense

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
