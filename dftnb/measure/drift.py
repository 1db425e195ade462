"""How far a fine-tuned model has moved from the model it started from, and how much it learned, on held-out rows.

Token means over every predicted position ``t`` of the rows (float64, both models read the same tokens):

* ``nll`` and ``base_nll``: ``−log p_θ(y_t)`` and ``−log p_base(y_t)``, the held-out in-domain likelihood (learning);
* ``kl_to_base``: ``KL(p_θ ‖ p_base) = Σ_v p_θ(v) log(p_θ(v) / p_base(v))``, dense over the vocabulary: how far the
  next-token distributions moved (the quantity a trust-region or KL-regularised fine-tune bounds);
* ``entropy`` and ``base_entropy``: ``H(p_θ)`` and ``H(p_base)``, sharper or flatter than before;
* ``top1_agreement``: the share of positions where both models' argmax agree.

A method that learns as much (``nll``) while moving less (``kl_to_base``) and keeping more entropy is the one a
diversity-preserving fine-tune is looking for; this is the cheap proxy used to choose which runs to make.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..modeling import model_device, pad_right

DRIFT_COLUMNS = ("tokens", "nll", "base_nll", "kl_to_base", "entropy", "base_entropy", "top1_agreement")


@torch.no_grad()
def model_drift(model, base, rows: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 8) -> dict:
    """The token means of the module docstring for ``model`` against ``base`` on ``rows`` (lists of token ids,
    e.g. packed validation blocks; each row predicts its tokens 1..n−1). Both models are read in eval mode and
    their modes restored. Returns ``{column: value}`` for :data:`DRIFT_COLUMNS`."""
    rows = [list(r) for r in rows]
    if not rows or all(len(r) < 2 for r in rows):
        raise ValueError("model_drift needs rows of at least two tokens (one predicted position); got none.")
    sums = dict.fromkeys(DRIFT_COLUMNS[1:], 0.0)
    tokens = 0
    modes = (model.training, base.training)
    model.eval(), base.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = [r for r in rows[start:start + batch_size] if len(r) >= 2]
            if not batch:
                continue
            ids, mask = pad_right(batch, pad_token_id, model_device(model))
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].double(), -1)
            ids_b, mask_b = ids.to(model_device(base)), mask.to(model_device(base))
            logb = torch.log_softmax(base(input_ids=ids_b, attention_mask=mask_b).logits[:, :-1].double(), -1)
            keep = mask[:, 1:].bool().cpu()
            logp, logb = logp.cpu()[keep], logb.cpu()[keep]
            y = ids[:, 1:].cpu()[keep].long()
            p = logp.exp()
            tokens += int(keep.sum())
            sums["nll"] += float(-logp.gather(-1, y[:, None]).sum())
            sums["base_nll"] += float(-logb.gather(-1, y[:, None]).sum())
            sums["kl_to_base"] += float((p * (logp - logb)).sum())
            sums["entropy"] += float(-(p * logp).sum())
            sums["base_entropy"] += float(-(logb.exp() * logb).sum())
            sums["top1_agreement"] += float((logp.argmax(-1) == logb.argmax(-1)).sum())
    finally:
        model.train(modes[0]), base.train(modes[1])
    return {"tokens": tokens, **{k: v / tokens for k, v in sums.items()}}
