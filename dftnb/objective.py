"""The training objective ``dft_loss`` and the machinery that makes it as cheap as cross-entropy.

:func:`dft_loss` is what a trainer calls: ``Σ_{unmasked t} [λ·CE_t + (1−λ)·D_t] / n`` for a divergence ``D`` of
:mod:`dftnb.losses`, with labels ``-100`` masked and ``n`` the unmasked token count of the whole accumulated batch
(so gradient accumulation and several processes give the gradient of one large batch).

Speed and memory (none of it changes the value, ``tests/test_losses.py`` checks both against dense float64 autograd):

* **chunking** (:class:`_ChunkedRowLoss`): from hidden states the logits ``h @ Wᵀ`` of ``chunk_size`` rows at a time
  are computed once without a graph, so no ``(N, V)`` float32 logits exist at once;
* **closed-form gradients** (``*_with_grad``): within a chunk the gradient w.r.t. the logits is taken
  :data:`SLICE_ROWS` rows at a time by formula for ``ce``, ``forward_kl``, ``reverse_kl``, ``jsd`` and ``tvd``
  (autograd of the per-row function for the others). With ``u = z/τ`` and ``p = softmax(u)``, a loss
  ``Σ_j f(p_j)`` has ``∂/∂u_i = p_i (a_i − Σ_j p_j a_j)`` where ``a = ∂f/∂p``, and ``∂/∂z = ∂/∂u / τ``; the dense
  ``q`` is never built: ``a`` is first filled with its tail value and the ``k`` support entries are overwritten.
"""

from __future__ import annotations

import math

import torch

from .losses import (
    _BASELINE_FNS,
    _DIVERGENCE_FNS,
    BASELINES,
    DIVERGENCES,
    _check_kwargs,
    _check_logits,
    _check_open_unit,
    _check_temperature,
    _forward_kl_parts,
    _jsd_term,
    _row_dot,
    ce,
    log_rest,
    loss_function,
    student_logprobs,
)
from .sparse_target import IGNORE_INDEX, SparseTarget, check_tail, target_parts

# Rows per slice when the chunked loss takes its gradient w.r.t. the logits (a few MB of float32 at V ≈ 50k).
SLICE_ROWS = 32


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


def _forward_kl_with_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, tail: str = "uniform"):
    """Forward KL (as :func:`forward_kl`) and its gradient.

    Uniform and renormalize: ``(p · m − q) / τ`` with ``m = Σ_j q_j`` (the uniform tail's ``q_j = t`` included).
    Bucket: ``a_i = −q_i / p_i`` on ``S`` and ``−r / (1 − P_S)`` off it, so ``∂/∂u_j = p_j (m − r / (1 − P_S))`` off
    ``S`` and ``p_i m − q_i`` on it, ``m = Σ_S q + r``.
    """
    logp = student_logprobs(z, temperature)
    if tail == "bucket" and target.k < target.vocab_size:
        # 1 − P_S summed over the off-support entries of p in place (positive terms: relative precision), so the
        # bucket costs one reduction more than the uniform tail; log-sum-exp only where that sum underflows
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
        return rows, grad if temperature == 1 else grad.div_(temperature)
    rows, ids, q, t, _ = _forward_kl_parts(logp, target, tail)
    mass = q.sum(-1)
    if t is not None:
        mass = mass + (logp.shape[-1] - ids.shape[-1]) * t
    grad = logp.exp_().mul_(mass.unsqueeze(-1))
    if t is not None:
        grad.sub_(t.unsqueeze(-1))
        q = q - t.unsqueeze(-1)
    grad.scatter_add_(-1, ids, -q)
    return rows, grad if temperature == 1 else grad.div_(temperature)


def _reverse_kl_with_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, tail: str = "uniform"):
    """Reverse KL ``Σ_j p_j a_j`` and ``p ⊙ (a − KL) / τ``: ``a = log p − log q`` (uniform); ``a_i = log p_i − log
    q_i`` on ``S`` and ``log(1 − P_S) − log r`` off it (bucket); renormalize: the same on ``S`` for
    ``p̃ = p_S / P_S`` and ``q̃``, gradient 0 off ``S``."""
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
        return rows, grad if temperature == 1 else grad.div_(temperature)
    p = logp.exp()
    if log_r is not None:
        rest = logp.scatter_(-1, ids, float("-inf")).logsumexp(-1)  # log(1 − P_S); logp is not needed any more
        a = logp.fill_(0.0).add_((rest - log_r).unsqueeze(-1))
    else:
        a = logp if log_t is None else logp.sub_(log_t.unsqueeze(-1))
    a.scatter_(-1, ids, logp_s - logq)
    rows = _row_dot(p, a)
    return rows, _softmax_chain(p, a, temperature)


def _jsd_with_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, beta: float = 0.5,
                   tail: str = "uniform"):
    """Generalised JSD (as :func:`jsd`) and its gradient, ``a = ∂JSD/∂p = (1−β)(log p − log m)``: off ``S``
    ``(1−β)(log(1 − P_S) − log m_rest)`` for the bucket and ``−(1−β) log(1−β)`` (``q = 0``) for renormalize."""
    _check_open_unit("beta", beta)
    log_b, log_1mb = math.log(beta), math.log1p(-beta)
    logp = student_logprobs(z, temperature)
    ids, logq, n_tail, log_t, log_r = target_parts(target, logp.dtype, tail)
    logp_s = logp.gather(-1, ids)
    p = logp.exp()
    p_s, q = logp_s.exp(), logq.exp()
    logm_s = torch.logaddexp(logq + log_b, logp_s + log_1mb)
    rows = (beta * (torch.xlogy(q, q) - q * logm_s) + (1 - beta) * (p_s * logp_s - p_s * logm_s)).sum(-1)
    if log_t is not None:  # every token as a tail token (m_j = β t + (1−β) p_j ≥ β t > 0), then the support corrected
        t = log_t.exp()
        logm = torch.add(beta * t.unsqueeze(-1), p, alpha=1 - beta).log_()
        logm_ts = logm.gather(-1, ids)
        q_part = beta * t * ((logp.shape[-1] - ids.shape[-1]) * log_t - (logm.sum(-1) - logm_ts.sum(-1)))
        a = logp.sub_(logm).mul_(1 - beta)
        del logm
        rows = rows + q_part + _row_dot(p, a) - (1 - beta) * (p_s * (logp_s - logm_ts)).sum(-1)
    elif n_tail:  # bucket or renormalize: one value of a off S
        rest = logp.scatter_(-1, ids, float("-inf")).logsumexp(-1)  # log(1 − P_S)
        if log_r is not None:
            logm_rest = torch.logaddexp(log_r + log_b, rest + log_1mb)
            rows = rows + _jsd_term(beta)(log_r, rest)
            a_rest = (1 - beta) * (rest - logm_rest)
        else:
            a_rest = torch.full_like(rest, -(1 - beta) * log_1mb)
            rows = rows + a_rest * rest.exp()
        a = logp.fill_(0.0).add_(a_rest.unsqueeze(-1))
    else:
        a = logp
    a.scatter_(-1, ids, (1 - beta) * (logp_s - logm_s))
    return rows, _softmax_chain(p, a, temperature)


def _tvd_with_grad(z: torch.Tensor, target: SparseTarget, temperature: float = 1.0, tail: str = "uniform"):
    """TVD (as :func:`tvd`) and its (sub)gradient, ``a = ½ sign(p − q)``; off ``S`` ``½ sign(1 − P_S − r)`` for
    the bucket and ``½`` for renormalize."""
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
    return 0.5 * rows, _softmax_chain(p, a, temperature)


_WITH_GRAD_FNS = {
    "ce": _ce_with_grad,
    "forward_kl": _forward_kl_with_grad,
    "reverse_kl": _reverse_kl_with_grad,
    "jsd": _jsd_with_grad,
    "tvd": _tvd_with_grad,
}


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
    tail: str = "uniform",
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
        tail: how the divergence reads the target's tail mass ``r`` (docs/design.md, targets): ``"uniform"``
            (``r`` spread over the ``V − k`` tokens off the support; the default), ``"bucket"`` (``k + 1`` categories,
            the student's tail shape left free: the only mode in which a target built from the student itself has
            zero gradient for every divergence but Sinkhorn) or ``"renormalize"`` (``r`` dropped). Every divergence
            takes every mode (see each function of :mod:`dftnb.losses` for its formula); the baselines read no
            target and ignore it. The closed-form gradients cover all three modes.
        **divergence_kwargs: options of the chosen function (``beta``, ``alpha``, ``k``, ``epsilon``, ``eps``, ``h`` …).
    """
    loss_function(divergence)
    _check_kwargs(divergence, divergence_kwargs)
    _check_temperature(temperature)
    check_tail(tail)
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
        target_r = None if target.r is None else target.r.reshape(-1).to(student.device)
    if use_ce and labels is None:
        raise ValueError(f"{'ce_weight > 0' if divergence in DIVERGENCES else divergence!r} needs labels.")
    if labels is not None and labels.shape != lead:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match student positions {tuple(lead)}.")

    flat_labels = None if labels is None else labels.reshape(-1).long().to(student.device)
    if flat_labels is None:
        index = torch.arange(math.prod(lead), device=student.device)
    else:
        index = (flat_labels != IGNORE_INDEX).nonzero().squeeze(-1)
        if use_ce and index.numel():
            kept = flat_labels[index]
            lo, hi = int(kept.min()), int(kept.max())
            if lo < 0 or hi >= vocab:
                raise ValueError(
                    f"labels span [{lo}, {hi}] but must be token ids in [0, {vocab}) or {IGNORE_INDEX} (no loss): "
                    "the data was tokenised for another vocabulary, or padding was labelled with an id other than "
                    f"{IGNORE_INDEX}; re-tokenise with the student's tokenizer and mask padding with {IGNORE_INDEX}."
                )
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
    if divergence in DIVERGENCES:
        divergence_kwargs = {**divergence_kwargs, "tail": tail}

    def chunk_target(idx: torch.Tensor) -> SparseTarget:
        # a slice of the batch's target, which was validated when it was built: no check, no host synchronisation
        return SparseTarget.unchecked(target_ids[idx], target_logprobs[idx], vocab,
                                      None if target_r is None else target_r[idx])

    def row_loss(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        loss = 0.0
        if use_div:
            loss = (1 - ce_weight) * div_fn(logits, chunk_target(idx), temperature, **divergence_kwargs)
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
            _check_logits(logits)  # the per-row functions check this; the closed forms would return NaN silently
            parts = []  # (weight, rows, grad)
            if use_div:
                parts.append((1 - ce_weight, *div_with_grad(logits, chunk_target(idx), temperature, **divergence_kwargs)))
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
