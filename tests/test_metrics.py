"""dftnb.metrics against hand computations and brute-force references."""

from __future__ import annotations

import math

import pytest
import torch

from dftnb import metrics
from dftnb.models import tiny_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0, hidden_size=32, num_layers=1)


# --------------------------------------------------------------------------------------------- distinct / self-BLEU
def test_distinct_n_hand_counts():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 unique / 7; bigrams: ab ba ab | ab bc -> {ab, ba, bc} 3 / 5
    assert metrics.distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 5)
    # 4-grams: only "a b a b" has one; the 3-token text has none
    assert metrics.distinct_n(texts, 4) == pytest.approx(1.0)
    assert metrics.distinct_n(["x y z"] * 4, 2) == pytest.approx(2 / 8)


def test_distinct_n_rejects_bad_input():
    with pytest.raises(ValueError, match="longer samples"):
        metrics.distinct_n(["a b"], 3)
    with pytest.raises(ValueError, match="list of texts"):
        metrics.distinct_n("a b c", 1)


def test_self_bleu_extremes_and_hand_value():
    assert metrics.self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)
    assert metrics.self_bleu(["a b c d", "e f g h", "i j k l"]) == pytest.approx(0.0)
    # "a b c d" vs "a b c e": precisions 3/4, 2/3, 1/2, and 0/1 smoothed by 'exp' to (1/2)/1; brevity penalty 1.
    expected = (0.75 * (2 / 3) * 0.5 * 0.5) ** 0.25
    assert metrics.self_bleu(["a b c d", "a b c e"]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        metrics.self_bleu(["only one"])


# --------------------------------------------------------------------------------------------------- perplexity
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings."


def _token_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def test_perplexity_single_window_equals_exp_mean_nll(tiny):
    model, tok = tiny
    ids = _token_ids(tok, TEXT)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    nll = -logp.gather(-1, ids[0, 1:, None]).mean()
    got = metrics.perplexity(model, tok, [TEXT], window=ids.shape[1] + 5, stride=4)
    assert got == pytest.approx(math.exp(float(nll)), rel=1e-5)


@pytest.mark.parametrize("window,stride", [(8, 3), (8, 8), (6, 1)])
def test_perplexity_sliding_equals_brute_force(tiny, window, stride):
    model, tok = tiny
    ids = _token_ids(tok, TEXT)[0]
    n = ids.numel()
    total, count = 0.0, 0
    with torch.no_grad():
        for j in range(1, n):  # token j is scored by the first window that reaches it, if it holds its predecessor
            k = 0
            while min(k * stride + window, n) <= j:
                k += 1
            if k * stride == j:  # only when stride == window: the token opens a window and has no context there
                continue
            ctx = ids[k * stride : j + 1]
            logp = torch.log_softmax(model(ctx[None]).logits[0, -2].double(), -1)
            total -= float(logp[ids[j]])
            count += 1
    assert count == (n - 1 if stride < window else n - 1 - (n - 1) // window)
    expected = math.exp(total / count)
    got = metrics.perplexity(model, tok, [TEXT], window=window, stride=stride, batch_size=2)
    assert got == pytest.approx(expected, rel=1e-5)


def test_perplexity_temperature_and_bad_args(tiny):
    model, tok = tiny
    ids = _token_ids(tok, TEXT)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double() / 2.0, -1)
    nll = -logp.gather(-1, ids[0, 1:, None]).mean()
    got = metrics.perplexity(model, tok, [TEXT], window=64, stride=64, temperature=2.0)
    assert got == pytest.approx(math.exp(float(nll)), rel=1e-5)
    with pytest.raises(ValueError, match="stride"):
        metrics.perplexity(model, tok, [TEXT], window=8, stride=9)
    with pytest.raises(ValueError, match="non-empty"):
        metrics.perplexity(model, tok, ["  "])
