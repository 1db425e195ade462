"""dftnb.measure.retention against hand-made models whose scores are known exactly, and one calibration row on the
embedded model (word-shuffled documentation must score clearly worse than the documentation itself)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dftnb.lab import data
from dftnb.measure import evals, metrics
from dftnb.measure.retention import (
    SOLUTION_CORPUS,
    TokenScores,
    paired_retention,
    retention_by_corpus,
    solution_scores,
    solution_summary,
    token_scores,
)

LETTERS = "abcdefghijklmnopqrstuvwxyz"
V = 32  # ids 0..25 are the letters ("a" is id 0, where the uniform model's argmax ties break), 26..31 unused
BIG = 40.0  # a logit this far above the rest holds all the mass in float32: NLL 0 when right, BIG when wrong


class LetterTokenizer:
    """One token per letter (id = its place in the alphabet); everything else, whitespace included, is dropped."""

    pad_token_id = V - 1

    def __call__(self, text, add_special_tokens=False, return_tensors=None):
        ids = [LETTERS.index(c) for c in text if c in LETTERS]
        return SimpleNamespace(input_ids=torch.tensor([ids]) if return_tensors == "pt" else ids)


class BigramModel(torch.nn.Module):
    """Logits ``BIG`` on ``successor[x]`` after token ``x``, all 0 (uniform) after a token with no successor."""

    def __init__(self, successor: dict[str, str] | None = None, context: int = 4096):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # model_device reads the parameters' device
        table = torch.zeros(V, V)
        for x, y in (successor or {}).items():
            table[LETTERS.index(x), LETTERS.index(y)] = BIG
        self.register_buffer("table", table)
        self.config = SimpleNamespace(max_position_embeddings=context)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def chain(letters: str) -> dict[str, str]:
    """Each letter's successor is the next one, the last one's the first (a cycle)."""
    return {x: letters[(i + 1) % len(letters)] for i, x in enumerate(letters)}


TOK = LetterTokenizer()
CYCLE = "abcdefghij"
A = CYCLE * 99  # 990 tokens the bigram model predicts perfectly
B = "klmnopqrst"  # 10 tokens it knows nothing about (uniform after each of them)
LOG_V = math.log(V)


@pytest.mark.parametrize("window,stride", [(64, 32), (4096, 4096), (7, 3)])
def test_bigram_model_predicts_its_own_text_perfectly(window, stride):
    s = token_scores(BigramModel(chain(CYCLE)), TOK, [A], window=window, stride=stride)
    assert s.tokens == len(A) - 1  # every token but the first, once, whatever the windows
    assert s.top1_rate == 1.0 and s.nll.max() == pytest.approx(0.0, abs=1e-6)
    assert s.nll.dtype == np.float64 and s.top1.dtype == bool


def test_uniform_model_gives_log_v_and_ties_to_the_lowest_id():
    s = token_scores(BigramModel(), TOK, ["bca" * 50], window=16, stride=8)
    assert s.tokens == 149 and s.nll == pytest.approx(np.full(149, LOG_V), rel=1e-6)
    # all logits tie; argmax takes id 0 ("a"): a hit exactly where the next token is "a", 50 of the 149 targets
    assert s.top1_rate == pytest.approx(50 / 149) and s.top1.sum() == 50


def test_scores_are_pooled_over_a_corpus_tokens_never_averaged_with_equal_weight():
    model = BigramModel(chain(CYCLE))
    df, scores = retention_by_corpus(model, TOK, {"big": [B, A], "small": [B]}, window=64, stride=32)
    assert list(df.corpus) == ["big", "small"]  # one row per corpus, no macro row
    big, small = df.set_index("corpus").loc["big"], df.set_index("corpus").loc["small"]
    # stream B + A: B's 9 scored tokens and A's first (after "t") are uniform guesses, A's other 989 certain.
    # The uniform guess of that first "a" is a hit (ties go to id 0 = "a"); B's tokens are misses.
    assert big.tokens == 999 and scores["big"].tokens == 999
    assert big.nll == pytest.approx(10 * LOG_V / 999, rel=1e-6)
    assert big.perplexity == pytest.approx(math.exp(10 * LOG_V / 999), rel=1e-6)
    assert big.top1 == pytest.approx(990 / 999)
    per_text = [token_scores(model, TOK, [t], window=64, stride=32).mean_nll for t in (B, A)]
    assert np.mean(per_text) == pytest.approx(LOG_V / 2, rel=1e-3)  # the equal-weight answer is 50 times larger
    assert abs(big.nll - np.mean(per_text)) > 1.0
    assert small.tokens == 9 and small.nll == pytest.approx(LOG_V, rel=1e-6) and small.top1 == 0.0
    assert not np.isclose(df.nll.mean(), (10 * LOG_V + 9 * LOG_V) / (999 + 9))  # the table holds no pooled mixture


def test_token_scores_match_perplexity_and_a_brute_force_top1(tiny):
    model, tok = tiny
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings."
    s = token_scores(model, tok, [text], window=64, stride=32)
    assert s.perplexity == pytest.approx(metrics.perplexity(model, tok, [text], window=64, stride=32), rel=1e-9)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    assert s.top1.tolist() == (logits.argmax(-1) == ids[0, 1:]).tolist()


# ----------------------------------------------------------------------------------------------------- solutions
def problem(task_id: str, prompt: str, solution: str) -> dict:
    return {"task_id": task_id, "prompt": prompt, "canonical_solution": solution}


def test_solution_scorer_scores_exactly_the_solution_tokens():
    model = BigramModel(chain(LETTERS))
    problems = [
        problem("follows", "abc def", "ghij klm"),  # the solution continues the chain: 7 certain tokens
        problem("breaks", "abcdef", "zzz"),  # "f" predicts "g", "z" predicts "a": three confident misses
        problem("prompt-would-miss", "zzzzz", "abc"),  # scoring the prompt's z after z would add misses
    ]
    df = solution_scores(model, TOK, problems, batch_size=2)
    assert list(df.task_id) == ["follows", "breaks", "prompt-would-miss"]
    assert list(df.tokens) == [7, 3, 3] and list(df.prompt_tokens) == [6, 6, 5]
    assert list(df.top1_hits) == [7, 0, 3]
    assert df.nll_sum.tolist() == pytest.approx([0.0, 3 * BIG, 0.0], abs=1e-4)
    pooled = solution_summary(df)
    assert pooled["tokens"] == 13 and pooled["nll"] == pytest.approx(3 * BIG / 13, rel=1e-6)
    assert pooled["top1"] == pytest.approx(10 / 13)  # a ratio of sums, not the mean of 1, 0, 1


def test_solution_scorer_cuts_long_prompts_from_the_left_and_refuses_oversized_solutions():
    model = BigramModel(chain(LETTERS), context=8)
    df = solution_scores(model, TOK, [problem("long", "zzzzzzzzzzzzzzzzzzzb", "cdefg")])
    assert df.prompt_tokens[0] == 3 and df.tokens[0] == 5 and df.top1_hits[0] == 5  # "zzb" kept, "b" -> "c"
    with pytest.raises(ValueError, match="longer context"):
        solution_scores(model, TOK, [problem("huge", "a", "bcdefghi")])
    with pytest.raises(ValueError, match="at least one token"):
        solution_scores(model, TOK, [problem("empty", "  ", "abc")])


def test_solution_scores_on_humaneval_match_one_unpadded_pass_per_problem(tiny):
    model, tok = tiny
    problems = evals.load_humaneval()[:5]
    batched = solution_scores(model, tok, problems, batch_size=4)
    single = solution_scores(model, tok, problems, batch_size=1)
    assert batched.nll_sum.tolist() == pytest.approx(single.nll_sum.tolist(), rel=1e-4)
    for p, row in zip(problems, batched.itertuples()):
        prompt = tok(p["prompt"], add_special_tokens=False).input_ids
        solution = tok(p["canonical_solution"], add_special_tokens=False).input_ids
        assert row.tokens == len(solution) and row.prompt_tokens == len(prompt)
        ids = torch.tensor([prompt + solution])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        expected = -sum(float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(solution))
        assert row.nll_sum == pytest.approx(expected, rel=1e-4)


# -------------------------------------------------------------------------------------------------------- paired
CORPORA = {"big": [B, A], "other": [A[:300]]}
# prompts "abc", "abcd", "abcde", each solution continuing the alphabet for 2 to 5 letters
PROBLEMS = [problem(f"p{i}", LETTERS[: 3 + i % 3], LETTERS[3 + i % 3 : 5 + i % 3 + i % 4]) for i in range(12)]


def scored(model):
    _, scores = retention_by_corpus(model, TOK, CORPORA, window=64, stride=32)
    return scores, solution_scores(model, TOK, PROBLEMS)


def test_a_model_against_itself_differs_by_exactly_zero():
    scores, solutions = scored(BigramModel(chain(LETTERS)))
    df = paired_retention(scores, scores, solutions, solutions, block=16, n_boot=500)
    assert len(df) == 3 * 3 and set(df.corpus) == {"big", "other", SOLUTION_CORPUS}
    assert set(df.metric) == {"nll", "perplexity", "top1"}
    assert (df.difference == 0).all() and (df.ci_low == 0).all() and (df.ci_high == 0).all()
    assert (df.p_value == 1).all() and (df.a == df.b).all()


def test_a_worse_model_is_worse_with_an_interval_that_excludes_zero():
    good, good_solutions = scored(BigramModel(chain(LETTERS)))
    bad, bad_solutions = scored(BigramModel(chain("abcde")))  # knows half the cycle: uniform after f..j
    df = paired_retention(bad, good, bad_solutions, good_solutions, block=16, n_boot=500).set_index(["corpus", "metric"])
    for corpus in ("big", "other", SOLUTION_CORPUS):
        nll, ppl, top1 = (df.loc[(corpus, m)] for m in ("nll", "perplexity", "top1"))
        assert nll.ci_low > 0 and nll.difference == pytest.approx(nll.a - nll.b)
        assert ppl.ci_low > 0 and ppl.difference == pytest.approx(100 * (ppl.a / ppl.b - 1), rel=1e-6)
        assert top1.ci_high < 0 and top1.difference == pytest.approx(top1.a - top1.b)
        assert nll.p_value < 0.01 and top1.p_value < 0.01
    # each corpus's row is its own tokens' pooled difference (not a mixture of corpora)
    expected = bad["other"].mean_nll - good["other"].mean_nll
    assert df.loc[("other", "nll"), "difference"] == pytest.approx(expected)
    assert df.loc[("other", "nll"), "n"] == bad["other"].tokens and df.loc[("other", "nll"), "units"] == "tokens"
    assert df.loc[(SOLUTION_CORPUS, "nll"), "n"] == len(PROBLEMS)
    pooled = solution_summary(bad_solutions)["nll"] - solution_summary(good_solutions)["nll"]
    assert df.loc[(SOLUTION_CORPUS, "nll"), "difference"] == pytest.approx(pooled)


def test_paired_retention_refuses_mismatched_inputs():
    model = BigramModel(chain(LETTERS))
    scores, solutions = scored(model)
    _, capped = retention_by_corpus(model, TOK, CORPORA, window=64, stride=32, max_tokens=200)
    with pytest.raises(ValueError, match="different corpora.*same texts with the same tokenizer and max_tokens"):
        paired_retention(scores, {"big": scores["big"]})
    with pytest.raises(ValueError, match="same texts with the same tokenizer and max_tokens"):
        paired_retention(scores, capped)
    _, other_windows = retention_by_corpus(model, TOK, CORPORA, window=32, stride=16)
    with pytest.raises(ValueError, match="same windows"):
        paired_retention(scores, other_windows)
    with pytest.raises(ValueError, match="both models"):
        paired_retention(scores, scores, solutions, None)
    with pytest.raises(ValueError, match="same problems"):
        paired_retention(scores, scores, solutions, solutions.iloc[::-1].reset_index(drop=True))
    with pytest.raises(ValueError, match="TokenScores"):
        paired_retention(retention_by_corpus(model, TOK, CORPORA, window=64, stride=32), scores)
    with pytest.raises(ValueError, match="equal length"):
        TokenScores(np.zeros(3), np.zeros(2, dtype=bool))


def test_retention_texts_use_every_split_and_refuse_the_training_corpus():
    assert data.RETENTION_CORPORA == ("techdocs", "dialogue")
    dd = data.load_corpus("dialogue")
    every = data.retention_texts("dialogue")
    assert every == [t for s in ("train", "validation", "test") for t in dd[s]["text"]]
    assert data.retention_texts("dialogue", splits=("test",)) == list(dd["test"]["text"])
    with pytest.raises(ValueError, match="not a retention corpus"):
        data.retention_texts("shakespeare")
    with pytest.raises(ValueError, match="splits"):
        data.retention_texts("dialogue", splits="test")


# ------------------------------------------------------------------------------------------- embedded calibration
@pytest.mark.slow
def test_shuffled_documentation_scores_clearly_worse_on_the_embedded_model(embedded):
    model, tok = embedded
    texts = data.retention_texts("techdocs", splits=("test",))[:40]
    kwargs = dict(window=256, stride=128, max_tokens=1000)
    intact = token_scores(model, tok, texts, **kwargs)
    shuffled = token_scores(model, tok, metrics.shuffle_words(texts, seed=0), **kwargs)
    assert intact.tokens == shuffled.tokens == 999
    assert shuffled.mean_nll > intact.mean_nll + 1.0  # nats/token
    assert intact.top1_rate > shuffled.top1_rate + 0.15
