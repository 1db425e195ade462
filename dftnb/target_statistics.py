"""How far a set of targets sits from the model it will fine-tune, measured over the training tokens.

A DFT target that equals the base model's own distribution teaches nothing (its gradient is zero in the ``bucket``
tail mode), and one barely different from it moves the model barely at all. Before training on a target set, report
per configuration, as token means over every predicted position of the rows:

* ``kl_to_model``: ``KL(q ‖ p) = Σ_{i∈S} q_i log(q_i / p_i) + r log(r / (1 − P_S))`` on the target's ``k + 1``
  categories (its support ``S`` and the tail bucket), ``p`` the model's next-token distribution: the divergence the
  forward-KL objective starts from. Merging categories never increases a KL, so this is a lower bound of the dense
  ``KL(q ‖ p)``;
* ``entropy``: ``H(q)`` of the full distribution, the tail mass spread uniformly over the ``V − k`` other tokens
  (:meth:`dftnb.sparse_target.SparseTarget.entropy`), next to ``model_entropy``, the model's own ``H(p)``;
* ``tail_mass``: ``r``, the mass the top-k leaves out;
* ``nll_next``: ``−log q(y)`` of the text's next token ``y`` (uniform tail reading when ``y ∉ S``), next to the
  model's ``model_nll_next``: whether the target predicts the text better than the model does.

Every target set must share the same rows (``input_ids``), so one forward pass of the model serves them all.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .sparse_target import IGNORE_INDEX, SparseTarget, batch_sparse_target

COLUMNS = ("tokens", "kl_to_model", "entropy", "model_entropy", "tail_mass", "nll_next", "model_nll_next")


def _check_same_rows(datasets: Mapping[str, object]) -> None:
    names = list(datasets)
    if not names:
        raise ValueError("target_statistics needs at least one target set, got none.")
    first = datasets[names[0]]
    for name in names[1:]:
        other = datasets[name]
        if len(other) != len(first) or any(list(a) != list(b) for a, b in zip(first["input_ids"], other["input_ids"])):
            raise ValueError(f"target sets {names[0]!r} and {name!r} are not built on the same rows: build every "
                             "configuration from the same packed blocks so one forward pass measures them all.")
        if "target_ids" not in other.column_names:
            raise ValueError(f"target set {name!r} has no target columns; build it with dftnb.targets.")
    if "target_ids" not in first.column_names:
        raise ValueError(f"target set {names[0]!r} has no target columns; build it with dftnb.targets.")


def _positions(target: SparseTarget, keep: torch.Tensor) -> SparseTarget:
    r = None if target.r is None else target.r[keep]
    return SparseTarget(target.ids[keep], target.logprobs[keep], target.vocab_size, r)


@torch.no_grad()
def target_statistics(model, datasets: Mapping[str, object], pad_token_id: int, batch_size: int = 8):
    """One row per target set in ``datasets`` (``{name: datasets.Dataset}`` from :mod:`dftnb.targets`, all on the
    same rows): the token means of the module docstring's columns over every predicted position (``labels[t + 1]
    != -100``), computed in float64 against ``model`` (in eval mode; its mode is restored). Returns a DataFrame
    indexed by name with the columns :data:`COLUMNS`."""
    import pandas as pd

    from .losses import forward_kl
    from .trainer import SparseTargetCollator

    _check_same_rows(datasets)
    names = list(datasets)
    collate = SparseTargetCollator(pad_token_id)
    device = next(model.parameters()).device
    sums = {name: dict.fromkeys(COLUMNS[1:], 0.0) for name in names}
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        n_rows = len(datasets[names[0]])
        for start in range(0, n_rows, batch_size):
            index = range(start, min(start + batch_size, n_rows))
            batches = {name: collate([datasets[name][i] for i in index]) for name in names}
            first = batches[names[0]]
            logits = model(input_ids=first["input_ids"].to(device),
                           attention_mask=first["attention_mask"].to(device)).logits[:, :-1].double().cpu()
            labels = first["labels"][:, 1:]
            keep = labels != IGNORE_INDEX
            if not keep.any():
                continue
            logp = torch.log_softmax(logits[keep], dim=-1)
            y = labels[keep].long()
            n = int(keep.sum())
            tokens += n
            model_entropy = float(-(logp.exp() * logp).sum())
            model_nll = float(-logp.gather(-1, y[:, None]).sum())
            for name, batch in batches.items():
                full = batch_sparse_target({k: batch[k][:, :-1] for k in batch if k.startswith("target_")},
                                           logits.shape[-1])
                target = _positions(full, keep)
                s = sums[name]
                s["kl_to_model"] += float(forward_kl(logp, target, tail="bucket").double().sum())
                s["entropy"] += float(target.entropy().sum())
                s["model_entropy"] += model_entropy
                r = target.tail_mass().double()
                s["tail_mass"] += float(r.sum())
                hit = target.ids.long() == y[:, None]
                on_support = hit.any(-1)
                logq_y = torch.where(on_support, (target.logprobs.double() * hit).sum(-1),
                                     target.tail_logprob().double())
                s["nll_next"] += float(-logq_y.sum())
                s["model_nll_next"] += model_nll
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("the rows have no predicted position (every label is -100); nothing to measure.")
    rows = {name: {"tokens": tokens, **{k: v / tokens for k, v in s.items()}} for name, s in sums.items()}
    return pd.DataFrame.from_dict(rows, orient="index")[list(COLUMNS)]
