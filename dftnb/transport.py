"""Entropic optimal transport between two next-token distributions on a small support (the Sinkhorn divergence).

A Wasserstein distance over a vocabulary needs a ground cost between tokens and a support small enough to solve on.
Here the cost is ``C_ij = 1 − cos(E_i, E_j)`` between the model's input embeddings (:func:`embedding_cost`), the
support of each row is ``U = S ∪ top-k(p)`` plus one bucket for the rest of the vocabulary
(:func:`sinkhorn_support`), and :func:`sinkhorn_cost` runs ``n`` Sinkhorn iterations (Cuturi, "Sinkhorn Distances:
Lightspeed Computation of Optimal Transport", NeurIPS 2013) with the exact gradient of the unrolled iterations,
written by hand so that a training step does not store autograd's graph of every iteration. The divergence itself,
:class:`dftnb.divergences.Sinkhorn` (:func:`dftnb.losses.sinkhorn` with its checks), is three lines on top of this
module; ``tests/test_pot_agreement.py`` checks both solvers against POT's ``ot.sinkhorn2``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .sparse_target import SparseTarget, target_parts


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
    tail: str = "uniform",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reduce each row to an OT problem on ``U = S ∪ top-k(p)`` plus one bucket for the rest of the vocabulary.

    Returns ``(log_a, log_b, cost, ids)``: ``log_a``/``log_b`` ``(N, K+1)`` are the log-masses of ``p`` and ``q``
    on the slots ``[target ids…, student top-k ids…, bucket]`` (``K = k_target + k``); a student top-k id that is
    also a target id gets mass 0 on both sides (``log = −inf``), so each token appears once. ``q`` on a student-only
    id is the tail value ``t``. The bucket holds the remaining mass of each side: ``1 − Σ_U p`` and
    ``t·(V − |U|)``. ``cost`` ``(N, K+1, K+1)`` is ``1 − cos`` between token embeddings, ``bucket_cost`` between the
    bucket and any token (1 = the cost between orthogonal embeddings) and 0 from the bucket to itself.

    ``tail`` (the target's tail mode, docs/design.md): ``"uniform"`` as above; ``"bucket"``: the problem is the
    target's ``k + 1`` categories, ``S`` and the bucket, with masses ``(p_S, 1 − P_S)`` and ``(q_S, r)`` (the
    student-only slots get mass 0 on both sides, their ``p`` is in the bucket); ``"renormalize"``: ``q̃ = q_S / (1 − r)``
    on ``S`` and no target mass on the student-only ids or in the bucket.
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
    ids_q, logq, n_tail, log_t, log_r = target_parts(target, logp.dtype, tail)
    ids_p = logp.detach().topk(k, dim=-1).indices
    duplicate = (ids_p.unsqueeze(-1) == ids_q.unsqueeze(-2)).any(-1)
    ids = torch.cat([ids_q, ids_p], dim=-1)
    neg_inf = torch.tensor(float("-inf"), dtype=logp.dtype, device=logp.device)
    if tail == "bucket":  # the target's k + 1 categories only: every student-only id belongs to the bucket
        duplicate = torch.ones_like(duplicate)
    keep = torch.cat([torch.ones_like(ids_q, dtype=torch.bool), ~duplicate], dim=-1)

    log_a = torch.where(keep, logp.gather(-1, ids), neg_inf)
    if tail == "bucket" and n_tail:
        log_rest_p = logp.scatter(-1, ids_q, float("-inf")).logsumexp(-1)  # log(1 − P_S), accurate for any P_S
    else:
        rest_p = (1.0 - log_a.exp().sum(-1)).clamp_min(0.0)
        log_rest_p = torch.where(rest_p > 0, torch.where(rest_p > 0, rest_p, 1.0).log(), neg_inf)
    log_a = torch.cat([log_a, log_rest_p.unsqueeze(-1)], dim=-1)

    if log_r is not None:  # bucket
        log_b_extra = torch.full_like(ids_p, float("-inf"), dtype=logp.dtype)
        log_rest_q = log_r
    elif log_t is not None:
        log_b_extra = torch.where(duplicate, neg_inf, log_t.unsqueeze(-1))
        n_rest = (n_tail - (~duplicate).sum(-1)).to(logp.dtype)
        log_rest_q = torch.where(n_rest > 0, log_t + n_rest.clamp_min(1.0).log(), neg_inf)
    else:  # k == V (every student id is a target id, nothing is left over) or renormalize (no mass off S)
        log_b_extra = torch.full_like(ids_p, float("-inf"), dtype=logp.dtype)
        log_rest_q = neg_inf.expand(logp.shape[0])
    log_b = torch.cat([logq, log_b_extra, log_rest_q.unsqueeze(-1)], dim=-1)

    cost = embedding_cost(embeddings, ids).to(logp.dtype)
    cost = F.pad(cost, (0, 1, 0, 1), value=float(bucket_cost))
    cost[..., -1, -1] = 0.0
    return log_a, log_b, cost, ids


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
