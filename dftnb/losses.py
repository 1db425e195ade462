"""Divergences between the student's next-token distribution and a sparse target, and the SFT baselines.

One function per divergence, each with its formula and paper; together they are the table in docs/design.md.
Notation: the student is ``p = softmax(z / τ)`` over the vocabulary of size ``V``; the target ``q`` is a
:class:`~dftnb.sparse_target.SparseTarget`: exact probabilities ``q_j`` on its ``k`` support ids ``S`` and the tail
mass ``r``, read according to the ``tail`` mode: spread uniformly, ``q_j = t = r / (V - k)`` for ``j ∉ S``
(``"uniform"``, the default); one extra category against the student's ``1 − P_S`` (``"bucket"``); or dropped, the
support renormalised (``"renormalize"``). No function here builds a dense ``q``: every tail sum is written in closed
form over the student's ``(N, V)`` row, e.g. ``Σ_{j∉S} log p_j = Σ_j log p_j − Σ_{j∈S} log p_j``, and the student's
``log(1 − P_S)`` is a log-sum-exp over the tokens off ``S`` (:func:`log_rest`). When ``k == V`` there is no tail and
every mode gives the same value.

Every per-row function has one signature on already-flattened rows and returns the ``(N,)`` per-row loss::

    fn(student_logits (N, V), target SparseTarget (N, k), temperature=1.0, **options, tail="uniform") -> (N,)

The supervised baselines take labels instead of a target: ``ce``, ``label_smoothing``, ``gem``. The sets
:data:`DIVERGENCES`, :data:`BASELINES` and :data:`LOSSES` are the one list of names the rest of the package uses.
Training calls them through :func:`dftnb.objective.dft_loss` (masking, CE mixing, chunking, closed-form gradients);
optimal transport for :func:`sinkhorn` is :mod:`dftnb.transport`. ``tests/test_losses.py`` checks every function
against a dense float64 reference written from the plain formula.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from .sparse_target import IGNORE_INDEX, SparseTarget, target_parts
from .transport import sinkhorn_cost, sinkhorn_support

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd", "wasserstein_sorted", "sinkhorn")
BASELINES = ("ce", "label_smoothing", "gem")
LOSSES = DIVERGENCES + BASELINES


# ----------------------------------------------------------------------------------------------------------------
# Input checks (each bad input gets an error that names its fix; docs/design.md, bad inputs)
# ----------------------------------------------------------------------------------------------------------------
def _check_temperature(temperature) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}.")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0 (1.0 leaves the student unchanged), got {temperature}.")


def _check_logits(student_logits: torch.Tensor) -> None:
    if student_logits.ndim != 2:
        raise ValueError(
            f"student_logits must be (N, V) rows, got shape {tuple(student_logits.shape)}; flatten the leading "
            "dims with .reshape(-1, V) or call dft_loss, which flattens them."
        )
    # one read-only reduction (min and max propagate NaN; ±Inf shows up in one of them), no (N, V) bool copy
    if student_logits.numel() and not torch.isfinite(torch.stack(torch.aminmax(student_logits))).all():
        raise ValueError(
            "student logits contain NaN or Inf: check the model's dtype (train in float32/bfloat16, not float16 "
            "without loss scaling), the learning rate, and the inputs of the forward pass."
        )


def _check_pair(student_logits: torch.Tensor, target: SparseTarget) -> None:
    _check_logits(student_logits)
    if not isinstance(target, SparseTarget):
        raise ValueError(f"target must be a dftnb.targets.SparseTarget, got {type(target).__name__}.")
    if student_logits.shape[-1] != target.vocab_size:
        raise ValueError(
            f"student vocabulary V={student_logits.shape[-1]} but the target was built for vocab_size="
            f"{target.vocab_size}: tokenizer mismatch; rebuild the target with the student's tokenizer."
        )
    if target.ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"target has {tuple(target.ids.shape[:-1])} positions but student_logits has "
            f"{tuple(student_logits.shape[:-1])}; align target rows with the student's rows (same shift and mask)."
        )


def _check_labels(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _check_logits(student_logits)
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match the {tuple(student_logits.shape[:-1])} student rows."
        )
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= student_logits.shape[-1]):
        raise ValueError(
            f"labels must be token ids in [0, {student_logits.shape[-1]}); drop masked positions (label "
            f"{IGNORE_INDEX}) first, or call dft_loss, which masks them."
        )
    return labels


def _check_open_unit(name: str, value: float, closed_low: bool = False) -> None:
    ok = (0.0 <= value < 1.0) if closed_low else (0.0 < value < 1.0)
    if not ok:
        interval = "[0, 1)" if closed_low else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value}.")


# ----------------------------------------------------------------------------------------------------------------
# Sparse-target pieces shared by the divergences
# ----------------------------------------------------------------------------------------------------------------
def student_logprobs(student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log p = log_softmax(z / τ)`` in float32 (float64 when the logits are float64)."""
    return torch.log_softmax(_scaled(student_logits, temperature), dim=-1)


def _scaled(student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``z / τ`` in float32 (float64 for float64 logits); no copy when nothing changes (``τ = 1``, same dtype)."""
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    z = student_logits.to(dtype)
    return z if temperature == 1 else z / temperature


def _row_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Σ_j x_ij y_ij`` per row (``torch.linalg.vecdot``; a ``(1, V) @ (V, 1)`` batched matmul is ~10x slower on CPU)."""
    return torch.linalg.vecdot(x, y)


def log_rest(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log(1 − P_S) = log Σ_{j∉S} p_j`` per row, a log-sum-exp over the tokens off ``ids``.

    Accurate whatever ``P_S`` is: ``1 − Σ_{j∈S} p_j`` in float32 loses every digit of a rest below ~1e-7, which the
    bucket's ``log(1 − P_S)`` would turn into ``−inf`` or noise. Needs ``k < V``.
    """
    return logp.scatter(-1, ids, float("-inf")).logsumexp(-1)


def _sum_pointwise(term: Callable, logp: torch.Tensor, target: SparseTarget, tail: str = "uniform") -> torch.Tensor:
    """``Σ_j term(log q_j, log p_j)`` for a pointwise ``term`` with ``term(−∞, ·) = 0``, without a dense ``q``.

    Uniform tail: every token is first treated as a tail token (``q_j = t``), then the ``k`` support tokens are
    corrected: ``Σ_j term(log t, log p_j) + Σ_{j∈S} [term(log q_j, log p_j) − term(log t, log p_j)]``. Bucket: the
    support plus ``term(log r, log(1 − P_S))``. Renormalised: the support only (``q = 0`` off it).
    """
    parts = target_parts(target, logp.dtype, tail)
    logp_s = logp.gather(-1, parts.ids)
    total = term(parts.logq, logp_s).sum(-1)
    if parts.log_t is not None:
        log_t = parts.log_t.unsqueeze(-1)
        total = total + term(log_t.expand_as(logp), logp).sum(-1) - term(log_t.expand_as(logp_s), logp_s).sum(-1)
    elif parts.log_r is not None:
        total = total + term(parts.log_r, log_rest(logp, parts.ids))
    return total


_TAIL_DOC = """
    ``tail`` (docs/design.md, targets) says how the target's tail mass ``r`` is read: ``"uniform"`` (the default)
    spreads it over the ``V − k`` tokens off the support ``S``, ``q_j = t = r / (V − k)``; ``"bucket"`` compares
    ``k + 1`` categories, ``(q_S, r)`` against ``(p_S, 1 − P_S)`` with ``P_S = Σ_{i∈S} p_i``, so the student's tail
    shape is left free and a target built from the student itself has zero gradient; ``"renormalize"`` drops
    ``r``: ``q̃ = q_S / (1 − r)`` on ``S`` and 0 elsewhere."""


def _tail_doc(fn: Callable) -> Callable:
    """Append the description of the ``tail`` argument (:data:`_TAIL_DOC`) to ``fn``'s docstring."""
    if fn.__doc__:
        fn.__doc__ += _TAIL_DOC
    return fn


# ----------------------------------------------------------------------------------------------------------------
# Divergences
# ----------------------------------------------------------------------------------------------------------------
@_tail_doc
def forward_kl(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0,
               tail: str = "uniform") -> torch.Tensor:
    """Forward KL ``KL(q‖p) = Σ_j q_j (log q_j − log p_j)``, per row (mass-covering; Hinton et al. 2015).

    * uniform: tail in closed form, ``Σ_{j∉S} q_j(log q_j − log p_j) = r·log t − t·(Σ_j log p_j − Σ_{j∈S} log p_j)``;
    * bucket: ``Σ_{i∈S} q_i log(q_i / p_i) + r log(r / (1 − P_S))``;
    * renormalize: ``Σ_{i∈S} q̃_i log(q̃_i / p_i)``, which pulls ``P_S`` toward 1.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    return _forward_kl_parts(student_logprobs(student_logits, temperature), target, tail)[0]



def _forward_kl_parts(logp: torch.Tensor, target: SparseTarget, tail: str = "uniform"):
    """``(KL(q‖p) per row, ids, q on the support, tail value t or None, (log r, log(1 − P_S)) or None)`` from ``log p``
    (shared with the closed-form gradient)."""
    parts = target_parts(target, logp.dtype, tail)
    ids = parts.ids
    logp_s = logp.gather(-1, ids)
    q = parts.logq.exp()
    loss = (torch.xlogy(q, q) - q * logp_s).sum(-1)
    t = bucket = None
    if parts.log_t is not None:
        t = parts.log_t.exp()
        tail_logp_sum = logp.sum(-1) - logp_s.sum(-1)
        loss = loss + parts.n_tail * t * parts.log_t - t * tail_logp_sum
    elif parts.log_r is not None:
        rest = log_rest(logp, ids)
        loss = loss + parts.log_r.exp() * (parts.log_r - rest)
        bucket = (parts.log_r, rest)
    return loss, ids, q, t, bucket


@_tail_doc
def reverse_kl(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0,
               tail: str = "uniform") -> torch.Tensor:
    """Reverse KL ``KL(p‖q) = Σ_j p_j (log p_j − log q_j)``, per row (mode-seeking; the seed's ``D_KL(P_model‖P_target)``).

    * uniform: tail in closed form, ``Σ_{j∉S} p_j log p_j − (1 − P_S)·log t`` with
      ``Σ_{j∉S} p_j log p_j = Σ_j p_j log p_j − Σ_{j∈S} p_j log p_j``;
    * bucket: ``Σ_{i∈S} p_i log(p_i / q_i) + (1 − P_S) log((1 − P_S) / r)``;
    * renormalize: ``q̃`` is 0 off ``S``, so ``KL(p‖q̃)`` is infinite as soon as the student puts mass there. The
      student is renormalised over ``S`` too, ``p̃ = p_S / P_S``, and the loss is ``KL(p̃‖q̃)``: the two conditional
      distributions given ``S`` are compared, and the student's mass off ``S`` gets no gradient at all.

    Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024; Agarwal et al., "On-Policy
    Distillation of Language Models" (GKD), ICLR 2024.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    logp = student_logprobs(student_logits, temperature)
    parts = target_parts(target, logp.dtype, tail)
    ids, logq = parts.ids, parts.logq
    logp_s = logp.gather(-1, ids)
    if tail == "renormalize" and parts.n_tail:
        logp_s = logp_s - logp_s.logsumexp(-1, keepdim=True)
        return (logp_s.exp() * (logp_s - logq)).sum(-1)
    p_s = logp_s.exp()
    loss = (p_s * (logp_s - logq)).sum(-1)
    if parts.log_t is not None:
        neg_entropy = _row_dot(logp.exp(), logp)
        tail_plogp = neg_entropy - (p_s * logp_s).sum(-1)
        tail_p = (1.0 - p_s.sum(-1)).clamp_min(0.0)
        loss = loss + tail_plogp - tail_p * parts.log_t
    elif parts.log_r is not None:
        rest = log_rest(logp, ids)
        loss = loss + rest.exp() * (rest - parts.log_r)
    return loss



def _jsd_term(beta: float):
    """The pointwise JSD term ``β q (log q − log m) + (1−β) p (log p − log m)`` in the log domain."""
    log_b, log_1mb = math.log(beta), math.log1p(-beta)

    def term(logq, logp):
        logm = torch.logaddexp(logq + log_b, logp + log_1mb)
        q, p = logq.exp(), logp.exp()
        return beta * (torch.xlogy(q, q) - q * logm) + (1 - beta) * (p * logp - p * logm)

    return term


@_tail_doc
def jsd(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0, beta: float = 0.5,
        tail: str = "uniform") -> torch.Tensor:
    """Generalised Jensen-Shannon ``β·KL(q‖m) + (1−β)·KL(p‖m)``, ``m = β q + (1−β) p``, ``β ∈ (0, 1)``, per row.

    ``β = 0.5`` is the symmetric JSD (bounded by ``log 2``). Bucket: the same formula over the ``k + 1`` categories
    (``q_rest = r``, ``p_rest = 1 − P_S``). Renormalize: ``q̃`` on ``S``; off it ``q = 0`` and ``m = (1−β) p``, which
    adds ``−(1−β) log(1−β)·(1 − P_S)``. Agarwal et al., "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes" (GKD), ICLR 2024.
    """
    _check_temperature(temperature)
    _check_open_unit("beta", beta)
    _check_pair(student_logits, target)
    term = _jsd_term(beta)
    logp = student_logprobs(student_logits, temperature)
    parts = target_parts(target, logp.dtype, tail)
    ids, log_t = parts.ids, parts.log_t
    logp_s = logp.gather(-1, ids)
    loss = term(parts.logq, logp_s).sum(-1)  # support terms in the log domain (exact for q_j or p_j = 0)
    if log_t is not None:
        # every token as a tail token, in probability space: m_j = β t + (1−β) p_j ≥ β t > 0, so log m_j is finite;
        # Σ_j β t (log t − log m_j) = β t (V log t − Σ_j log m_j) and Σ_j (1−β) p_j (log p_j − log m_j) as a dot product
        log_t_col = log_t.unsqueeze(-1)
        p = logp.exp()
        logm = torch.add(beta * log_t_col.exp(), p, alpha=1 - beta).log()
        all_tail = beta * log_t.exp() * (logp.shape[-1] * log_t - logm.sum(-1)) + (1 - beta) * _row_dot(p, logp - logm)
        loss = loss + all_tail - term(log_t_col.expand_as(logp_s), logp_s).sum(-1)
    elif parts.log_r is not None:
        loss = loss + term(parts.log_r, log_rest(logp, ids))
    elif parts.n_tail:  # renormalize
        loss = loss - (1 - beta) * math.log1p(-beta) * log_rest(logp, ids).exp()
    return loss



@_tail_doc
def skew_kl(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0, alpha: float = 0.1,
            tail: str = "uniform") -> torch.Tensor:
    """Skew KL ``KL(q ‖ α q + (1−α) p)``, ``α ∈ [0, 1)``, per row; ``α = 0`` is the forward KL.

    Mixing a little of ``q`` into the second argument keeps the divergence bounded (``≤ −log α``) and its gradient
    stable. Bucket: the same over the ``k + 1`` categories; renormalize: over ``S`` with ``q̃`` (terms with ``q = 0``
    vanish). Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models", ICML 2024; see also
    the generalised JSD of Agarwal et al. (GKD), ICLR 2024.
    """
    _check_temperature(temperature)
    _check_open_unit("alpha", alpha, closed_low=True)
    _check_pair(student_logits, target)
    log_a = math.log(alpha) if alpha > 0 else float("-inf")
    log_1ma = math.log1p(-alpha)

    def term(logq, logp):
        q = logq.exp()
        return torch.xlogy(q, q) - q * torch.logaddexp(logq + log_a, logp + log_1ma)

    return _sum_pointwise(term, student_logprobs(student_logits, temperature), target, tail)



@_tail_doc
def tvd(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0,
        tail: str = "uniform") -> torch.Tensor:
    """Total variation distance ``½ Σ_j |p_j − q_j|``, per row, in [0, 1].

    Bucket: ``½ (Σ_{i∈S} |p_i − q_i| + |1 − P_S − r|)``; renormalize: ``½ (Σ_{i∈S} |p_i − q̃_i| + 1 − P_S)``.
    Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge Distillation", ACL 2023.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    logp = student_logprobs(student_logits, temperature)
    p = logp.exp()
    parts = target_parts(target, p.dtype, tail)
    p_s = p.gather(-1, parts.ids)
    total = (p_s - parts.logq.exp()).abs().sum(-1)
    if parts.log_t is not None:  # every token as a tail token (q_j = t), then the k support tokens corrected
        t = parts.log_t.exp().unsqueeze(-1)
        total = total + (p - t).abs().sum(-1) - (p_s - t).abs().sum(-1)
    elif parts.log_r is not None:
        total = total + (log_rest(logp, parts.ids).exp() - parts.log_r.exp()).abs()
    elif parts.n_tail:
        total = total + log_rest(logp, parts.ids).exp()
    return 0.5 * total



@_tail_doc
def wasserstein_sorted(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0,
                       tail: str = "uniform") -> torch.Tensor:
    """Universal Logit Distillation distance ``Σ_i |sort↓(p)_i − sort↓(q)_i|``, per row.

    Uniform tail, exact: the sorted target is the ``k`` support values merged with ``V − k`` copies of ``t``: the
    support values ``≥ t`` come first (positions ``0 … k'−1``), then the tail, then the support values ``< t``
    (positions ``V − k + m`` for the ``m``-th largest support value). So only the ``k`` largest and ``k`` smallest
    student probabilities ever meet a support value, and
    ``Σ_i |P_i − Q_i| = Σ_j |p_j − t| + Σ_m (|P_{pos(m)} − q_(m)| − |P_{pos(m)} − t|)`` needs two ``top-k``, no sort
    of the vocabulary and no dense ``q``.

    Renormalize: ``q̃`` sorted, then zeros (the sorted target ULD pads with), so
    ``Σ_{i<k} |P_(i) − q̃_(i)| + Σ_{i≥k} P_(i)``. Bucket: the ``k + 1`` categories of each side, its ``k`` largest
    probabilities sorted plus the rest, ``Σ_{i<k} |P_(i) − q_(i)| + |(1 − Σ_{i<k} P_(i)) − r|``: shapes compared on
    the top ``k`` only, tail shape left free (zero for a target built from the student itself). Boizard et al.,
    "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for LLMs", 2024.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    logp = student_logprobs(student_logits, temperature)
    p = logp.exp()
    parts = target_parts(target, p.dtype, tail)
    q_sorted = parts.logq.exp().sort(-1, descending=True).values
    if not parts.n_tail:
        return (p.sort(-1, descending=True).values - q_sorted).abs().sum(-1)
    k = target.k
    if parts.log_t is None:  # bucket or renormalize: the student's top k against the sorted support, plus the rest
        top_logp, top_ids = logp.topk(k, dim=-1, largest=True, sorted=True)
        rest = log_rest(logp, top_ids).exp()
        total = (top_logp.exp() - q_sorted).abs().sum(-1)
        return total + ((rest - parts.log_r.exp()).abs() if tail == "bucket" else rest)
    t = parts.log_t.exp().unsqueeze(-1)
    largest = p.topk(k, dim=-1, largest=True, sorted=True).values  # P_0 … P_{k-1}
    smallest = p.topk(k, dim=-1, largest=False, sorted=True).values.flip(-1)  # P_{V-k} … P_{V-1}
    p_matched = torch.where(q_sorted >= t, largest, smallest)
    correction = ((p_matched - q_sorted).abs() - (p_matched - t).abs()).sum(-1)
    return (p - t).abs().sum(-1) + correction



def ot_problems(
    student_logits: torch.Tensor,
    target: SparseTarget,
    embeddings: torch.Tensor,
    k: int = 64,
    temperature: float = 1.0,
    bucket_cost: float = 1.0,
    tail: str = "uniform",
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per row, the reduced problem :func:`sinkhorn` solves, without its zero-mass slots: ``(a, b, cost, ids)``.

    ``a``/``b`` are the masses of ``p``/``q`` (the bucket last, when it holds mass on either side), ``cost`` the
    ground cost and ``ids`` the token ids of the non-bucket slots. These are plain inputs for any POT solver
    (``ot.emd2``, ``ot.sinkhorn2`` …); ``a`` stays differentiable w.r.t. ``student_logits``.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    logp = student_logprobs(student_logits, temperature)
    log_a, log_b, cost, ids = sinkhorn_support(logp, target, embeddings, k=k, bucket_cost=bucket_cost, tail=tail)
    problems = []
    for row in range(logp.shape[0]):
        keep = (log_a[row] > float("-inf")) | (log_b[row] > float("-inf"))
        slots = keep.nonzero().squeeze(-1)
        token_slots = slots[slots < ids.shape[-1]]
        a, b = log_a[row, slots].exp(), log_b[row, slots].exp()
        problems.append((a, b, cost[row][slots][:, slots], ids[row, token_slots]))
    return problems


def sinkhorn(
    student_logits: torch.Tensor,
    target: SparseTarget,
    temperature: float = 1.0,
    embeddings: torch.Tensor | None = None,
    k: int = 64,
    epsilon: float = 0.1,
    n_iters: int = 50,
    bucket_cost: float = 1.0,
    tail: str = "uniform",
) -> torch.Tensor:
    """Entropic Wasserstein cost ``⟨T, C⟩`` between ``p`` and ``q`` on their joint support, per row.

    Support ``U = S ∪ top-k(p)`` plus one bucket each side for the remaining mass (:func:`sinkhorn_support`),
    ground cost ``C_ij = 1 − cos(E_i, E_j)`` from the student's input embeddings, ``n_iters`` log-domain Sinkhorn
    iterations at regularisation ``epsilon`` (:func:`sinkhorn_cost`; agrees with ``ot.sinkhorn2``). Moving mass to
    a near-synonym costs little, unlike under KL. Tail modes: uniform, ``q = t`` on the student-only ids and
    ``t·(V − |U|)`` in the bucket; bucket, the problem is ``S`` plus the bucket alone, ``(p_S, 1 − P_S)`` against
    ``(q_S, r)``; renormalize, ``q̃`` on ``S`` and no target mass anywhere else. Cuturi, "Sinkhorn Distances",
    NeurIPS 2013.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    logp = student_logprobs(student_logits, temperature)
    log_a, log_b, cost, _ = sinkhorn_support(logp, target, embeddings, k=k, bucket_cost=bucket_cost, tail=tail)
    return sinkhorn_cost(log_a, log_b, cost, epsilon=epsilon, n_iters=n_iters)


# ----------------------------------------------------------------------------------------------------------------
# Supervised baselines (one-hot labels)
# ----------------------------------------------------------------------------------------------------------------
def ce(student_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy ``−log p_y`` per row: supervised fine-tuning (SFT)."""
    _check_temperature(temperature)
    labels = _check_labels(student_logits, labels)
    return -student_logprobs(student_logits, temperature).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def label_smoothing(
    student_logits: torch.Tensor, labels: torch.Tensor, eps: float = 0.1, temperature: float = 1.0
) -> torch.Tensor:
    """Label-smoothed cross-entropy ``−Σ_j q_j log p_j`` with ``q = (1−ε)·onehot(y) + ε/V``, per row.

    Same convention as ``torch.nn.CrossEntropyLoss(label_smoothing=ε)``. Szegedy et al., "Rethinking the Inception
    Architecture for Computer Vision", CVPR 2016.
    """
    _check_temperature(temperature)
    _check_open_unit("eps", eps, closed_low=True)
    labels = _check_labels(student_logits, labels)
    logp = student_logprobs(student_logits, temperature)
    return -(1 - eps) * logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - eps * logp.mean(-1)


GEM_WEIGHTS = ("linear", "logsigmoid")


def gem(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float = 0.7,
    h: str = "logsigmoid",
    temperature: float = 1.0,
) -> torch.Tensor:
    """GEM surrogate loss ``−Σ_j sg(q_j·w_j)·(log p_y − log p_j)`` per row (``sg`` = stop-gradient).

    GEM solves reverse-KL distribution matching with an entropy regulariser as a game: the auxiliary distribution
    has the closed form ``q = softmax(z / β)`` (``β < 1`` sharpens it), and the model moves probability towards the
    label ``y`` mainly from the tokens ``q`` ranks highly ("sparse update"). Its gradient on the logits is
    ``q⊙w − (Σ_j q_j w_j)·onehot(y)``. The weight ``w`` comes from the concave generator ``h``: ``"linear"`` gives
    ``w = 1``; ``"logsigmoid"`` gives ``w_j = σ((z_j − z_y)/100)``, which shrinks the update once the label already
    leads the other tokens ("adaptive termination"), as in the authors' reference implementation. The value itself
    is a surrogate (it can be negative); train on it, report CE for likelihood. ``z`` is ``logits / temperature``.
    Li et al., "Preserving Diversity in Supervised Fine-Tuning of Large Language Models", ICLR 2025.
    """
    _check_temperature(temperature)
    _check_open_unit("beta", beta)
    if h not in GEM_WEIGHTS:
        raise ValueError(f"gem h must be one of {GEM_WEIGHTS}, got {h!r}.")
    labels = _check_labels(student_logits, labels)
    z = _scaled(student_logits, temperature)
    logp = torch.log_softmax(z, dim=-1)
    logp_y = logp.gather(-1, labels.unsqueeze(-1))
    with torch.no_grad():
        q = torch.softmax(z / beta, dim=-1)
        if h == "logsigmoid":
            q = q * torch.sigmoid((z - z.gather(-1, labels.unsqueeze(-1))) / 100.0)
    return -(q * (logp_y - logp)).sum(-1)


# ----------------------------------------------------------------------------------------------------------------
# Registry: name -> per-row function
# ----------------------------------------------------------------------------------------------------------------
_DIVERGENCE_FNS = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_kl": skew_kl,
    "tvd": tvd,
    "wasserstein_sorted": wasserstein_sorted,
    "sinkhorn": sinkhorn,
}
_BASELINE_FNS = {"ce": ce, "label_smoothing": label_smoothing, "gem": gem}
_FIXED_ARGS = {"student_logits", "target", "labels", "temperature", "embeddings", "tail"}


def loss_function(divergence: str) -> Callable:
    """The per-row function named ``divergence`` (one of :data:`LOSSES`)."""
    if divergence not in LOSSES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(LOSSES)}.")
    return _DIVERGENCE_FNS.get(divergence) or _BASELINE_FNS[divergence]


def loss_options(divergence: str) -> list[str]:
    """The options of ``divergence`` that a caller sets (``beta``, ``alpha``, ``k``, ``epsilon`` …)."""
    return [n for n in inspect.signature(loss_function(divergence)).parameters if n not in _FIXED_ARGS]


def _check_kwargs(divergence: str, kwargs: dict) -> None:
    allowed = loss_options(divergence)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"{divergence} does not take {unknown}; its options are {allowed or 'none'} (plus temperature)."
        )


