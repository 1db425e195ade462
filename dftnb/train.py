"""Command-line DFT training from a YAML config.

    python -m dftnb.train --config configs/dft_reverse_kl.yaml
    accelerate launch -m dftnb.train --config configs/dft_reverse_kl.yaml
    torchrun --nproc_per_node 2 -m dftnb.train --config configs/dft_reverse_kl.yaml
    python -m dftnb.train --config configs/dft_reverse_kl.yaml --set training.max_steps=5 --resume

Config keys (unknown keys are an error, at every level)::

    model: embedded            # "embedded" (SmolLM2-135M), "tiny" (random 2-layer Llama), an HF id or a local folder
    dtype: float32             # float32 | bfloat16 | float16
    seed: 0                    # seeds the tiny model's init (TrainingArguments.seed seeds training)
    method: dft_reverse_kl     # sft | gem | dft_reverse_kl | dft_forward_kl | dft_sorted_w1 | ... or a divergence
    dft: {temperature: 1.0, ce_weight: 0.0, chunk_size: 1024, divergence_kwargs: {}}
    data:
      dataset: path/to/saved   # a target dataset saved with save_to_disk (e.g. by target_cache.build_or_load), or:
      corpus: shakespeare      # shakespeare | dialogue | techdocs, packed into blocks
      split: train
      block_size: 64
      max_blocks: 96
      targets:                 # omit for sft/gem
        source: reference      # teacher forcing through a reference model (targets.from_reference_model)
        reference_model: null  # defaults to `model`
        k: 64
        prefix: null           # a style prefix (context distillation)
        temperature: 1.0
        cache: null            # a name under .cache/targets or a folder; built once, reused while it matches
        rebuild: auto          # auto | never | always
    training: {...}            # any transformers.TrainingArguments field; output_dir is required
    resume_from_checkpoint: null   # true (latest in output_dir) or a checkpoint folder
    save_final: true           # save model + tokenizer to <output_dir>/final

The run writes ``<output_dir>/log_history.json`` (the Trainer's log, one entry per logged step) on the main process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import yaml

from .trainer import METHODS, DFTConfig, DFTTrainer, build_trainer

TOP_KEYS = {"model", "dtype", "seed", "method", "dft", "data", "training", "resume_from_checkpoint", "save_final"}
DATA_KEYS = {"dataset", "corpus", "split", "block_size", "max_blocks", "targets"}
TARGET_KEYS = {"source", "reference_model", "k", "prefix", "temperature", "cache", "rebuild"}
DFT_KEYS = {f.name for f in dataclasses.fields(DFTConfig)} - {"divergence"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_keys(section: dict, allowed: set, where: str) -> None:
    if not isinstance(section, dict):
        raise ValueError(f"config section {where!r} must be a mapping, got {type(section).__name__}.")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)} (see `python -m dftnb.train -h`).")


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """``--set a.b=value`` overrides (YAML-parsed values) on a nested config dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key.path=value, got {item!r}.")
        path, value = item.split("=", 1)
        node = config
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = yaml.safe_load(value)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read and validate a YAML config (see the module docstring); returns the nested dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config {path} does not exist; see configs/ for examples.")
    config = yaml.safe_load(path.read_text()) or {}
    config = apply_overrides(config, overrides or [])
    validate_config(config)
    return config


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` naming the offending key for anything the CLI would not use."""
    _check_keys(config, TOP_KEYS, "the top level")
    for required in ("model", "method", "data", "training"):
        if required not in config:
            raise ValueError(f"config needs a {required!r} key (see configs/ for examples).")
    if config.get("dtype", "float32") not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {config['dtype']!r}.")
    _check_keys(config.get("dft", {}), DFT_KEYS, "dft")
    data = config["data"]
    _check_keys(data, DATA_KEYS, "data")
    if ("dataset" in data) == ("corpus" in data):
        raise ValueError("data needs exactly one of 'dataset' (a saved target dataset) or 'corpus' (a corpus name).")
    if "targets" in data:
        _check_keys(data["targets"], TARGET_KEYS, "data.targets")
        if data["targets"].get("source", "reference") != "reference":
            raise ValueError(
                "the CLI builds targets with source 'reference' only; build other sources (samples, corpus kNN) "
                "with dftnb.target_cache.build_or_load and pass the saved folder as data.dataset."
            )
    training = config["training"]
    if not isinstance(training, dict) or "output_dir" not in training:
        raise ValueError("training needs at least output_dir (any transformers.TrainingArguments field is allowed).")
    dft_config(config)  # unknown methods / bad loss options fail here, before any model is loaded


def dft_config(config: dict) -> DFTConfig:
    return DFTConfig(divergence=METHODS.get(config["method"], config["method"]), **config.get("dft", {}))


def training_arguments(section: dict):
    """``TrainingArguments`` from the ``training`` section; unknown fields raise a ``ValueError`` naming them."""
    from transformers import HfArgumentParser, TrainingArguments

    defaults = {"report_to": "none", "logging_steps": 1}
    try:
        (args,) = HfArgumentParser(TrainingArguments).parse_dict({**defaults, **section}, allow_extra_keys=False)
    except ValueError as err:
        raise ValueError(f"training section: {err} (these must be transformers.TrainingArguments fields).") from err
    return args


def load_student(config: dict):
    """``(model, tokenizer)`` for ``config['model']`` (``"tiny"`` gives a random 2-layer Llama seeded by ``seed``)."""
    from .models import load_model, tiny_model

    dtype = DTYPES[config.get("dtype", "float32")]
    name = config["model"]
    if name == "tiny":
        model, tokenizer = tiny_model(seed=int(config.get("seed", 0)))
        return model.to(dtype), tokenizer
    return load_model(name, device="cpu", dtype=dtype)


def load_dataset(config: dict, model, tokenizer):
    """The training dataset: a saved target dataset, or corpus blocks (with reference-model targets if asked)."""
    from datasets import Dataset, load_from_disk

    data = config["data"]
    if "dataset" in data:
        path = Path(data["dataset"])
        if not path.exists():
            raise FileNotFoundError(f"data.dataset {path} does not exist; build it with dftnb.target_cache.build_or_load.")
        return load_from_disk(str(path))

    from . import target_cache, targets
    from .data import corpus_texts, pack_texts

    texts = corpus_texts(data["corpus"], data.get("split", "train"))
    blocks = pack_texts(tokenizer, texts, int(data.get("block_size", 64)), data.get("max_blocks"))
    spec = data.get("targets")
    if spec is None:
        if dft_config(config).needs_target:
            raise ValueError(f"method {config['method']!r} needs targets: add data.targets (or use method sft/gem).")
        return Dataset.from_dict({"input_ids": blocks, "labels": blocks})

    reference, ref_tokenizer = model, tokenizer
    if spec.get("reference_model") not in (None, config["model"]):
        reference, ref_tokenizer = load_student({**config, "model": spec["reference_model"]})
    k = int(spec.get("k", 64))
    params = {"prefix": spec.get("prefix"), "temperature": float(spec.get("temperature", 1.0))}
    block_size = int(data.get("block_size", 64))

    def build():
        return targets.from_reference_model(reference, ref_tokenizer, blocks, k=k, max_length=block_size, **params)

    if spec.get("cache") is None:
        return build()
    meta = target_cache.target_metadata(
        reference, ref_tokenizer, source="reference", corpus=f"{data['corpus']}/{data.get('split', 'train')}",
        k=k, model_name=str(spec.get("reference_model") or config["model"]), sequences=len(blocks),
        seq_len=block_size, **params,
    )
    return target_cache.build_or_load(spec["cache"], meta, build, spec.get("rebuild", "auto"))


def run(config: dict, resume: bool | str | None = None) -> DFTTrainer:
    """Build everything from a validated ``config`` and train; returns the trainer."""
    args = training_arguments(config["training"])
    # rank 0 first: it fills the model and target caches that the other ranks then read
    with args.main_process_first(desc="model and target dataset"):
        model, tokenizer = load_student(config)
        dataset = load_dataset(config, model, tokenizer)
    trainer = build_trainer(model, tokenizer, dataset, dft_config(config), args)
    resume = resume if resume is not None else config.get("resume_from_checkpoint")
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    if config.get("save_final", True):
        trainer.save_model(str(Path(args.output_dir) / "final"))
    return trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override, e.g. training.max_steps=5")
    parser.add_argument("--resume", nargs="?", const=True, default=None,
                        help="resume from the latest checkpoint in output_dir, or from the given checkpoint folder")
    args = parser.parse_args(argv)
    from .runner import quiet

    quiet()
    run(load_config(args.config, args.set), resume=args.resume)


if __name__ == "__main__":
    main(sys.argv[1:])
