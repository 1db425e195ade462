"""Samplers of dftnb.sampling against float64 numpy references, and inside generate() on the tiny model."""

import math

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from dftnb.lab.experiments import diversity_quality, temperature_grid
from dftnb.lab.models import generate
from dftnb.sampling import (
    DynamicTemperatureLogitsProcessor,
    EDTLogitsProcessor,
    MirostatV2LogitsProcessor,
    TargetEntropyLogitsProcessor,
    TopNSigmaLogitsProcessor,
    sampler_kwargs,
)


def np_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z[np.isfinite(z)].max()
    e = np.where(np.isfinite(z), np.exp(np.where(np.isfinite(z), z, 0.0)), 0.0)
    return e / e.sum()


def np_entropy(z: np.ndarray) -> float:
    p = np_softmax(z)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


@pytest.fixture
def known_logits() -> torch.Tensor:
    """Rows of very different entropy; row 2 has filtered (-inf) tokens, row 3 a single candidate."""
    probs = [
        [0.97, 0.01, 0.01, 0.005, 0.005, 0.0],
        [0.2, 0.2, 0.2, 0.2, 0.1, 0.1],
        [0.5, 0.3, 0.2, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    with np.errstate(divide="ignore"):
        logprobs = np.log(np.array(probs))
    return torch.tensor(logprobs, dtype=torch.float32) + 3.0  # shift: logits, not logprobs


def test_dynatemp_matches_formula(known_logits):
    t_min, t_max, gamma = 0.4, 2.5, 1.7
    out = DynamicTemperatureLogitsProcessor(t_min, t_max, gamma)(None, known_logits.clone())
    for row, z in enumerate(known_logits.double().numpy()):
        n = int(np.isfinite(z).sum())
        t = t_min if n <= 1 else t_min + (t_max - t_min) * (np_entropy(z) / math.log(n)) ** gamma
        expected = z / t
        finite = np.isfinite(expected)
        np.testing.assert_allclose(out[row].numpy()[finite], expected[finite], rtol=1e-5, atol=1e-5)
        assert np.all(np.isneginf(out[row].numpy()[~finite]))


def test_dynatemp_temperature_spans_range(known_logits):
    proc = DynamicTemperatureLogitsProcessor(0.5, 1.5, 1.0)
    uniform = torch.zeros(1, 10)
    point = torch.tensor([[10.0] + [-float("inf")] * 9])
    assert float(proc.temperature(uniform)[0]) == pytest.approx(1.5, abs=1e-6)  # H = log N
    assert float(proc.temperature(point)[0]) == pytest.approx(0.5, abs=1e-6)  # N = 1


def test_edt_matches_formula(known_logits):
    t0, theta, base = 1.3, 0.6, 0.8
    out = EDTLogitsProcessor(temperature0=t0, theta=theta, base=base)(None, known_logits[:3].clone())
    for row, z in enumerate(known_logits[:3].double().numpy()):
        t = t0 * base ** (theta / np_entropy(z))
        finite = np.isfinite(z)
        np.testing.assert_allclose(out[row].numpy()[finite], (z / t)[finite], rtol=1e-5, atol=1e-5)


def test_edt_zero_entropy_is_floored(known_logits):
    proc = EDTLogitsProcessor(temperature0=1.0, theta=1.0, min_temperature=0.05)
    out = proc(None, known_logits[3:].clone())
    assert float(proc.last_temperature[0]) == pytest.approx(0.05)
    assert torch.isfinite(out[0, 0])


@pytest.mark.parametrize("n", [0.0, 0.5, 1.0, 2.5])
def test_top_nsigma_keeps_exact_set(n):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 200, generator=gen) * torch.tensor([[1.0], [3.0], [0.3]])
    logits[2, :50] = -float("inf")  # already filtered by an earlier processor
    out = TopNSigmaLogitsProcessor(n)(None, logits.clone())
    for row, z in enumerate(logits.double().numpy()):
        finite = z[np.isfinite(z)]
        threshold = finite.max() - n * finite.std(ddof=0)
        expected_kept = set(np.flatnonzero(np.isfinite(z) & (z >= threshold)).tolist())
        kept = set(torch.nonzero(torch.isfinite(out[row])).flatten().tolist())
        assert kept == expected_kept
        assert torch.equal(out[row][list(kept)], logits[row][list(kept)])  # kept logits untouched


def _np_mirostat_step(z: np.ndarray, mu: float) -> np.ndarray:
    """Truncated, renormalised distribution of one mirostat v2 step (float64)."""
    p = np_softmax(z)
    surprise = -np.log2(p)
    keep = surprise <= mu
    keep[np.argmax(p)] = True
    q = np.where(keep, p, 0.0)
    return q / q.sum()


def test_mirostat_mu_update_on_a_sequence():
    tau, eta = 3.0, 0.5
    gen = torch.Generator().manual_seed(3)
    steps = [torch.randn(2, 40, generator=gen) * 2.0 for _ in range(5)]
    chosen = [[0, 1], [5, 2], [7, 7], [1, 0], [3, 9]]
    proc = MirostatV2LogitsProcessor(tau=tau, eta=eta)
    ids = torch.tensor([[11, 12], [13, 14]])
    mu = np.full(2, 2 * tau)
    for step, scores in enumerate(steps):
        out = proc(ids, scores.clone())
        np.testing.assert_allclose(proc.mu.numpy(), mu, rtol=1e-5)
        for row in range(2):
            q = _np_mirostat_step(scores[row].double().numpy(), mu[row])
            assert set(np.flatnonzero(q > 0)) == set(torch.nonzero(torch.isfinite(out[row])).flatten().tolist())
        # the token "sampled" this step: the most likely kept one shifted by a fixed choice among kept tokens
        picks = []
        for row in range(2):
            q = _np_mirostat_step(scores[row].double().numpy(), mu[row])
            kept = np.flatnonzero(q > 0)
            token = int(kept[chosen[step][row] % len(kept)])
            picks.append(token)
            mu[row] = mu[row] - eta * (-np.log2(q[token]) - tau)
        ids = torch.cat([ids, torch.tensor(picks).unsqueeze(-1)], dim=1)
    proc(ids, steps[0].clone())  # the last update happens when the next step's logits arrive
    np.testing.assert_allclose(proc.mu.numpy(), mu, rtol=1e-5)
    assert len(proc.mu_history) == 6


def test_mirostat_resets_on_a_new_prompt():
    proc = MirostatV2LogitsProcessor(tau=2.0, eta=1.0)
    scores = torch.randn(1, 30, generator=torch.Generator().manual_seed(0))
    top = int(scores.argmax())  # always kept, so its surprise updates mu
    proc(torch.tensor([[1, 2]]), scores)
    proc(torch.tensor([[1, 2, top]]), scores)
    assert float(proc.mu[0]) != pytest.approx(4.0)
    proc(torch.tensor([[5, 6, 7, 8]]), scores)  # not an extension of [1, 2, top]
    assert float(proc.mu[0]) == pytest.approx(4.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_target_entropy_hits_target(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 3000, generator=gen) * torch.tensor([[0.5], [1.0], [2.0], [4.0], [8.0], [3.0]])
    logits[5, 1000:] = -float("inf")
    t_lo, t_hi = 0.01, 100.0
    for target in (0.3, 1.5, 4.0, 6.5):
        proc = TargetEntropyLogitsProcessor(target, min_temperature=t_lo, max_temperature=t_hi)
        out = proc(None, logits.clone())
        for row in range(logits.shape[0]):
            z = logits[row].double().numpy()
            reachable = np_entropy(z / t_lo) - 1e-3 <= target <= np_entropy(z / t_hi) + 1e-3
            assert bool(proc.last_reached[row]) == reachable
            t = float(proc.last_temperature[row])
            if reachable:
                assert abs(np_entropy(out[row].double().numpy()) - target) <= 1e-3
                assert abs(np_entropy(z / t) - target) <= 1e-3
            else:  # too peaked to get that low within [t_lo, t_hi]: the coldest allowed temperature
                assert t == pytest.approx(t_lo, rel=1e-6)
        assert int(proc.last_reached.sum()) >= 5


def test_target_entropy_warm_start_within_a_generation():
    gen = torch.Generator().manual_seed(5)
    proc = TargetEntropyLogitsProcessor(2.0)
    ids = torch.tensor([[1, 2, 3]])
    for step in range(4):
        logits = torch.randn(1, 500, generator=gen) * (2.0 + 0.1 * step)
        out = proc(ids, logits.clone())
        assert abs(np_entropy(out[0].double().numpy()) - 2.0) <= 1e-3
        ids = torch.cat([ids, torch.tensor([[7]])], dim=1)


def test_target_entropy_unreachable_clamps_or_raises():
    logits = torch.randn(2, 100, generator=torch.Generator().manual_seed(0)) * 3
    too_high = math.log(100) + 0.5  # no temperature reaches more than log N
    proc = TargetEntropyLogitsProcessor(too_high, min_temperature=0.1, max_temperature=5.0)
    out = proc(None, logits.clone())
    assert not bool(proc.last_reached.any())
    assert proc.unreachable_steps == 2
    np.testing.assert_allclose(proc.last_temperature.numpy(), 5.0, rtol=1e-6)
    torch.testing.assert_close(out, logits / 5.0)
    too_low = TargetEntropyLogitsProcessor(0.0, min_temperature=50.0, max_temperature=60.0)
    too_low(None, logits.clone())
    np.testing.assert_allclose(too_low.last_temperature.numpy(), 50.0, rtol=1e-6)
    strict = TargetEntropyLogitsProcessor(too_high, on_unreachable="raise")
    with pytest.raises(RuntimeError, match="widen"):
        strict(None, logits.clone())


@pytest.mark.parametrize(
    "make",
    [
        lambda: MirostatV2LogitsProcessor(tau=0.0),
        lambda: MirostatV2LogitsProcessor(tau=-1.0),
        lambda: MirostatV2LogitsProcessor(eta=0.0),
        lambda: DynamicTemperatureLogitsProcessor(2.0, 1.0),
        lambda: DynamicTemperatureLogitsProcessor(0.0, 1.0),
        lambda: DynamicTemperatureLogitsProcessor(0.5, 1.0, exponent=0.0),
        lambda: EDTLogitsProcessor(temperature0=0.0),
        lambda: EDTLogitsProcessor(base=1.2),
        lambda: EDTLogitsProcessor(theta=-1.0),
        lambda: TopNSigmaLogitsProcessor(-0.5),
        lambda: TargetEntropyLogitsProcessor(-1.0),
        lambda: TargetEntropyLogitsProcessor(2.0, min_temperature=2.0, max_temperature=1.0),
        lambda: TargetEntropyLogitsProcessor(2.0, on_unreachable="ignore"),
        lambda: sampler_kwargs("min_p", min_p=1.5),
        lambda: sampler_kwargs("min_p", min_p=-0.1),
        lambda: sampler_kwargs("top_p", top_p=0.0),
        lambda: sampler_kwargs("temperature", temperature=0.0),
        lambda: sampler_kwargs("mirostat", tau=0.0),
        lambda: sampler_kwargs("dynatemp", min_temperature=0.5, max_temperature=1.5, temperature=0.7),
        lambda: sampler_kwargs("dynatemp", max_temperature=1.5),
        lambda: sampler_kwargs("beam"),
        lambda: sampler_kwargs("edt", tau=1.0),
    ],
)
def test_invalid_parameters_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_nan_logits_are_refused():
    scores = torch.tensor([[0.0, float("nan"), 1.0]])
    for proc in (DynamicTemperatureLogitsProcessor(0.5, 1.0), TopNSigmaLogitsProcessor(1.0), EDTLogitsProcessor()):
        with pytest.raises(ValueError, match="NaN"):
            proc(None, scores)


def test_sampler_kwargs_shapes():
    assert sampler_kwargs("temperature", temperature=0.7) == {"do_sample": True, "top_k": 0, "top_p": 1.0,
                                                               "temperature": 0.7}
    assert sampler_kwargs("min_p", min_p=0.1, temperature=2.0)["min_p"] == 0.1
    kw = sampler_kwargs("top_nsigma", n=1.0, temperature=1.5)
    assert kw["temperature"] == 1.5 and isinstance(kw["logits_processor"][0], TopNSigmaLogitsProcessor)
    kw = sampler_kwargs("dynatemp", min_temperature=0.5, max_temperature=1.5, temperature=1.0)
    assert kw["temperature"] == 1.0 and isinstance(kw["logits_processor"], LogitsProcessorList)
    a, b = sampler_kwargs("mirostat"), sampler_kwargs("mirostat")
    assert a["logits_processor"][0] is not b["logits_processor"][0]  # fresh state per call


@pytest.fixture(scope="module")
def tiny():
    from dftnb.lab.models import tiny_model

    model, tokenizer = tiny_model(seed=0)
    ids = tokenizer(["The quick brown fox", "Once upon a time"], return_tensors="pt").input_ids[:, :4]
    return model, ids


def _sample(model, ids, seed, **kwargs):
    torch.manual_seed(seed)
    return model.generate(ids, max_new_tokens=6, attention_mask=torch.ones_like(ids), **kwargs)


SAMPLER_CASES = [
    ("temperature", dict(temperature=0.8)),
    ("top_p", dict(top_p=0.9)),
    ("min_p", dict(min_p=0.05, temperature=1.5)),
    ("dynatemp", dict(min_temperature=0.3, max_temperature=2.0, exponent=1.0)),
    ("edt", dict(temperature0=1.0, theta=1.0)),
    ("top_nsigma", dict(n=1.0, temperature=1.2)),
    ("mirostat", dict(tau=4.0, eta=0.2)),
    ("target_entropy", dict(target_entropy=2.0)),
]


@pytest.mark.parametrize("name,params", SAMPLER_CASES)
def test_each_sampler_runs_in_generate_and_is_seeded(tiny, name, params):
    model, ids = tiny
    first = _sample(model, ids, 7, **sampler_kwargs(name, **params))
    again = _sample(model, ids, 7, **sampler_kwargs(name, **params))
    assert first.shape == (2, ids.shape[1] + 6)
    assert torch.equal(first, again)
    assert torch.equal(first[:, : ids.shape[1]], ids)


def test_processors_are_called_by_generate(tiny):
    model, ids = tiny
    kw = sampler_kwargs("mirostat", tau=4.0)
    _sample(model, ids, 0, **kw)
    assert len(kw["logits_processor"][0].mu_history) == 6
    kw = sampler_kwargs("target_entropy", target_entropy=2.0)
    _sample(model, ids, 0, **kw)
    assert kw["logits_processor"][0].last_temperature.shape == (2,)


def test_fixed_dynatemp_equals_plain_sampling(tiny):
    model, ids = tiny
    plain = _sample(model, ids, 11, **sampler_kwargs("temperature", temperature=0.7))
    fixed = _sample(model, ids, 11, **sampler_kwargs("dynatemp", min_temperature=0.7, max_temperature=0.7))
    assert torch.equal(plain, fixed)


def test_top_nsigma_zero_is_greedy(tiny):
    model, ids = tiny
    greedy = model.generate(ids, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids))
    assert torch.equal(_sample(model, ids, 3, **sampler_kwargs("top_nsigma", n=0.0)), greedy)


def test_generate_shape_seed_and_batching(tiny):
    model, _ = tiny
    from dftnb.lab.models import load_tokenizer

    tokenizer = load_tokenizer()
    prompts = ["Hello there", "A much longer prompt than the first one"]
    kw = sampler_kwargs("min_p", min_p=0.05, temperature=1.5)
    a = generate(model, tokenizer, prompts, n=3, max_new_tokens=5, seed=4, fixed_length=True, **kw)
    b = generate(model, tokenizer, prompts, n=3, max_new_tokens=5, seed=4, fixed_length=True, **kw)
    assert a == b and len(a) == 2 and all(len(g) == 3 for g in a)
    # left padding: greedy continuations of a padded batch equal those of one prompt at a time
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, do_sample=False)
    alone = generate(model, tokenizer, prompts, max_new_tokens=6, do_sample=False, batch_size=1)
    assert batched == alone
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, tokenizer, ["ok", "  "], **kw)


def test_diversity_quality_hand_example():
    # two identical 4-word texts: every distinct-n is (#unique / #total) = 1/2; Self-BLEU of copies is 1
    row = diversity_quality([["a b c d", "a b c d", "   "], ["w x y z", "p q r s"]])
    assert row["empty"] == 1 and row["min_words"] == 4
    assert row["distinct"] == pytest.approx((0.5 + 1.0) / 2)
    assert row["self_bleu"] == pytest.approx((1.0 + 0.0) / 2)


def test_temperature_grid_lines_up_levels():
    grid = temperature_grid([0.5, 2.0], target_entropies=[1.0, 4.0])
    assert len(grid) == 12
    dyn = [g for g in grid if g["sampler"] == "dynatemp" and g["level"] == 1][0]
    assert dyn["params"] == {"min_temperature": 1.0, "max_temperature": 3.0}
    ent = [g for g in grid if g["sampler"] == "target_entropy" and g["level"] == 1][0]
    assert (ent["knob"], ent["value"]) == ("H*", 4.0)
    for g in grid:
        sampler_kwargs(g["sampler"], **g["params"])  # every setting is valid
    with pytest.raises(ValueError, match="same length"):
        temperature_grid([0.5, 2.0], target_entropies=[1.0])
