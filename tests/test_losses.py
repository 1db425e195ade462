"""dftnb.losses against dense float64 references written here from the plain formulas (docs/design.md, divergences)."""

from __future__ import annotations

import math

import pytest
import torch

from dftnb import divergences as D
from dftnb import losses as L
from dftnb import objective, transport
from dftnb.targets import SparseTarget

V = 40
N = 5


def random_target(n: int, vocab: int, k: int, seed: int, dtype=torch.float64) -> SparseTarget:
    """Unsorted random ids, peaked random masses on the support, a random tail mass (none when k == V)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(n)])
    support = torch.distributions.Dirichlet(torch.full((k,), 0.3, dtype=dtype)).sample((n,)) if k > 1 else None
    support = torch.ones(n, 1, dtype=dtype) if k == 1 else support
    tail = torch.rand(n, 1, generator=g, dtype=dtype) * 0.5 if k < vocab else torch.zeros(n, 1, dtype=dtype)
    probs = (support * (1 - tail)).clamp_min(1e-30)
    return SparseTarget(ids, probs.log(), vocab)


def random_logits(n: int, vocab: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, vocab, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


# Dense references: p and q are full (N, C) float64 probability tensors over C categories (the V tokens, or the
# k + 1 categories of the bucket); 0 log 0 = 0.
def ref_forward_kl(p, q):
    return (torch.xlogy(q, q) - q * p.log()).sum(-1)


def ref_reverse_kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


def ref_jsd(p, q, beta):
    m = beta * q + (1 - beta) * p
    return beta * (torch.xlogy(q, q) - q * m.log()).sum(-1) + (1 - beta) * (p * (p / m).log()).sum(-1)


def ref_skew_kl(p, q, alpha):
    return (torch.xlogy(q, q) - q * (alpha * q + (1 - alpha) * p).log()).sum(-1)


def ref_tvd(p, q):
    return 0.5 * (p - q).abs().sum(-1)


def ref_wasserstein_sorted(p, q):
    return (p.sort(-1, descending=True).values - q.sort(-1, descending=True).values).abs().sum(-1)


CASES = [
    ("forward_kl", {}, ref_forward_kl),
    ("reverse_kl", {}, ref_reverse_kl),
    ("jsd", {"beta": 0.5}, lambda p, q: ref_jsd(p, q, 0.5)),
    ("jsd", {"beta": 0.2}, lambda p, q: ref_jsd(p, q, 0.2)),
    ("skew_kl", {"alpha": 0.1}, lambda p, q: ref_skew_kl(p, q, 0.1)),
    ("skew_kl", {"alpha": 0.0}, ref_forward_kl),
    ("tvd", {}, ref_tvd),
    ("wasserstein_sorted", {}, ref_wasserstein_sorted),
]


def dense_tail_reference(name, reference, p, target, tail):
    """The loss in ``tail`` mode from the plain formula on dense float64 tensors (docs/design.md, targets).

    uniform: ``reference(p, q)`` with the full uniform-tail ``q``; bucket: ``reference`` over the k + 1 categories
    ``(p_S, 1 − P_S)`` vs ``(q_S, r)`` (sorted W: the student's k largest sorted, plus its rest); renormalize:
    ``q_S / Σ q_S`` on S and 0 elsewhere, against the full ``p`` (reverse KL: ``p`` renormalised over S too)."""
    if tail == "uniform" or target.k == p.shape[-1]:  # k = V: every mode reads the full distribution as stored
        return reference(p, target.to_dense())
    k, ids = target.k, target.ids
    q_s = target.logprobs.double().exp()
    on_support = torch.zeros_like(p, dtype=torch.bool).scatter(-1, ids, True)
    p_s = p.gather(-1, ids)
    if tail == "renormalize":
        q_tilde = q_s / q_s.sum(-1, keepdim=True)
        if name == "reverse_kl":
            return reference(p_s / p_s.sum(-1, keepdim=True), q_tilde)
        return reference(p, torch.zeros_like(p).scatter(-1, ids, q_tilde))
    r = target.tail_mass().unsqueeze(-1)
    if name == "wasserstein_sorted":
        p_sorted = p.sort(-1, descending=True).values
        q_sorted = q_s.sort(-1, descending=True).values
        rest = p_sorted[:, k:].sum(-1, keepdim=True)  # the rest is compared with r, not sorted in with the top k
        return (p_sorted[:, :k] - q_sorted).abs().sum(-1) + (rest - r).abs().squeeze(-1)
    rest = torch.where(on_support, 0.0, p).sum(-1, keepdim=True)
    return reference(torch.cat([p_s, rest], -1), torch.cat([q_s, r], -1))


TAILS = ["uniform", "bucket", "renormalize"]


@pytest.mark.parametrize("name,kwargs,reference", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
@pytest.mark.parametrize("k", [1, 6, V - 1, V])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("tail", TAILS)
def test_divergence_matches_dense_reference(name, kwargs, reference, k, temperature, tail):
    z = random_logits(N, V, seed=k)
    target = random_target(N, V, k, seed=100 + k)
    fn = L.loss_function(name)
    got = fn(z, target, temperature, **kwargs, tail=tail)
    p = torch.softmax(z / temperature, -1)
    want = dense_tail_reference(name, reference, p, target, tail)
    assert got.shape == (N,)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    (g_got,) = torch.autograd.grad(got.sum(), z)
    (g_want,) = torch.autograd.grad(want.sum(), z)
    torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-10)


def test_tail_modes_differ_and_default_is_uniform():
    z, target = random_logits(N, V, seed=1), random_target(N, V, 6, seed=2)
    values = {tail: L.forward_kl(z, target, tail=tail) for tail in TAILS}
    torch.testing.assert_close(L.forward_kl(z, target), values["uniform"], rtol=0, atol=0)
    assert (values["uniform"] - values["bucket"]).abs().min() > 1e-3
    assert (values["bucket"] - values["renormalize"]).abs().min() > 1e-3
    with pytest.raises(ValueError, match="tail must be one of"):
        L.reverse_kl(z, target, tail="flat")
    with pytest.raises(ValueError, match="tail must be one of"):
        objective.dft_loss(z, target, "reverse_kl", tail="zero")


CLOSED_FORM_CASES = [c for c in CASES if c[0] in objective._WITH_GRAD_FNS] + [("ce", {}, None)]


@pytest.mark.parametrize("name,kwargs,reference", CLOSED_FORM_CASES, ids=[f"{c[0]}{c[1]}" for c in CLOSED_FORM_CASES])
@pytest.mark.parametrize("k", [1, 6, V - 1, V])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("tail", TAILS)
def test_closed_form_gradient_matches_dense_reference(name, kwargs, reference, k, temperature, tail):
    # what dft_loss trains with: value and ∂/∂logits in closed form, against autograd of the dense float64 formula
    z = random_logits(N, V, seed=k)
    target = random_target(N, V, k, seed=100 + k)
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(k))
    p = torch.softmax(z / temperature, -1)
    want = -p.log()[torch.arange(N), labels] if name == "ce" else dense_tail_reference(name, reference, p, target, tail)
    (g_want,) = torch.autograd.grad(want.sum(), z)
    logits = z.detach().clone()
    if name == "ce":
        got, g_got = objective._ce_with_grad(logits, labels, temperature)
    else:
        got, g_got = objective._WITH_GRAD_FNS[name](logits, target, temperature, **kwargs, tail=tail)
    torch.testing.assert_close(logits, z.detach(), rtol=0, atol=0)  # the input is left as it was
    torch.testing.assert_close(got, want.detach(), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-10)


def test_wasserstein_sorted_interleaves_tail_on_both_sides():
    # support values both above and below the tail value t: the case the merge-by-position formula must get right
    target = random_target(N, V, 10, seed=7)
    q_s = target.logprobs.exp()
    t = target.tail_mass() / (V - target.k)
    assert (q_s > t[:, None]).any() and (q_s < t[:, None]).any()
    z = random_logits(N, V, seed=8, scale=3.0)
    got = L.wasserstein_sorted(z, target)
    want = ref_wasserstein_sorted(torch.softmax(z, -1), target.to_dense())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_from_logits_targets_in_float32_at_full_vocab():
    """Realistic sizes in float32 (V = 49,152, k = 64): the closed-form tails keep float32 accuracy."""
    vocab, k = 49_152, 64
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, vocab, generator=g) * 3
    target = SparseTarget.from_logits(torch.randn(3, vocab, generator=g) * 3, k)
    p, q = torch.softmax(z.double(), -1), target.to_dense()
    for name, reference in [("forward_kl", ref_forward_kl), ("reverse_kl", ref_reverse_kl), ("tvd", ref_tvd),
                            ("jsd", lambda p, q: ref_jsd(p, q, 0.5)), ("wasserstein_sorted", ref_wasserstein_sorted)]:
        got = L.loss_function(name)(z, target).double()
        torch.testing.assert_close(got, reference(p, q), rtol=2e-4, atol=2e-5, msg=name)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd", "wasserstein_sorted"])
@pytest.mark.parametrize("k", [4, V])
def test_zero_when_student_equals_target(name, k):
    target = random_target(N, V, k, seed=3)
    z = target.to_dense().log()  # softmax(log q) == q exactly, tail included
    got = L.loss_function(name)(z, target)
    torch.testing.assert_close(got, torch.zeros(N, dtype=torch.float64), rtol=0, atol=1e-12)
    other = L.loss_function(name)(random_logits(N, V, seed=4), target)
    assert (other > 1e-3).all()


def test_float16_stored_target_is_accepted():
    target = random_target(N, V, 6, seed=11)
    half = SparseTarget(target.ids.to(torch.int32), target.logprobs.half(), V)
    z = random_logits(N, V, seed=12)
    # the loss upcasts the stored float16 log-probs before summing the tail mass; so does the reference
    exact = SparseTarget(half.ids, half.logprobs.double(), V)
    want = ref_reverse_kl(torch.softmax(z, -1), exact.to_dense())
    torch.testing.assert_close(L.reverse_kl(z, half), want, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------------
def random_labels(n, vocab, seed):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_ce_and_label_smoothing_match_dense(temperature):
    z, y = random_logits(N, V, seed=1), random_labels(N, V, seed=2)
    logp = torch.log_softmax(z / temperature, -1)
    onehot = torch.nn.functional.one_hot(y, V).double()
    torch.testing.assert_close(L.ce(z, y, temperature), -(onehot * logp).sum(-1))
    eps = 0.2
    smooth = (1 - eps) * onehot + eps / V
    got = L.label_smoothing(z, y, eps=eps, temperature=temperature)
    torch.testing.assert_close(got, -(smooth * logp).sum(-1))
    torch_ls = torch.nn.functional.cross_entropy(z / temperature, y, label_smoothing=eps, reduction="none")
    torch.testing.assert_close(got, torch_ls)


@pytest.mark.parametrize("h", ["linear", "logsigmoid"])
@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_gem_value_and_gradient(h, temperature):
    z, y = random_logits(N, V, seed=5, scale=4.0), random_labels(N, V, seed=6)
    beta = 0.7
    zt = z.detach() / temperature
    q = torch.softmax(zt / beta, -1)
    w = torch.ones_like(q) if h == "linear" else torch.sigmoid((zt - zt.gather(-1, y[:, None])) / 100)
    logp = torch.log_softmax(zt, -1)
    want = -(q * w * (logp.gather(-1, y[:, None]) - logp)).sum(-1)
    got = L.gem(z, y, beta=beta, h=h, temperature=temperature)
    torch.testing.assert_close(got, want)
    # GEM's update on the logits: q⊙w − (Σ q w)·onehot(y), through z/τ
    (grad,) = torch.autograd.grad(got.sum(), z)
    onehot = torch.nn.functional.one_hot(y, V).double()
    want_grad = (q * w - (q * w).sum(-1, keepdim=True) * onehot) / temperature
    torch.testing.assert_close(grad, want_grad)


# ---------------------------------------------------------------------------------------------------------------
# Sinkhorn on the joint support (agreement with POT is in test_pot_agreement.py)
# ---------------------------------------------------------------------------------------------------------------
def test_sinkhorn_support_masses_and_costs_brute_force():
    z, target = random_logits(N, V, seed=9), random_target(N, V, 6, seed=10)
    emb = torch.randn(V, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(z.detach(), -1)
    log_a, log_b, cost, ids = transport.sinkhorn_support(logp, target, emb, k=8, bucket_cost=0.9)
    p, q = logp.exp(), target.to_dense()
    unit = emb / emb.norm(dim=-1, keepdim=True)
    for row in range(N):
        union = set(target.ids[row].tolist()) | set(p[row].topk(8).indices.tolist())
        a, b = log_a[row].exp(), log_b[row].exp()
        # each union token carries its own mass exactly once; duplicates carry none; buckets hold the rest
        seen = {}
        for slot, tok in enumerate(ids[row].tolist()):
            if a[slot] > 0 or b[slot] > 0:
                assert tok not in seen
                seen[tok] = slot
                assert math.isclose(a[slot], p[row, tok], rel_tol=1e-12)
                assert math.isclose(b[slot], q[row, tok], rel_tol=1e-12)
        assert set(seen) == union
        rest = [j for j in range(V) if j not in union]
        assert math.isclose(a[-1], p[row, rest].sum(), rel_tol=1e-9, abs_tol=1e-15)
        assert math.isclose(b[-1], q[row, rest].sum(), rel_tol=1e-9, abs_tol=1e-15)
        toks = ids[row]
        torch.testing.assert_close(cost[row, :-1, :-1], (1 - unit[toks] @ unit[toks].T).clamp_min(0))
        assert (cost[row, -1, :-1] == 0.9).all() and (cost[row, :-1, -1] == 0.9).all() and cost[row, -1, -1] == 0


def reference_sinkhorn(a, b, cost, eps, n_iters):
    """Textbook Sinkhorn in the primal (scaling) domain, float64: u = a / K v, v = b / Kᵀ u."""
    kernel = torch.exp(-cost / eps)
    u, v = torch.ones_like(a), torch.ones_like(b)
    for _ in range(n_iters):
        v = b / (kernel.T @ u)
        u = a / (kernel @ v)
    return (u[:, None] * kernel * v[None, :] * cost).sum()


def test_sinkhorn_cost_matches_scaling_sinkhorn_and_finite_differences():
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(2, 6, generator=g, dtype=torch.float64), -1).requires_grad_(True)
    b = torch.softmax(torch.randn(2, 5, generator=g, dtype=torch.float64), -1)
    cost = torch.rand(2, 6, 5, generator=g, dtype=torch.float64)
    got = transport.sinkhorn_cost(a.log(), b.log(), cost, epsilon=0.3, n_iters=20)
    want = torch.stack([reference_sinkhorn(a[i], b[i], cost[i], 0.3, 20) for i in range(2)])
    torch.testing.assert_close(got, want)
    (g_got,) = torch.autograd.grad(got.sum(), a)
    (g_want,) = torch.autograd.grad(want.sum(), a)
    torch.testing.assert_close(g_got, g_want)
    inputs = (a.log().detach().requires_grad_(), b.log().requires_grad_(), cost.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda la, lb, c: transport.sinkhorn_cost(la, lb, c, 0.3, 5), inputs)


def test_sinkhorn_small_epsilon_approaches_exact_ot_and_is_zero_for_identical_distributions():
    target = random_target(2, 12, 12, seed=1)  # k == V: the joint support is the whole vocabulary
    emb = torch.randn(12, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    same = L.sinkhorn(target.to_dense().log(), target, embeddings=emb, k=12, epsilon=1e-3, n_iters=500)
    assert (same.abs() < 1e-3).all()
    far = L.sinkhorn(random_logits(2, 12, seed=2), target, embeddings=emb, k=12, epsilon=1e-3, n_iters=500)
    assert (far > 1e-2).all()


# ---------------------------------------------------------------------------------------------------------------
# dft_loss: reduction, masking, chunking, mixing, gradient accumulation
# ---------------------------------------------------------------------------------------------------------------
def make_batch(seed=0, batch=2, time=7, vocab=V, hidden=6, k=5):
    g = torch.Generator().manual_seed(seed)
    hidden_states = torch.randn(batch, time, hidden, generator=g, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(vocab, hidden, generator=g, dtype=torch.float64).requires_grad_(True)
    flat = random_target(batch * time, vocab, k, seed=seed + 1)
    target = SparseTarget(flat.ids.reshape(batch, time, k), flat.logprobs.reshape(batch, time, k), vocab)
    labels = torch.randint(0, vocab, (batch, time), generator=g)
    labels[0, :2] = -100
    labels[1, -1] = -100
    emb = torch.randn(vocab, 4, generator=g, dtype=torch.float64)
    return hidden_states, weight, target, labels, emb


DFT_CASES = [
    ("reverse_kl", {}),
    ("forward_kl", {}),
    ("jsd", {"beta": 0.3}),
    ("tvd", {}),
    ("skew_kl", {"alpha": 0.1}),
    ("wasserstein_sorted", {}),
    ("sinkhorn", {"k": 4, "n_iters": 5}),
    ("ce", {}),
    ("gem", {"h": "linear"}),
    ("label_smoothing", {"eps": 0.1}),
]


@pytest.mark.parametrize("name,kwargs", DFT_CASES, ids=[c[0] for c in DFT_CASES])
def test_dft_loss_masked_mean_and_chunking(name, kwargs):
    hidden, weight, target, labels, emb = make_batch()
    mask = labels != -100
    # reference: unchunked per-row function on the unmasked rows of the full logits, mean over them
    logits = hidden @ weight.T
    rows = logits[mask]
    if name in L.BASELINES:
        per_row = L.loss_function(name)(rows, labels[mask], temperature=1.3, **kwargs)
    else:
        extra = {"embeddings": emb} if name == "sinkhorn" else {}
        per_row = L.loss_function(name)(rows, target[mask], 1.3, **extra, **kwargs)
    want = per_row.sum() / mask.sum()
    want_grads = torch.autograd.grad(want, (hidden, weight))
    common = dict(labels=labels, temperature=1.3, embeddings=emb, **kwargs)
    for chunk_size in (1, 3, 1000):
        # hidden-state path: logits computed per chunk from lm_head_weight
        got = objective.dft_loss(hidden, target, name, lm_head_weight=weight, chunk_size=chunk_size, **common)
        torch.testing.assert_close(got, want)
        for g_got, g_want in zip(torch.autograd.grad(got, (hidden, weight)), want_grads):
            torch.testing.assert_close(g_got, g_want)
        # logits path
        logits = hidden @ weight.T
        got = objective.dft_loss(logits, target, name, chunk_size=chunk_size, **common)
        torch.testing.assert_close(got, want)
        for g_got, g_want in zip(torch.autograd.grad(got, (hidden, weight)), want_grads):
            torch.testing.assert_close(g_got, g_want)


def test_dft_loss_masked_rows_get_no_gradient_and_may_hold_garbage():
    hidden, weight, target, labels, _ = make_batch()
    logits = (hidden @ weight.T).detach().clone()
    logits[0, 0] = float("nan")  # a masked (padding) position: ignored, not an error
    logits.requires_grad_(True)
    loss = objective.dft_loss(logits, target, "reverse_kl", labels=labels)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss)
    assert (grad[labels == -100] == 0).all()
    assert (grad[labels != -100].abs().sum(-1) > 0).all()


def test_dft_loss_on_shifted_non_contiguous_logits():
    hidden, weight, target, labels, _ = make_batch(time=8)
    logits = hidden @ weight.T
    shifted, shifted_target, shifted_labels = logits[:, :-1], target[:, :-1], labels[:, 1:]
    assert not shifted.is_contiguous()
    mask = shifted_labels != -100
    want = L.skew_kl(shifted[mask], shifted_target[mask], alpha=0.2).mean()
    got = objective.dft_loss(shifted, shifted_target, "skew_kl", labels=shifted_labels, alpha=0.2, chunk_size=4)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, hidden, retain_graph=True)[0], torch.autograd.grad(want, hidden)[0])


def test_dft_loss_without_labels_averages_every_position():
    hidden, weight, target, _, _ = make_batch()
    logits = hidden @ weight.T
    want = L.forward_kl(logits.reshape(-1, V), SparseTarget(target.ids.reshape(-1, 5), target.logprobs.reshape(-1, 5), V)).mean()
    torch.testing.assert_close(objective.dft_loss(logits, target, "forward_kl"), want)


def test_dft_loss_ce_weight_mixes_hard_ce_at_unit_temperature():
    hidden, weight, target, labels, _ = make_batch()
    logits = hidden @ weight.T
    mask = labels != -100
    div = L.reverse_kl(logits[mask], target[mask], 2.0).mean()
    hard = L.ce(logits[mask], labels[mask]).mean()
    got = objective.dft_loss(logits, target, "reverse_kl", labels=labels, temperature=2.0, ce_weight=0.25)
    torch.testing.assert_close(got, 0.25 * hard + 0.75 * div)
    only_ce = objective.dft_loss(logits, None, "reverse_kl", labels=labels, ce_weight=1.0)
    torch.testing.assert_close(only_ce, hard)


def test_num_items_in_batch_makes_accumulated_halves_equal_one_batch():
    hidden, weight, target, labels, _ = make_batch(batch=4)
    full = objective.dft_loss(hidden, target, "jsd", lm_head_weight=weight, labels=labels)
    full_grad = torch.autograd.grad(full, weight)[0]
    total = int((labels != -100).sum())
    halves = [
        objective.dft_loss(hidden[s], target[s], "jsd", lm_head_weight=weight, labels=labels[s], num_items_in_batch=total)
        for s in (slice(0, 2), slice(2, 4))
    ]
    torch.testing.assert_close(halves[0] + halves[1], full)
    acc_grad = sum(torch.autograd.grad(h, weight)[0] for h in halves)
    torch.testing.assert_close(acc_grad, full_grad)
    as_tensor = objective.dft_loss(hidden, target, "jsd", lm_head_weight=weight, labels=labels, num_items_in_batch=torch.tensor(total))
    torch.testing.assert_close(as_tensor, full)


def test_dft_loss_no_grad_and_all_masked():
    hidden, weight, target, labels, _ = make_batch()
    with torch.no_grad():
        value = objective.dft_loss(hidden, target, "tvd", lm_head_weight=weight, labels=labels, chunk_size=2)
    torch.testing.assert_close(value, objective.dft_loss(hidden, target, "tvd", lm_head_weight=weight, labels=labels).detach())
    masked = torch.full_like(labels, -100)
    zero = objective.dft_loss(hidden, target, "tvd", lm_head_weight=weight, labels=masked)
    assert zero.item() == 0.0
    assert (torch.autograd.grad(zero, weight)[0] == 0).all()


def test_dft_loss_bfloat16_hidden_states_compute_in_float32():
    hidden, weight, target, labels, _ = make_batch()
    got = objective.dft_loss(hidden.detach().bfloat16().requires_grad_(), target, "reverse_kl",
                     lm_head_weight=weight.detach().bfloat16(), labels=labels)
    assert got.dtype == torch.float32
    want = objective.dft_loss(hidden.detach().bfloat16().double(), target, "reverse_kl",
                      lm_head_weight=weight.detach().bfloat16().double(), labels=labels)
    assert abs(got.item() - want.item()) < 0.05 * abs(want.item())


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: each raises and says what to do
# ---------------------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_with_a_fix():
    hidden, weight, target, labels, emb = make_batch()
    logits = (hidden @ weight.T).detach()
    flat_target = random_target(N, V, 5, seed=0)
    z = random_logits(N, V, seed=0).detach()
    wrong_vocab = random_target(N, V + 1, 5, seed=0)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        L.reverse_kl(z, wrong_vocab)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        objective.dft_loss(torch.randn(2, 7, V + 1), target, "reverse_kl")
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = z.clone()
        broken[1, 3] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            L.forward_kl(broken, flat_target)
        with pytest.raises(ValueError, match="NaN or Inf"):
            objective.dft_loss(broken, flat_target, "forward_kl")
    with pytest.raises(ValueError, match="not normalised"):
        SparseTarget(flat_target.ids, (flat_target.logprobs + math.log(3)).clamp_max(0), V)
    for bad_t in (0.0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="temperature"):
            L.tvd(z, flat_target, bad_t)
        with pytest.raises(ValueError, match="temperature"):
            objective.dft_loss(logits, target, "tvd", temperature=bad_t)
    with pytest.raises(ValueError, match="forward_kl, reverse_kl"):
        objective.dft_loss(logits, target, "kl")
    with pytest.raises(ValueError, match="positions"):
        objective.dft_loss(logits[:, :-1], target, "reverse_kl")
    with pytest.raises(ValueError, match="positions"):
        L.reverse_kl(z[:-1], flat_target)
    with pytest.raises(ValueError, match="labels shape"):
        objective.dft_loss(logits, target, "reverse_kl", labels=labels[:, :-1])
    with pytest.raises(ValueError, match="lm_head_weight"):
        objective.dft_loss(hidden, target, "reverse_kl", lm_head_weight=weight[:, :-1])
    with pytest.raises(ValueError, match="needs a target"):
        objective.dft_loss(logits, None, "reverse_kl")
    with pytest.raises(ValueError, match="needs labels"):
        objective.dft_loss(logits, None, "ce")
    with pytest.raises(ValueError, match="needs labels"):
        objective.dft_loss(logits, target, "reverse_kl", ce_weight=0.5)
    with pytest.raises(ValueError, match="options are"):
        objective.dft_loss(logits, target, "reverse_kl", beta=0.5)
    with pytest.raises(ValueError, match="embeddings"):
        objective.dft_loss(logits, target, "sinkhorn")
    with pytest.raises(ValueError, match="embeddings"):
        L.sinkhorn(z, flat_target, embeddings=emb[:-1])
    with pytest.raises(ValueError, match="beta"):
        L.jsd(z, flat_target, beta=1.0)
    with pytest.raises(ValueError, match="alpha"):
        L.skew_kl(z, flat_target, alpha=1.0)
    with pytest.raises(ValueError, match="ce_weight"):
        objective.dft_loss(logits, target, "reverse_kl", labels=labels, ce_weight=1.5)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        objective.dft_loss(logits, target, "reverse_kl", num_items_in_batch=0)
    with pytest.raises(ValueError, match="drop masked positions"):
        L.ce(z, torch.full((N,), -100))
    with pytest.raises(ValueError, match="position dim"):
        objective.dft_loss(z[0], flat_target[0], "reverse_kl")
    with pytest.raises(ValueError, match="gem h"):
        L.gem(z, torch.zeros(N, dtype=torch.long), h="tanh")


# ---------------------------------------------------------------------------------------------------------------
# Tail modes: dft_loss, Sinkhorn support, the trainer's config
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [c for c in DFT_CASES if c[0] in L.DIVERGENCES], ids=lambda c: str(c))
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_dft_loss_tail_modes_chunked_equal_per_row_reference(name, kwargs, tail):
    hidden, weight, target, labels, emb = make_batch()
    mask = labels != -100
    extra = {"embeddings": emb} if name == "sinkhorn" else {}
    per_row = L.loss_function(name)((hidden @ weight.T)[mask], target[mask], 1.3, **extra, **kwargs, tail=tail)
    want = per_row.sum() / mask.sum()
    want_grads = torch.autograd.grad(want, (hidden, weight))
    got = objective.dft_loss(hidden, target, name, lm_head_weight=weight, labels=labels, temperature=1.3,
                             chunk_size=3, embeddings=emb, tail=tail, **kwargs)
    torch.testing.assert_close(got, want)
    for g_got, g_want in zip(torch.autograd.grad(got, (hidden, weight)), want_grads):
        torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_sinkhorn_support_masses_per_tail_mode(tail):
    z, target = random_logits(N, V, seed=9), random_target(N, V, 6, seed=10)
    emb = torch.randn(V, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(z.detach(), -1)
    log_a, log_b, _, ids = transport.sinkhorn_support(logp, target, emb, k=8, tail=tail)
    p, q_s = logp.exp(), target.logprobs.exp()
    a, b = log_a.exp(), log_b.exp()
    for row in range(N):
        support = target.ids[row].tolist()
        off = [j for j in range(V) if j not in support]
        torch.testing.assert_close(a[row, :6], p[row, support])
        torch.testing.assert_close(a.sum(-1), torch.ones(N, dtype=torch.float64))
        if tail == "bucket":  # S and the bucket only: (p_S, 1 − P_S) vs (q_S, r)
            assert (a[row, 6:-1] == 0).all() and (b[row, 6:-1] == 0).all()
            torch.testing.assert_close(a[row, -1], p[row, off].sum())
            torch.testing.assert_close(b[row, :6], q_s[row])
            torch.testing.assert_close(b[row, -1], target.tail_mass()[row])
        else:  # q̃ on S, no target mass anywhere else
            torch.testing.assert_close(b[row, :6], q_s[row] / q_s[row].sum())
            assert (b[row, 6:] == 0).all()
    assert ids.shape == (N, 14)


def test_dft_config_takes_and_checks_tail():
    from dftnb.trainer import DFTConfig

    with pytest.raises(ValueError, match="tail must be one of"):
        DFTConfig(divergence="forward_kl", tail="flat")
    hidden, weight, target, labels, _ = make_batch()
    shifted = (hidden[:, :-1], target[:, :-1], labels[:, 1:])
    for tail in TAILS:
        got = DFTConfig(divergence="reverse_kl", tail=tail).loss(shifted[0], shifted[1], weight, shifted[2])
        want = objective.dft_loss(shifted[0], shifted[1], "reverse_kl", lm_head_weight=weight, labels=shifted[2],
                                  tail=tail)
        torch.testing.assert_close(got, want)
    assert DFTConfig().tail == "uniform"


# ---------------------------------------------------------------------------------------------------------------
# The self-target fixed point: D(p ‖ target built from p) has zero gradient exactly when the target is neutral
# ---------------------------------------------------------------------------------------------------------------
FIXED_POINT = ["forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd", "wasserstein_sorted"]


def self_target_gradient(name, k, tail, seed=0):
    z = random_logits(N, V, seed=seed, scale=3.0)
    target = SparseTarget.from_logits(z.detach(), k)  # float64 throughout: built from the student's own logits
    (grad,) = torch.autograd.grad(L.loss_function(name)(z, target, tail=tail).sum(), z)
    return grad


@pytest.mark.parametrize("name", FIXED_POINT)
def test_self_target_gradient_is_zero_for_the_bucket_and_not_for_the_uniform_tail(name):
    bucket = self_target_gradient(name, 6, "bucket")
    assert bucket.abs().max() < 1e-13, name
    uniform = self_target_gradient(name, 6, "uniform")
    assert uniform.norm(dim=-1).min() > 1e-3, name  # the uniform tail pulls the student's tail flat
    for tail in TAILS:  # k = V: nothing is truncated, every mode is neutral
        assert self_target_gradient(name, V, tail).abs().max() < 1e-13, (name, tail)


def test_self_target_gradient_in_renormalize_mode():
    # reverse KL compares p and q both renormalised over S: neutral; forward KL pulls P_S toward 1: not neutral
    assert self_target_gradient("reverse_kl", 6, "renormalize").abs().max() < 1e-13
    forward = self_target_gradient("forward_kl", 6, "renormalize")
    z = random_logits(N, V, seed=0, scale=3.0).detach()
    p = torch.softmax(z, -1)
    q_tilde = torch.zeros_like(p).scatter(-1, p.topk(6).indices, p.topk(6).values / p.topk(6).values.sum(-1, True))
    torch.testing.assert_close(forward, p - q_tilde)  # ∇ KL(q̃‖p) = p − q̃


def test_self_target_closed_form_gradients_in_float32_at_full_vocab():
    """What training sees: float32 logits, V = 49,152, the closed forms of dft_loss. The bucket's gradient is at
    float32 rounding level (log(1 − P_S) as a log-sum-exp keeps it there even for a tail of 1e-9); the uniform
    tail's is orders of magnitude larger."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 49_152, generator=g) * 3
    z[0, :8] += 30  # a peaked row: tail mass ~1e-9
    target = SparseTarget.from_logits(z, 64)
    assert target.tail_mass()[0] < 1e-8
    for name in ("forward_kl", "reverse_kl", "jsd", "tvd"):
        bucket = objective._WITH_GRAD_FNS[name](z.clone(), target, 1.0, tail="bucket")[1]
        uniform = objective._WITH_GRAD_FNS[name](z.clone(), target, 1.0, tail="uniform")[1]
        assert bucket.norm(dim=-1).max() < 1e-5, name
        assert uniform.norm(dim=-1)[1:].min() > 100 * bucket.norm(dim=-1).max(), name


# ---------------------------------------------------------------------------------------------------------------
# Sampled targets: unbiased for the forward-KL gradient, biased for reverse KL
# ---------------------------------------------------------------------------------------------------------------
def test_sampled_targets_give_an_unbiased_forward_kl_gradient():
    """Monte Carlo: the mean forward-KL gradient over M sampled targets of n draws equals the dense gradient
    s − p within 6 standard errors per coordinate, sqrt(p_j (1 − p_j) / (n M)) (the variance of an empirical
    frequency), in every tail mode; a top-k target and reverse KL are biased far beyond that band."""
    n, M = 8, 4000
    g = torch.Generator().manual_seed(0)
    zt = torch.randn(3, V, generator=g, dtype=torch.float64) * 1.5  # reference
    zs = torch.randn(3, V, generator=g, dtype=torch.float64)  # student
    p, s = torch.softmax(zt, -1), torch.softmax(zs, -1)
    dense = s - p
    band = 6 * (p * (1 - p) / (n * M)).sqrt() + 1e-9
    target = SparseTarget.sampled_from_logits(zt.repeat(M, 1), n, generator=torch.Generator().manual_seed(1))
    assert target.k == n and (target.r == 0).all()
    for tail in TAILS:
        grad = objective._WITH_GRAD_FNS["forward_kl"](zs.repeat(M, 1), target, 1.0, tail=tail)[1]
        mean = grad.reshape(M, 3, V).mean(0)
        assert ((mean - dense).abs() <= band).all(), tail
    topk = SparseTarget.from_logits(zt, n)  # same storage, deterministic: a bias the band does not cover
    biased = objective._WITH_GRAD_FNS["forward_kl"](zs.clone(), topk, 1.0)[1]
    assert ((biased - dense).abs() > band).any()
    # reverse KL: E[∇ KL(s ‖ q̂)] ≠ ∇ KL(s ‖ p) (log q̂ is not unbiased for log p)
    zs_grad = zs.clone().requires_grad_()
    (dense_rev,) = torch.autograd.grad(ref_reverse_kl(torch.softmax(zs_grad, -1), p).sum(), zs_grad)
    rev = objective._WITH_GRAD_FNS["reverse_kl"](zs.repeat(M, 1), target, 1.0)[1].reshape(M, 3, V).mean(0)
    assert ((rev - dense_rev).abs() > band).any()


# ---------------------------------------------------------------------------------------------------------------
# Silent failures that now raise, and the tail mass that survives storage
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "tvd", "ce"])
def test_non_finite_logits_raise_on_the_gradient_path(name):
    hidden, weight, target, labels, _ = make_batch()
    logits = (hidden @ weight.T).detach().clone()
    logits[1, 2, 5] = float("nan")  # an unmasked position
    with pytest.raises(ValueError, match="NaN or Inf"):
        objective.dft_loss(logits.requires_grad_(), target, name, labels=labels)
    broken = hidden.detach().clone()
    broken[1, 2, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        objective.dft_loss(broken.requires_grad_(), target, name, lm_head_weight=weight, labels=labels)


def test_out_of_range_labels_raise_a_clear_error():
    hidden, weight, target, labels, _ = make_batch()
    logits = (hidden @ weight.T).detach().requires_grad_()
    for bad in (V, V + 7, -3):
        wrong = labels.clone()
        wrong[1, 3] = bad
        with pytest.raises(ValueError, match=r"token ids in \[0, 40\) or -100"):
            objective.dft_loss(logits, None, "ce", labels=wrong)
        with pytest.raises(ValueError, match=r"token ids in \[0, 40\) or -100"):
            objective.dft_loss(logits, target, "reverse_kl", labels=wrong, ce_weight=0.5)
        with torch.no_grad(), pytest.raises(ValueError, match=r"token ids in \[0, 40\) or -100"):
            objective.dft_loss(logits, None, "gem", labels=wrong)
    # a divergence without CE reads no label values, only the mask
    objective.dft_loss(logits, target, "reverse_kl", labels=torch.where(labels == 5, V + 1, labels))


def test_float_target_ids_are_refused():
    target = random_target(N, V, 5, seed=0)
    with pytest.raises(ValueError, match="integer token ids"):
        SparseTarget(target.ids.float(), target.logprobs, V)
    SparseTarget(target.ids.int(), target.logprobs, V)  # any integer dtype is fine


def tail_logits(r: float, k: int = 4, vocab: int = 49_152) -> torch.Tensor:
    """Logits (float64) whose distribution has k equal top tokens and exactly tail mass r on the other V − k."""
    z = torch.zeros(1, vocab, dtype=torch.float64)
    z[0, k:] = math.log(r / (1 - r) * k / (vocab - k))
    return z


@pytest.mark.parametrize("r", [1e-8, 1e-6, 1e-3])
def test_small_tail_mass_survives_float16_storage(r):
    """r from a *stored* target (Arrow: float16 logprobs, float32 tail mass) within 1% of the exact r for r ≥ 1e-8,
    and reverse KL toward it equal to the dense float64 value; the float16 log-probabilities alone cannot give r."""
    from dftnb.target_cache import rows_to_dataset
    from dftnb.targets import _row, batch_sparse_target

    vocab, k = 49_152, 4
    z = tail_logits(r, k, vocab)
    built = SparseTarget.from_logits(z.float(), k)  # as the builders do: float32 logits
    ds = rows_to_dataset([_row([0], [0], built)], k, vocab)
    row = ds[0]
    stored = SparseTarget.from_stored(row["target_ids"], row["target_logprobs"], vocab, row["target_tail_mass"])
    assert abs(stored.tail_mass().item() / r - 1) < 0.01
    batch = {key: torch.tensor(row[key])[None] for key in ("target_ids", "target_logprobs", "target_tail_mass")}
    assert abs(batch_sparse_target(batch, vocab).tail_mass().item() / r - 1) < 0.01
    student = z.clone()
    student[0, k:] += 3.0  # a student with more tail: reverse KL reads log r
    p = torch.softmax(student, -1)
    # reference: the stored (float16) support log-probabilities with the exact r, so only r is under test
    exact = SparseTarget(stored.ids, stored.logprobs.double(), vocab, torch.tensor([r], dtype=torch.float64))
    want = ref_reverse_kl(p, exact.to_dense())
    torch.testing.assert_close(L.reverse_kl(student, stored).double(), want, rtol=1e-3, atol=1e-6)
    if r < 1e-5:  # without the stored column, r comes from float16 log-probabilities and is lost
        lost = SparseTarget.from_stored(row["target_ids"], row["target_logprobs"], vocab)
        assert abs(lost.tail_mass().item() / r - 1) > 0.5


def test_bucket_forward_kl_when_the_students_tail_underflows_float32():
    """A student so sure of its support that every off-support p_j underflows float32: 1 − P_S is taken as a
    log-sum-exp, so value and gradient stay finite and equal the float64 formula."""
    vocab, k = 50, 4
    z = torch.zeros(2, vocab, dtype=torch.float64)
    z[:, :k] = torch.tensor([200.0, 199.0, 198.5, 197.0], dtype=torch.float64)
    target = random_target(2, vocab, k, seed=3)
    target = SparseTarget(torch.arange(k).expand(2, k), target.logprobs, vocab)
    rows, grad = objective._WITH_GRAD_FNS["forward_kl"](z.float(), target, 1.0, tail="bucket")
    assert torch.isfinite(rows).all() and torch.isfinite(grad).all()
    z64 = z.clone().requires_grad_()
    want = dense_tail_reference("forward_kl", ref_forward_kl, torch.softmax(z64, -1), SparseTarget(
        target.ids, target.logprobs.double(), vocab), "bucket")
    (g_want,) = torch.autograd.grad(want.sum(), z64)
    torch.testing.assert_close(rows.double(), want.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad.double(), g_want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl", "sinkhorn"])
def test_dft_loss_validates_the_target_once_per_batch_not_per_slice(name, monkeypatch):
    """Validation reads values back to the host (on a GPU: a synchronisation); the batch's target is validated when
    it is built, and the row chunks the loss slices it into are not validated again."""
    hidden, weight, target, labels, emb = make_batch()
    calls = []
    real = SparseTarget.validate
    monkeypatch.setattr(SparseTarget, "validate", lambda self: (calls.append(self.ids.shape), real(self))[1])
    built = SparseTarget(target.ids, target.logprobs, target.vocab_size, target.r)
    assert len(calls) == 1  # at construction
    extra = {"k": 4, "n_iters": 5} if name == "sinkhorn" else {}
    loss = objective.dft_loss(hidden, built, name, lm_head_weight=weight, labels=labels, embeddings=emb,
                              chunk_size=1, **extra)
    loss.backward()
    assert len(calls) == 1, f"validated again on slices of shapes {calls[1:4]}..."
    assert (labels != -100).sum() > 3  # chunk_size=1: many slices were taken
    with pytest.raises(ValueError, match="ids span"):  # the construction check still refuses a bad target
        SparseTarget(target.ids + target.vocab_size, target.logprobs, target.vocab_size, target.r)


# ---------------------------------------------------------------------------------------------------------------
# dftnb.divergences: each class's closed-form gradient against autograd of its own value
# ---------------------------------------------------------------------------------------------------------------
CLOSED_FORM_DIVERGENCES = [(name, kwargs) for name, kwargs, _ in CASES if name in D.CLOSED_FORM]


@pytest.mark.parametrize("name,kwargs", CLOSED_FORM_DIVERGENCES, ids=[f"{n}{k}" for n, k in CLOSED_FORM_DIVERGENCES])
@pytest.mark.parametrize("k", [1, 6, V])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("tail", TAILS)
def test_value_and_grad_is_autograd_of_value(name, kwargs, k, temperature, tail):
    maths = D.MATH[name]
    z = random_logits(N, V, seed=20 + k, scale=3.0)
    target = random_target(N, V, k, seed=200 + k)
    want = maths.value(z, target, temperature, **kwargs, tail=tail)
    (g_want,) = torch.autograd.grad(want.sum(), z)
    logits = z.detach().clone()
    got, g_got = maths.value_and_grad(logits, target, temperature, **kwargs, tail=tail)
    torch.testing.assert_close(logits, z.detach(), rtol=0, atol=0)
    torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name,kwargs", [("ce", {}), ("gem", {"h": "linear"}), ("gem", {"h": "logsigmoid", "beta": 0.5})])
@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_baseline_value_and_grad_is_autograd_of_value(name, kwargs, temperature):
    maths = D.MATH[name]
    z, y = random_logits(N, V, seed=30, scale=4.0), random_labels(N, V, seed=31)
    want = maths.value(z, y, temperature=temperature, **kwargs)
    (g_want,) = torch.autograd.grad(want.sum(), z)
    logits = z.detach().clone()
    got, g_got = maths.value_and_grad(logits, y, temperature=temperature, **kwargs)
    torch.testing.assert_close(logits, z.detach(), rtol=0, atol=0)
    torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-11)


def test_every_loss_is_its_class_value_with_its_formula_as_docstring():
    z, target, y = random_logits(N, V, seed=40), random_target(N, V, 6, seed=41), random_labels(N, V, seed=42)
    emb = torch.randn(V, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(43))
    assert set(D.MATH) == set(L.LOSSES)
    for name in L.LOSSES:
        fn, maths = L.loss_function(name), D.MATH[name]
        assert fn.__doc__.startswith(maths.__doc__), name
        if name in L.BASELINES:
            torch.testing.assert_close(fn(z, y, temperature=0.8), maths.value(z, y, temperature=0.8), rtol=0, atol=0)
        else:
            extra = {"embeddings": emb, "k": 4, "n_iters": 5} if name == "sinkhorn" else {}
            for tail in TAILS:
                torch.testing.assert_close(fn(z, target, 0.8, **extra, tail=tail),
                                           maths.value(z, target, 0.8, **extra, tail=tail), rtol=0, atol=0)


def test_dft_loss_checks_option_values_once_for_the_closed_forms():
    hidden, weight, target, labels, _ = make_batch()
    with pytest.raises(ValueError, match=r"beta must be in \(0, 1\)"):
        objective.dft_loss(hidden, target, "jsd", lm_head_weight=weight, labels=labels, beta=1.0)
    with pytest.raises(ValueError, match=r"beta must be in \(0, 1\)"):
        objective.dft_loss(hidden, None, "gem", lm_head_weight=weight, labels=labels, beta=0.0)
    with pytest.raises(ValueError, match="gem h must be one of"):
        objective.dft_loss(hidden, None, "gem", lm_head_weight=weight, labels=labels, h="tanh")
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\)"):
        objective.dft_loss(hidden, target, "skew_kl", lm_head_weight=weight, labels=labels, alpha=1.0)
