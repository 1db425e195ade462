"""model_drift (:mod:`dftnb.measure.drift`) against a float64 dense reference written from the formulas, and the
known cases: a model against itself has KL 0, agreement 1 and its own NLL."""

import math

import pytest
import torch

from dftnb.measure.drift import DRIFT_COLUMNS, model_drift


@pytest.fixture(scope="module")
def models():
    from dftnb.lab.models import tiny_model

    model, tokenizer = tiny_model(seed=0)
    base, _ = tiny_model(seed=1, tokenizer=tokenizer)
    with torch.no_grad():  # a random model is nearly uniform: sharpen one so the two differ clearly
        base.get_output_embeddings().weight.mul_(20.0)
    return model.eval(), base.eval(), tokenizer


def _rows(tokenizer):
    texts = ["To be, or not to be, that is the question", "Now is the winter of our discontent made glorious",
             "Shall I compare thee"]
    return [tokenizer(t)["input_ids"] for t in texts]  # different lengths: padding must not count


def _reference(model, base, rows):
    sums, n = dict.fromkeys(DRIFT_COLUMNS[1:], 0.0), 0
    for row in rows:
        ids = torch.tensor(row)[None]
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            lb = torch.log_softmax(base(ids).logits[0, :-1].double(), -1)
        for t in range(len(row) - 1):
            y = row[t + 1]
            p, b = lp[t].exp(), lb[t].exp()
            sums["nll"] -= float(lp[t, y])
            sums["base_nll"] -= float(lb[t, y])
            sums["kl_to_base"] += sum(float(p[v]) * (float(lp[t, v]) - float(lb[t, v])) for v in range(len(p)))
            sums["entropy"] -= float((p * lp[t]).sum())
            sums["base_entropy"] -= float((b * lb[t]).sum())
            sums["top1_agreement"] += float(int(lp[t].argmax()) == int(lb[t].argmax()))
            n += 1
    return {k: v / n for k, v in sums.items()}, n


def test_matches_a_float64_dense_reference(models):
    model, base, tokenizer = models
    rows = _rows(tokenizer)
    got = model_drift(model, base, rows, tokenizer.pad_token_id, batch_size=2)
    want, n = _reference(model, base, rows)
    assert got["tokens"] == n == sum(len(r) - 1 for r in rows)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert got["kl_to_base"] > 0.1  # the sharpened base differs: the reference is not trivially zero
    assert got["base_entropy"] < got["entropy"] - 1.0


def test_a_model_against_itself(models):
    model, _, tokenizer = models
    rows = _rows(tokenizer)
    got = model_drift(model, model, rows, tokenizer.pad_token_id)
    assert got["kl_to_base"] == pytest.approx(0.0, abs=1e-9)
    assert got["top1_agreement"] == 1.0
    assert got["nll"] == pytest.approx(got["base_nll"], rel=1e-12)
    assert 0 < got["entropy"] <= math.log(model.config.vocab_size) + 1e-9


def test_modes_restored_and_empty_rows_refused(models):
    model, base, tokenizer = models
    model.train()
    try:
        model_drift(model, base, _rows(tokenizer), tokenizer.pad_token_id)
        assert model.training and not base.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="at least two tokens"):
        model_drift(model, base, [[1]], tokenizer.pad_token_id)
