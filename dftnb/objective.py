"""The training objective ``dft_loss`` and the machinery that makes it as cheap as cross-entropy.

:func:`dft_loss` is what a trainer calls: ``Σ_{unmasked t} [λ·CE_t + (1−λ)·D_t] / n`` for a divergence ``D`` of
:mod:`dftnb.losses`, with labels ``-100`` masked and ``n`` the unmasked token count of the whole accumulated batch
(so gradient accumulation and several processes give the gradient of one large batch).

Speed and memory (none of it changes the value, ``tests/test_losses.py`` checks both against dense float64 autograd):

* **chunking** (:class:`_ChunkedRowLoss`): from hidden states the logits ``h @ Wᵀ`` of ``chunk_size`` rows at a time
  are computed once without a graph, so no ``(N, V)`` float32 logits exist at once;
* **closed-form gradients**: within a chunk the gradient w.r.t. the logits is taken :data:`SLICE_ROWS` rows at a
  time by the ``value_and_grad`` of the loss's class in :mod:`dftnb.divergences` where it has one (``ce``, ``gem``,
  ``forward_kl``, ``reverse_kl``, ``jsd``, ``tvd``: :data:`~dftnb.divergences.CLOSED_FORM`), by autograd of the
  per-row function of :mod:`dftnb.losses` for the others; the dense ``q`` is never built.
"""

from __future__ import annotations

import math

import torch

from .divergences import CE, CLOSED_FORM
from .losses import BASELINES, DIVERGENCES, ce, check_logits, check_options, check_temperature, loss_function
from .sparse_target import IGNORE_INDEX, SparseTarget, check_tail

# Rows per slice when the chunked loss takes its gradient w.r.t. the logits (a few MB of float32 at V ≈ 50k).
SLICE_ROWS = 32


# name -> value_and_grad(logits, target, temperature, **options, tail) -> (rows, ∂/∂logits) for the divergences with
# a closed-form gradient, and CE's (logits, labels, temperature); dft_loss uses every one of CLOSED_FORM (GEM's too)
_WITH_GRAD_FNS = {name: fn for name, fn in CLOSED_FORM.items() if name in DIVERGENCES or name == "ce"}
_ce_with_grad = CE.value_and_grad


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
    loss_fn = loss_function(divergence)
    check_options(divergence, divergence_kwargs)
    check_temperature(temperature)
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

    with_grad = CLOSED_FORM.get(divergence)
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
            loss = (1 - ce_weight) * loss_fn(logits, chunk_target(idx), temperature, **divergence_kwargs)
        if divergence in BASELINES:
            loss = loss + (1 - ce_weight) * loss_fn(logits, flat_labels[idx], temperature=temperature,
                                                    **divergence_kwargs)
        if ce_weight > 0:
            loss = loss + ce_weight * ce(logits, flat_labels[idx])
        return loss

    row_loss_with_grad = None
    if with_grad is not None:

        def row_loss_with_grad(logits: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """``row_loss`` and its gradient w.r.t. ``logits``, both in closed form."""
            check_logits(logits)  # the per-row functions check this; the closed forms would return NaN silently
            parts = []  # (weight, rows, grad)
            if use_div:
                parts.append((1 - ce_weight, *with_grad(logits, chunk_target(idx), temperature, **divergence_kwargs)))
            if divergence in BASELINES and ce_weight < 1:
                parts.append((1 - ce_weight, *with_grad(logits, flat_labels[idx], temperature=temperature,
                                                        **divergence_kwargs)))
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
