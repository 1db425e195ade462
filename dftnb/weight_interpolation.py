"""Weight-space interpolation between a model and its fine-tuned copy (WiSE-FT).

Wortsman et al., CVPR 2022, "Robust fine-tuning of zero-shot models": with ``θ₀`` the starting model's weights and
``θ₁`` the fine-tuned ones, the model at

    θ_α = (1 − α) · θ₀ + α · θ₁,      α ∈ [0, 1]

keeps much of the starting model's behaviour off the fine-tuning distribution while gaining much of the fine-tuned
model's behaviour on it. It costs no training, so it is the cheapest way to "fine-tune less": a method that claims to
keep the base model's diversity must beat SFT interpolated towards the base model, not only SFT itself.

Floating-point tensors are interpolated in float64 and cast back to their dtype; integer and boolean buffers (e.g.
position ids) must be equal in both models and are copied. Tied weights (an input embedding shared with the LM head)
stay tied: each name of the shared tensor receives the same interpolated value.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch


def interpolate_state_dicts(base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """``{name: (1 − alpha) · base[name] + alpha · tuned[name]}`` for every floating-point tensor (computed in
    float64, returned in the tensor's dtype); other tensors must be equal and are copied from ``tuned``.

    Raises ``ValueError`` when ``alpha`` is outside [0, 1] (extrapolation is a different method) or when the two
    state dicts do not hold the same names, shapes and dtypes: they are then not one architecture."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0 = the base model, 1 = the fine-tuned one), got {alpha}.")
    missing, extra = sorted(set(base) - set(tuned)), sorted(set(tuned) - set(base))
    if missing or extra:
        raise ValueError(f"the two models are not one architecture: only in base {missing[:5]}, only in tuned "
                         f"{extra[:5]}. Interpolate a fine-tuned model with the model it was fine-tuned from.")
    out = {}
    for name, b in base.items():
        t = tuned[name]
        if b.shape != t.shape or b.dtype != t.dtype:
            raise ValueError(f"{name}: base {tuple(b.shape)} {b.dtype} vs tuned {tuple(t.shape)} {t.dtype}; "
                             "interpolate a fine-tuned model with the model it was fine-tuned from, in one dtype.")
        if b.is_floating_point():
            mixed = (1.0 - alpha) * b.detach().double() + alpha * t.detach().to(b.device).double()
            out[name] = mixed.to(b.dtype)
        else:
            if not torch.equal(b, t.to(b.device)):
                raise ValueError(f"{name}: non-floating tensors differ between the two models and cannot be "
                                 "interpolated; they must come from one architecture and configuration.")
            out[name] = t.detach().clone()
    return out


def interpolate_weights(base: torch.nn.Module, tuned: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """A new model with weights ``(1 − alpha) · θ_base + alpha · θ_tuned`` (WiSE-FT, Wortsman et al. 2022);
    ``base`` and ``tuned`` are left unchanged. ``alpha = 0`` gives the base model's weights, ``1`` the fine-tuned
    model's."""
    mixed = interpolate_state_dicts(base.state_dict(), tuned.state_dict(), alpha)
    model = copy.deepcopy(tuned)
    model.load_state_dict(mixed)
    return model.eval()
