"""The SSD-LM-style block denoiser: schedule, ±K simplex maths, the zero-noise = greedy invariant, seeding, errors."""

import math

import numpy as np
import pytest
import torch

from dftnb.denoise import alpha_bar, denoise_generate, simplex_logits, top_token_mass


@pytest.fixture(scope="module")
def tiny():
    from dftnb.models import tiny_model

    model, tokenizer = tiny_model(seed=0)
    ids = tokenizer(["The quick brown fox jumps", "Once upon a time there"], return_tensors="pt").input_ids[:, :5]
    return model, tokenizer, ids


def greedy(model, ids, n, **kwargs):
    return model.generate(ids, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(ids), **kwargs)


def test_cosine_schedule_endpoints_and_monotone():
    steps = 20
    values = [alpha_bar(t, steps, "cosine") for t in range(steps + 1)]
    assert values[0] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(values, values[1:]))
    s = 0.008  # Nichol & Dhariwal: f(t) = cos^2((t/T + s) / (1 + s) * pi / 2), alpha_bar = f(t) / f(0)
    f = np.cos((np.arange(steps + 1) / steps + s) / (1 + s) * np.pi / 2) ** 2
    np.testing.assert_allclose(values, f / f[0], atol=1e-12)
    assert [alpha_bar(t, 4, "linear") for t in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_simplex_representation_and_top_mass():
    tokens = torch.tensor([[2, 0]])
    x = simplex_logits(tokens, 5, 3.0)
    assert x.shape == (1, 2, 5)
    assert x[0, 0].tolist() == [-3.0, -3.0, 3.0, -3.0, -3.0]
    for k, v in [(5.0, 49_152), (1.0, 10), (8.0, 1000)]:
        z = np.full(v, -k, dtype=np.float64)
        z[0] = k
        p = np.exp(z - z.max())
        assert top_token_mass(k, v) == pytest.approx(p[0] / p.sum(), rel=1e-12)
    assert round(top_token_mass(5.0, 49_152), 2) == 0.31  # docs/design.md, denoiser: K = 5 is far from one-hot


@pytest.mark.parametrize("block_size,n", [(4, 10), (3, 6), (1, 3)])
def test_zero_noise_hard_onehot_is_greedy(tiny, block_size, n):
    model, tokenizer, ids = tiny
    out = denoise_generate(
        model, tokenizer, ids, max_new_tokens=n, block_size=block_size, steps=block_size,
        noise_scale=0.0, projection="argmax", hard_onehot_at_zero_noise=True, K=5.0,
    )
    assert torch.equal(out, greedy(model, ids, n))


def test_zero_noise_large_k_soft_inputs_is_greedy(tiny):
    """Without the hard one-hot, K >> ½ ln V makes softmax(sqrt(ᾱ)·x0) one-hot in float32 once ᾱ is not tiny."""
    model, tokenizer, ids = tiny
    out = denoise_generate(
        model, tokenizer, ids, max_new_tokens=8, block_size=4, steps=8, K=200.0,
        noise_scale=0.0, projection="argmax", hard_onehot_at_zero_noise=False,
    )
    assert torch.equal(out, greedy(model, ids, 8))


def test_too_few_steps_can_miss_greedy_but_first_token_is_exact(tiny):
    model, tokenizer, ids = tiny
    out = denoise_generate(
        model, tokenizer, ids, max_new_tokens=4, block_size=4, steps=1, noise_scale=0.0, projection="argmax",
    )
    ref = greedy(model, ids, 4)
    # one step fixes block position 0 only (it depends on the prefix alone)
    assert torch.equal(out[:, : ids.shape[1] + 1], ref[:, : ids.shape[1] + 1])


def test_eos_handling_matches_generate(tiny):
    model, tokenizer, ids = tiny
    ref = greedy(model, ids[:1], 8)
    eos = int(ref[0, ids.shape[1] + 2])  # a token greedy decoding emits at the third position
    expected = greedy(model, ids[:1], 8, eos_token_id=eos)
    out = denoise_generate(
        model, tokenizer, ids[:1], max_new_tokens=8, block_size=4, steps=4, noise_scale=0.0,
        projection="argmax", eos_token_id=eos,
    )
    assert torch.equal(out, expected)
    first = int((ref[0, ids.shape[1]:] == eos).nonzero()[0])
    assert out.shape[1] == ids.shape[1] + first + 1 < ref.shape[1]  # stopped early, at the first EOS
    assert int(out[0, -1]) == eos


def test_seeded_noise_is_deterministic(tiny):
    model, tokenizer, ids = tiny
    kwargs = dict(max_new_tokens=6, block_size=3, steps=4, noise_scale=1.0, top_p=0.9)
    a = denoise_generate(model, tokenizer, ids, seed=5, **kwargs)
    b = denoise_generate(model, tokenizer, ids, seed=5, **kwargs)
    c = denoise_generate(model, tokenizer, ids, seed=6, **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (2, ids.shape[1] + 6)


def test_trace_records_every_step(tiny):
    model, tokenizer, ids = tiny
    out, trace = denoise_generate(
        model, tokenizer, ids, max_new_tokens=5, block_size=3, steps=4, noise_scale=0.0, projection="argmax",
        return_trace=True,
    )
    assert [(r["block"], r["step"]) for r in trace.records] == [(b, s) for b in range(2) for s in range(1, 5)]
    last_of_block = [r for r in trace.records if r["step"] == 4]
    assert torch.equal(torch.cat([r["tokens"] for r in last_of_block], dim=1), out[:, ids.shape[1]:])
    frame = trace.to_frame(tokenizer)
    assert len(frame) == 8 and "argmax_text" in frame
    # first step of a block with zero noise sees the uniform simplex point: entropy log V
    assert trace.records[0]["input_entropy"][0, 0].item() == pytest.approx(math.log(len(tokenizer)), rel=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(steps=0),
        dict(block_size=0),
        dict(max_new_tokens=0),
        dict(K=0.0),
        dict(top_p=0.0),
        dict(min_p=1.5),
        dict(projection="mode"),
        dict(noise_scale=-1.0),
        dict(schedule="sqrt"),
    ],
)
def test_invalid_parameters(tiny, kwargs):
    model, tokenizer, ids = tiny
    with pytest.raises(ValueError):
        denoise_generate(model, tokenizer, ids, **kwargs)


def test_padded_or_empty_prompts_are_refused(tiny):
    model, tokenizer, ids = tiny
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="padded"):
        denoise_generate(model, tokenizer, ids, attention_mask=mask)
    with pytest.raises(ValueError, match="empty"):
        denoise_generate(model, tokenizer, ids[:, :0])


@pytest.mark.slow
def test_embedded_model_zero_noise_is_greedy():
    from dftnb.models import load_model

    model, tokenizer = load_model("embedded")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = denoise_generate(
        model, tokenizer, ids, max_new_tokens=8, block_size=4, steps=4, noise_scale=0.0, projection="argmax",
    )
    assert torch.equal(out, greedy(model, ids, 8))


def test_sampled_projection_respects_truncation(tiny):
    """top_p so small that only the top token survives: sampling the truncated prediction is the argmax."""
    model, tokenizer, ids = tiny
    kwargs = dict(max_new_tokens=6, block_size=3, steps=3, noise_scale=0.0)
    sampled = denoise_generate(model, tokenizer, ids, projection="sample", top_p=1e-9, seed=1, **kwargs)
    assert torch.equal(sampled, denoise_generate(model, tokenizer, ids, projection="argmax", **kwargs))
    free = denoise_generate(model, tokenizer, ids, projection="sample", seed=1, **kwargs)
    assert not torch.equal(free, sampled)  # the untruncated random model's distribution is nearly flat
