"""Real data-parallel training: ``torchrun --nproc_per_node 2`` (gloo, CPU) against one process, same global batch.

Both runs go through the CLI entry point (``dftnb.lab.train.run``; the DDP one as ``torchrun -m dftnb.lab.train``) on a saved tiny Llama (vocab 64) with its own word-level
tokenizer and a saved target dataset whose rows have different numbers of masked labels, so the per-step loss only
matches if every rank divides its token-sum by the *global* token count.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dftnb.lab.train import load_config, run
from dftnb.target_cache import rows_to_dataset
from dftnb.targets import SparseTarget

VOCAB = 64
STEPS = 4


def save_tiny_model(folder):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {f"w{i}": i for i in range(VOCAB)}
    backend = Tokenizer(WordLevel(vocab, unk_token="w1"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="w0", unk_token="w1", eos_token="w2")
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0, eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return config


def save_target_dataset(folder, config, n_rows=4):
    torch.manual_seed(1)
    reference = LlamaForCausalLM(config).eval()
    rows = []
    for i in range(n_rows):
        n = 10 + 2 * i
        ids = torch.randint(3, VOCAB, (n,))
        with torch.no_grad():
            target = SparseTarget.from_logits(reference(ids[None]).logits[0], 8, temperature=0.2)
        labels = ids.clone()
        labels[: 3 * i] = -100  # rows 0..3 mask 0, 3, 6, 9 leading positions
        rows.append({"input_ids": ids.numpy(), "labels": labels.numpy(), "target_ids": target.ids.numpy(),
                     "target_logprobs": target.logprobs.numpy()})
    rows_to_dataset(rows, k=8, vocab_size=VOCAB, info={"source": "reference"}).save_to_disk(str(folder))


def run_cli(tmp_path, name, launcher, per_device_batch, **training):
    config = {
        "model": str(tmp_path / "model"),
        "method": "dft_forward_kl",
        "data": {"dataset": str(tmp_path / "data")},
        "save_final": False,
        "training": {
            "output_dir": str(tmp_path / name),
            "max_steps": STEPS,
            "per_device_train_batch_size": per_device_batch,
            "learning_rate": 1e-2,
            "lr_scheduler_type": "constant",
            "logging_steps": 1,
            "save_strategy": "no",
            "seed": 0,
            "data_seed": 0,
            "use_cpu": True,
            "disable_tqdm": True,
            **training,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    if launcher is None:  # in this process (saves an interpreter start-up)
        run(load_config(path))
        return _history(tmp_path / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*launcher, "-m", "dftnb.lab.train", "--config", str(path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return _history(tmp_path / name)


def _history(output_dir):
    history = json.loads((output_dir / "log_history.json").read_text())
    return [r for r in history if "loss" in r and "train_runtime" not in r]


TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun (part of torch) is not on PATH")
def test_two_process_ddp_matches_one_process(tmp_path):
    config = save_tiny_model(tmp_path / "model")
    save_target_dataset(tmp_path / "data", config)
    # the dataset is one global batch of 4 rows, so each step sees all of it whatever the sampler order
    single = run_cli(tmp_path, "single", None, per_device_batch=4)
    double = run_cli(tmp_path, "ddp", [TORCHRUN, "--standalone", "--nproc_per_node", "2"], per_device_batch=2,
        ddp_backend="gloo",  # only under torchrun: accelerate refuses a backend without a process group
    )
    assert [r["step"] for r in single] == [r["step"] for r in double] == list(range(1, STEPS + 1))
    for a, b in zip(single, double):
        for key in ("loss", "divergence", "ce", "entropy", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])
    assert single[-1]["loss"] < 0.9 * single[0]["loss"]  # the runs trained (the curves are not flat)
