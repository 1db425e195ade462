"""Divergences between the student's next-token distribution and a sparse target, and the SFT baselines.

One function per divergence, each with its formula and paper; together they are the table in docs/design.md.
Notation: the student is ``p = softmax(z / τ)`` over the vocabulary of size ``V``; the target ``q`` is a
:class:`~dftnb.sparse_target.SparseTarget`: exact probabilities ``q_j`` on its ``k`` support ids ``S`` and the tail
mass ``r``, read according to the ``tail`` mode: spread uniformly, ``q_j = t = r / (V - k)`` for ``j ∉ S``
(``"uniform"``, the default); one extra category against the student's ``1 − P_S`` (``"bucket"``); or dropped, the
support renormalised (``"renormalize"``). When ``k == V`` there is no tail and every mode gives the same value.

Every per-row function has one signature on already-flattened rows and returns the ``(N,)`` per-row loss::

    fn(student_logits (N, V), target SparseTarget (N, k), temperature=1.0, **options, tail="uniform") -> (N,)

The supervised baselines take labels instead of a target: ``ce``, ``label_smoothing``, ``gem``. The sets
:data:`DIVERGENCES`, :data:`BASELINES` and :data:`LOSSES` are the one list of names the rest of the package uses.
Each function here checks its inputs and returns the ``value`` of its class in :mod:`dftnb.divergences`, where the
formula (no dense ``q``: every tail sum in closed form) sits next to the closed-form gradient that
:func:`dftnb.objective.dft_loss` trains with (masking, CE mixing, chunking); the docstring of each function is its
class's. Optimal transport for :func:`sinkhorn` is :mod:`dftnb.transport`. ``tests/test_losses.py`` checks every
function against a dense float64 reference written from the plain formula.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from . import divergences as D
from .divergences import student_logprobs
from .sparse_target import IGNORE_INDEX, SparseTarget
from .transport import sinkhorn_support

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd", "wasserstein_sorted", "sinkhorn")
BASELINES = ("ce", "label_smoothing", "gem")
LOSSES = DIVERGENCES + BASELINES


# ----------------------------------------------------------------------------------------------------------------
# Input checks (each bad input gets an error that names its fix; docs/design.md, bad inputs)
# ----------------------------------------------------------------------------------------------------------------
def check_temperature(temperature) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}.")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0 (1.0 leaves the student unchanged), got {temperature}.")


def check_logits(student_logits: torch.Tensor) -> None:
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
    check_logits(student_logits)
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
    check_logits(student_logits)
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


GEM_WEIGHTS = ("linear", "logsigmoid")
# the options that are a number in (0, 1) or [0, 1) (closed_low), per loss
_UNIT_OPTIONS = {"jsd": {"beta": False}, "skew_kl": {"alpha": True}, "label_smoothing": {"eps": True},
                 "gem": {"beta": False}}


def _check_call(student_logits: torch.Tensor, target: SparseTarget, temperature, divergence: str = "",
                **options) -> None:
    """What every public divergence checks first: its options in (0, 1) if any, the temperature, and the logits
    against the target."""
    if options:
        _check_unit_options(divergence, options)
    check_temperature(temperature)
    _check_pair(student_logits, target)


def _check_unit_options(divergence: str, options: dict) -> None:
    """Refuse an option of ``divergence`` outside its interval, ``(0, 1)`` or ``[0, 1)``, or a GEM ``h`` it lacks."""
    for name, closed_low in _UNIT_OPTIONS.get(divergence, {}).items():
        if name in options and not ((0.0 <= options[name] < 1.0) if closed_low else (0.0 < options[name] < 1.0)):
            raise ValueError(f"{name} must be in {'[0, 1)' if closed_low else '(0, 1)'}, got {options[name]}.")
    if divergence == "gem" and options.get("h", GEM_WEIGHTS[-1]) not in GEM_WEIGHTS:
        raise ValueError(f"gem h must be one of {GEM_WEIGHTS}, got {options['h']!r}.")


_TAIL_DOC = """
    ``tail`` (docs/design.md, targets) says how the target's tail mass ``r`` is read: ``"uniform"`` (the default)
    spreads it over the ``V − k`` tokens off the support ``S``, ``q_j = t = r / (V − k)``; ``"bucket"`` compares
    ``k + 1`` categories, ``(q_S, r)`` against ``(p_S, 1 − P_S)`` with ``P_S = Σ_{i∈S} p_i``, so the student's tail
    shape is left free and a target built from the student itself has zero gradient; ``"renormalize"`` drops
    ``r``: ``q̃ = q_S / (1 − r)`` on ``S`` and 0 elsewhere."""


def _formula_of(maths: type, tail: bool = True) -> Callable:
    """Give the decorated function the docstring of its class in :mod:`dftnb.divergences` (formula, gradient,
    paper), plus the description of the ``tail`` argument (:data:`_TAIL_DOC`) for a divergence."""

    def document(fn: Callable) -> Callable:
        fn.__doc__ = maths.__doc__ + (_TAIL_DOC if tail else "")
        return fn

    return document


# ----------------------------------------------------------------------------------------------------------------
# Divergences: checks, then the formula of dftnb.divergences
# ----------------------------------------------------------------------------------------------------------------
def _divergence(maths: type, name: str) -> Callable:
    """The public function ``name(student_logits, target, temperature=1.0, tail="uniform")`` of a divergence
    without options: the checks, then ``maths.value``; its docstring is the class's (:func:`_formula_of`)."""

    def divergence(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0,
                   tail: str = "uniform") -> torch.Tensor:
        _check_call(student_logits, target, temperature)
        return maths.value(student_logits, target, temperature, tail)

    divergence.__name__ = divergence.__qualname__ = name
    return _formula_of(maths)(divergence)


forward_kl = _divergence(D.ForwardKL, "forward_kl")
reverse_kl = _divergence(D.ReverseKL, "reverse_kl")
tvd = _divergence(D.TVD, "tvd")
wasserstein_sorted = _divergence(D.SortedWasserstein, "wasserstein_sorted")


@_formula_of(D.JSD)
def jsd(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0, beta: float = 0.5,
        tail: str = "uniform") -> torch.Tensor:
    _check_call(student_logits, target, temperature, "jsd", beta=beta)
    return D.JSD.value(student_logits, target, temperature, beta, tail)


@_formula_of(D.SkewKL)
def skew_kl(student_logits: torch.Tensor, target: SparseTarget, temperature: float = 1.0, alpha: float = 0.1,
            tail: str = "uniform") -> torch.Tensor:
    _check_call(student_logits, target, temperature, "skew_kl", alpha=alpha)
    return D.SkewKL.value(student_logits, target, temperature, alpha, tail)


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
    check_temperature(temperature)
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


@_formula_of(D.Sinkhorn)
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
    _check_call(student_logits, target, temperature)
    return D.Sinkhorn.value(student_logits, target, temperature, embeddings, k, epsilon, n_iters, bucket_cost, tail)


# ----------------------------------------------------------------------------------------------------------------
# Supervised baselines (one-hot labels)
# ----------------------------------------------------------------------------------------------------------------
@_formula_of(D.CE, tail=False)
def ce(student_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    check_temperature(temperature)
    labels = _check_labels(student_logits, labels)
    return D.CE.value(student_logits, labels, temperature)


@_formula_of(D.LabelSmoothing, tail=False)
def label_smoothing(
    student_logits: torch.Tensor, labels: torch.Tensor, eps: float = 0.1, temperature: float = 1.0
) -> torch.Tensor:
    check_temperature(temperature)
    _check_unit_options("label_smoothing", {"eps": eps})
    labels = _check_labels(student_logits, labels)
    return D.LabelSmoothing.value(student_logits, labels, eps, temperature)


@_formula_of(D.GEM, tail=False)
def gem(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float = 0.7,
    h: str = "logsigmoid",
    temperature: float = 1.0,
) -> torch.Tensor:
    check_temperature(temperature)
    _check_unit_options("gem", {"beta": beta, "h": h})
    labels = _check_labels(student_logits, labels)
    return D.GEM.value(student_logits, labels, beta, h, temperature)


# ----------------------------------------------------------------------------------------------------------------
# Registry: name -> per-row function
# ----------------------------------------------------------------------------------------------------------------
_LOSS_FNS = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_kl": skew_kl,
    "tvd": tvd,
    "wasserstein_sorted": wasserstein_sorted,
    "sinkhorn": sinkhorn,
    "ce": ce,
    "label_smoothing": label_smoothing,
    "gem": gem,
}
_FIXED_ARGS = {"student_logits", "target", "labels", "temperature", "embeddings", "tail"}


def loss_function(divergence: str) -> Callable:
    """The per-row function named ``divergence`` (one of :data:`LOSSES`)."""
    if divergence not in LOSSES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(LOSSES)}.")
    return _LOSS_FNS[divergence]


def loss_options(divergence: str) -> list[str]:
    """The options of ``divergence`` that a caller sets (``beta``, ``alpha``, ``k``, ``epsilon`` …)."""
    return [n for n in inspect.signature(loss_function(divergence)).parameters if n not in _FIXED_ARGS]


def check_options(divergence: str, options: dict) -> None:
    """Refuse an option ``divergence`` does not take, or a value out of range (``beta``, ``alpha``, ``eps``, ``h``)."""
    allowed = loss_options(divergence)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"{divergence} does not take {unknown}; its options are {allowed or 'none'} (plus temperature)."
        )
    _check_unit_options(divergence, options)


