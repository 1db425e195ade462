"""What a sparse target costs in bias at a given storage: gradient error against the dense target, and the
self-target fixed point (docs/design.md, targets; chapter 01, "bias and cost at equal storage").

Both measurements use the forward-KL gradient the trainer uses (the closed forms of :mod:`dftnb.objective`), for a
student ``s = softmax(z_s)`` and a reference ``p = softmax(z_p)`` over the full vocabulary:

* **gradient error** (:func:`gradient_error`): the dense forward-KL gradient w.r.t. the student's logits is
  ``g = s − p``; a sparse target ``q`` built from ``p`` (top-k read in one tail mode, or ``n`` sampled tokens)
  gives ``ĝ``. Per position: cosine ``⟨ĝ, g⟩ / (‖ĝ‖ ‖g‖)`` and relative error ``‖ĝ − g‖ / ‖g‖``; for sampled
  targets also the relative error of the mean of ``draws`` independent targets (variance shrinks with ``draws``,
  bias does not: a top-k target gives the same number in both columns).
* **self-target gradient** (:func:`self_target_gradients`): ``‖∇_z D(softmax(z) ‖ q(z))‖₂`` with the target built
  from the student's own logits. Zero for the bucket (every divergence), for ``k = V`` (every mode) and, in
  expectation, for sampled targets under forward KL; not zero for the uniform tail.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .losses import forward_kl
from .objective import _WITH_GRAD_FNS
from .sparse_target import TAIL_MODES, SparseTarget, check_tail
from .targets import storage_bytes


def _check_pair(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> None:
    if teacher_logits.ndim != 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher and student logits must both be (N, V) with the same shape, got {tuple(teacher_logits.shape)} "
            f"and {tuple(student_logits.shape)}; concatenate the positions of every text first (torch.cat)."
        )
    if not (torch.isfinite(teacher_logits).all() and torch.isfinite(student_logits).all()):
        raise ValueError("logits contain NaN or Inf; compute them in float32 from a healthy model.")


def _subset(logits: torch.Tensor, positions: int | None) -> torch.Tensor:
    """``positions`` evenly spaced rows of ``logits`` (all rows when ``None`` or when there are fewer)."""
    if positions is None or positions >= logits.shape[0]:
        return logits
    if positions < 1:
        raise ValueError(f"positions must be >= 1 (or None for all), got {positions}.")
    return logits[torch.linspace(0, logits.shape[0] - 1, positions).round().long()]


def _stats(g_hat: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cosine and relative error of ``g_hat`` against ``g`` (float64)."""
    norm = g.norm(dim=-1)
    cos = (g_hat * g).sum(-1) / (g_hat.norm(dim=-1) * norm).clamp_min(1e-300)
    rel = (g_hat - g).norm(dim=-1) / norm.clamp_min(1e-300)
    return cos, rel


@torch.no_grad()
def gradient_error(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    ks: Sequence[int] = (8, 16, 64),
    ns: Sequence[int] = (8, 16, 64),
    tails: Sequence[str] = TAIL_MODES,
    draws: int = 8,
    seed: int = 0,
    chunk: int = 64,
    positions: int | None = None,
    dtype: torch.dtype = torch.float64,
):
    """Bias and storage of sparse targets for the forward-KL gradient, one row per stored target.

    ``teacher_logits`` ``(N, V)`` define ``p`` (what the target is built from), ``student_logits`` ``(N, V)`` the
    student ``s``, both computed in ``dtype`` (float32 halves the time and changes the table in the fourth digit);
    ``positions`` evenly spaced rows of them, or all. For top-``k`` targets in every ``tails`` mode and for ``n`` sampled tokens
    (stored in ``n`` slots, :meth:`SparseTarget.sampled_from_logits`, uniform mode; the tail is empty) the row holds:

    * ``bytes/token``: storage at equal format (:func:`dftnb.targets.storage_bytes`);
    * ``truncation KL``: mean over positions of the forward-KL objective evaluated at the reference itself,
      ``D_tail(q ‖ p)``: the excess the sparse objective charges the distribution it was built from (uniform tail:
      ``KL(q_k ‖ p)``; bucket: 0; renormalize: ``−log(1 − r)``; sampled: ``KL(q̂ ‖ p)``, an offset that does not
      move the gradient);
    * ``cosine`` and ``relative error``: mean over positions of the per-position cosine and relative error of
      ``ĝ`` against ``g = s − p``;
    * ``relative error, mean of <draws>``: of the gradient averaged over ``draws`` targets (only sampled targets
      differ between draws).

    Returns a ``pandas.DataFrame``. Sampling is seeded (``seed``), independent of the global RNG.
    """
    import pandas as pd

    _check_pair(teacher_logits, student_logits)
    for tail in tails:
        check_tail(tail)
    V = teacher_logits.shape[-1]
    if not all(1 <= int(k) <= V for k in (*ks, *ns)) or draws < 1:
        raise ValueError(f"every k and n must be in [1, V={V}] and draws >= 1, got ks={ks}, ns={ns}, draws={draws}.")
    generator = torch.Generator().manual_seed(seed)
    grad_fn = _WITH_GRAD_FNS["forward_kl"]
    teacher_logits, student_logits = _subset(teacher_logits, positions), _subset(student_logits, positions)
    configs = [("top-k", tail, int(k)) for k in ks for tail in tails] + [("sampled", "uniform", int(n)) for n in ns]
    sums = {c: torch.zeros(4, dtype=torch.float64) for c in configs}
    N = teacher_logits.shape[0]
    for start in range(0, N, chunk):
        zt = teacher_logits[start : start + chunk].to(dtype)
        zs = student_logits[start : start + chunk].to(dtype)
        g = (torch.softmax(zs, -1) - torch.softmax(zt, -1)).double()
        for source, tail, k in configs:
            mean_grad = None
            for draw in range(draws if source == "sampled" else 1):
                target = (SparseTarget.sampled_from_logits(zt, k, generator=generator) if source == "sampled"
                          else SparseTarget.from_logits(zt, k))
                grad = grad_fn(zs.clone(), target, 1.0, tail=tail)[1].double()
                if draw == 0:
                    cos, rel = _stats(grad, g)
                    value = forward_kl(zt, target, tail=tail).double()  # D_tail(q ‖ p), the objective at p
                    mean_grad = grad
                else:
                    mean_grad += grad
            mean_rel = _stats(mean_grad / (draw + 1), g)[1]
            sums[(source, tail, k)] += torch.stack([value.sum(), cos.sum(), rel.sum(), mean_rel.sum()])
    rows = []
    for (source, tail, k), total in sums.items():
        mean = (total / N).tolist()
        rows.append({"target": source if source == "sampled" else f"top-k {tail}", "k or n": k,
                     "bytes/token": storage_bytes(k, V), "truncation KL": mean[0], "cosine": mean[1],
                     "relative error": mean[2], f"relative error, mean of {draws}": mean[3]})
    return pd.DataFrame(rows)


@torch.no_grad()
def self_target_gradients(
    logits: torch.Tensor,
    k: int = 64,
    n: int = 64,
    divergences: Sequence[str] = ("forward_kl", "reverse_kl"),
    tails: Sequence[str] = TAIL_MODES,
    draws: int = 8,
    seed: int = 0,
    chunk: int = 64,
    positions: int | None = None,
):
    """``‖∇_z D(softmax(z) ‖ q(z))‖₂`` per position, mean and max over positions, for targets built from ``z`` itself.

    One row per (target, tail, divergence): the top-``k`` target in every ``tails`` mode, and ``n`` sampled tokens
    (uniform mode, empty tail) both for a single draw and for the mean gradient over ``draws`` draws, whose norm
    shrinks like ``1/√draws`` where the divergence is unbiased for sampled targets (forward KL) and stays where it is
    biased (reverse KL). Computed in float64 with the closed-form gradients of :mod:`dftnb.objective`, so the bucket
    gives rounding-level numbers (~1e-17), on ``positions`` evenly spaced rows of ``logits`` (or all). Returns a
    ``pandas.DataFrame``.
    """
    import pandas as pd

    if logits.ndim != 2 or not torch.isfinite(logits).all():
        raise ValueError(f"logits must be finite (N, V), got shape {tuple(logits.shape)}; torch.cat the positions.")
    unknown = [d for d in divergences if d not in _WITH_GRAD_FNS or d == "ce"]
    if unknown:
        raise ValueError(f"divergences {unknown} have no closed-form gradient; choose from forward_kl, reverse_kl, "
                         "jsd, tvd.")
    generator = torch.Generator().manual_seed(seed)
    logits = _subset(logits, positions)
    configs = [(f"top-{k}", tail, d) for tail in tails for d in divergences]
    configs += [(f"sampled n={n}", "uniform", d) for d in divergences]
    configs += [(f"sampled n={n}, mean of {draws}", "uniform", d) for d in divergences]
    norms = {c: [] for c in configs}
    for start in range(0, logits.shape[0], chunk):
        z = logits[start : start + chunk].double()
        topk = SparseTarget.from_logits(z, k)
        sampled = [SparseTarget.sampled_from_logits(z, n, generator=generator) for _ in range(draws)]
        for label, tail, d in configs:
            fn = _WITH_GRAD_FNS[d]
            if label.startswith("top"):
                grad = fn(z.clone(), topk, 1.0, tail=tail)[1]
            elif "mean" in label:
                grad = torch.stack([fn(z.clone(), s, 1.0, tail=tail)[1] for s in sampled]).mean(0)
            else:
                grad = fn(z.clone(), sampled[0], 1.0, tail=tail)[1]
            norms[(label, tail, d)].append(grad.norm(dim=-1))
    rows = []
    for (label, tail, d), values in norms.items():
        v = torch.cat(values)
        rows.append({"target": label, "tail": tail, "divergence": d, "mean ‖∇z D‖": v.mean().item(),
                     "max ‖∇z D‖": v.max().item()})
    return pd.DataFrame(rows)
