"""The fine-tuning methods: one registry of what each trains with, what the result tables call it, and what it reads.

Every method minimises the objective of :class:`dftnb.trainer.DFTConfig` with one loss of :mod:`dftnb.losses`:

* SFT: ``CE(p, y) = −log p(y)``, the one-hot cross-entropy on the data's next token (reads no target);
* GEM: reverse-KL matching of the data's next token with an entropy regulariser, the surrogate
  ``−Σ_j sg(q_j·w_j)·(log p_y − log p_j)`` of :func:`dftnb.losses.gem` (reads no target);
* DFT: a divergence ``D(p_τ, q)`` between the student's next-token distribution and the stored target ``q``
  (reverse KL, forward KL, JSD, TVD, sorted W₁, Sinkhorn W), which must be built first (:mod:`dftnb.targets`).

The trainer's ``name -> divergence`` map (:data:`dftnb.trainer.METHODS`), the study's and the benchmark's table
labels and the denoiser curve's labels are views of :data:`METHOD_REGISTRY`; a method is added here only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One fine-tuning method.

    Attributes:
        name: the run name notebooks, the CLI and the study use (``"sft"``, ``"dft_reverse_kl"``, ...).
        divergence: the loss of :data:`dftnb.losses.LOSSES` it trains with.
        label: how result tables and figures name it (``"DFT (reverse KL)"``).
        reads_target: whether its objective reads ``target_ids``/``target_logprobs`` (the DFT divergences).
    """

    name: str
    divergence: str
    label: str
    reads_target: bool


# name -> Method, in the order the trainer's error messages and the CLI list them.
METHOD_REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("sft", "ce", "SFT", reads_target=False),
    Method("gem", "gem", "GEM", reads_target=False),
    Method("dft_reverse_kl", "reverse_kl", "DFT (reverse KL)", reads_target=True),
    Method("dft_forward_kl", "forward_kl", "DFT (forward KL)", reads_target=True),
    Method("dft_jsd", "jsd", "DFT (JSD)", reads_target=True),
    Method("dft_tvd", "tvd", "DFT (TVD)", reads_target=True),
    Method("dft_sorted_w1", "wasserstein_sorted", "DFT (sorted W₁ / ULD)", reads_target=True),
    Method("dft_sinkhorn", "sinkhorn", "DFT (Sinkhorn W, embedding cost)", reads_target=True),
)}


def method(name: str) -> Method:
    """The registry entry of ``name``; a clear error naming the known methods otherwise."""
    if name not in METHOD_REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {tuple(METHOD_REGISTRY)}.")
    return METHOD_REGISTRY[name]


def divergences() -> dict[str, str]:
    """``{name: divergence}`` of every method (the view :data:`dftnb.trainer.METHODS` holds)."""
    return {name: m.divergence for name, m in METHOD_REGISTRY.items()}


def labels(names=None, display: dict[str, str] | None = None) -> dict[str, str]:
    """``{name: label}`` of ``names`` (default: every method, registry order); ``display`` replaces the label of some
    methods where one study prints its own (the denoiser curve calls SFT "CE")."""
    display = display or {}
    return {name: display.get(name, method(name).label) for name in (METHOD_REGISTRY if names is None else names)}
