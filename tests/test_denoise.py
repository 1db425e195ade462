"""The SSD-LM-style block denoiser: schedule, ±K simplex maths, the zero-noise = greedy invariant, seeding, errors."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dftnb.denoise import alpha_bar, denoise_generate, simplex_logits, top_token_mass

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def tiny():
    from dftnb.lab.models import tiny_model

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


@pytest.mark.parametrize("n_tokens", [8, 6])  # 6: a short last block
def test_greedy_fixed_point_share_is_one_for_one_hot_inputs_and_not_for_uninformative_ones(tiny, n_tokens):
    from dftnb.lab.experiments import greedy_fixed_point_share

    model, tokenizer, _ = tiny
    prompts = ["The quick brown fox jumps", "Once upon a time there"]
    # K = 200: softmax(±K) is one-hot in float32, so the block reads exactly the greedy tokens it was fed
    assert greedy_fixed_point_share(model, tokenizer, prompts, n_tokens, 4, 200.0, 1.0) == 1.0
    # K -> 0: every block input is the mean embedding, so positions 1..B-1 cannot tell the greedy tokens apart
    low = greedy_fixed_point_share(model, tokenizer, prompts, n_tokens, 4, 1e-3, 1.0)
    assert 0.0 <= low < 1.0
    # position 0 of each block is read from the hard prefix, so at least one token per block is always right
    assert low >= math.ceil(n_tokens / 4) / n_tokens


def test_precomputed_greedy_gives_the_same_shares_and_a_mismatched_one_is_refused(tiny):
    from dftnb.lab.experiments import greedy_agreement, greedy_continuations, greedy_fixed_point_share

    model, tokenizer, _ = tiny
    prompts = ["The quick brown fox jumps", "Once upon a time there"]
    pairs = greedy_continuations(model, tokenizer, prompts, 8)
    for ids, full in pairs:
        assert torch.equal(full, greedy(model, ids, 8))
    assert greedy_agreement(model, tokenizer, prompts, 8, 4, 4, 1.0, greedy=pairs) == \
        greedy_agreement(model, tokenizer, prompts, 8, 4, 4, 1.0)
    assert greedy_fixed_point_share(model, tokenizer, prompts, 8, 4, 1.0, 0.5, greedy=pairs) == \
        greedy_fixed_point_share(model, tokenizer, prompts, 8, 4, 1.0, 0.5)
    with pytest.raises(ValueError, match="greedy_continuations"):
        greedy_agreement(model, tokenizer, prompts, 6, 4, 4, 1.0, greedy=pairs)  # made for 8 tokens


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
    from dftnb.lab.models import load_model

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


# ---------------------------------------------------------------------------------------- training the denoiser
def _denoiser(**kwargs):
    from dftnb.denoise_training import DenoiserConfig

    return DenoiserConfig(**kwargs)


def test_training_inputs_are_the_simplex_embeddings_the_sampler_feeds(tiny):
    """Block positions get softmax(x_t)·E with x_t = sqrt(ᾱ)·(±K) + σ·sqrt(1-ᾱ)·K·ε, written out here by hand; the
    prefix keeps its token embeddings. Then: at zero noise the sampler's own input at a step equals the training
    input built from the tokens it projected at the step before, at that step's ᾱ."""
    from dftnb.denoise_training import block_inputs_embeds

    model, tokenizer, ids = tiny
    E = model.get_input_embeddings().weight.detach()
    V, K, B = E.shape[0], 5.0, 3
    start = torch.tensor([2, 1])
    a = torch.tensor([0.7, 0.2])
    gen = torch.Generator().manual_seed(3)
    got = block_inputs_embeds(model, ids, start, a, _denoiser(block_size=B, K=K), generator=gen).detach()
    eps = torch.randn(2, B, V, generator=torch.Generator().manual_seed(3))
    for r in range(2):
        s = int(start[r])
        torch.testing.assert_close(got[r, :s], E[ids[r, :s]])
        torch.testing.assert_close(got[r, s + B:], E[ids[r, s + B:]])
        for i in range(B):
            x0 = torch.full((V,), -K)
            x0[ids[r, s + i]] = K
            x = math.sqrt(a[r]) * x0 + math.sqrt(1 - a[r]) * K * eps[r, i]
            torch.testing.assert_close(got[r, s + i], torch.softmax(x.double(), -1).float() @ E, rtol=1e-4, atol=1e-5)

    # what denoise_generate feeds at step 3 of 4 (zero noise, soft inputs) vs the training input for those tokens
    fed = []
    decoder = model.get_decoder()
    hook = decoder.register_forward_pre_hook(lambda m, args, kw: fed.append(kw.get("inputs_embeds")), with_kwargs=True)
    try:
        _, trace = denoise_generate(model, tokenizer, ids[:1], max_new_tokens=4, block_size=4, steps=4, K=K,
                                    noise_scale=0.0, projection="argmax", hard_onehot_at_zero_noise=False,
                                    eos_token_id=[], return_trace=True)
    finally:
        hook.remove()
    fed = [f for f in fed if f is not None]  # the prefix pass feeds input_ids
    step2_tokens = trace.records[1]["tokens"]  # projected at step 2, fed at step 3 with ᾱ(t = 2 of 4)
    sequence = torch.cat([ids[:1], step2_tokens], dim=1)
    rebuilt = block_inputs_embeds(model, sequence, torch.tensor([ids.shape[1]]),
                                  torch.tensor([alpha_bar(2, 4)]), _denoiser(block_size=4, K=K, noise_scale=0.0))
    torch.testing.assert_close(fed[2][0], rebuilt[0, ids.shape[1]: ids.shape[1] + 3].detach())


def test_collator_cuts_rows_after_a_block_and_masks_the_prefix():
    from dftnb.denoise_training import DenoiserCollator

    rows = [{"input_ids": list(range(10, 30)), "target_ids": [[t, t + 1] for t in range(20)],
             "target_logprobs": [[-0.1, -2.5]] * 20}] * 16
    collate = DenoiserCollator(0, _denoiser(block_size=4, min_prefix=3, max_prefix=9, seed=1))
    batch = collate(rows)
    assert batch["block_start"].min() >= 3 and batch["block_start"].max() <= 9
    assert len(set(batch["block_start"].tolist())) > 1  # drawn per row
    for r, s in enumerate(batch["block_start"].tolist()):
        n = int(batch["attention_mask"][r].sum())
        assert n == s + 4  # the row ends with its block
        assert (batch["labels"][r, :s] == -100).all()
        assert batch["labels"][r, s:n].tolist() == list(range(10 + s, 10 + n))
        assert batch["target_ids"][r, :n, 0].tolist() == list(range(n))  # targets cut with the row
    assert ((batch["alpha_bar"] >= 0) & (batch["alpha_bar"] <= 1)).all() and batch["alpha_bar"].std() > 0
    with pytest.raises(ValueError, match="min_prefix \\+ block_size"):
        DenoiserCollator(0, _denoiser(block_size=8, min_prefix=4))([{"input_ids": list(range(10))}])


@pytest.mark.parametrize("kwargs", [dict(block_size=0), dict(K=0.0), dict(schedule="sqrt"), dict(noise_scale=-1.0),
                                    dict(min_prefix=0), dict(min_prefix=4, max_prefix=2),
                                    dict(zero_noise_fraction=1.5)])
def test_denoiser_config_refuses_bad_values(kwargs):
    with pytest.raises(ValueError, match="denoiser"):
        _denoiser(**kwargs)


def test_a_denoiser_trained_on_fixed_blocks_recovers_one_through_the_sampler(tmp_path):
    """Two blocks follow the same prefix, A = (x, y, z, w) and B = (y, x, w, z): after the first token only a model
    that reads the block's simplex inputs at the sampler's offset (position i from input i - 1) can continue either
    one; one that ignores its inputs mixes them. Trained for a few dozen steps on noisy simplex inputs, the tiny
    model must return A or B through denoise_generate at zero noise with soft K = 5 inputs; untrained it does not."""
    from datasets import Dataset

    from dftnb.denoise_training import train_denoiser
    from dftnb.lab.models import tiny_model

    model, tokenizer = tiny_model(seed=1)
    prefix = tokenizer("It was a dark and stormy", add_special_tokens=False).input_ids[:6]
    x, y, z, w = tokenizer(" apple river moon castle", add_special_tokens=False).input_ids[:4]
    blocks = [[x, y, z, w], [y, x, w, z]]
    dataset = Dataset.from_dict({"input_ids": [prefix + blocks[i % 2] for i in range(16)]})
    prompt = torch.tensor([prefix])

    def denoised():
        out = denoise_generate(model, tokenizer, prompt, max_new_tokens=4, block_size=4, steps=8, K=5.0,
                               noise_scale=0.0, projection="argmax", hard_onehot_at_zero_noise=False, eos_token_id=[])
        return out[0, len(prefix):].tolist()

    assert denoised() not in blocks
    config = _denoiser(block_size=4, K=5.0, min_prefix=6, zero_noise_fraction=0.5)
    train_denoiser(model, tokenizer, dataset, "sft", tmp_path, denoiser=config, max_steps=100, learning_rate=3e-3,
                   per_device_train_batch_size=8)
    assert denoised() in blocks


def test_cli_config_takes_a_denoiser_section_and_names_bad_keys(tmp_path):
    from dftnb.lab.train import denoiser_config, load_config

    path = tmp_path / "c.yaml"
    base = (REPO_CONFIGS / "denoiser_dft.yaml").read_text()
    path.write_text(base)
    config = load_config(path)
    assert denoiser_config(config).K == 5.0 and denoiser_config(config).block_size == 8
    with pytest.raises(ValueError, match="denoiser"):
        load_config(path, ["denoiser.blocks=8"])
    with pytest.raises(ValueError, match="denoiser.K"):
        load_config(path, ["denoiser.K='5'"])
    with pytest.raises(ValueError, match="data.block_size"):
        load_config(path, ["data.block_size=10"])


def test_derailed_agreement_is_the_mean_share_before_the_first_miss():
    from dftnb.lab.denoiser_curve import derailed_agreement

    assert derailed_agreement(1.0, 16) == 1.0 and derailed_agreement(0.0, 16) == 0.0
    assert derailed_agreement(0.5, 2) == pytest.approx((0.5 + 0.25) / 2)
    rng = np.random.default_rng(0)  # Monte Carlo: tokens correct until the first miss, f = 0.9, n = 16
    first_miss = np.minimum(rng.geometric(0.1, 200_000) - 1, 16)
    assert derailed_agreement(0.9, 16) == pytest.approx(first_miss.mean() / 16, abs=0.005)


def test_the_invariant_curve_resumes_from_its_checkpoint_and_measures_each_step_once(tmp_path):
    from dftnb.lab import denoiser_curve

    results, work = tmp_path / "results", tmp_path / "work"
    quick = dict(results=results, work=work, profile="smoke", n_prompts=2, s_multiples=(1, 2))
    denoiser_curve.run_curve(("sft",), steps=1, every=1, **quick)
    assert sorted(set(denoiser_curve.stored_rows(results)["step"])) == [0, 1]
    # as an interrupted run leaves it: the caption says how far it got
    meta_path = results / "provenance-sft-16rows-s0.json"
    finished = meta_path.read_text()
    meta_path.write_text(json.dumps({**json.loads(finished), "complete": False, "steps": 4}))
    denoiser_curve.report(results)
    assert "16 rows, seed 0: not finished, measured up to step 1 of 4" in denoiser_curve.committed_curve(results)
    meta_path.write_text(finished)
    assert (work / "sft-16rows-s0" / "checkpoint-1").is_dir()
    table = denoiser_curve.run_curve(("sft",), steps=2, every=1, **quick)
    rows = denoiser_curve.stored_rows(results)
    assert rows.groupby(["step", "steps S"]).size().eq(1).all()  # nothing measured twice
    assert sorted(set(rows["step"])) == [0, 1, 2] and set(rows["steps S"]) == {8, 16}
    assert rows["tokens equal to greedy"].between(0, 1).all() and rows["greedy is a fixed point"].between(0, 1).all()
    assert set(rows["rows"]) == {16} and set(rows["seed"]) == {0}  # the smoke profile's 16 Shakespeare rows
    meta = json.loads((results / "provenance-sft-16rows-s0.json").read_text())
    assert meta["resumes"] == 1 and meta["complete"] and meta["steps"] == 2 and meta["rows"] == 16
    assert list(table["step"]) == [0, 1, 2] and (results / "invariant_curve.png").exists()
    text = denoiser_curve.committed_curve(results)
    assert re.search(r"\|\s*S = 16\s*\|", text) and "2 steps" in text and "resumed 1 time" in text and "2 held-out" in text
    assert "16 rows, seed 0" in text and re.search(r"\|\s*fixed point, S = 16\s*\|", text)
    assert "No stored curve" in denoiser_curve.committed_curve(tmp_path / "empty")

    # another seed is another run: its own rows, checkpoint folder and provenance, measured from step 0
    denoiser_curve.run_curve(("sft",), steps=1, every=1, seed=1, **quick)
    rows = denoiser_curve.stored_rows(results)
    assert sorted(set(rows.loc[rows["seed"] == 1, "step"])) == [0, 1] and len(rows.query("seed == 0")) == 6
    assert (work / "sft-16rows-s1" / "checkpoint-1").is_dir() and (results / "provenance-sft-16rows-s1.json").exists()

    # the diagnosis of the last checkpoint (step 2) reproduces the curve's last measurement exactly
    diagnosis = denoiser_curve.diagnose("sft", results=results, work=work, profile="smoke", n_prompts=2,
                                        s_values=(8, 16), alpha_bars=(0.5, alpha_bar(1, 16)))
    last = rows.query("seed == 0 and step == 2").set_index("steps S")
    assert diagnosis["step"] == 2 and json.loads((results / "diagnosis-sft-16rows-s0.json").read_text())["step"] == 2
    for s in (8, 16):
        assert diagnosis["tokens equal to greedy by S"][str(s)] == pytest.approx(last.loc[s, "tokens equal to greedy"], abs=1e-6)
        first = diagnosis["first mismatch by S"][str(s)]
        assert len(first) == 2 and all(0 <= f <= 16 for f in first)
    fixed = diagnosis["fixed point by alpha_bar"][str(alpha_bar(1, 16))]  # the ᾱ the curve's last step reads at S = 16
    assert fixed == pytest.approx(last.loc[16, "greedy is a fixed point"], abs=1e-6)
    assert 0 <= diagnosis["own greedy equal to base greedy"] <= 1
    text = denoiser_curve.committed_diagnosis(results)
    assert "CE, 16 rows, seed 0" in text and "derailing alone predicts" in text and "prompts without a miss, S = 16" in text
    assert "No stored diagnosis" in denoiser_curve.committed_diagnosis(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="train it first"):
        denoiser_curve.diagnose("sft", seed=7, results=results, work=work, profile="smoke", n_prompts=2)

    # a variant is its own run: "+prefix" trains the prefix positions too, and says so in its provenance and label
    denoiser_curve.run_curve(("sft+prefix",), steps=1, every=1, **quick)
    meta = json.loads((results / "provenance-sft+prefix-16rows-s0.json").read_text())
    assert meta["denoiser"]["prefix_loss"] is True and json.loads(finished)["denoiser"]["prefix_loss"] is False
    assert sorted(set(denoiser_curve.stored_rows(results).query("method == 'sft+prefix'")["step"])) == [0, 1]
    assert "CE + prefix loss, 16 rows, seed 0: 1 steps" in denoiser_curve.committed_curve(results)
    with pytest.raises(ValueError, match="unknown denoiser-curve variant 'prefx'.*prefix"):
        denoiser_curve.run_curve(("sft", "sft+prefx"), steps=1, every=1, **quick)
    with pytest.raises(ValueError, match="CE .sft. reads no target"):
        denoiser_curve.run_curve(("sft+bucket",), steps=1, every=1, **quick)
    assert denoiser_curve.split_method("dft_forward_kl+prefix+bucket") == (
        "dft_forward_kl", {"prefix_loss": True}, {"tail": "bucket"})
    assert denoiser_curve.label("dft_forward_kl+prefix+bucket") == "DFT (forward KL) + prefix loss + bucket tail"
    denoiser_curve.run_curve(("dft_forward_kl+bucket",), steps=1, every=1, **quick)
    meta = json.loads((results / "provenance-dft_forward_kl+bucket-16rows-s0.json").read_text())
    assert meta["loss"] == {"tail": "bucket"} and meta["denoiser"]["prefix_loss"] is False

    # a CSV without the run columns (older format) is refused with what to do, not silently mixed
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "invariant_curve.csv").write_text("method,step,steps S,tokens equal to greedy\nsft,0,8,0.5\n")
    with pytest.raises(ValueError, match="rows.*seed.*provenance"):
        denoiser_curve.stored_rows(tmp_path / "old")
