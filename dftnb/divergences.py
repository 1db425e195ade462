"""The maths of every divergence and baseline, one class each: its value and its closed-form gradient side by side.

Notation: the student is ``p = softmax(u)``, ``u = z / τ``, over the vocabulary of size ``V``; the target ``q`` is a
:class:`~dftnb.sparse_target.SparseTarget` read in a tail mode by :func:`~dftnb.sparse_target.target_parts` (the one
reading both halves of a class share): exact ``q_j`` on its ``k`` support ids ``S`` and the tail mass ``r``, spread
uniformly, ``q_j = t = r / (V − k)`` off ``S`` (``"uniform"``); one extra category against the student's ``1 − P_S``
(``"bucket"``); or dropped, the support renormalised (``"renormalize"``). No dense ``q`` is built: every tail sum is
a closed form over the student's ``(N, V)`` row, and ``log(1 − P_S)`` is a log-sum-exp off ``S`` (:func:`log_rest`).

Each class has, with the same arguments as its public function in :mod:`dftnb.losses`:

* ``value(z, target | labels, temperature, **options, tail)`` → ``(N,)``, differentiable by autograd;
* ``value_and_grad(...)`` → ``((N,), ∂/∂z (N, V))`` where the gradient has a closed form: no graph, in place
  in one ``(N, V)`` buffer (``z`` itself is left as it was). A loss ``Σ_j f(p_j)`` has
  ``∂/∂u_i = p_i (a_i − Σ_j p_j a_j)``, ``a = ∂f/∂p`` (:func:`softmax_chain`), and ``∂/∂z = ∂/∂u / τ``; ``a`` is
  first filled with its value off ``S`` and its ``k`` support entries are then overwritten.

Inputs are not checked here (:mod:`dftnb.losses` checks them for a single call, :func:`dftnb.objective.dft_loss`
once per batch); ``tests/test_losses.py`` compares both halves with autograd of the dense float64 formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .sparse_target import SparseTarget, target_parts
from .transport import sinkhorn_cost, sinkhorn_support


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------------
def scaled_logits(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """``z / τ`` in float32 (float64 for float64 logits); no copy when nothing changes (``τ = 1``, same dtype)."""
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    z = z.to(dtype)
    return z if temperature == 1 else z / temperature


def student_logprobs(z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log p = log_softmax(z / τ)`` in float32 (float64 when the logits are float64)."""
    return torch.log_softmax(scaled_logits(z, temperature), dim=-1)


def row_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Σ_j x_ij y_ij`` per row (``torch.linalg.vecdot``; a ``(1, V) @ (V, 1)`` batched matmul is ~10x slower on CPU)."""
    return torch.linalg.vecdot(x, y)


def log_rest(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log(1 − P_S) = log Σ_{j∉S} p_j`` per row, a log-sum-exp over the tokens off ``ids``.

    Accurate whatever ``P_S`` is: ``1 − Σ_{j∈S} p_j`` in float32 loses every digit of a rest below ~1e-7, which the
    bucket's ``log(1 − P_S)`` would turn into ``−inf`` or noise. Needs ``k < V``.
    """
    return logp.scatter(-1, ids, float("-inf")).logsumexp(-1)


def softmax_chain(p: torch.Tensor, a: torch.Tensor, temperature: float) -> torch.Tensor:
    """``∂/∂z = p ⊙ (a − Σ_j p_j a_j) / τ`` for ``a = ∂loss/∂p``, computed in the storage of ``a``."""
    a.sub_(row_dot(p, a).unsqueeze(-1)).mul_(p)
    return a if temperature == 1 else a.div_(temperature)


def sum_pointwise(term: Callable, logp: torch.Tensor, target: SparseTarget, tail: str = "uniform") -> torch.Tensor:
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


def _per_tau(grad: torch.Tensor, temperature: float) -> torch.Tensor:
    """``∂/∂z = ∂/∂u / τ``, in place."""
    return grad if temperature == 1 else grad.div_(temperature)


# ----------------------------------------------------------------------------------------------------------------
# Divergences
# ----------------------------------------------------------------------------------------------------------------
class ForwardKL:
    """Forward KL ``KL(q‖p) = Σ_j q_j (log q_j − log p_j)``, per row (mass-covering; Hinton et al. 2015).

    * uniform: tail in closed form, ``Σ_{j∉S} q_j(log q_j − log p_j) = r·log t − t·(Σ_j log p_j − Σ_{j∈S} log p_j)``;
    * bucket: ``Σ_{i∈S} q_i log(q_i / p_i) + r log(r / (1 − P_S))``;
    * renormalize: ``Σ_{i∈S} q̃_i log(q̃_i / p_i)``, which pulls ``P_S`` toward 1.

    Gradient: uniform and renormalize, ``(p · m − q) / τ`` with ``m = Σ_j q_j`` (the uniform tail's ``q_j = t``
    included); bucket, ``a_i = −q_i / p_i`` on ``S`` and ``−r / (1 − P_S)`` off it, so ``∂/∂u_j = p_j (m − r / (1 −
    P_S))`` off ``S`` and ``p_i m − q_i`` on it, ``m = Σ_S q + r``.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """

    @staticmethod
    def parts(logp: torch.Tensor, target: SparseTarget, tail: str = "uniform"):
        """``(KL(q‖p) per row, ids, q on the support, tail value t or None, (log r, log(1 − P_S)) or None)``."""
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

    @staticmethod
    def value(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, tail: str = "uniform") -> torch.Tensor:
        return ForwardKL.parts(student_logprobs(z, temperature), target, tail)[0]

    @staticmethod
    def value_and_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, tail: str = "uniform"):
        logp = student_logprobs(z, temperature)
        if tail == "bucket" and target.k < target.vocab_size:
            # 1 − P_S summed over the off-support entries of p in place (positive terms: relative precision), so
            # the bucket costs one reduction more than the uniform tail; log-sum-exp only where that sum underflows
            ids, logq, _, _, log_r = target_parts(target, logp.dtype, tail)
            logp_s = logp.gather(-1, ids)
            q = logq.exp()
            grad = logp.exp_()
            p_s = grad.gather(-1, ids)
            rest_sum = grad.scatter_(-1, ids, 0.0).sum(-1)
            rest, mass = rest_sum.log(), q.sum(-1) + log_r.exp()
            underflow = rest_sum == 0  # every off-support p_j is 0 in this dtype: work in the log domain there
            if underflow.any():
                lp = student_logprobs(z[underflow], temperature)
                rest[underflow] = log_rest(lp, ids[underflow])
            ratio = (log_r - rest).exp()  # r / (1 − P_S)
            rows = (torch.xlogy(q, q) - q * logp_s).sum(-1) + log_r.exp() * (log_r - rest)
            grad.mul_((mass - torch.where(underflow, 0.0, ratio)).unsqueeze(-1))
            if underflow.any():  # off S: p_j m − r · p_j / (1 − P_S), the second factor as exp(log p_j − log(1 − P_S))
                col = lambda x: x[underflow].unsqueeze(-1)  # noqa: E731
                grad[underflow] = lp.exp() * col(mass) - (lp - col(rest) + col(log_r)).exp()
            grad.scatter_(-1, ids, p_s * mass.unsqueeze(-1) - q)
            return rows, _per_tau(grad, temperature)
        rows, ids, q, t, _ = ForwardKL.parts(logp, target, tail)
        mass = q.sum(-1)
        if t is not None:
            mass = mass + (logp.shape[-1] - ids.shape[-1]) * t
        grad = logp.exp_().mul_(mass.unsqueeze(-1))
        if t is not None:
            grad.sub_(t.unsqueeze(-1))
            q = q - t.unsqueeze(-1)
        grad.scatter_add_(-1, ids, -q)
        return rows, _per_tau(grad, temperature)


class ReverseKL:
    """Reverse KL ``KL(p‖q) = Σ_j p_j (log p_j − log q_j)``, per row (mode-seeking; the seed's ``D_KL(P_model‖P_target)``).

    * uniform: tail in closed form, ``Σ_{j∉S} p_j log p_j − (1 − P_S)·log t`` with
      ``Σ_{j∉S} p_j log p_j = Σ_j p_j log p_j − Σ_{j∈S} p_j log p_j``;
    * bucket: ``Σ_{i∈S} p_i log(p_i / q_i) + (1 − P_S) log((1 − P_S) / r)``;
    * renormalize: ``q̃`` is 0 off ``S``, so ``KL(p‖q̃)`` is infinite as soon as the student puts mass there. The
      student is renormalised over ``S`` too, ``p̃ = p_S / P_S``, and the loss is ``KL(p̃‖q̃)``: the two conditional
      distributions given ``S`` are compared, and the student's mass off ``S`` gets no gradient at all.

    Gradient ``p ⊙ (a − KL) / τ`` with ``a = log p − log q`` (uniform); ``a_i = log p_i − log q_i`` on ``S`` and
    ``log(1 − P_S) − log r`` off it (bucket); renormalize: the same on ``S`` for ``p̃`` and ``q̃``, 0 off ``S``.

    Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024; Agarwal et al., "On-Policy
    Distillation of Language Models" (GKD), ICLR 2024.
    """

    @staticmethod
    def value(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, tail: str = "uniform") -> torch.Tensor:
        logp = student_logprobs(z, temperature)
        parts = target_parts(target, logp.dtype, tail)
        ids, logq = parts.ids, parts.logq
        logp_s = logp.gather(-1, ids)
        if tail == "renormalize" and parts.n_tail:
            logp_s = logp_s - logp_s.logsumexp(-1, keepdim=True)
            return (logp_s.exp() * (logp_s - logq)).sum(-1)
        p_s = logp_s.exp()
        loss = (p_s * (logp_s - logq)).sum(-1)
        if parts.log_t is not None:
            neg_entropy = row_dot(logp.exp(), logp)
            tail_plogp = neg_entropy - (p_s * logp_s).sum(-1)
            tail_p = (1.0 - p_s.sum(-1)).clamp_min(0.0)
            loss = loss + tail_plogp - tail_p * parts.log_t
        elif parts.log_r is not None:
            rest = log_rest(logp, ids)
            loss = loss + rest.exp() * (rest - parts.log_r)
        return loss

    @staticmethod
    def value_and_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, tail: str = "uniform"):
        logp = student_logprobs(z, temperature)
        ids, logq, n_tail, log_t, log_r = target_parts(target, logp.dtype, tail)
        logp_s = logp.gather(-1, ids)
        if tail == "renormalize" and n_tail:
            logp_s = logp_s - logp_s.logsumexp(-1, keepdim=True)
            p_s = logp_s.exp()
            a = logp_s - logq
            rows = (p_s * a).sum(-1)
            grad = logp.zero_()
            grad.scatter_(-1, ids, p_s * (a - rows.unsqueeze(-1)))
            return rows, _per_tau(grad, temperature)
        p = logp.exp()
        if log_r is not None:
            rest = logp.scatter_(-1, ids, float("-inf")).logsumexp(-1)  # log(1 − P_S); logp is not needed any more
            a = logp.fill_(0.0).add_((rest - log_r).unsqueeze(-1))
        else:
            a = logp if log_t is None else logp.sub_(log_t.unsqueeze(-1))
        a.scatter_(-1, ids, logp_s - logq)
        rows = row_dot(p, a)
        return rows, softmax_chain(p, a, temperature)


class JSD:
    """Generalised Jensen-Shannon ``β·KL(q‖m) + (1−β)·KL(p‖m)``, ``m = β q + (1−β) p``, ``β ∈ (0, 1)``, per row.

    ``β = 0.5`` is the symmetric JSD (bounded by ``log 2``). Bucket: the same formula over the ``k + 1`` categories
    (``q_rest = r``, ``p_rest = 1 − P_S``). Renormalize: ``q̃`` on ``S``; off it ``q = 0`` and ``m = (1−β) p``, which
    adds ``−(1−β) log(1−β)·(1 − P_S)``. Gradient: ``a = ∂JSD/∂p = (1−β)(log p − log m)``; off ``S``
    ``(1−β)(log(1 − P_S) − log m_rest)`` for the bucket and ``−(1−β) log(1−β)`` for renormalize. Agarwal et al.,
    "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes" (GKD), ICLR 2024.
    """

    @staticmethod
    def term(beta: float) -> Callable:
        """The pointwise term ``β q (log q − log m) + (1−β) p (log p − log m)`` in the log domain."""
        log_b, log_1mb = math.log(beta), math.log1p(-beta)

        def term(logq, logp):
            logm = torch.logaddexp(logq + log_b, logp + log_1mb)
            q, p = logq.exp(), logp.exp()
            return beta * (torch.xlogy(q, q) - q * logm) + (1 - beta) * (p * logp - p * logm)

        return term

    @staticmethod
    def value(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, beta: float = 0.5,
              tail: str = "uniform") -> torch.Tensor:
        term = JSD.term(beta)
        logp = student_logprobs(z, temperature)
        parts = target_parts(target, logp.dtype, tail)
        ids, log_t = parts.ids, parts.log_t
        logp_s = logp.gather(-1, ids)
        loss = term(parts.logq, logp_s).sum(-1)  # support terms in the log domain (exact for q_j or p_j = 0)
        if log_t is not None:
            # every token as a tail token, in probability space: m_j = β t + (1−β) p_j ≥ β t > 0, so log m_j is finite;
            # Σ_j β t (log t − log m_j) = β t (V log t − Σ_j log m_j) and Σ_j (1−β) p_j (log p_j − log m_j) as a dot
            log_t_col = log_t.unsqueeze(-1)
            p = logp.exp()
            logm = torch.add(beta * log_t_col.exp(), p, alpha=1 - beta).log()
            all_tail = beta * log_t.exp() * (logp.shape[-1] * log_t - logm.sum(-1)) + (1 - beta) * row_dot(p, logp - logm)
            loss = loss + all_tail - term(log_t_col.expand_as(logp_s), logp_s).sum(-1)
        elif parts.log_r is not None:
            loss = loss + term(parts.log_r, log_rest(logp, ids))
        elif parts.n_tail:  # renormalize
            loss = loss - (1 - beta) * math.log1p(-beta) * log_rest(logp, ids).exp()
        return loss

    @staticmethod
    def value_and_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, beta: float = 0.5,
                       tail: str = "uniform"):
        log_b, log_1mb = math.log(beta), math.log1p(-beta)
        logp = student_logprobs(z, temperature)
        ids, logq, n_tail, log_t, log_r = target_parts(target, logp.dtype, tail)
        logp_s = logp.gather(-1, ids)
        p = logp.exp()
        p_s, q = logp_s.exp(), logq.exp()
        logm_s = torch.logaddexp(logq + log_b, logp_s + log_1mb)
        rows = (beta * (torch.xlogy(q, q) - q * logm_s) + (1 - beta) * (p_s * logp_s - p_s * logm_s)).sum(-1)
        if log_t is not None:  # every token as a tail token (m_j = β t + (1−β) p_j ≥ β t > 0), then the support
            t = log_t.exp()
            logm = torch.add(beta * t.unsqueeze(-1), p, alpha=1 - beta).log_()
            logm_ts = logm.gather(-1, ids)
            q_part = beta * t * ((logp.shape[-1] - ids.shape[-1]) * log_t - (logm.sum(-1) - logm_ts.sum(-1)))
            a = logp.sub_(logm).mul_(1 - beta)
            del logm
            rows = rows + q_part + row_dot(p, a) - (1 - beta) * (p_s * (logp_s - logm_ts)).sum(-1)
        elif n_tail:  # bucket or renormalize: one value of a off S
            rest = logp.scatter_(-1, ids, float("-inf")).logsumexp(-1)  # log(1 − P_S)
            if log_r is not None:
                logm_rest = torch.logaddexp(log_r + log_b, rest + log_1mb)
                rows = rows + JSD.term(beta)(log_r, rest)
                a_rest = (1 - beta) * (rest - logm_rest)
            else:
                a_rest = torch.full_like(rest, -(1 - beta) * log_1mb)
                rows = rows + a_rest * rest.exp()
            a = logp.fill_(0.0).add_(a_rest.unsqueeze(-1))
        else:
            a = logp
        a.scatter_(-1, ids, (1 - beta) * (logp_s - logm_s))
        return rows, softmax_chain(p, a, temperature)


class SkewKL:
    """Skew KL ``KL(q ‖ α q + (1−α) p)``, ``α ∈ [0, 1)``, per row; ``α = 0`` is the forward KL.

    Mixing a little of ``q`` into the second argument keeps the divergence bounded (``≤ −log α``) and its gradient
    stable. Bucket: the same over the ``k + 1`` categories; renormalize: over ``S`` with ``q̃`` (terms with ``q = 0``
    vanish). Gradient by autograd. Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
    ICML 2024; see also the generalised JSD of Agarwal et al. (GKD), ICLR 2024.
    """

    @staticmethod
    def value(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, alpha: float = 0.1,
              tail: str = "uniform") -> torch.Tensor:
        log_a = math.log(alpha) if alpha > 0 else float("-inf")
        log_1ma = math.log1p(-alpha)

        def term(logq, logp):
            q = logq.exp()
            return torch.xlogy(q, q) - q * torch.logaddexp(logq + log_a, logp + log_1ma)

        return sum_pointwise(term, student_logprobs(z, temperature), target, tail)


class TVD:
    """Total variation distance ``½ Σ_j |p_j − q_j|``, per row, in [0, 1].

    Bucket: ``½ (Σ_{i∈S} |p_i − q_i| + |1 − P_S − r|)``; renormalize: ``½ (Σ_{i∈S} |p_i − q̃_i| + 1 − P_S)``.
    (Sub)gradient: ``a = ½ sign(p − q)``; off ``S`` ``½ sign(1 − P_S − r)`` for the bucket and ``½`` for
    renormalize. Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge Distillation", ACL 2023.
    """

    @staticmethod
    def value(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, tail: str = "uniform") -> torch.Tensor:
        logp = student_logprobs(z, temperature)
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

    @staticmethod
    def value_and_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, tail: str = "uniform"):
        logp = student_logprobs(z, temperature)
        p = logp.exp()
        ids, logq, n_tail, log_t, log_r = target_parts(target, p.dtype, tail)
        p_s = p.gather(-1, ids)
        diff_s = p_s - logq.exp()
        rows = diff_s.abs().sum(-1)
        if log_t is not None:
            t = log_t.exp().unsqueeze(-1)
            a = p - t
            rows = rows + a.abs().sum(-1) - (p_s - t).abs().sum(-1)
            a.sign_()
        elif n_tail:
            rest = logp.scatter_(-1, ids, float("-inf")).logsumexp(-1).exp()  # 1 − P_S
            diff_rest = rest if log_r is None else rest - log_r.exp()
            rows = rows + diff_rest.abs()
            a = logp.fill_(0.0).add_(diff_rest.sign().unsqueeze(-1))
        else:
            a = logp
        a.scatter_(-1, ids, diff_s.sign()).mul_(0.5)
        return 0.5 * rows, softmax_chain(p, a, temperature)


class SortedWasserstein:
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
    the top ``k`` only, tail shape left free (zero for a target built from the student itself). Gradient by
    autograd. Boizard et al., "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss for
    LLMs", 2024.
    """

    @staticmethod
    def value(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, tail: str = "uniform") -> torch.Tensor:
        logp = student_logprobs(z, temperature)
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


class Sinkhorn:
    """Entropic Wasserstein cost ``⟨T, C⟩`` between ``p`` and ``q`` on their joint support, per row.

    Support ``U = S ∪ top-k(p)`` plus one bucket each side for the remaining mass (:func:`sinkhorn_support`),
    ground cost ``C_ij = 1 − cos(E_i, E_j)`` from the student's input embeddings, ``n_iters`` log-domain Sinkhorn
    iterations at regularisation ``epsilon`` (:func:`sinkhorn_cost`; agrees with ``ot.sinkhorn2``). Moving mass to
    a near-synonym costs little, unlike under KL. Tail modes: uniform, ``q = t`` on the student-only ids and
    ``t·(V − |U|)`` in the bucket; bucket, the problem is ``S`` plus the bucket alone, ``(p_S, 1 − P_S)`` against
    ``(q_S, r)``; renormalize, ``q̃`` on ``S`` and no target mass anywhere else. Gradient: the exact reverse pass
    of the unrolled iterations, written by hand in :mod:`dftnb.transport`. Cuturi, "Sinkhorn Distances", NeurIPS 2013.
    """

    @staticmethod
    def value(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, embeddings: torch.Tensor | None = None,
              k: int = 64, epsilon: float = 0.1, n_iters: int = 50, bucket_cost: float = 1.0,
              tail: str = "uniform") -> torch.Tensor:
        logp = student_logprobs(z, temperature)
        log_a, log_b, cost, _ = sinkhorn_support(logp, target, embeddings, k=k, bucket_cost=bucket_cost, tail=tail)
        return sinkhorn_cost(log_a, log_b, cost, epsilon=epsilon, n_iters=n_iters)


# ----------------------------------------------------------------------------------------------------------------
# Supervised baselines (one-hot labels y)
# ----------------------------------------------------------------------------------------------------------------
class CE:
    """Cross-entropy ``−log p_y`` per row: supervised fine-tuning (SFT). Gradient ``(p − onehot(y)) / τ``."""

    @staticmethod
    def value(z: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return -student_logprobs(z, temperature).gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def value_and_grad(z: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
        logp = student_logprobs(z, temperature)
        rows = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        grad = logp.exp_()
        grad.scatter_add_(-1, labels.unsqueeze(-1), torch.full_like(rows, -1.0).unsqueeze(-1))
        return rows, _per_tau(grad, temperature)


class LabelSmoothing:
    """Label-smoothed cross-entropy ``−Σ_j q_j log p_j`` with ``q = (1−ε)·onehot(y) + ε/V``, per row.

    Same convention as ``torch.nn.CrossEntropyLoss(label_smoothing=ε)``. Gradient by autograd. Szegedy et al.,
    "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
    """

    @staticmethod
    def value(z: torch.Tensor, labels: torch.Tensor, eps: float = 0.1, temperature: float = 1.0) -> torch.Tensor:
        logp = student_logprobs(z, temperature)
        return -(1 - eps) * logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - eps * logp.mean(-1)


class GEM:
    """GEM surrogate loss ``−Σ_j sg(q_j·w_j)·(log p_y − log p_j)`` per row (``sg`` = stop-gradient).

    GEM solves reverse-KL distribution matching with an entropy regulariser as a game: the auxiliary distribution
    has the closed form ``q = softmax(u / β)`` (``β < 1`` sharpens it), and the model moves probability towards the
    label ``y`` mainly from the tokens ``q`` ranks highly ("sparse update"). Its gradient on the logits is
    ``(q⊙w − (Σ_j q_j w_j)·onehot(y)) / τ``. The weight ``w`` comes from the concave generator ``h``: ``"linear"``
    gives ``w = 1``; ``"logsigmoid"`` gives ``w_j = σ((u_j − u_y)/100)``, which shrinks the update once the label
    already leads the other tokens ("adaptive termination"), as in the authors' reference implementation. The value
    itself is a surrogate (it can be negative); train on it, report CE for likelihood. ``u`` is ``z / τ``.
    Li et al., "Preserving Diversity in Supervised Fine-Tuning of Large Language Models", ICLR 2025.
    """

    @staticmethod
    def weights(u: torch.Tensor, labels: torch.Tensor, beta: float, h: str) -> torch.Tensor:
        """``q ⊙ w`` from the scaled logits ``u``, without a graph."""
        with torch.no_grad():
            q = torch.softmax(u / beta, dim=-1)
            if h == "logsigmoid":
                q = q * torch.sigmoid((u - u.gather(-1, labels.unsqueeze(-1))) / 100.0)
        return q

    @staticmethod
    def value(z: torch.Tensor, labels: torch.Tensor, beta: float = 0.7, h: str = "logsigmoid",
              temperature: float = 1.0) -> torch.Tensor:
        u = scaled_logits(z, temperature)
        logp = torch.log_softmax(u, dim=-1)
        logp_y = logp.gather(-1, labels.unsqueeze(-1))
        return -(GEM.weights(u, labels, beta, h) * (logp_y - logp)).sum(-1)

    @staticmethod
    def value_and_grad(z: torch.Tensor, labels: torch.Tensor, beta: float = 0.7, h: str = "logsigmoid",
                       temperature: float = 1.0):
        u = scaled_logits(z, temperature)
        logp = torch.log_softmax(u, dim=-1)
        qw = GEM.weights(u, labels, beta, h)
        rows = -(qw * (logp.gather(-1, labels.unsqueeze(-1)) - logp)).sum(-1)
        grad = qw.scatter_add_(-1, labels.unsqueeze(-1), -qw.sum(-1, keepdim=True))
        return rows, _per_tau(grad, temperature)


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------
MATH = {
    "forward_kl": ForwardKL,
    "reverse_kl": ReverseKL,
    "jsd": JSD,
    "skew_kl": SkewKL,
    "tvd": TVD,
    "wasserstein_sorted": SortedWasserstein,
    "sinkhorn": Sinkhorn,
    "ce": CE,
    "label_smoothing": LabelSmoothing,
    "gem": GEM,
}
# name -> value_and_grad, for the losses whose gradient w.r.t. the logits has a closed form
CLOSED_FORM = {name: maths.value_and_grad for name, maths in MATH.items() if hasattr(maths, "value_and_grad")}
