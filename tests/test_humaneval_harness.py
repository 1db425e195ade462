"""The HumanEval harness: prompts per style, extraction of the code from chat-model output, and pass@k on it."""

import pytest

from dftnb.measure import humaneval as he


@pytest.fixture(scope="module")
def problems():
    return he.load_humaneval()


@pytest.fixture(scope="module")
def p0(problems):
    return problems[0]  # has_close_elements(numbers, threshold)


def full_def(problem, body):
    """The problem's function written out again from ``def``, as a chat model restarts it."""
    return f"def {problem['entry_point']}(numbers, threshold):\n{body}"


BODY = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1 :])\n"
WRONG = "    return False\n"


# ----------------------------------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("style", ["chat", "completion"])
def test_body_is_cut_at_a_new_top_level_statement(p0, style):
    ext = he.extract_completion(p0, BODY + "\n\nprint(has_close_elements([1.0], 0.5))\n", style)
    assert ext.kind == "body" and ext.completion == BODY + "\n"  # cut where "\nprint" starts
    assert ext.program == p0["prompt"] + ext.completion


def test_chat_code_ends_at_the_closing_fence(p0):
    ext = he.extract_completion(p0, BODY + "```\n\nThe function compares every pair.\n```python\nx = 1\n```", "chat")
    assert ext.kind == "body" and ext.completion == BODY


@pytest.mark.parametrize("style", ["chat", "completion"])
def test_restarted_def_keeps_imports_and_helpers_and_drops_calls(p0, style):
    text = ("import math\n\n\ndef helper(x):\n    return abs(x)\n\n\n" + full_def(p0, BODY)
            + "\n\nif __name__ == '__main__':\n    print(has_close_elements([1.0, 2.0], 0.5))\n")
    ext = he.extract_completion(p0, text, style)
    assert ext.kind == "restarted_def"
    assert "import math" in ext.completion and "def helper(x):" in ext.completion
    assert "__main__" not in ext.completion and "print(" not in ext.completion
    assert ext.program.startswith(p0["prompt"]) and ext.program.count("def has_close_elements(") == 2


def test_a_helper_cut_off_after_the_restart_is_dropped(p0):
    cut = full_def(p0, BODY) + "\n\ndef has_close_elements_fast(numbers, threshold):\n    if len(numbers) > 10000"
    ext = he.extract_completion(p0, cut, "chat")
    assert ext.kind == "restarted_def" and "_fast" not in ext.completion and BODY in ext.completion
    cut_entry = "def helper(x):\n    return x\n\n" + full_def(p0, "    return sorted(numbers\n")
    assert he.extract_completion(p0, cut_entry, "chat").kind == "unparsable"  # the answer itself is cut: no repair


def test_chat_body_followed_by_a_restart_takes_the_restart(p0):
    ext = he.extract_completion(p0, WRONG + "\n\n" + full_def(p0, BODY) + "```", "chat")
    assert ext.kind == "restarted_def" and WRONG not in ext.completion and BODY in ext.completion


@pytest.mark.parametrize("style", ["chat", "completion"])
def test_definition_inside_a_python_block(p0, style):
    text = "\n```\nHere is the completed function:\n```python\nimport math\n" + full_def(p0, BODY) + "```\nDone."
    ext = he.extract_completion(p0, text, style)
    assert ext.kind == "code_block" and "import math" in ext.completion and BODY in ext.completion
    # a tagged fence opens a block even where a bare one would close the pre-filled block
    ext = he.extract_completion(p0, "```python\n" + full_def(p0, BODY) + "```", "chat")
    assert ext.kind == "code_block"


@pytest.mark.parametrize("text", ["", "\n", "   \n\n", "```", "\n```\nThis function checks the pairs.", "\ndef g():\n"])
def test_empty(p0, text):
    assert he.extract_completion(p0, text, "chat").kind == "empty"


@pytest.mark.parametrize(
    "text",
    ["    return sorted(numbers\n", "Here is the code:\n    return True\n", "    for x in numbers:\n",
     "def has_close_elements(numbers, threshold):\n    for i in range(len(numbers)):\n"],
)
def test_unparsable(p0, text):
    ext = he.extract_completion(p0, text, "chat")
    assert ext.kind == "unparsable" and ext.completion.strip()


def test_unknown_prompt_style_is_rejected(p0):
    with pytest.raises(ValueError, match="chat"):
        he.extract_completion(p0, BODY, "instruct")


def test_code_blocks():
    assert he.code_blocks("a\n```python\nx = 1\n```\nb\n```\ny\n") == ["x = 1\n", "y\n"]
    assert he.code_blocks("x = 1\n```\nb") == ["b"]  # an opened block runs to the end
    assert he.code_blocks("x = 1\n```\nb", inside=True) == ["x = 1\n"]
    assert he.code_blocks("x\n```py\ny\n```", inside=True) == ["x\n", "y\n"]


# ------------------------------------------------------------------------------------------------ in the sandbox
def test_restarted_canonical_solution_passes_and_a_wrong_one_fails(p0):
    from dftnb.measure.sandbox import run_program

    right = he.extract_completion(p0, full_def(p0, p0["canonical_solution"]) + "```", "chat")
    wrong = he.extract_completion(p0, full_def(p0, WRONG) + "```", "chat")
    assert right.kind == wrong.kind == "restarted_def"
    assert run_program(he.humaneval_program(p0, right.completion), timeout=5.0).passed
    res = run_program(he.humaneval_program(p0, wrong.completion), timeout=5.0)
    assert not res.passed and "AssertionError" in res.reason


# ---------------------------------------------------------------------------------------------------- prompting
def test_chat_prompt_opens_a_python_block(tiny, p0):
    _, tok = tiny
    text = he.humaneval_prompt(p0, tok, "chat")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n```python\n")
    assert text.count(p0["prompt"].rstrip()) == 1 and "<|im_start|>user\n" in text
    prefilled = he.humaneval_prompt(p0, tok, "chat", prefill_prompt=True)
    assert prefilled == text + p0["prompt"]
    assert he.humaneval_prompt(p0, tok, "completion") == p0["prompt"]
    assert he.stop_sequences(tok, "chat") == ("```", "<|im_end|>")
    assert he.stop_sequences(tok, "completion") == he.HUMANEVAL_STOP
    assert he.resolve_prompt_style("auto", tok) == "chat" and he.resolve_prompt_style("auto", None) == "completion"


def test_chat_without_a_template_names_the_completion_style(tiny, p0):
    import copy

    tok = copy.copy(tiny[1])
    tok.chat_template = None
    with pytest.raises(ValueError, match="prompt_style='completion'"):
        he.humaneval_prompt(p0, tok, "chat")
    with pytest.raises(ValueError, match="prompt_style='completion'"):
        he.humaneval(None, tok, [p0], prompt_style="chat")


# ------------------------------------------------------------------------------------------------------ harness
def test_humaneval_reports_kinds_with_a_fixed_generator(monkeypatch, problems):
    probs = problems[:4]
    greedy = {  # right restart, wrong body, empty, unparsable
        0: full_def(probs[0], probs[0]["canonical_solution"]) + "```",
        1: "    return []\n```",
        2: "```",
        3: "    return round(number\n",
    }
    sampled = [[BODY + "```", "```"], ["```"] * 2, ["```"] * 2, ["```"] * 2]
    seen = {}

    def fake(model, tokenizer, prompts, n=1, temperature=None, max_new_tokens=128, batch_size=4, seed=0,
             stop=None, finished=None):
        seen[temperature] = (list(prompts), stop)
        if finished is not None:
            finished.extend([[i != 3] for i in range(len(prompts))])
        return [[greedy[i]] for i in range(len(prompts))] if temperature is None else sampled

    monkeypatch.setattr(he, "generate_completions", fake)
    tok = type("Tok", (), {"chat_template": "{{ x }}", "eos_token": "<|im_end|>",
                           "apply_chat_template": lambda self, msgs, **kw: "<user>" + msgs[0]["content"] + "<bot>"})()
    res = he.humaneval(None, tok, probs, n_samples=2, k=(1, 2), temperature=0.8, timeout=2.0)
    assert res.prompt_style == "chat" and seen[None][1] == ("```", "<|im_end|>")
    assert all(p.endswith("<bot>```python\n") and q["prompt"] in p for p, q in zip(seen[None][0], probs))
    assert [r["kind"] for r in res.per_problem] == ["restarted_def", "body", "empty", "unparsable"]
    assert [r["passed"] for r in res.per_problem] == [True, False, False, False]
    assert res.kinds == {"restarted_def": 1, "body": 1, "empty": 1, "unparsable": 1}
    assert res.empty_share == res.unparsable_share == 0.25 and res.pass_at_1_greedy == 0.25
    assert res.n_hit_limit == 1 and res.per_problem[3]["hit_limit"]
    assert [r["n_correct"] for r in res.per_problem] == [1, 0, 0, 0]
    assert res.per_problem[0]["sample_kinds"] == ["body", "empty"]
    assert res.pass_at_k == {1: pytest.approx(0.5 / 4), 2: pytest.approx(1 / 4)}
    assert {"task_id", "passed", "reason", "completion", "kind"} <= set(res.per_problem[0])
    with pytest.raises(ValueError, match="n_samples"):
        he.humaneval(None, tok, probs, n_samples=5, k=(10,))


def test_result_loaded_without_kinds_still_builds():
    res = he.HumanEvalResult(pass_at_1_greedy=0.0, pass_at_k={}, n_problems=1, n_samples=1,
                             per_problem=[{"task_id": "t", "passed": False}])
    assert res.kinds == {} and res.n_hit_limit == 0 and res.empty_share != res.empty_share  # NaN


@pytest.mark.parametrize("style", ["chat", "completion"])
def test_tiny_model_end_to_end(tiny, problems, style):
    model, tok = tiny
    res = he.humaneval(model, tok, problems, limit=2, max_new_tokens=5, timeout=2.0, prompt_style=style)
    assert res.prompt_style == style and res.n_problems == 2 and sum(res.kinds.values()) == 2
    prompts = [he.humaneval_prompt(p, tok, style) for p in problems[:2]]
    raw = he.generate_completions(model, tok, prompts, max_new_tokens=5, stop=he.stop_sequences(tok, style))
    for row, g, p in zip(res.per_problem, raw, problems):
        ext = he.extract_completion(p, g[0], style)
        assert (row["generated"], row["kind"], row["completion"]) == (g[0], ext.kind, ext.completion)
        assert isinstance(row["reason"], str) and row["reason"] and isinstance(row["hit_limit"], bool)
    assert res.pass_at_1_greedy == sum(r["passed"] for r in res.per_problem) / 2


def test_stop_on_substrings_records_finished_rows(tiny):
    import torch

    _, tok = tiny
    prompt = tok("def f():\n", add_special_tokens=False).input_ids
    fence = tok("    return 1\n```", add_special_tokens=False).input_ids
    eos = tok("    return 1", add_special_tokens=False).input_ids + [tok.eos_token_id]
    busy = tok("    return 1\n    x = [2, 3, 4]", add_special_tokens=False).input_ids
    width = len(busy)  # the longest: padding is the eos token
    assert width > max(len(fence), len(eos))
    rows = [prompt + r + [tok.pad_token_id] * (width - len(r)) for r in (fence, eos, busy)]
    stop = he.StopOnSubstrings(tok, len(prompt), he.stop_sequences(tok, "chat"), tok.eos_token_id)
    assert stop(torch.tensor(rows), None).tolist() == [True, False, False]  # eos: generate stops the row itself
    assert stop.finished.tolist() == [True, True, False]
