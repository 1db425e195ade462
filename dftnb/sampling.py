"""Samplers that ``generate()`` lacks, as ``transformers.LogitsProcessor`` s (docs/design.md, samplers).

What generate already has is used as is (``temperature``, ``top_k``, ``top_p``, ``min_p``, ``typical_p``,
``epsilon_cutoff``, ``eta_cutoff``). Added here:

* :class:`DynamicTemperatureLogitsProcessor` -- llama.cpp "dynatemp": ``T = T_min + (T_max - T_min) (H / log N)^γ``.
* :class:`EDTLogitsProcessor` -- entropy-based dynamic temperature (Zhang et al. 2024): ``T = T0 · N^(θ/H)``.
* :class:`TopNSigmaLogitsProcessor` -- top-nσ (Tang et al. 2024): keep logits ``>= max - n·σ``.
* :class:`MirostatV2LogitsProcessor` -- mirostat v2 (Basu et al. 2021): adaptive surprise cut-off ``μ``.
* :class:`TargetEntropyLogitsProcessor` -- the "diversity" knob: per row, the temperature whose entropy is a target.

Ordering caveat: ``generate()`` runs the processors passed in ``logits_processor=`` *before* its own warpers
(temperature, top-k, top-p, min-p, ...). A processor that sets the temperature itself (dynatemp, EDT, mirostat,
target entropy) must therefore be used with ``temperature=1.0`` and no other truncation, or generate would rescale
or cut its output afterwards. :func:`sampler_kwargs` builds such ``generate()`` keyword arguments and refuses a
temperature for those samplers.

Entropies are in nats except mirostat, whose surprise is in bits as in the paper and llama.cpp.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

LN2 = math.log(2.0)


def _extends_by_one(previous: torch.Tensor | None, input_ids: torch.Tensor | None) -> bool:
    """Whether ``input_ids`` is ``previous`` plus one token per row: the next step of the same generation."""
    return (
        previous is not None
        and input_ids is not None
        and input_ids.shape[0] == previous.shape[0]
        and input_ids.shape[1] == previous.shape[1] + 1
        and torch.equal(input_ids[:, :-1], previous)
    )


def _check_finite_scores(scores: torch.Tensor, who: str) -> None:
    """Refuse NaN/+Inf logits and rows with no finite score (every token masked: nothing left to sample)."""
    top = scores.max(-1).values.reshape(-1)  # one pass: NaN propagates through max, +Inf is the max
    if bool(torch.isfinite(top).all()):
        return
    if not bool((top < float("inf")).all()):
        raise ValueError(
            f"{who}: logits contain NaN or +Inf; run the model in float32 (or bfloat16 on GPU, not float16) and check "
            "the inputs, or add InfNanRemoveLogitsProcessor (generate(..., remove_invalid_values=True)) before it."
        )
    rows = torch.nonzero(top == float("-inf")).reshape(-1).tolist()
    more = f" (and {len(rows) - 1} more row(s))" if len(rows) > 1 else ""
    raise ValueError(
        f"{who}: row {rows[0]} of {top.numel()}{more} has no finite score: every token is -inf, so there is nothing "
        "to sample. The model's logits or an earlier processor (a bad-words or forced-token processor, top-k/top-p, "
        "another sampler) masked everything; check the model's output for that row and loosen or drop the earlier "
        "processor."
    )


def _real(name: str, value) -> float:
    """``value`` as a finite float, or a ValueError naming the parameter (NaN, Inf, strings and bools are refused)."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (numbers.Real, torch.Tensor, np.ndarray)):
        raise ValueError(f"{name} must be a finite number, got {value!r} ({type(value).__name__}).")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}.") from None
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number, got {result}.")
    return result


NEGLIGIBLE_LOG_RATIO = -80.0  # e^-80 ≈ 1.8e-35: below it a token's share of the mass cannot move an entropy


def _drop_negligible(log_ratio: torch.Tensor) -> torch.Tensor:
    """``log_ratio`` floored at -80 before ``exp``: subnormal results and ``-inf`` inputs take slow paths in CPU
    ``exp`` (5-20x), while the floor changes any entropy here by less than ``V · 80 · e^-80 < 1e-28`` nats (filtered
    tokens get mass ``<= e^-80`` and contribute ``0`` to the moments, whose ``-inf`` gaps are zeroed)."""
    return log_ratio.clamp_min(NEGLIGIBLE_LOG_RATIO)


def entropy_nats(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``H = -Σ_i p_i log p_i`` of ``p = softmax(logits)`` along the last axis, in nats.

    Computed as ``H = log Z - Σ_i e_i d_i / Z`` with ``d = logits - max``, ``e = exp(d)``, ``Z = Σ e``; ``-inf``
    logits (tokens already filtered out) contribute 0.
    """
    gap = logits - logits.max(-1, keepdim=True).values
    e = torch.exp(_drop_negligible(gap))
    z = e.sum(-1)
    return torch.log(z) - torch.linalg.vecdot(e, torch.nan_to_num(gap, neginf=0.0)) / z


def count_candidates(logits: torch.Tensor) -> torch.Tensor:
    """``N``: the number of tokens with a finite logit (the candidates still in play), per row."""
    if bool(logits.min() > float("-inf")):  # nothing filtered: one cheap reduction instead of a count
        return torch.full(logits.shape[:-1], logits.shape[-1], device=logits.device)
    return torch.isfinite(logits).sum(-1)


class PerRowTemperatureLogitsProcessor(LogitsProcessor):
    """A processor that divides each row's logits by a temperature computed from those logits:
    ``scores / T(scores)``, keeping the last ``T`` in ``last_temperature``. A subclass is one rule for ``T``: its
    ``temperature(scores)`` returns the per-row temperatures, shape ``(batch,)``."""

    last_temperature: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        _check_finite_scores(scores, type(self).__name__)
        t = self.temperature(scores)
        self.last_temperature = t
        return (scores.float() / t.unsqueeze(-1)).to(scores.dtype)


class DynamicTemperatureLogitsProcessor(PerRowTemperatureLogitsProcessor):
    r"""Entropy-scaled temperature, as llama.cpp's ``dynatemp`` sampler.

    .. math:: T = T_{min} + (T_{max} - T_{min}) \left(\frac{H}{\log N}\right)^{\gamma}

    where ``H`` is the entropy of ``softmax(logits)`` (nats) and ``N`` the number of candidates with a finite
    logit, so ``H / log N`` in [0, 1] is the normalised entropy. The logits are divided by ``T`` per row: a confident
    step is sampled cold, an uncertain one hot. Rows with ``N <= 1`` use ``T_min`` (the distribution is a point
    mass either way). Reference: llama.cpp ``llama_sampler_temp_ext`` (``--dynatemp-range``, ``--dynatemp-exp``),
    where ``T_min = temp - range`` and ``T_max = temp + range``.

    Use with ``generate(..., temperature=1.0)``: generate's own temperature runs after this processor.
    The last temperatures used are kept in ``last_temperature`` (shape ``(batch,)``).
    """

    def __init__(self, min_temperature: float, max_temperature: float, exponent: float = 1.0):
        min_temperature = _real("min_temperature", min_temperature)
        max_temperature = _real("max_temperature", max_temperature)
        exponent = _real("exponent", exponent)
        if not min_temperature > 0:
            raise ValueError(f"min_temperature must be > 0, got {min_temperature}; use e.g. 0.5.")
        if min_temperature > max_temperature:
            raise ValueError(
                f"min_temperature={min_temperature} > max_temperature={max_temperature}; swap them "
                "(T_min <= T_max; equal values give a fixed temperature)."
            )
        if not exponent > 0:
            raise ValueError(f"exponent γ must be > 0, got {exponent}; γ = 1 is linear in the normalised entropy.")
        self.min_temperature = float(min_temperature)
        self.max_temperature = float(max_temperature)
        self.exponent = float(exponent)
        self.last_temperature: torch.Tensor | None = None

    def temperature(self, scores: torch.Tensor) -> torch.Tensor:
        """The per-row temperature ``T`` for ``scores`` of shape ``(batch, V)``."""
        logits = scores.float()
        n = count_candidates(logits)
        h = entropy_nats(logits)
        log_n = torch.log(n.clamp_min(2).float())
        normalised = (h / log_n).clamp(0.0, 1.0)
        t = self.min_temperature + (self.max_temperature - self.min_temperature) * normalised.pow(self.exponent)
        return torch.where(n > 1, t, torch.full_like(t, self.min_temperature))


class EDTLogitsProcessor(PerRowTemperatureLogitsProcessor):
    r"""Entropy-based Dynamic Temperature (EDT; Zhang et al. 2024, "EDT: Improving Large Language Models' Generation
    by Entropy-based Dynamic Temperature Sampling", arXiv:2403.14541).

    .. math:: T = T_0 \cdot N^{\theta / H}

    with ``H`` the entropy of ``softmax(logits)`` in nats, base ``N = 0.8`` (the paper's value), ``θ > 0``. Since
    ``N < 1``, a low-entropy step gets ``T -> 0`` and a high-entropy step ``T -> T_0``. ``T`` is floored at
    ``min_temperature`` so a zero-entropy row does not divide by zero (it is a point mass anyway).

    Use with ``generate(..., temperature=1.0)``. The last temperatures are kept in ``last_temperature``.
    """

    def __init__(
        self, temperature0: float = 1.0, theta: float = 1.0, base: float = 0.8, min_temperature: float = 1e-2
    ):
        temperature0, theta = _real("temperature0", temperature0), _real("theta", theta)
        base, min_temperature = _real("base", base), _real("min_temperature", min_temperature)
        if not temperature0 > 0:
            raise ValueError(f"temperature0 (T0) must be > 0, got {temperature0}.")
        if not theta > 0:
            raise ValueError(f"theta must be > 0, got {theta}; it sets how fast T falls at low entropy.")
        if not 0 < base < 1:
            raise ValueError(f"base N must be in (0, 1) (the paper uses 0.8), got {base}.")
        if not 0 < min_temperature <= temperature0:
            raise ValueError(f"min_temperature must be in (0, T0={temperature0}], got {min_temperature}.")
        self.temperature0 = float(temperature0)
        self.theta = float(theta)
        self.base = float(base)
        self.min_temperature = float(min_temperature)
        self.last_temperature: torch.Tensor | None = None

    def temperature(self, scores: torch.Tensor) -> torch.Tensor:
        """The per-row temperature ``T = max(T0 · N^(θ/H), min_temperature)``."""
        h = entropy_nats(scores.float())
        exponent = self.theta / h.clamp_min(1e-12)
        t = self.temperature0 * torch.exp(exponent * math.log(self.base))
        return t.clamp_min(self.min_temperature)


class TopNSigmaLogitsProcessor(LogitsProcessor):
    r"""Top-nσ (Tang et al. 2024, "Top-nσ: Not All Logits Are You Need", arXiv:2411.07641).

    Keeps the tokens whose logit is within ``n`` standard deviations of the maximum,

    .. math:: \{ i : z_i \ge \max_j z_j - n \sigma(z) \},

    with ``σ`` the (population) standard deviation of the finite logits of the row; the others become ``-inf``.
    The kept set does not change with temperature (both sides scale by ``1/T``), so this processor may be
    followed by generate's ``temperature``. ``n = 0`` keeps only the maximum (greedy).
    """

    def __init__(self, n: float = 1.0):
        n = _real("n", n)
        if not n >= 0:
            raise ValueError(f"n must be >= 0 (the paper uses n = 1), got {n}.")
        self.n = float(n)

    def keep_mask(self, scores: torch.Tensor) -> torch.Tensor:
        """Boolean ``(batch, V)`` mask of the tokens top-nσ keeps."""
        logits = scores.float()
        finite = torch.isfinite(logits)
        if bool(finite.all()):
            sigma = logits.std(-1, correction=0, keepdim=True)
        else:
            count = finite.sum(-1, keepdim=True).clamp_min(1)
            zero = torch.zeros_like(logits)
            mean = torch.where(finite, logits, zero).sum(-1, keepdim=True) / count
            sigma = (torch.where(finite, (logits - mean) ** 2, zero).sum(-1, keepdim=True) / count).sqrt()
        top = logits.max(-1, keepdim=True).values
        return logits >= top - self.n * sigma

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        _check_finite_scores(scores, type(self).__name__)
        return scores.masked_fill(~self.keep_mask(scores), float("-inf"))


class MirostatV2LogitsProcessor(LogitsProcessor):
    r"""Mirostat v2 (Basu et al. 2021, "Mirostat: A Neural Text Decoding Algorithm that Directly Controls
    Perplexity", ICLR; v2 as in llama.cpp). Stateful: one ``μ`` per sequence.

    At each step: drop the tokens whose surprise ``-log2 p_i`` exceeds ``μ`` (the most likely token is always
    kept), renormalise, sample ``x``; then ``μ <- μ - η (s(x) - τ)`` with ``s(x) = -log2 p'(x)`` the surprise of the
    sampled token under the truncated, renormalised distribution ``p'``. ``μ`` starts at ``2τ``.

    A LogitsProcessor sees the logits *before* sampling, so the update for the token chosen at step ``t`` happens
    at the call for step ``t + 1``, whose ``input_ids`` end with that token: the processor keeps ``p'`` of the
    previous call and reads the chosen token from ``input_ids[:, -1]``. A call whose ``input_ids`` do not extend the
    previous call's by one token starts a new generation (``μ`` reset to ``2τ``); :meth:`reset` does it explicitly.
    Rows whose chosen token had zero probability under ``p'`` (padding of finished sequences) are not updated.

    ``τ`` (target surprise) and ``μ`` are in bits. Use with ``temperature=1.0`` and no other truncation after it,
    otherwise the distribution actually sampled differs from ``p'``.
    """

    def __init__(self, tau: float = 5.0, eta: float = 0.1):
        tau, eta = _real("tau", tau), _real("eta", eta)
        if not tau > 0:
            raise ValueError(f"tau (target surprise, bits) must be > 0, got {tau}; llama.cpp's default is 5.0.")
        if not eta > 0:
            raise ValueError(f"eta (learning rate) must be > 0, got {eta}; llama.cpp's default is 0.1.")
        self.tau = float(tau)
        self.eta = float(eta)
        self.reset()

    def reset(self) -> None:
        """Forget all sequences: the next call starts with ``μ = 2τ``."""
        self.mu: torch.Tensor | None = None
        self.mu_history: list[torch.Tensor] = []
        self.surprise_history: list[torch.Tensor] = []
        self._prev_ids: torch.Tensor | None = None
        self._prev_logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _continues_previous_call(self, input_ids: torch.Tensor) -> bool:
        return _extends_by_one(self._prev_ids, input_ids)

    def keep_mask(self, logp: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Tokens of surprise ``-log2 p_i <= μ`` given log-probabilities ``logp``; the argmax is always kept."""
        keep = logp >= -LN2 * mu.unsqueeze(-1)
        return keep.scatter_(-1, logp.argmax(-1, keepdim=True), True)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        _check_finite_scores(scores, type(self).__name__)
        if self._continues_previous_call(input_ids):
            logp, keep, log_mass = self._prev_logprobs
            chosen = input_ids[:, -1:].to(logp.device)
            # surprise under p' = p restricted to the kept set and renormalised: log p'(x) = log p(x) - log Σ_keep p
            chosen_logp = torch.where(keep.gather(-1, chosen), logp.gather(-1, chosen), float("-inf")).squeeze(-1)
            surprise = -(chosen_logp - log_mass) / LN2
            update = torch.isfinite(surprise)
            self.mu = torch.where(update, self.mu - self.eta * (surprise - self.tau), self.mu)
            self.surprise_history.append(surprise)
        else:
            self.reset()
            self.mu = torch.full((scores.shape[0],), 2.0 * self.tau, device=scores.device)
        self.mu_history.append(self.mu.clone())
        logp = torch.log_softmax(scores.float(), dim=-1)
        keep = self.keep_mask(logp, self.mu)
        log_mass = torch.logsumexp(logp.masked_fill(~keep, float("-inf")), dim=-1)
        self._prev_logprobs = (logp, keep, log_mass)
        self._prev_ids = input_ids.clone()
        return scores.masked_fill(~keep, float("-inf"))


class TargetEntropyLogitsProcessor(LogitsProcessor):
    r"""The "diversity" knob: per row, the temperature ``T`` with ``H(softmax(z / T)) = H*`` (a target entropy).

    ``H(T)`` is increasing in ``T`` (from the entropy of the argmax set at ``T -> 0`` to ``log N`` at ``T -> ∞``),
    so ``T`` is found by bisection on ``u = log T`` over ``[log T_lo, log T_hi]``, accelerated by Newton steps
    (``dH/du = Var_{p}(z/T)``) that are accepted only when they stay inside the current bracket. It stops when
    ``|H - H*| <= tolerance`` (default 1e-3 nats). Within one generation (``input_ids`` extending the previous
    call's by one token) the search starts from the previous step's temperature, which usually needs 1-2 steps.

    Unreachable targets: when ``H* < H(T_lo)`` the row uses ``T_lo``, when ``H* > H(T_hi)`` (e.g. ``H* > log N``)
    it uses ``T_hi``; ``last_reached`` records which rows met the target and ``unreachable_steps`` counts the others.
    With ``on_unreachable="raise"`` such a row raises ``RuntimeError`` instead.

    Use with ``generate(..., temperature=1.0)``. The solved temperatures are kept in ``last_temperature``.
    """

    def __init__(
        self,
        target_entropy: float,
        min_temperature: float = 0.05,
        max_temperature: float = 20.0,
        tolerance: float = 1e-3,
        max_iter: int = 100,
        on_unreachable: str = "clamp",
    ):
        target_entropy = _real("target_entropy", target_entropy)
        min_temperature = _real("min_temperature", min_temperature)
        max_temperature = _real("max_temperature", max_temperature)
        tolerance = _real("tolerance", tolerance)
        if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1 (the search's step limit), got {max_iter!r}.")
        if not target_entropy >= 0:
            raise ValueError(f"target_entropy (nats) must be >= 0, got {target_entropy}.")
        if not 0 < min_temperature < max_temperature:
            raise ValueError(
                f"need 0 < min_temperature < max_temperature, got [{min_temperature}, {max_temperature}]."
            )
        if not tolerance > 0:
            raise ValueError(f"tolerance (nats) must be > 0, got {tolerance}.")
        if on_unreachable not in ("clamp", "raise"):
            raise ValueError(f"on_unreachable must be 'clamp' or 'raise', got {on_unreachable!r}.")
        self.target_entropy = float(target_entropy)
        self.min_temperature = float(min_temperature)
        self.max_temperature = float(max_temperature)
        self.tolerance = float(tolerance)
        self.max_iter = int(max_iter)
        self.on_unreachable = on_unreachable
        self.last_temperature: torch.Tensor | None = None
        self.last_reached: torch.Tensor | None = None
        self.unreachable_steps = 0
        self._prev_ids: torch.Tensor | None = None

    @staticmethod
    def _entropy_and_slope(gap: torch.Tensor, finite_gap: torch.Tensor, gap_sq: torch.Tensor, beta: torch.Tensor):
        """``H`` and ``dH/du = Var_p(z/T)`` of ``p ∝ exp(β d)``, ``d = z - max z <= 0`` (``-inf`` for filtered
        tokens, whose ``finite_gap``/``gap_sq`` entries are 0), ``β = 1/T``: ``H = log Z - β E[d]``,
        ``Var = β² (E[d²] - E[d]²)``."""
        e = torch.exp(_drop_negligible(gap * beta.unsqueeze(-1)))
        z = e.sum(-1)
        mean = torch.linalg.vecdot(e, finite_gap) / z
        mean_sq = torch.linalg.vecdot(e, gap_sq) / z
        h = torch.log(z) - beta * mean
        return h, beta * beta * (mean_sq - mean * mean).clamp_min(0.0)

    def solve_temperature(
        self, scores: torch.Tensor, start: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row ``(T, reached)`` for ``scores`` of shape ``(batch, V)``, searched from ``start`` (default 1).

        Safeguarded Newton on ``u = log T``: the bracket ``[lo, hi]`` starts at ``[log T_lo, log T_hi]``; a Newton
        step that leaves it is replaced by the bracket's midpoint, or by the bound itself while that bound has not
        been evaluated yet (which is how an unreachable target is detected in one step).
        """
        logits = scores.float()
        gap = logits - logits.max(-1, keepdim=True).values
        finite_gap = torch.nan_to_num(gap, neginf=0.0)
        gap_sq = finite_gap * finite_gap
        target, tol = self.target_entropy, self.tolerance
        tol_inner = 0.25 * tol  # float32 entropy is accurate to ~1e-5 nats; stop well inside the promise
        # The bracket bookkeeping is on (batch,) numpy arrays: a handful of scalars per row, not worth kernels.
        coldest, hottest = math.log(self.min_temperature), math.log(self.max_temperature)
        rows = logits.shape[0] if logits.ndim > 1 else 1
        lo, hi = np.full(rows, coldest), np.full(rows, hottest)
        lo_seen, hi_seen = np.zeros(rows, dtype=bool), np.zeros(rows, dtype=bool)  # H evaluated at lo / hi
        u0 = np.zeros(rows) if start is None else np.log(start.double().cpu().numpy().reshape(rows))
        u = np.clip(u0, coldest, hottest)
        done, reached = np.zeros(rows, dtype=bool), np.zeros(rows, dtype=bool)
        for _ in range(self.max_iter):
            beta = torch.from_numpy(np.exp(-u)).to(device=logits.device, dtype=logits.dtype)
            h, slope = self._entropy_and_slope(gap, finite_gap, gap_sq, beta.reshape(logits.shape[:-1]))
            err = h.double().cpu().numpy().reshape(rows) - target
            slope = slope.double().cpu().numpy().reshape(rows)
            hit = np.abs(err) <= tol_inner
            stuck_hot = (u >= hottest) & (err < -tol_inner)  # hottest allowed T still below the target
            stuck_cold = (u <= coldest) & (err > tol_inner)  # coldest allowed T still above the target
            reached |= ~done & (hit | ((stuck_hot | stuck_cold) & (np.abs(err) <= tol)))
            done |= hit | stuck_hot | stuck_cold
            if done.all():
                break
            need_hotter = err < 0
            lo = np.where(need_hotter, u, lo)
            hi = np.where(need_hotter, hi, u)
            lo_seen |= need_hotter
            hi_seen |= ~need_hotter
            with np.errstate(divide="ignore", invalid="ignore"):
                newton = u - err / slope
            inside = (newton > lo) & (newton < hi) & np.isfinite(newton)
            mid = 0.5 * (lo + hi)
            to_bound = np.where(need_hotter, np.where(hi_seen, mid, hi), np.where(lo_seen, mid, lo))
            u = np.where(done, u, np.where(inside, newton, to_bound))
        temperature = torch.from_numpy(np.exp(u)).to(device=logits.device, dtype=logits.dtype)
        reached_t = torch.from_numpy(reached).to(logits.device)
        if self.on_unreachable == "raise" and not reached.all():
            raise RuntimeError(
                f"target entropy {target:.4f} nats is not reachable with T in [{self.min_temperature}, "
                f"{self.max_temperature}] for {int((~reached).sum())} row(s); widen [min_temperature, "
                "max_temperature], lower the target (it cannot exceed log N), or use on_unreachable='clamp'."
            )
        return temperature.reshape(logits.shape[:-1]), reached_t.reshape(logits.shape[:-1])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        _check_finite_scores(scores, type(self).__name__)
        # within one generation the solution moves little from step to step: start from the previous one
        start = self.last_temperature if _extends_by_one(self._prev_ids, input_ids) else None
        t, reached = self.solve_temperature(scores, start)
        self._prev_ids = None if input_ids is None else input_ids.clone()
        self.last_temperature = t
        self.last_reached = reached
        self.unreachable_steps += int((~reached).sum())
        return (scores.float() / t.unsqueeze(-1)).to(scores.dtype)


def _check_probability(name: str, value: float, low_open: bool = False) -> float:
    value = _real(name, value)
    ok = (0 < value <= 1) if low_open else (0 <= value <= 1)
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}.")
    return value


def _check_temperature(value: float) -> float:
    value = _real("temperature", value)
    if not value > 0:
        raise ValueError(f"temperature must be > 0, got {value}; for greedy decoding use do_sample=False.")
    return value


SAMPLERS = {
    "temperature": ("temperature",),
    "top_p": ("top_p", "temperature"),
    "min_p": ("min_p", "temperature"),
    "dynatemp": ("min_temperature", "max_temperature", "exponent"),
    "edt": ("temperature0", "theta", "base", "min_temperature"),
    "top_nsigma": ("n", "temperature"),
    "mirostat": ("tau", "eta"),
    "target_entropy": ("target_entropy", "min_temperature", "max_temperature", "tolerance", "on_unreachable"),
}


def sampler_kwargs(name: str, **params) -> dict:
    """``generate()`` keyword arguments for sampler ``name``, so every sampler is called the same way::

        model.generate(input_ids, max_new_tokens=32, **sampler_kwargs("dynatemp", min_temperature=0.5,
                                                                       max_temperature=1.5))

    Always sets ``do_sample=True`` and turns off generate's default truncations (``top_k=0``, ``top_p=1.0``) so that
    only the named sampler shapes the distribution. ``temperature``/``top_p``/``min_p`` use generate's own warpers;
    the others return ``logits_processor=LogitsProcessorList([processor])`` with ``temperature=1.0`` (top-nσ accepts
    a temperature, applied after it). Parameters per name are listed in :data:`SAMPLERS`.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}.")
    unknown = set(params) - set(SAMPLERS[name])
    if "temperature" in unknown and _real("temperature", params["temperature"]) == 1.0:
        unknown.discard("temperature")
        params = {k: v for k, v in params.items() if k != "temperature"}
    if unknown:
        hint = (
            " This sampler sets the temperature itself and runs before generate's temperature warper, so pass "
            "temperature=1.0 (or omit it)."
            if "temperature" in unknown
            else ""
        )
        raise ValueError(
            f"sampler {name!r} does not take {sorted(unknown)}; its parameters are {list(SAMPLERS[name])}.{hint}"
        )
    kwargs = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
    if name == "temperature":
        kwargs["temperature"] = _check_temperature(params.get("temperature", 1.0))
    elif name == "top_p":
        if "top_p" not in params:
            raise ValueError("sampler 'top_p' needs top_p=..., a probability in (0, 1].")
        kwargs["top_p"] = _check_probability("top_p", params["top_p"], low_open=True)
        kwargs["temperature"] = _check_temperature(params.get("temperature", 1.0))
    elif name == "min_p":
        if "min_p" not in params:
            raise ValueError("sampler 'min_p' needs min_p=..., a probability in [0, 1].")
        kwargs["min_p"] = _check_probability("min_p", params["min_p"])
        kwargs["temperature"] = _check_temperature(params.get("temperature", 1.0))
    elif name == "top_nsigma":
        kwargs["temperature"] = _check_temperature(params.pop("temperature", 1.0))
        kwargs["logits_processor"] = LogitsProcessorList([TopNSigmaLogitsProcessor(**params)])
    else:
        processor_class = {
            "dynatemp": DynamicTemperatureLogitsProcessor,
            "edt": EDTLogitsProcessor,
            "mirostat": MirostatV2LogitsProcessor,
            "target_entropy": TargetEntropyLogitsProcessor,
        }[name]
        try:
            processor = processor_class(**params)
        except TypeError as err:
            raise ValueError(f"sampler {name!r}: {err}; its parameters are {list(SAMPLERS[name])}.") from err
        kwargs["logits_processor"] = LogitsProcessorList([processor])
    return kwargs


