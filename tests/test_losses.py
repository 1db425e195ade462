"""dftnb.losses against dense float64 references written here from the plain formulas (docs/design.md, divergences)."""

from __future__ import annotations

import math

import pytest
import torch

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


# Dense references: p and q are full (N, V) float64 probability tensors.
def ref_forward_kl(p, q):
    return (q * (q.log() - p.log())).sum(-1)


def ref_reverse_kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


def ref_jsd(p, q, beta):
    m = beta * q + (1 - beta) * p
    return beta * (q * (q / m).log()).sum(-1) + (1 - beta) * (p * (p / m).log()).sum(-1)


def ref_skew_kl(p, q, alpha):
    return (q * (q.log() - (alpha * q + (1 - alpha) * p).log())).sum(-1)


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


@pytest.mark.parametrize("name,kwargs,reference", CASES, ids=[f"{c[0]}{c[1]}" for c in CASES])
@pytest.mark.parametrize("k", [1, 6, V - 1, V])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_divergence_matches_dense_reference(name, kwargs, reference, k, temperature):
    z = random_logits(N, V, seed=k)
    target = random_target(N, V, k, seed=100 + k)
    fn = L.loss_function(name)
    got = fn(z, target, temperature, **kwargs)
    p = torch.softmax(z / temperature, -1)
    want = reference(p, target.to_dense())
    assert got.shape == (N,)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    (g_got,) = torch.autograd.grad(got.sum(), z)
    (g_want,) = torch.autograd.grad(want.sum(), z)
    torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-10)


CLOSED_FORM_CASES = [c for c in CASES if c[0] in objective._WITH_GRAD_FNS] + [("ce", {}, None)]


@pytest.mark.parametrize("name,kwargs,reference", CLOSED_FORM_CASES, ids=[f"{c[0]}{c[1]}" for c in CLOSED_FORM_CASES])
@pytest.mark.parametrize("k", [1, 6, V - 1, V])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_closed_form_gradient_matches_dense_reference(name, kwargs, reference, k, temperature):
    # what dft_loss trains with: value and ∂/∂logits in closed form, against autograd of the dense float64 formula
    z = random_logits(N, V, seed=k)
    target = random_target(N, V, k, seed=100 + k)
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(k))
    p = torch.softmax(z / temperature, -1)
    want = -p.log()[torch.arange(N), labels] if name == "ce" else reference(p, target.to_dense())
    (g_want,) = torch.autograd.grad(want.sum(), z)
    logits = z.detach().clone()
    got, g_got = objective._WITH_GRAD_FNS[name](logits, labels if name == "ce" else target, temperature, **kwargs)
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
