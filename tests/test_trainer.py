"""DFTTrainer, SparseTargetCollator and the training CLI on a tiny random Llama (vocab 64, hidden 32).

The references are computed here from the model's full logits in float64 (``SparseTarget.to_dense``) or from the
model's own Hugging Face loss, never from the trainer's code path.
"""

import math

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from dftnb.targets import SparseTarget
from dftnb.trainer import (
    DFTConfig,
    DFTTrainer,
    SparseTargetCollator,
    default_training_args,
    evaluate_objective,
    history_frame,
    train_method,
)

VOCAB = 64
K = 8
PAD = 0


def small_llama(seed: int = 0, vocab: int = VOCAB) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=PAD,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def target_rows(lengths, seed: int = 1, k: int = K, with_targets: bool = True, vocab: int = VOCAB) -> list[dict]:
    """Rows in the dataset format; targets are the top-k of a second (reference) model's logits."""
    gen = torch.Generator().manual_seed(seed)
    reference = small_llama(seed=seed + 100, vocab=vocab)
    rows = []
    for i, n in enumerate(lengths):
        ids = torch.randint(1, vocab, (n,), generator=gen)
        labels = ids.clone()
        labels[: i % 3] = -100  # a prompt-like masked prefix of varying length
        row = {"input_ids": ids.tolist(), "labels": labels.tolist()}
        if with_targets:
            with torch.no_grad():
                logits = reference(ids[None]).logits[0]
            target = SparseTarget.from_logits(logits, k, temperature=0.1)  # peaked: far from the student
            row["target_ids"] = target.ids.tolist()
            row["target_logprobs"] = target.logprobs.half().float().tolist()  # stored as float16
        rows.append(row)
    return rows


def make_trainer(model, tmp_path, dataset=None, config=None, **args) -> DFTTrainer:
    args.setdefault("max_steps", 1)
    return DFTTrainer(
        model=model,
        args=default_training_args(tmp_path / "run", **args),
        train_dataset=dataset,
        data_collator=SparseTargetCollator(PAD),
        dft_config=config or DFTConfig(),
    )


def dense_objective(model, batch, divergence, temperature=1.0, ce_weight=0.0) -> float:
    """Float64 reference: mean over predicted positions of λ·CE(softmax z, y) + (1−λ)·D(softmax(z/τ), q)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    z, y = logits[:, :-1], batch["labels"][:, 1:]
    q = SparseTarget(batch["target_ids"][:, :-1], batch["target_logprobs"][:, :-1], VOCAB).to_dense(torch.float64)
    mask = y != -100
    logp = torch.log_softmax(z / temperature, -1)[mask]
    q = q[mask]
    logq = torch.log(q)
    ce = -torch.log_softmax(z, -1)[mask].gather(-1, y[mask][:, None]).squeeze(-1)
    if divergence == "reverse_kl":
        div = (logp.exp() * (logp - logq)).sum(-1)
    elif divergence == "forward_kl":
        div = (q * (logq - logp)).sum(-1)
    elif divergence == "ce":
        div = ce
    else:
        raise AssertionError(divergence)
    return float((ce_weight * ce + (1 - ce_weight) * div).mean())


# -- collator ------------------------------------------------------------------------------------------------------
def test_collator_pads_inputs_labels_and_targets():
    rows = target_rows([3, 5])
    del rows[0]["labels"]  # a row without labels trains on all its tokens
    batch = SparseTargetCollator(PAD)(rows)
    assert batch["input_ids"].shape == (2, 5) and batch["target_ids"].shape == (2, 5, K)
    assert batch["input_ids"].dtype == torch.long and batch["target_logprobs"].dtype == torch.float32
    assert batch["input_ids"][0].tolist() == rows[0]["input_ids"] + [PAD, PAD]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"][0].tolist() == rows[0]["input_ids"] + [-100, -100]
    assert batch["labels"][1].tolist() == rows[1]["labels"]
    assert batch["target_ids"][0, :3].tolist() == rows[0]["target_ids"]
    assert torch.equal(batch["target_logprobs"][1], torch.tensor(rows[1]["target_logprobs"]))
    # padding rows are a valid distribution (uniform over k ids) that SparseTarget accepts
    pad_target = SparseTarget(batch["target_ids"][0, 3:], batch["target_logprobs"][0, 3:], VOCAB)
    assert torch.allclose(pad_target.logprobs.exp().sum(-1), torch.ones(2))
    # pad_to_multiple_of rounds the length up
    assert SparseTargetCollator(PAD, pad_to_multiple_of=4)(rows)["input_ids"].shape == (2, 8)


def test_collator_without_targets_and_bad_rows():
    rows = target_rows([4, 2], with_targets=False)
    batch = SparseTargetCollator(PAD)(rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    mixed = target_rows([4]) + rows[:1]
    with pytest.raises(ValueError, match="some rows have target_ids"):
        SparseTargetCollator(PAD)(mixed)
    short = target_rows([4])
    short[0]["target_ids"] = short[0]["target_ids"][:3]
    with pytest.raises(ValueError, match="one row of k entries per input token"):
        SparseTargetCollator(PAD)(short)
    with pytest.raises(ValueError, match="pad_token"):
        SparseTargetCollator(None)


# -- compute_loss against a dense float64 reference ------------------------------------------------------------------
@pytest.mark.parametrize(
    "divergence, temperature, ce_weight",
    [("reverse_kl", 1.0, 0.0), ("forward_kl", 1.0, 0.3), ("reverse_kl", 0.7, 0.0), ("ce", 1.0, 0.0)],
)
def test_compute_loss_matches_dense_reference(tmp_path, divergence, temperature, ce_weight):
    model = small_llama()
    batch = SparseTargetCollator(PAD)(target_rows([7, 5, 6]))
    config = DFTConfig(divergence=divergence, temperature=temperature, ce_weight=ce_weight)
    trainer = make_trainer(model, tmp_path, config=config)
    expected = dense_objective(model, batch, divergence, temperature, ce_weight)
    loss = trainer.compute_loss(model, batch)
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-5, abs_tol=1e-6)
    # with the Trainer's num_items_in_batch the loss is the token-sum divided by that count
    n = int((batch["labels"][:, 1:] != -100).sum())
    loss_sum = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(2 * n))
    assert math.isclose(float(loss_sum.detach()), expected / 2, rel_tol=1e-5, abs_tol=1e-6)


def test_evaluate_objective_is_the_token_mean_over_the_dataset():
    model = small_llama()
    rows = target_rows([7, 5, 6])
    config = DFTConfig(divergence="forward_kl", ce_weight=0.2)
    expected = dense_objective(model, SparseTargetCollator(PAD)(rows), "forward_kl", ce_weight=0.2)
    got = evaluate_objective(model, Dataset.from_list(rows), config, PAD, batch_size=2)  # batches of 2 + 1 rows
    assert math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-6)


def test_sft_without_targets_equals_model_loss_and_gem_runs(tmp_path):
    model = small_llama()
    batch = SparseTargetCollator(PAD)(target_rows([6, 4], with_targets=False))
    trainer = make_trainer(model, tmp_path, config=DFTConfig(divergence="sft"))
    with torch.no_grad():
        hf_loss = model(**batch).loss  # Hugging Face's own shifted cross-entropy
    assert math.isclose(float(trainer.compute_loss(model, batch).detach()), float(hf_loss), rel_tol=1e-5)
    gem = make_trainer(model, tmp_path, config=DFTConfig(divergence="gem"))
    assert torch.isfinite(gem.compute_loss(model, batch))
    kl = make_trainer(model, tmp_path, config=DFTConfig(divergence="reverse_kl"))
    with pytest.raises(ValueError, match="needs target_ids"):
        kl.compute_loss(model, batch)


# -- training behaviour ----------------------------------------------------------------------------------------------
def test_dft_steps_decrease_divergence_on_a_fixed_batch(tmp_path):
    dataset = Dataset.from_list(target_rows([12, 12, 12, 12]))
    model = small_llama()
    trainer = make_trainer(
        model, tmp_path, dataset, DFTConfig(divergence="reverse_kl"), max_steps=12, learning_rate=1e-2
    )
    trainer.train()
    history = history_frame(trainer.state.log_history)
    assert list(history["step"]) == list(range(1, 13))
    assert {"divergence", "ce", "entropy"} <= set(history.columns)
    assert history[["loss", "divergence", "ce", "entropy"]].notna().all().all()
    # ce_weight 0: the logged divergence is the loss itself
    assert torch.allclose(torch.tensor(history["divergence"].values), torch.tensor(history["loss"].values), rtol=1e-4)
    assert history["divergence"].iloc[-1] < 0.7 * history["divergence"].iloc[0]
    assert (history["entropy"] <= math.log(VOCAB) + 1e-6).all()


def test_pure_ce_weight_trains_without_targets(tmp_path):
    dataset = Dataset.from_list(target_rows([8, 8], with_targets=False))
    config = DFTConfig(divergence="reverse_kl", ce_weight=1.0)  # λ = 1: the divergence term has weight 0
    trainer = make_trainer(small_llama(), tmp_path, dataset, config, max_steps=2, per_device_train_batch_size=2)
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert all("divergence" not in r and math.isclose(r["loss"], r["ce"], rel_tol=1e-5) for r in logs)


def _one_step(tmp_path, name, batch_size, accumulation):
    dataset = Dataset.from_list(target_rows([9, 5, 7, 3]))
    model = small_llama()
    trainer = make_trainer(
        model,
        tmp_path / name,
        dataset,
        DFTConfig(divergence="forward_kl"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
    )
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer.train()
    step = {k: before[k] - v.detach() for k, v in model.named_parameters()}  # = lr · grad
    return trainer.state.log_history[0], step


def test_gradient_accumulation_equals_full_batch(tmp_path):
    full_log, full_step = _one_step(tmp_path, "full", batch_size=4, accumulation=1)
    accum_log, accum_step = _one_step(tmp_path, "accum", batch_size=2, accumulation=2)
    for key in ("loss", "divergence", "ce", "entropy"):
        assert math.isclose(full_log[key], accum_log[key], rel_tol=1e-5), key
    # the logged loss is the mean over all predicted positions of the step (the Trainer's token count is right)
    batch = SparseTargetCollator(PAD)(target_rows([9, 5, 7, 3]))
    assert math.isclose(full_log["loss"], dense_objective(small_llama(), batch, "forward_kl"), rel_tol=1e-5, abs_tol=1e-6)
    assert max(float(full_step[k].abs().max()) for k in full_step) > 1e-4  # the step moved the weights
    for name in full_step:
        torch.testing.assert_close(accum_step[name], full_step[name], rtol=1e-4, atol=1e-6)


def test_resume_from_checkpoint_reproduces_the_loss_curve(tmp_path):
    dataset = Dataset.from_list(target_rows([8] * 6))
    common = dict(max_steps=6, per_device_train_batch_size=2, learning_rate=3e-3, save_strategy="steps", save_steps=3)
    full = make_trainer(small_llama(), tmp_path / "full", dataset, DFTConfig(divergence="reverse_kl"), **common)
    full.train()
    resumed = make_trainer(small_llama(), tmp_path / "resumed", dataset, DFTConfig(divergence="reverse_kl"), **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "run" / "checkpoint-3"))
    curve = {r["step"]: r["loss"] for r in full.state.log_history if "loss" in r}
    again = {r["step"]: r["loss"] for r in resumed.state.log_history if "loss" in r and r["step"] > 3}
    assert sorted(again) == [4, 5, 6]
    for step, loss in again.items():
        assert math.isclose(loss, curve[step], rel_tol=1e-6, abs_tol=1e-7), (step, loss, curve[step])


# -- bad inputs ------------------------------------------------------------------------------------------------------
def test_vocab_mismatch_raises(tmp_path):
    with pytest.raises(ValueError, match="rebuild the targets with the student's tokenizer"):
        make_trainer(small_llama(), tmp_path, config=DFTConfig(target_vocab_size=VOCAB + 1))
    batch = SparseTargetCollator(PAD)(target_rows([6, 6], vocab=2 * VOCAB))  # ids from a bigger vocabulary
    batch["input_ids"] %= VOCAB
    batch["labels"] = torch.where(batch["labels"] >= 0, batch["labels"] % VOCAB, batch["labels"])
    trainer = make_trainer(small_llama(), tmp_path)
    with pytest.raises(ValueError, match="different tokenizer"):
        trainer.compute_loss(trainer.model, batch)


def test_nan_logits_raise(tmp_path):
    model = small_llama()
    with torch.no_grad():
        model.model.norm.weight[3] = float("nan")
    trainer = make_trainer(model, tmp_path)
    batch = SparseTargetCollator(PAD)(target_rows([5]))
    with pytest.raises(RuntimeError, match="NaN or Inf.*resume_from_checkpoint"):
        trainer.compute_loss(model, batch)


def test_post_processed_logits_are_refused(tmp_path):
    model = small_llama()
    model.lm_head.register_forward_hook(lambda module, args, out: 30 * torch.tanh(out / 30) + 1.0)
    trainer = make_trainer(model, tmp_path)
    with pytest.raises(ValueError, match="post-processes its logits"):
        trainer.compute_loss(model, SparseTargetCollator(PAD)(target_rows([5])))


def test_soft_capping_config_is_refused(tmp_path):
    model = small_llama()
    model.config.final_logit_softcapping = 30.0  # as Gemma 2 sets it
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        make_trainer(model, tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown divergence"):
        DFTConfig(divergence="kl")
    with pytest.raises(ValueError, match="ce_weight"):
        DFTConfig(ce_weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        DFTConfig(temperature=0.0)
    assert DFTConfig(divergence="dft_sorted_w1").divergence == "wasserstein_sorted"
    assert not DFTConfig(divergence="gem").needs_target


def test_train_method_saves_model_and_history(tmp_path):
    class Tok:  # the minimum train_method needs from a tokenizer
        pad_token_id = PAD

        def save_pretrained(self, path):
            (tmp_path / "tok_saved").write_text(str(path))

    dataset = Dataset.from_list(target_rows([6, 6]))
    _, history = train_method(
        small_llama(), Tok(), dataset, "sft", tmp_path / "out", save_dir=tmp_path / "models" / "sft", max_steps=2,
        per_device_train_batch_size=2,
    )
    assert list(history["method"]) == ["sft", "sft"] and history["seconds"].is_monotonic_increasing
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "models" / "sft")
    assert reloaded.config.vocab_size == VOCAB
    assert (tmp_path / "tok_saved").read_text() == str(tmp_path / "models" / "sft")  # the tokenizer goes with it


def test_train_method_refuses_targets_without_builder_record(tmp_path):
    # target columns written by hand (no dftnb.targets record): the student's vocabulary cannot be checked
    dataset = Dataset.from_list(target_rows([6, 6]))

    class Tok:
        pad_token_id = PAD

    with pytest.raises(ValueError, match="carries no dftnb target info"):
        train_method(small_llama(), Tok(), dataset, "dft_reverse_kl", tmp_path / "out", max_steps=1)


# -- CLI config ------------------------------------------------------------------------------------------------------
def test_example_configs_validate():
    from pathlib import Path

    from dftnb.lab.train import load_config, training_arguments

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs, "configs/ holds the example YAML files"
    for path in configs:
        config = load_config(path)
        assert config["training"]["output_dir"]
        if config.get("dtype", "float32") == "float32":  # bf16 configs need a GPU to build TrainingArguments
            training_arguments(config["training"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("epochs=3", r"unknown key\(s\) \['epochs'\] in the top level"),
        ("dft.temprature=2", r"unknown key\(s\) \['temprature'\] in dft"),
        ("data.targets.kk=3", r"unknown key\(s\) \['kk'\] in data.targets"),
        ("method=kl", "unknown divergence 'kl'"),
        ("dft.divergence_kwargs={beta: 0.5}", r"reverse_kl does not take \['beta'\]"),
        ("data.targets.source=samples", "build other sources"),
    ],
)
def test_cli_config_errors_name_the_key(tmp_path, override, message):
    from pathlib import Path

    from dftnb.lab.train import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "dft_reverse_kl.yaml"
    with pytest.raises(ValueError, match=message):
        load_config(path, [override])


def test_cli_unknown_training_argument(tmp_path):
    from dftnb.lab.train import training_arguments

    with pytest.raises(ValueError, match="learning_rat.*TrainingArguments fields"):
        training_arguments({"output_dir": str(tmp_path), "learning_rat": 1e-3})


def test_collator_carries_the_stored_tail_mass_into_the_target():
    """The exact tail mass a dataset stores reaches the loss in training (padding gets r = 0)."""
    import numpy as np

    k, V = 3, 50
    rows = []
    for n, r in ((4, 1e-8), (2, 0.25)):
        logprobs = np.log(np.full((n, k), (1 - r) / k))
        rows.append({"input_ids": list(range(n)), "labels": list(range(n)), "target_ids": [[0, 1, 2]] * n,
                     "target_logprobs": logprobs.tolist(), "target_tail_mass": [r] * n})
    batch = SparseTargetCollator(pad_token_id=0)(rows)
    assert batch["target_tail_mass"].shape == (2, 4)
    assert batch["target_tail_mass"][1, 2:].eq(0).all()
    target = DFTConfig("forward_kl").target(batch, V)
    assert target.r is not None
    assert float(target.r[0, 0]) == pytest.approx(1e-8, rel=1e-6)
    assert float(target.r[1, 0]) == pytest.approx(0.25, rel=1e-6)
