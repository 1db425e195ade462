"""Target statistics (:mod:`dftnb.target_statistics`) against a float64 dense reference written from the formulas, and
the known cases: a model's own full-vocabulary targets sit at KL 0 with its own entropy."""

import math

import pytest
import torch

from dftnb.target_statistics import target_statistics

TEXTS = ["To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer",
         "Now is the winter of our discontent made glorious summer by this sun of York;",
         "Shall I compare thee to a summer's day? Thou art more lovely and more temperate."]


@pytest.fixture(scope="module")
def models():
    from dftnb.lab.models import tiny_model

    student, tokenizer = tiny_model(seed=0)
    teacher, _ = tiny_model(seed=1, tokenizer=tokenizer)
    with torch.no_grad():  # a random model is nearly uniform: sharpen the teacher so the two differ clearly
        teacher.get_output_embeddings().weight.mul_(30.0)
    return student.eval(), teacher.eval(), tokenizer


def _reference(student, rows, k):
    """Token means of bucket-KL, uniform-tail entropy, tail mass and -log q(y), from dense float64 tensors."""
    sums, n = dict(kl=0.0, entropy=0.0, r=0.0, nll=0.0, h_p=0.0, nll_p=0.0), 0
    for row in rows:
        ids = torch.tensor(row["input_ids"])[None]
        with torch.no_grad():
            logp = torch.log_softmax(student(ids).logits[0, :-1].double(), -1)
        V = logp.shape[-1]
        for t in range(ids.shape[1] - 1):
            y = int(row["input_ids"][t + 1])
            sup = torch.tensor(row["target_ids"][t]).long()
            q = torch.tensor(row["target_logprobs"][t]).double().exp()
            r = max(1.0 - float(q.sum()), 1e-12) if row.get("target_tail_mass") is None else max(
                float(row["target_tail_mass"][t]), 1e-12)
            p = logp[t].exp()
            p_s = p[sup]
            sums["kl"] += float((q * (q.log() - p_s.log())).sum() + r * math.log(r / (1 - float(p_s.sum()))))
            sums["entropy"] += float(-(q * q.log()).sum() - r * math.log(r / (V - k)))
            sums["r"] += r
            hit = (sup == y).nonzero()
            sums["nll"] += -float(q[hit[0, 0]].log()) if len(hit) else -math.log(r / (V - k))
            sums["h_p"] += float(-(p * logp[t]).sum())
            sums["nll_p"] += -float(logp[t, y])
            n += 1
    return {key: v / n for key, v in sums.items()}, n


def test_matches_a_float64_dense_reference(models):
    from dftnb.targets import from_reference_model

    student, teacher, tokenizer = models
    k = 8
    targets = from_reference_model(teacher, tokenizer, TEXTS, k=k, max_length=24)
    got = target_statistics(student, {"teacher": targets}, tokenizer.pad_token_id, batch_size=2).loc["teacher"]
    want, n = _reference(student, [targets[i] for i in range(len(targets))], k)
    assert got["tokens"] == n
    for col, key in (("kl_to_model", "kl"), ("entropy", "entropy"), ("tail_mass", "r"), ("nll_next", "nll"),
                     ("model_entropy", "h_p"), ("model_nll_next", "nll_p")):
        assert got[col] == pytest.approx(want[key], rel=1e-5, abs=1e-6), col
    assert got["kl_to_model"] > 0.1  # two random models: the check can fail


def test_own_full_vocabulary_targets_are_at_kl_zero_with_the_models_entropy(models):
    from dftnb.targets import from_reference_model

    student, _, tokenizer = models
    V = student.get_output_embeddings().weight.shape[0]
    own = from_reference_model(student, tokenizer, TEXTS[:2], k=V, max_length=12)
    row = target_statistics(student, {"own": own}, tokenizer.pad_token_id).loc["own"]
    assert row["kl_to_model"] == pytest.approx(0.0, abs=1e-5)
    assert row["entropy"] == pytest.approx(row["model_entropy"], rel=1e-5)
    # targets store log-probabilities in float16: half an ulp at |log q| ~ 10 is 0.004
    assert row["nll_next"] == pytest.approx(row["model_nll_next"], abs=4e-3)


def test_hotter_target_has_more_entropy_and_one_pass_serves_several_sets(models):
    from dftnb.targets import from_reference_model

    student, teacher, tokenizer = models
    sets = {f"T={t}": from_reference_model(teacher, tokenizer, TEXTS, k=16, max_length=24, temperature=t)
            for t in (0.5, 1.0, 2.0)}
    table = target_statistics(student, sets, tokenizer.pad_token_id)
    assert list(table.index) == list(sets)
    assert table.loc["T=0.5", "entropy"] < table.loc["T=1.0", "entropy"] < table.loc["T=2.0", "entropy"]
    assert table["model_entropy"].nunique() == 1  # the same model on the same rows


def test_sets_on_different_rows_are_refused(models):
    from dftnb.targets import from_reference_model

    student, teacher, tokenizer = models
    a = from_reference_model(teacher, tokenizer, TEXTS[:2], k=4, max_length=12)
    b = from_reference_model(teacher, tokenizer, TEXTS[1:], k=4, max_length=12)
    with pytest.raises(ValueError, match="same rows"):
        target_statistics(student, {"a": a, "b": b}, tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="at least one"):
        target_statistics(student, {}, tokenizer.pad_token_id)
