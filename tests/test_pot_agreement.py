"""dftnb.losses' entropic OT against POT (``ot.sinkhorn2``, torch backend): values and gradients, float64."""

from __future__ import annotations

import ot
import pytest
import torch

from dftnb import losses as L
from dftnb import transport
from dftnb.targets import SparseTarget

V = 30


def pot_sinkhorn(a, b, cost, eps, n_iters):
    return ot.sinkhorn2(a, b, cost, eps, method="sinkhorn_log", numItermax=n_iters, stopThr=0.0)


@pytest.mark.parametrize("method", ["log", "scaling"])
@pytest.mark.parametrize("eps,n_iters", [(0.05, 200), (0.1, 50), (1.0, 10)])
def test_sinkhorn_cost_equals_pot_values_and_gradients(eps, n_iters, method):
    g = torch.Generator().manual_seed(int(eps * 100))
    rows, na, nb = 3, 7, 5
    za = torch.randn(rows, na, generator=g, dtype=torch.float64, requires_grad=True)
    zb = torch.randn(rows, nb, generator=g, dtype=torch.float64, requires_grad=True)
    cost = (torch.rand(rows, na, nb, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    ours = transport.sinkhorn_cost(torch.log_softmax(za, -1), torch.log_softmax(zb, -1), cost, eps, n_iters, method=method)
    pot = torch.stack(
        [pot_sinkhorn(torch.softmax(za[i], -1), torch.softmax(zb[i], -1), cost[i], eps, n_iters) for i in range(rows)]
    )
    torch.testing.assert_close(ours, pot, rtol=1e-10, atol=1e-12)
    inputs = (za, zb, cost)  # the gradient of the unrolled iterations w.r.t. both marginals and the ground cost
    for g_ours, g_pot in zip(torch.autograd.grad(ours.sum(), inputs), torch.autograd.grad(pot.sum(), inputs)):
        torch.testing.assert_close(g_ours, g_pot, rtol=1e-8, atol=1e-10)


def test_sinkhorn_cost_auto_picks_a_solver_that_matches_the_log_domain():
    g = torch.Generator().manual_seed(3)
    la = torch.log_softmax(torch.randn(4, 6, generator=g), -1)
    lb = torch.log_softmax(torch.randn(4, 5, generator=g), -1)
    cost = torch.rand(4, 6, 5, generator=g) * 2  # float32, max C ≈ 2
    for eps in (0.1, 0.01):  # max C/ε ≈ 20 (scaling domain) and ≈ 200 (K would underflow: log domain)
        auto = transport.sinkhorn_cost(la, lb, cost, eps, 100)
        assert torch.isfinite(auto).all()
        torch.testing.assert_close(auto, transport.sinkhorn_cost(la, lb, cost, eps, 100, method="log"), rtol=1e-4, atol=1e-6)
    assert not torch.isfinite(transport.sinkhorn_cost(la, lb, cost * 50, 0.01, 100, method="scaling")).all()


def brute_force_problem(z_row, target_row: SparseTarget, emb, k, bucket_cost):
    """The reduced OT problem of one row built from Python sets: union support + one bucket, positive masses only."""
    p = torch.softmax(z_row, -1)
    q = target_row.to_dense()
    union = sorted(set(target_row.ids.tolist()) | set(p.detach().topk(k).indices.tolist()))
    rest = [j for j in range(V) if j not in union]
    a = torch.cat([p[union], p[rest].sum().reshape(1)])
    b = torch.cat([q[union], q[rest].sum().reshape(1)])
    unit = emb / emb.norm(dim=-1, keepdim=True)
    cost = torch.full((len(union) + 1, len(union) + 1), bucket_cost, dtype=torch.float64)
    cost[:-1, :-1] = (1 - unit[union] @ unit[union].T).clamp_min(0)
    cost[-1, -1] = 0.0
    return a, b, cost


@pytest.mark.parametrize("k_target,k_student", [(4, 6), (10, 3), (1, 1)])
def test_sinkhorn_loss_equals_pot_on_brute_force_support(k_target, k_student):
    g = torch.Generator().manual_seed(k_target)
    rows = 4
    z = (torch.randn(rows, V, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    target = SparseTarget.from_logits(torch.randn(rows, V, generator=g, dtype=torch.float64) * 2, k_target)
    target = SparseTarget(target.ids, target.logprobs.double(), V)
    emb = torch.randn(V, 8, generator=g, dtype=torch.float64)
    ours = L.sinkhorn(z, target, embeddings=emb, k=k_student, epsilon=0.1, n_iters=60, bucket_cost=0.8)
    pot = torch.stack(
        [pot_sinkhorn(*brute_force_problem(z[i], target[i], emb, k_student, 0.8), 0.1, 60) for i in range(rows)]
    )
    torch.testing.assert_close(ours, pot, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(ours.sum(), z)[0], torch.autograd.grad(pot.sum(), z)[0], rtol=1e-7, atol=1e-10
    )


def test_sinkhorn_full_support_equals_dense_pot():
    """k = V on both sides: no bucket mass, the loss is POT's entropic OT over the whole vocabulary."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, V, generator=g, dtype=torch.float64)
    target = SparseTarget(
        torch.arange(V).expand(2, V), torch.log_softmax(torch.randn(2, V, generator=g, dtype=torch.float64), -1), V
    )
    emb = torch.randn(V, 5, generator=g, dtype=torch.float64)
    unit = emb / emb.norm(dim=-1, keepdim=True)
    cost = (1 - unit @ unit.T).clamp_min(0)
    ours = L.sinkhorn(z, target, embeddings=emb, k=V, epsilon=0.2, n_iters=40)
    p, q = torch.softmax(z, -1), target.to_dense()
    pot = torch.stack([pot_sinkhorn(p[i], q[i], cost, 0.2, 40) for i in range(2)])
    torch.testing.assert_close(ours, pot, rtol=1e-10, atol=1e-12)
    exact = torch.stack([ot.emd2(p[i], q[i], cost) for i in range(2)])
    assert (ours >= exact - 1e-9).all()  # the entropic plan is feasible, so its cost is at least the exact OT cost


def test_ot_problems_are_the_brute_force_problems():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, V, generator=g, dtype=torch.float64)
    target = SparseTarget.from_logits(torch.randn(3, V, generator=g, dtype=torch.float64), 5)
    emb = torch.randn(V, 6, generator=g, dtype=torch.float64)
    for row, (a, b, cost, ids) in enumerate(L.ot_problems(z, target, emb, k=4, bucket_cost=0.7)):
        want_a, want_b, want_cost = brute_force_problem(z[row], target[row], emb, 4, 0.7)
        order = torch.cat([torch.argsort(ids), torch.tensor([len(ids)])])  # brute force lists ids sorted, bucket last
        torch.testing.assert_close(a[order], want_a)
        torch.testing.assert_close(b[order], want_b)
        torch.testing.assert_close(cost[order][:, order], want_cost)
        assert float(ot.emd2(a, b, cost)) == pytest.approx(float(ot.emd2(want_a, want_b, want_cost)), rel=1e-12)
