"""dftnb.lab.eval_cache: a cached evaluation equals a fresh one, and any change of setting or weights misses."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from dftnb.lab import eval_cache
from dftnb.lab.benchmark import evaluate_model
from dftnb.lab.models import tiny_model

PROMPTS = ["To be or not", "The weather today"]
SETTINGS = dict(temperatures=[1.0], n_samples=2, max_new_tokens=4, humaneval_problems=0, mmlu_path="/nonexistent",
                ppl_window=16, ppl_stride=8, ppl_max_tokens=32, seed=0)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0, hidden_size=32, num_layers=1)


def test_cached_evaluation_equals_a_fresh_one(tiny, tmp_path):
    model, tokenizer = tiny
    first, hit_first = eval_cache.cached_evaluation("base", model, tokenizer, PROMPTS, root=tmp_path, **SETTINGS)
    again, hit_again = eval_cache.cached_evaluation("base", model, tokenizer, PROMPTS, root=tmp_path, **SETTINGS)
    fresh = evaluate_model("base", model, tokenizer, PROMPTS, **SETTINGS)
    assert (hit_first, hit_again) == (False, True)
    assert len(list((tmp_path / "evaluations").glob("*.pkl"))) == 1
    for got in (first, again):
        assert got.samples == fresh.samples
        pd.testing.assert_frame_equal(got.perplexity, fresh.perplexity, check_exact=False, rtol=1e-6)
        assert got.token_nll.keys() == fresh.token_nll.keys()
        for corpus in fresh.token_nll:
            assert got.token_nll[corpus] == pytest.approx(fresh.token_nll[corpus], rel=1e-6)
        assert got.mmlu_note == fresh.mmlu_note


def test_a_changed_setting_or_weight_misses_the_cache(tiny, tmp_path):
    model, tokenizer = tiny
    calls = []

    def evaluate(name, model, tokenizer, prompts, **settings):
        calls.append(settings)
        return {"name": name, "settings": settings}

    def run(**changes):
        return eval_cache.cached_evaluation("base", model, tokenizer, PROMPTS, root=tmp_path, evaluate=evaluate,
                                            **{**SETTINGS, **changes})[1]

    assert run() is False
    assert run() is True
    assert run(max_new_tokens=5) is False  # a setting
    assert run(seed=1) is False
    assert eval_cache.cached_evaluation("SFT", model, tokenizer, PROMPTS, root=tmp_path, evaluate=evaluate,
                                        **SETTINGS)[1] is False  # another row label
    assert eval_cache.cached_evaluation("base", model, tokenizer, PROMPTS[:1], root=tmp_path, evaluate=evaluate,
                                        **SETTINGS)[1] is False  # other prompts
    with torch.no_grad():
        other = tiny_model(seed=1, hidden_size=32, num_layers=1)[0]
    assert eval_cache.cached_evaluation("base", other, tokenizer, PROMPTS, root=tmp_path, evaluate=evaluate,
                                        **SETTINGS)[1] is False  # other weights
    assert len(calls) == 6


def test_chapter_settings_follow_the_profile():
    temps = eval_cache.calibration_temperatures("smoke", 1.0)
    assert temps == sorted(temps) and 1.0 in temps
    base = eval_cache.chapter_settings("smoke", temps, base=True)
    run = eval_cache.chapter_settings("smoke", temps, base=False)
    assert base["temperatures"] == temps and run["temperatures"] != temps
    assert eval_cache.chapter_settings("default", temps, True)["n_samples"] > base["n_samples"]


def test_code_hash_changes_with_the_source(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    before = eval_cache.code_hash(("pkg", "b.py"), root=tmp_path)
    assert eval_cache.code_hash(("pkg", "b.py"), root=tmp_path) == before
    (tmp_path / "pkg" / "a.py").write_text("x = 3\n")
    assert eval_cache.code_hash(("pkg", "b.py"), root=tmp_path) != before
    assert len(eval_cache.code_hash()) == 16  # the package's own files exist
