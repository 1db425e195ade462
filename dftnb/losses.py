"""Divergences between the student's next-token distribution and a sparse target (DESIGN.md §6).

Notation used in every docstring: the student is ``p = softmax(z / τ)`` over the vocabulary of size ``V``; the
target ``q`` is a :class:`~dftnb.targets.SparseTarget`: exact probabilities ``q_j`` on its ``k`` support ids ``S``
and the tail mass ``r`` spread uniformly, ``q_j = t = r / (V - k)`` for ``j ∉ S``. No function here builds a dense
``q``: every tail sum is written in closed form over the student's ``(N, V)`` row, e.g.
``Σ_{j∉S} log p_j = Σ_j log p_j − Σ_{j∈S} log p_j``. When ``k == V`` there is no tail and no tail term.

Per-row functions share one signature on already-flattened rows and return the ``(N,)`` per-row loss::

    fn(student_logits (N, V), target SparseTarget (N, k), temperature=1.0, **kw) -> (N,)

The supervised baselines take labels instead of a target: ``ce``, ``label_smoothing``, ``gem``.
:func:`dft_loss` is the single entry point used for training: it masks, mixes in cross-entropy, normalises under
gradient accumulation and works in row chunks so the full ``(N, V)`` logits of a hidden-state input are never
materialised. Within a chunk it takes the gradient w.r.t. the logits :data:`SLICE_ROWS` rows at a time, in closed form
(``*_with_grad``) for ``ce``, ``forward_kl``, ``reverse_kl``, ``jsd`` and ``tvd`` and by autograd of the per-row
function for the others; the tests check both against autograd of dense float64 formulas.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .targets import TAIL_EPS, SparseTarget

IGNORE_INDEX = -100
# Rows per slice when the chunked loss takes its gradient w.r.t. the logits (a few MB of float32 at V ≈ 50k).
SLICE_ROWS = 32
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd", "wasserstein_sorted", "sinkhorn")
BASELINES = ("ce", "label_smoothing", "gem")
LOSSES = DIVERGENCES + BASELINES


# ----------------------------------------------------------------------------------------------------------------
# Input checks (DESIGN.md §9: each bad input names its fix)
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


def _target_parts(target: SparseTarget, dtype: torch.dtype):
    """``(ids, log q_S, log t, V - k)`` with ``log t = log(r / (V - k))`` per row, or ``None`` when ``k == V``."""
    ids = target.ids.long()
    logq = target.logprobs.to(dtype)
    n_tail = target.vocab_size - target.k
    if n_tail == 0:
        return ids, logq, None, 0
    tail_mass = (1.0 - logq.exp().sum(-1)).clamp_min(TAIL_EPS)
    return ids, logq, tail_mass.log() - math.log(n_tail), n_tail


def _row_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Σ_j x_ij y_ij`` per row as a batched dot product (no ``(N, V)`` product tensor)."""
    return (x.unsqueeze(-2) @ y.unsqueeze(-1)).squeeze(-1).squeeze(-1)


def _sum_pointwise(term: Callable, logp: torch.Tensor, target: SparseTarget) -> torch.Tensor:
    """``Σ_j term(log q_j, log p_j)`` for a pointwise ``term``, without a dense ``q``.

    Every token is first treated as a tail token (``q_j = t``), then the ``k`` support tokens are corrected:
    ``Σ_j term(log t, log p_j) + Σ_{j∈S} [term(log q_j, log p_j) − term(log t, log p_j)]``.
    """
    ids, logq, log_t, n_tail = _target_parts(target, logp.dtype)
    logp_s = logp.gather(-1, ids)
    total = term(logq, logp_s).sum(-1)
    if n_tail:
        log_t = log_t.unsqueeze(-1)
        total = total + term(log_t.expand_as(logp), logp).sum(-1) - term(log_t.expand_as(logp_s), logp_s).sum(-1)
    return total


# ----------------------------------------------------------------------------------------------------------------
# Divergences
# ----------------------------------------------------------------------------------------------------------------
def forward_kl(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0) -> torch.Tensor:
    """Forward KL ``KL(q‖p) = Σ_j q_j (log q_j − log p_j)``, per row (mass-covering; Hinton et al. 2015).

    Tail in closed form: ``Σ_{j∉S} q_j(log q_j − log p_j) = r·log t − t·(Σ_j log p_j − Σ_{j∈S} log p_j)``.
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    return _forward_kl_parts(student_logprobs(student_logits, temperature), target)[0]


def _forward_kl_parts(logp: torch.Tensor, target: SparseTarget):
    """``(KL(q‖p) per row, ids, q on the support, tail value t or None)`` from ``log p`` (shared with the gradient)."""
    ids, logq, log_t, n_tail = _target_parts(target, logp.dtype)
    logp_s = logp.gather(-1, ids)
    q = logq.exp()
    loss = (torch.xlogy(q, q) - q * logp_s).sum(-1)
    t = None
    if n_tail:
        t = log_t.exp()
        tail_logp_sum = logp.sum(-1) - logp_s.sum(-1)
        loss = loss + n_tail * t * log_t - t * tail_logp_sum
    return loss, ids, q, t


def reverse_kl(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0) -> torch.Tensor:
    """Reverse KL ``KL(p‖q) = Σ_j p_j (log p_j − log q_j)``, per row (mode-seeking; the seed's ``D_KL(P_model‖P_target)``).

    Tail in closed form: ``Σ_{j∉S} p_j log p_j − (1 − Σ_{j∈S} p_j)·log t`` with
    ``Σ_{j∉S} p_j log p_j = Σ_j p_j log p_j − Σ_{j∈S} p_j log p_j``.
    Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024; Agarwal et al., "On-Policy
    Distillation of Language Models" (GKD), ICLR 2024.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    logp = student_logprobs(student_logits, temperature)
    ids, logq, log_t, n_tail = _target_parts(target, logp.dtype)
    logp_s = logp.gather(-1, ids)
    p_s = logp_s.exp()
    loss = (p_s * (logp_s - logq)).sum(-1)
    if n_tail:
        neg_entropy = _row_dot(logp.exp(), logp)
        tail_plogp = neg_entropy - (p_s * logp_s).sum(-1)
        tail_p = (1.0 - p_s.sum(-1)).clamp_min(0.0)
        loss = loss + tail_plogp - tail_p * log_t
    return loss


def jsd(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """Generalised Jensen-Shannon ``β·KL(q‖m) + (1−β)·KL(p‖m)``, ``m = β q + (1−β) p``, ``β ∈ (0, 1)``, per row.

    ``β = 0.5`` is the symmetric JSD (bounded by ``log 2``). Agarwal et al., "On-Policy Distillation of Language
    Models: Learning from Self-Generated Mistakes" (GKD), ICLR 2024.
    """
    _check_temperature(temperature)
    _check_open_unit("beta", beta)
    _check_pair(student_logits, target)
    log_b, log_1mb = math.log(beta), math.log1p(-beta)

    def term(logq, logp):
        logm = torch.logaddexp(logq + log_b, logp + log_1mb)
        q, p = logq.exp(), logp.exp()
        return beta * (torch.xlogy(q, q) - q * logm) + (1 - beta) * (p * logp - p * logm)

    logp = student_logprobs(student_logits, temperature)
    ids, logq, log_t, n_tail = _target_parts(target, logp.dtype)
    logp_s = logp.gather(-1, ids)
    loss = term(logq, logp_s).sum(-1)  # support terms in the log domain (exact for q_j or p_j = 0)
    if n_tail:
        # every token as a tail token, in probability space: m_j = β t + (1−β) p_j ≥ β t > 0, so log m_j is finite;
        # Σ_j β t (log t − log m_j) = β t (V log t − Σ_j log m_j) and Σ_j (1−β) p_j (log p_j − log m_j) as a dot product
        log_t_col = log_t.unsqueeze(-1)
        p = logp.exp()
        logm = torch.add(beta * log_t_col.exp(), p, alpha=1 - beta).log()
        all_tail = beta * log_t.exp() * (logp.shape[-1] * log_t - logm.sum(-1)) + (1 - beta) * _row_dot(p, logp - logm)
        loss = loss + all_tail - term(log_t_col.expand_as(logp_s), logp_s).sum(-1)
    return loss


def skew_kl(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0, alpha: float = 0.1) -> torch.Tensor:
    """Skew KL ``KL(q ‖ α q + (1−α) p)``, ``α ∈ [0, 1)``, per row; ``α = 0`` is the forward KL.

    Mixing a little of ``q`` into the second argument keeps the divergence bounded (``≤ −log α``) and its gradient
    stable. Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models", ICML 2024; see also
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

    return _sum_pointwise(term, student_logprobs(student_logits, temperature), target)


def tvd(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0) -> torch.Tensor:
    """Total variation distance ``½ Σ_j |p_j − q_j|``, per row, in [0, 1].

    Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge Distillation", ACL 2023.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    p = student_logprobs(student_logits, temperature).exp()
    ids, logq, log_t, n_tail = _target_parts(target, p.dtype)
    p_s = p.gather(-1, ids)
    total = (p_s - logq.exp()).abs().sum(-1)
    if n_tail:  # every token as a tail token (q_j = t), then the k support tokens corrected
        t = log_t.exp().unsqueeze(-1)
        total = total + (p - t).abs().sum(-1) - (p_s - t).abs().sum(-1)
    return 0.5 * total


def wasserstein_sorted(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0) -> torch.Tensor:
    """Universal Logit Distillation distance ``Σ_i |sort↓(p)_i − sort↓(q)_i|``, per row, exact with the uniform tail.

    The sorted target is the ``k`` support values merged with ``V − k`` copies of ``t``: the support values
    ``≥ t`` come first (positions ``0 … k'−1``), then the tail, then the support values ``< t`` (positions
    ``V − k + m`` for the ``m``-th largest support value). So only the ``k`` largest and ``k`` smallest student
    probabilities ever meet a support value, and
    ``Σ_i |P_i − Q_i| = Σ_j |p_j − t| + Σ_m (|P_{pos(m)} − q_(m)| − |P_{pos(m)} − t|)`` needs two ``top-k``, no sort
    of the vocabulary and no dense ``q``. Boizard et al., "Towards Cross-Tokenizer Distillation: the Universal Logit
    Distillation Loss for LLMs", 2024.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    p = student_logprobs(student_logits, temperature).exp()
    _, logq, log_t, n_tail = _target_parts(target, p.dtype)
    q_sorted = logq.exp().sort(-1, descending=True).values
    if not n_tail:
        return (p.sort(-1, descending=True).values - q_sorted).abs().sum(-1)
    k = target.k
    t = log_t.exp().unsqueeze(-1)
    largest = p.topk(k, dim=-1, largest=True, sorted=True).values  # P_0 … P_{k-1}
    smallest = p.topk(k, dim=-1, largest=False, sorted=True).values.flip(-1)  # P_{V-k} … P_{V-1}
    p_matched = torch.where(q_sorted >= t, largest, smallest)
    correction = ((p_matched - q_sorted).abs() - (p_matched - t).abs()).sum(-1)
    return (p - t).abs().sum(-1) + correction


# ----------------------------------------------------------------------------------------------------------------
# Entropic optimal transport on a small support (Cuturi 2013)
# ----------------------------------------------------------------------------------------------------------------
def embedding_cost(embeddings: torch.Tensor, ids_a: torch.Tensor, ids_b: torch.Tensor | None = None) -> torch.Tensor:
    """Ground cost ``C_ij = 1 − cos(E_{a_i}, E_{b_j})`` between token ids, shape ``(..., len(a), len(b))``, in [0, 2].

    ``embeddings`` is ``(V, d)`` (e.g. ``model.get_input_embeddings().weight``); it is detached: the ground metric is
    fixed, only the transported masses carry gradient.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (V, d), got shape {tuple(embeddings.shape)}.")
    table = embeddings.detach()  # rows are gathered first and then normalised: no (V, d) copy per call
    ea = F.normalize(table[ids_a.long()], dim=-1)
    eb = ea if ids_b is None else F.normalize(table[ids_b.long()], dim=-1)
    return (1.0 - ea @ eb.transpose(-1, -2)).clamp_min(0.0)


def sinkhorn_support(
    logp: torch.Tensor,
    target: SparseTarget,
    embeddings: torch.Tensor,
    k: int = 64,
    bucket_cost: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduce each row to an OT problem on ``U = S ∪ top-k(p)`` plus one bucket for the rest of the vocabulary.

    Returns ``(log_a, log_b, cost, ids)``: ``log_a``/``log_b`` ``(N, K+1)`` are the log-masses of ``p`` and ``q``
    on the slots ``[target ids…, student top-k ids…, bucket]`` (``K = k_target + k``); a student top-k id that is
    also a target id gets mass 0 on both sides (``log = −inf``), so each token appears once. ``q`` on a student-only
    id is the tail value ``t``. The bucket holds the remaining mass of each side: ``1 − Σ_U p`` and
    ``t·(V − |U|)``. ``cost`` ``(N, K+1, K+1)`` is ``1 − cos`` between token embeddings, ``bucket_cost`` between the
    bucket and any token (1 = the cost between orthogonal embeddings) and 0 from the bucket to itself.
    """
    vocab = logp.shape[-1]
    if embeddings is None:
        raise ValueError(
            "sinkhorn needs the ground-cost embeddings: pass embeddings=model.get_input_embeddings().weight."
        )
    if embeddings.ndim != 2 or embeddings.shape[0] != vocab:
        raise ValueError(
            f"embeddings must be (V={vocab}, d), got {tuple(embeddings.shape)}; pass the student's input embeddings."
        )
    if not (isinstance(k, int) and 1 <= k <= vocab):
        raise ValueError(f"sinkhorn support size k must be an int in [1, V={vocab}], got {k!r}.")
    ids_q, logq, log_t, n_tail = _target_parts(target, logp.dtype)
    ids_p = logp.detach().topk(k, dim=-1).indices
    duplicate = (ids_p.unsqueeze(-1) == ids_q.unsqueeze(-2)).any(-1)
    ids = torch.cat([ids_q, ids_p], dim=-1)
    keep = torch.cat([torch.ones_like(ids_q, dtype=torch.bool), ~duplicate], dim=-1)
    neg_inf = torch.tensor(float("-inf"), dtype=logp.dtype, device=logp.device)

    log_a = torch.where(keep, logp.gather(-1, ids), neg_inf)
    rest_p = (1.0 - log_a.exp().sum(-1)).clamp_min(0.0)
    log_rest_p = torch.where(rest_p > 0, torch.where(rest_p > 0, rest_p, 1.0).log(), neg_inf)
    log_a = torch.cat([log_a, log_rest_p.unsqueeze(-1)], dim=-1)

    if n_tail:
        log_b_extra = torch.where(duplicate, neg_inf, log_t.unsqueeze(-1))
        n_rest = (n_tail - (~duplicate).sum(-1)).to(logp.dtype)
        log_rest_q = torch.where(n_rest > 0, log_t + n_rest.clamp_min(1.0).log(), neg_inf)
    else:  # k == V: every student id is a target id, nothing is left over
        log_b_extra = torch.full_like(ids_p, float("-inf"), dtype=logp.dtype)
        log_rest_q = neg_inf.expand(logp.shape[0])
    log_b = torch.cat([logq, log_b_extra, log_rest_q.unsqueeze(-1)], dim=-1)

    cost = embedding_cost(embeddings, ids).to(logp.dtype)
    cost = F.pad(cost, (0, 1, 0, 1), value=float(bucket_cost))
    cost[..., -1, -1] = 0.0
    return log_a, log_b, cost, ids


def ot_problems(
    student_logits: torch.Tensor,
    target: SparseTarget,
    embeddings: torch.Tensor,
    k: int = 64,
    temperature: float = 1.0,
    bucket_cost: float = 1.0,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per row, the reduced problem :func:`sinkhorn` solves, without its zero-mass slots: ``(a, b, cost, ids)``.

    ``a``/``b`` are the masses of ``p``/``q`` (the bucket last, when it holds mass on either side), ``cost`` the
    ground cost and ``ids`` the token ids of the non-bucket slots. These are plain inputs for any POT solver
    (``ot.emd2``, ``ot.sinkhorn2`` …); ``a`` stays differentiable w.r.t. ``student_logits``.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    logp = student_logprobs(student_logits, temperature)
    log_a, log_b, cost, ids = sinkhorn_support(logp, target, embeddings, k=k, bucket_cost=bucket_cost)
    problems = []
    for row in range(logp.shape[0]):
        keep = (log_a[row] > float("-inf")) | (log_b[row] > float("-inf"))
        slots = keep.nonzero().squeeze(-1)
        token_slots = slots[slots < ids.shape[-1]]
        a, b = log_a[row, slots].exp(), log_b[row, slots].exp()
        problems.append((a, b, cost[row][slots][:, slots], ids[row, token_slots]))
    return problems


class _SinkhornCost(torch.autograd.Function):
    """``⟨T, C⟩`` after ``n`` log-domain Sinkhorn iterations, with the exact gradient of the unrolled iterations.

    Forward (no autograd graph): ``v_i = log b − L^v_i``, ``L^v_i = LSE_a(M + u_{i−1})`` and ``u_i = log a − L^u_i``,
    ``L^u_i = LSE_b(M + v_i)``, ``M = −C/ε``; only the ``(N, K)`` normalisers ``L^u_i, L^v_i`` are kept. Backward
    (reverse-mode through the same iterations, no recomputation): from ``T = exp(M + u_n + v_n)``,
    ``∂⟨T,C⟩/∂ log T = T ⊙ C``; then for ``i = n … 1`` the softmax weights ``A = exp(M + v_i − L^u_i)`` and
    ``B = exp(M + u_{i−1} − L^v_i)`` give ``ḡ_{log a} += ḡ_{u_i}``, ``ḡ_{v_i} −= Aᵀ ḡ_{u_i}``,
    ``ḡ_{log b} += ḡ_{v_i}``, ``ḡ_{u_{i−1}} = −B ḡ_{v_i}`` and ``ḡ_M −= ḡ_u ⊙ A + ḡ_v ⊙ B``: the same numbers
    autograd gets by unrolling (as POT's torch backend does), at about the cost of one more forward pass.
    """

    @staticmethod
    def forward(ctx, log_a, log_b, cost, epsilon, n_iters):
        neg_cost_over_eps = -cost / epsilon
        neg_cost_over_eps_t = neg_cost_over_eps.transpose(-1, -2).contiguous()  # both reductions on the last dim
        # zero-mass entries start (and stay) at -inf: the iterates are those of the problem without them
        u = torch.zeros_like(log_a).masked_fill(log_a == float("-inf"), float("-inf"))
        us, lse_v, lse_u = [u], [], []
        for _ in range(n_iters):
            lv = torch.logsumexp(neg_cost_over_eps_t + u.unsqueeze(-2), dim=-1)
            v = log_b - lv
            lu = torch.logsumexp(neg_cost_over_eps + v.unsqueeze(-2), dim=-1)
            u = log_a - lu
            us.append(u)
            lse_v.append(lv)
            lse_u.append(lu)
        plan = torch.exp(neg_cost_over_eps + u.unsqueeze(-1) + v.unsqueeze(-2))
        ctx.epsilon = epsilon
        ctx.save_for_backward(cost, plan, log_a, log_b, torch.stack(us), torch.stack(lse_v), torch.stack(lse_u))
        return (plan * cost).sum((-1, -2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_cost_value):
        cost, plan, log_a, log_b, us, lse_v, lse_u = ctx.saved_tensors
        need_a, need_b, need_cost = ctx.needs_input_grad[:3]
        neg_cost_over_eps = -cost / ctx.epsilon
        g = grad_cost_value.unsqueeze(-1).unsqueeze(-1)
        g_log_plan = g * plan * cost
        g_m = g_log_plan.clone() if need_cost else None
        g_u, g_v = g_log_plan.sum(-1), g_log_plan.sum(-2)
        g_log_a, g_log_b = torch.zeros_like(log_a), torch.zeros_like(log_b)
        for i in range(lse_u.shape[0] - 1, -1, -1):
            v = log_b - lse_v[i]
            # u_i = log a − LSE_b(M + v_i)
            g_log_a += g_u
            weights = torch.exp(neg_cost_over_eps + (v.unsqueeze(-2) - lse_u[i].unsqueeze(-1)))  # A: (.., a, b)
            g_v = g_v - (g_u.unsqueeze(-2) @ weights).squeeze(-2)
            if g_m is not None:
                g_m -= g_u.unsqueeze(-1) * weights
            # v_i = log b − LSE_a(M + u_{i−1})
            g_log_b += g_v
            weights = torch.exp(neg_cost_over_eps + (us[i].unsqueeze(-1) - lse_v[i].unsqueeze(-2)))  # B: (.., a, b)
            g_u = -(weights @ g_v.unsqueeze(-1)).squeeze(-1)
            if g_m is not None:
                g_m -= weights * g_v.unsqueeze(-2)
            g_v = torch.zeros_like(g_v)
        g_cost = g * plan - g_m / ctx.epsilon if need_cost else None
        return (g_log_a if need_a else None), (g_log_b if need_b else None), g_cost, None, None


class _SinkhornScalingCost(torch.autograd.Function):
    """The iterations of :class:`_SinkhornCost` in the scaling domain: ``e^v = b / (Kᵀ e^u)``, ``e^u = a / (K e^v)``.

    Same iterates (``e^u``, ``e^v`` are the exponentials of the log-domain ``u``, ``v``), so the same value and the
    same unrolled gradient, but each iteration is two batched mat-vecs with ``K = exp(−C/ε)`` instead of two
    log-sum-exps over ``(K, K)``: several times faster. ``K`` must not underflow, so :func:`sinkhorn_cost` uses it
    only when ``max C / ε`` is small (:data:`SCALING_MAX_EXPONENT`). The backward is the log-domain one with the
    softmax weights written as ``A = K ⊙ (e^v / (K e^v))`` and ``B = K ⊙ (e^u / (Kᵀ e^u))``, so every step is a
    mat-vec and the cost gradient sums the per-iteration outer products once.
    """

    @staticmethod
    def forward(ctx, log_a, log_b, cost, epsilon, n_iters):
        kernel = torch.exp(-cost / epsilon)
        a, b = log_a.exp(), log_b.exp()  # zero-mass slots are exactly 0 and stay 0 in e^u, e^v
        eu = (log_a > float("-inf")).to(kernel.dtype)
        eus, evs, rs, ss = [eu], [], [], []
        for _ in range(n_iters):
            r = (eu.unsqueeze(-2) @ kernel).squeeze(-2)  # Kᵀ e^u = e^{LSE_a(M + u)}
            ev = b / r
            s = (kernel @ ev.unsqueeze(-1)).squeeze(-1)  # K e^v = e^{LSE_b(M + v)}
            eu = a / s
            eus.append(eu)
            evs.append(ev)
            rs.append(r)
            ss.append(s)
        plan = eu.unsqueeze(-1) * kernel * ev.unsqueeze(-2)
        ctx.epsilon = epsilon
        ctx.save_for_backward(cost, kernel, plan, torch.stack(eus), torch.stack(evs), torch.stack(rs), torch.stack(ss))
        return (plan * cost).sum((-1, -2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_cost_value):
        cost, kernel, plan, eus, evs, rs, ss = ctx.saved_tensors
        need_a, need_b, need_cost = ctx.needs_input_grad[:3]
        g = grad_cost_value.unsqueeze(-1).unsqueeze(-1)
        g_log_plan = g * plan * cost
        g_u, g_v = g_log_plan.sum(-1), g_log_plan.sum(-2)
        g_log_a, g_log_b = torch.zeros_like(g_u), torch.zeros_like(g_v)
        xs, ys = [], []  # g_M = ∂/∂log T − K ⊙ Σ_i (x_i ⊗ e^{v_i} + e^{u_{i−1}} ⊗ y_i)
        for i in range(rs.shape[0] - 1, -1, -1):
            g_log_a += g_u
            x = g_u / ss[i]
            g_v = g_v - evs[i] * (x.unsqueeze(-2) @ kernel).squeeze(-2)
            g_log_b += g_v
            y = g_v / rs[i]
            g_u = -eus[i] * (kernel @ y.unsqueeze(-1)).squeeze(-1)
            g_v = torch.zeros_like(g_v)  # v_{i−1} reaches the value only through u_{i−1}
            if need_cost:
                xs.append(x)
                ys.append(y)
        g_cost = None
        if need_cost:
            n = len(xs)
            x, y = torch.stack(xs[::-1]), torch.stack(ys[::-1])  # iteration order, (n, ..., K)
            outer = torch.einsum("t...i,t...j->...ij", x, evs[:n]) + torch.einsum("t...i,t...j->...ij", eus[:n], y)
            g_cost = g * plan - (g_log_plan - kernel * outer) / ctx.epsilon
        return (g_log_a if need_a else None), (g_log_b if need_b else None), g_cost, None, None


# Largest max(C)/ε for which sinkhorn_cost iterates in the scaling domain: K = exp(−C/ε) ≥ e^−30 (float32) or e^−300.
SCALING_MAX_EXPONENT = {torch.float32: 30.0, torch.float64: 300.0}


def sinkhorn_cost(
    log_a: torch.Tensor,
    log_b: torch.Tensor,
    cost: torch.Tensor,
    epsilon: float = 0.1,
    n_iters: int = 50,
    method: str = "auto",
) -> torch.Tensor:
    """Entropic transport cost ``⟨T, C⟩`` after ``n_iters`` log-domain Sinkhorn iterations, batched over rows.

    ``T = diag(e^u) K diag(e^v)``, ``K = exp(−C/ε)``; each iteration sets ``v = log b − LSE_i(−C_ij/ε + u_i)``
    then ``u = log a − LSE_j(−C_ij/ε + v_j)`` from ``u = v = 0``: the same iterates and the same returned value as
    ``ot.sinkhorn2(a, b, C, ε, method="sinkhorn_log", numItermax=n_iters, stopThr=0)``. Zero masses
    (``log = −inf``) are allowed and excluded from the first iteration on, so the result equals POT's on the
    problem with those entries removed (POT itself starts them at ``u = 0``). The gradient (w.r.t. ``log_a``,
    ``log_b`` and ``cost``) is that of the unrolled iterations, as autograd through ``ot.sinkhorn2`` gives it,
    computed by a hand-written reverse pass that stores ``O(n_iters·K)`` normalisers and recomputes nothing
    (:class:`_SinkhornCost`); first-order only. ``method``: ``"log"``, ``"scaling"`` (the same iterates by
    mat-vecs, :class:`_SinkhornScalingCost`) or ``"auto"``: scaling when ``max C / ε`` is at most
    :data:`SCALING_MAX_EXPONENT` for the dtype and its value comes out finite, else log. Cuturi, "Sinkhorn
    Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
    """
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon}.")
    if not (isinstance(n_iters, int) and n_iters >= 1):
        raise ValueError(f"n_iters must be an int >= 1, got {n_iters!r}.")
    if cost.shape != (*log_a.shape, log_b.shape[-1]) or log_a.shape[:-1] != log_b.shape[:-1]:
        raise ValueError(
            f"cost {tuple(cost.shape)} must be (..., len(a), len(b)) for a {tuple(log_a.shape)}, b {tuple(log_b.shape)}."
        )
    if method not in ("auto", "log", "scaling"):
        raise ValueError(f"method must be 'auto', 'log' or 'scaling', got {method!r}.")
    if method == "auto":
        bound = SCALING_MAX_EXPONENT.get(cost.dtype, 0.0)
        method = "scaling" if cost.numel() and float(cost.detach().amax()) / epsilon <= bound else "log"
        if method == "scaling":
            value = _SinkhornScalingCost.apply(log_a, log_b, cost, float(epsilon), n_iters)
            if torch.isfinite(value).all():
                return value
            method = "log"  # an iterate under- or overflowed: the log domain is exact there
    solver = _SinkhornScalingCost if method == "scaling" else _SinkhornCost
    return solver.apply(log_a, log_b, cost, float(epsilon), n_iters)


def sinkhorn(
    student_logits: torch.Tensor,
    target: SparseTarget,
    temperature: float = 1.0,
    embeddings: torch.Tensor | None = None,
    k: int = 64,
    epsilon: float = 0.1,
    n_iters: int = 50,
    bucket_cost: float = 1.0,
) -> torch.Tensor:
    """Entropic Wasserstein cost ``⟨T, C⟩`` between ``p`` and ``q`` on their joint support, per row.

    Support ``U = S ∪ top-k(p)`` plus one bucket each side for the remaining mass (:func:`sinkhorn_support`),
    ground cost ``C_ij = 1 − cos(E_i, E_j)`` from the student's input embeddings, ``n_iters`` log-domain Sinkhorn
    iterations at regularisation ``epsilon`` (:func:`sinkhorn_cost`; agrees with ``ot.sinkhorn2``). Moving mass to
    a near-synonym costs little, unlike under KL. Cuturi, "Sinkhorn Distances", NeurIPS 2013.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, target)
    logp = student_logprobs(student_logits, temperature)
    log_a, log_b, cost, _ = sinkhorn_support(logp, target, embeddings, k=k, bucket_cost=bucket_cost)
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
# Closed-form gradients w.r.t. the logits (used by dft_loss; autograd of the functions above is the reference)
# ----------------------------------------------------------------------------------------------------------------
# Each ``*_with_grad(z, ...)`` returns the per-row loss (N,) and G = ∂(Σ rows)/∂z (N, V), in fewer passes over the
# V-sized rows than autograd takes. With u = z/τ and p = softmax(u), a loss Σ_j f(p_j) has ∂/∂u_i = p_i (a_i − Σ_j p_j a_j)
# where a = ∂f/∂p, and ∂/∂z = ∂/∂u / τ. The dense q (support q_j, tail t) is never built: a is first filled with its
# tail value and the k support entries are then overwritten.


def _softmax_chain(p: torch.Tensor, a: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p ⊙ (a − Σ_j p_j a_j) / τ``, computed in the storage of ``a``."""
    a.sub_(_row_dot(p, a).unsqueeze(-1)).mul_(p)
    return a if temperature == 1 else a.div_(temperature)


def _ce_with_grad(z: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """CE ``−log p_y`` and ``(p − onehot(y)) / τ``."""
    logp = student_logprobs(z, temperature)
    rows = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    grad = logp.exp_()
    grad.scatter_add_(-1, labels.unsqueeze(-1), torch.full_like(rows, -1.0).unsqueeze(-1))
    return rows, grad if temperature == 1 else grad.div_(temperature)


def _forward_kl_with_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0):
    """Forward KL (as :func:`forward_kl`) and ``(p · Σ_j q_j − q) / τ``."""
    logp = student_logprobs(z, temperature)
    rows, ids, q, t = _forward_kl_parts(logp, target)
    mass = q.sum(-1) if t is None else q.sum(-1) + (logp.shape[-1] - ids.shape[-1]) * t
    grad = logp.exp_().mul_(mass.unsqueeze(-1))
    if t is not None:
        grad.sub_(t.unsqueeze(-1))
        q = q - t.unsqueeze(-1)
    grad.scatter_add_(-1, ids, -q)
    return rows, grad if temperature == 1 else grad.div_(temperature)


def _reverse_kl_with_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0):
    """Reverse KL ``Σ_j p_j a_j`` with ``a = log p − log q``, and ``p ⊙ (a − KL) / τ``."""
    logp = student_logprobs(z, temperature)
    ids, logq, log_t, n_tail = _target_parts(target, logp.dtype)
    logp_s = logp.gather(-1, ids)
    p = logp.exp()
    a = logp if not n_tail else logp.sub_(log_t.unsqueeze(-1))
    a.scatter_(-1, ids, logp_s - logq)
    rows = _row_dot(p, a)
    return rows, _softmax_chain(p, a, temperature)


def _jsd_with_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, beta: float = 0.5):
    """Generalised JSD (as :func:`jsd`) and its gradient, ``a = ∂JSD/∂p = (1−β)(log p − log m)``."""
    _check_open_unit("beta", beta)
    log_b, log_1mb = math.log(beta), math.log1p(-beta)
    logp = student_logprobs(z, temperature)
    ids, logq, log_t, n_tail = _target_parts(target, logp.dtype)
    logp_s = logp.gather(-1, ids)
    p = logp.exp()
    p_s, q = logp_s.exp(), logq.exp()
    logm_s = torch.logaddexp(logq + log_b, logp_s + log_1mb)
    rows = (beta * (torch.xlogy(q, q) - q * logm_s) + (1 - beta) * (p_s * logp_s - p_s * logm_s)).sum(-1)
    if n_tail:  # every token as a tail token (m_j = β t + (1−β) p_j ≥ β t > 0), then the support corrected
        t = log_t.exp()
        logm = torch.add(beta * t.unsqueeze(-1), p, alpha=1 - beta).log_()
        logm_ts = logm.gather(-1, ids)
        q_part = beta * t * ((logp.shape[-1] - ids.shape[-1]) * log_t - (logm.sum(-1) - logm_ts.sum(-1)))
        a = logp.sub_(logm).mul_(1 - beta)
        del logm
        rows = rows + q_part + _row_dot(p, a) - (1 - beta) * (p_s * (logp_s - logm_ts)).sum(-1)
    else:
        a = logp
    a.scatter_(-1, ids, (1 - beta) * (logp_s - logm_s))
    return rows, _softmax_chain(p, a, temperature)


def _tvd_with_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0):
    """TVD (as :func:`tvd`) and its (sub)gradient, ``a = ½ sign(p − q)``."""
    p = student_logprobs(z, temperature).exp_()
    ids, logq, log_t, n_tail = _target_parts(target, p.dtype)
    p_s = p.gather(-1, ids)
    diff_s = p_s - logq.exp()
    rows = diff_s.abs().sum(-1)
    if n_tail:
        t = log_t.exp().unsqueeze(-1)
        a = p - t
        rows = rows + a.abs().sum(-1) - (p_s - t).abs().sum(-1)
        a.sign_()
    else:
        a = torch.empty_like(p)
    a.scatter_(-1, ids, diff_s.sign()).mul_(0.5)
    return 0.5 * rows, _softmax_chain(p, a, temperature)


# ----------------------------------------------------------------------------------------------------------------
# Entry point
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
_WITH_GRAD_FNS = {
    "ce": _ce_with_grad,
    "forward_kl": _forward_kl_with_grad,
    "reverse_kl": _reverse_kl_with_grad,
    "jsd": _jsd_with_grad,
    "tvd": _tvd_with_grad,
}
_FIXED_ARGS = {"student_logits", "target", "labels", "temperature", "embeddings"}


def loss_function(divergence: str) -> Callable:
    """The per-row function named ``divergence`` (one of :data:`LOSSES`)."""
    if divergence not in LOSSES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(LOSSES)}.")
    return _DIVERGENCE_FNS.get(divergence) or _BASELINE_FNS[divergence]


def _check_kwargs(divergence: str, kwargs: dict) -> None:
    allowed = [n for n in inspect.signature(loss_function(divergence)).parameters if n not in _FIXED_ARGS]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"{divergence} does not take {unknown}; its options are {allowed or 'none'} (plus temperature)."
        )


def _gather_rows(student: torch.Tensor, idx: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Rows ``idx`` (flat positions over the leading dims) of ``student`` without flattening (and copying) it whole."""
    where = torch.unravel_index(idx, student.shape[:-1])
    return where, student[where]


class _ChunkedRowLoss(torch.autograd.Function):
    """``Σ_rows row_loss(student[idx] (@ Wᵀ))`` with the gradients computed chunk by chunk during the forward pass.

    For each chunk of rows: the logits ``x @ Wᵀ`` are computed once without a graph; ``row_loss`` and its gradient
    w.r.t. the logits are then taken slice by slice (:data:`SLICE_ROWS` rows, so the element-wise work of a
    divergence runs on cache-sized blocks and its temporaries stay small), each slice's gradient overwriting its
    logits; finally ``∂/∂x = G W`` and ``∂/∂W += Gᵀ x``. So a chunk holds one ``(chunk, V)`` buffer, no ``(N, V)``
    float32 logits are ever stored for a hidden-state input, a logits input is never copied whole, and nothing is
    recomputed. The backward only scales the stored gradients by the incoming one. First-order only.
    """

    @staticmethod
    def forward(ctx, student, weight, index, chunk_size, row_loss, row_loss_with_grad):
        grad_student = torch.zeros_like(student) if student.requires_grad else None
        grad_weight = torch.zeros_like(weight) if weight is not None and weight.requires_grad else None
        dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
        total = torch.zeros((), dtype=dtype, device=student.device)
        for start in range(0, index.numel(), chunk_size):
            idx = index[start : start + chunk_size]
            where, x = _gather_rows(student.detach(), idx)  # a copy: advanced indexing
            logits = x if weight is None else x @ weight.detach().T
            for lo in range(0, idx.numel(), SLICE_ROWS):
                rows = idx[lo : lo + SLICE_ROWS]
                if row_loss_with_grad is not None:  # closed form
                    block_loss, grad_block = row_loss_with_grad(logits[lo : lo + SLICE_ROWS], rows)
                    block_sum = block_loss.sum()
                else:
                    block = logits[lo : lo + SLICE_ROWS].detach().requires_grad_()
                    with torch.enable_grad():
                        block_sum = row_loss(block, rows).sum()
                    (grad_block,) = torch.autograd.grad(block_sum, block)
                logits[lo : lo + SLICE_ROWS] = grad_block  # this slice's logits are not needed any more
                total = total + block_sum.detach()
            grad_logits = logits
            if grad_student is not None:
                grad_student[where] = grad_logits if weight is None else grad_logits @ weight.detach()
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, x)
        ctx.save_for_backward(grad_student, grad_weight)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        grad_student, grad_weight = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad_total.to(g.dtype)  # noqa: E731
        return scale(grad_student), scale(grad_weight), None, None, None, None


def dft_loss(
    student: torch.Tensor,
    target: SparseTarget | None,
    divergence: str = "reverse_kl",
    *,
    lm_head_weight: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int = 256,
    embeddings: torch.Tensor | None = None,
    **divergence_kwargs,
) -> torch.Tensor:
    """Scalar DFT loss ``Σ_{unmasked t} [λ·CE_t + (1−λ)·D_t] / n``, ``λ = ce_weight``, ``D`` = ``divergence``.

    Args:
        student: logits ``(..., V)``, or hidden states ``(..., H)`` when ``lm_head_weight`` ``(V, H)`` is given (then
            each chunk's logits are ``hidden @ Wᵀ`` and the full logits never exist). Leading dims are flattened.
        target: :class:`SparseTarget` with ids/logprobs ``(..., k)`` aligned with ``student`` (row ``t`` is the
            distribution of token ``t+1``); may be ``None`` for the baselines ``ce``/``label_smoothing``/``gem``.
        divergence: one of :data:`LOSSES`.
        labels: ``(...)`` token ids aligned with ``student``; ``-100`` masks a position. Needed by the baselines and
            when ``ce_weight > 0``; without labels every position counts.
        temperature: ``τ`` of the student ``p = softmax(z/τ)`` in the divergence (and in a baseline). The mixed-in
            CE term uses ``τ = 1`` (Hinton et al. 2015); no ``τ²`` factor is applied.
        ce_weight: ``λ ∈ [0, 1]``.
        num_items_in_batch: denominator ``n``: the count of unmasked tokens across the accumulated batch (Hugging
            Face Trainer convention for gradient accumulation); default: the unmasked positions of this call. With
            no unmasked position and no ``num_items_in_batch`` the loss is 0.
        chunk_size: rows per chunk.
        embeddings: ``(V, d)`` ground-cost embeddings, needed by ``sinkhorn``.
        **divergence_kwargs: options of the chosen function (``beta``, ``alpha``, ``k``, ``epsilon``, ``eps``, ``h`` …).
    """
    loss_function(divergence)
    _check_kwargs(divergence, divergence_kwargs)
    _check_temperature(temperature)
    if isinstance(ce_weight, bool) or not (isinstance(ce_weight, (int, float)) and 0.0 <= ce_weight <= 1.0):
        raise ValueError(f"ce_weight must be a number in [0, 1], got {ce_weight!r}.")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}.")
    if not isinstance(student, torch.Tensor) or student.ndim < 2:
        raise ValueError(
            "student must be a tensor of logits (..., V) or hidden states (..., H) with at least one position dim; "
            "for a single position pass student[None]."
        )

    if lm_head_weight is not None:
        if lm_head_weight.ndim != 2 or lm_head_weight.shape[1] != student.shape[-1]:
            raise ValueError(
                f"lm_head_weight must be (V, H) with H = student.shape[-1] = {student.shape[-1]}, got "
                f"{tuple(lm_head_weight.shape)}; pass model.get_output_embeddings().weight and the last hidden states."
            )
        vocab = lm_head_weight.shape[0]
    else:
        vocab = student.shape[-1]
    lead = student.shape[:-1]

    use_ce = ce_weight > 0 or divergence in BASELINES
    use_div = divergence in DIVERGENCES and ce_weight < 1
    if use_div:
        if target is None:
            raise ValueError(f"divergence {divergence!r} needs a target; pass a SparseTarget (or use 'ce').")
        if target.vocab_size != vocab:
            raise ValueError(
                f"student vocabulary V={vocab} but the target was built for vocab_size={target.vocab_size}: "
                "tokenizer mismatch; rebuild the target with the student's tokenizer."
            )
        if target.ids.shape[:-1] != lead:
            raise ValueError(
                f"target positions {tuple(target.ids.shape[:-1])} do not match student positions {tuple(lead)}; "
                "shift targets like the logits (targets[:, :-1] with logits[:, :-1])."
            )
        target_ids = target.ids.reshape(-1, target.k).to(student.device)
        target_logprobs = target.logprobs.reshape(-1, target.k).to(student.device)
    if use_ce and labels is None:
        raise ValueError(f"{'ce_weight > 0' if divergence in DIVERGENCES else divergence!r} needs labels.")
    if labels is not None and labels.shape != lead:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match student positions {tuple(lead)}.")

    flat_labels = None if labels is None else labels.reshape(-1).long().to(student.device)
    if flat_labels is None:
        index = torch.arange(math.prod(lead), device=student.device)
    else:
        index = (flat_labels != IGNORE_INDEX).nonzero().squeeze(-1)
    if num_items_in_batch is None:
        denominator = max(int(index.numel()), 1)
    else:
        if (torch.as_tensor(num_items_in_batch) <= 0).any():
            raise ValueError(f"num_items_in_batch must be > 0 (count of unmasked tokens), got {num_items_in_batch}.")
        denominator = num_items_in_batch

    div_fn = _DIVERGENCE_FNS.get(divergence)
    div_with_grad = _WITH_GRAD_FNS.get(divergence)
    if divergence == "sinkhorn":
        divergence_kwargs = {**divergence_kwargs, "embeddings": embeddings}

    def row_loss(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        loss = 0.0
        if use_div:
            chunk_target = SparseTarget(target_ids[idx], target_logprobs[idx], vocab)
            loss = (1 - ce_weight) * div_fn(logits, chunk_target, temperature, **divergence_kwargs)
        if divergence in BASELINES:
            loss = loss + (1 - ce_weight) * _BASELINE_FNS[divergence](
                logits, flat_labels[idx], temperature=temperature, **divergence_kwargs
            )
        if ce_weight > 0:
            loss = loss + ce_weight * ce(logits, flat_labels[idx])
        return loss

    row_loss_with_grad = None
    if divergence in _WITH_GRAD_FNS:

        def row_loss_with_grad(logits: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """``row_loss`` and its gradient w.r.t. ``logits``, both in closed form."""
            parts = []  # (weight, rows, grad)
            if use_div:
                chunk_target = SparseTarget(target_ids[idx], target_logprobs[idx], vocab)
                parts.append((1 - ce_weight, *div_with_grad(logits, chunk_target, temperature, **divergence_kwargs)))
            if divergence == "ce" and ce_weight < 1:
                parts.append((1 - ce_weight, *_ce_with_grad(logits, flat_labels[idx], temperature)))
            if ce_weight > 0:
                parts.append((ce_weight, *_ce_with_grad(logits, flat_labels[idx])))
            weight, rows, grad = parts[0]
            rows, grad = weight * rows, grad if weight == 1 else grad.mul_(weight)
            for weight, more_rows, more_grad in parts[1:]:
                rows = rows + weight * more_rows
                grad.add_(more_grad, alpha=weight)
            return rows, grad

    needs_grad = torch.is_grad_enabled() and (
        student.requires_grad or (lm_head_weight is not None and lm_head_weight.requires_grad)
    )
    if needs_grad:
        total = _ChunkedRowLoss.apply(student, lm_head_weight, index, chunk_size, row_loss, row_loss_with_grad)
    else:
        total = torch.zeros((), dtype=torch.float64 if student.dtype == torch.float64 else torch.float32, device=student.device)
        for start in range(0, index.numel(), chunk_size):
            idx = index[start : start + chunk_size]
            x = _gather_rows(student, idx)[1]
            total = total + row_loss(x if lm_head_weight is None else x @ lm_head_weight.T, idx).sum()
    return total / denominator
