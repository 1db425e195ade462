"""Command-line DFT training from a YAML config.

    python -m dftnb.lab.train --config configs/dft_reverse_kl.yaml
    accelerate launch -m dftnb.lab.train --config configs/dft_reverse_kl.yaml
    torchrun --nproc_per_node 2 -m dftnb.lab.train --config configs/dft_reverse_kl.yaml
    python -m dftnb.lab.train --config configs/dft_reverse_kl.yaml --set training.max_steps=5 --resume

Config keys (parsed by dftnb.lab.train_config; an unknown key or a value of the wrong type is an error)::

    model: embedded            # "embedded" (SmolLM2-135M), "tiny" (random 2-layer Llama), an HF id or a local folder
    dtype: float32             # float32 | bfloat16 | float16
    seed: 0                    # seeds the tiny model's init (TrainingArguments.seed seeds training)
    method: dft_reverse_kl     # sft | gem | dft_reverse_kl | dft_forward_kl | dft_sorted_w1 | ... or a divergence
    dft: {temperature: 1.0, ce_weight: 0.0, chunk_size: 1024, divergence_kwargs: {}}
    data:
      dataset: path/to/saved   # a target dataset saved with save_to_disk (e.g. by target_cache.build_or_load), or:
      corpus: shakespeare      # shakespeare | dialogue | techdocs, packed into blocks
      split: train             # train | validation | test
      block_size: 64           # tokens per block, >= 2
      max_blocks: 96           # >= 1, or null for every block of the split
      targets:                 # omit for sft/gem
        source: reference      # teacher forcing through a reference model (targets.from_reference_model)
        reference_model: null  # defaults to `model`
        k: 64
        prefix: null           # a style prefix (context distillation)
        temperature: 1.0
        cache: null            # a name under .cache/targets or a folder; built once, reused while it matches;
                               # under torchrun / accelerate launch each process builds its slice of the blocks
        rebuild: auto          # auto | never | always
    training: {...}            # any transformers.TrainingArguments field; output_dir is required
    resume_from_checkpoint: null   # true (latest complete checkpoint in output_dir) or a checkpoint folder
    save_final: true           # save model + tokenizer to <output_dir>/final
    denoiser: null             # {block_size: 8, K: 5.0, ...}: train the block denoiser on noisy simplex inputs
                               # (dftnb.denoise_training.DenoiserConfig fields; method sft = CE, dft_* = DFT targets)

Flags: ``--set key.path=value`` (repeatable; each flag may hold several overrides, values are YAML), ``--resume``
[folder] and ``--overwrite``. An output_dir that already holds a run (``checkpoint-*``, ``final``,
``log_history.json``) is refused unless the run is resumed (``--resume``) or replaced (``--overwrite``, which deletes
those entries first). ``--resume`` without a folder resumes from the last *complete* checkpoint, skipping (and
naming) any that an interrupted save left incomplete.

The run writes ``<output_dir>/log_history.json`` (the Trainer's log, one entry per logged step) on the main process.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..target_shards import World, build_or_load_sharded
from ..trainer import DFTConfig, DFTTrainer, build_trainer
from .train_config import TrainConfig, load_config

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
RUN_ENTRIES = ("log_history.json", "final")  # with checkpoint-*: what a run leaves in its output_dir
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


# -- config ------------------------------------------------------------------------------------------------------------
def check_config_against_model(config: TrainConfig, model, tokenizer=None, role: str = "model") -> None:
    """What ``config`` asks of the loaded ``model``, checked before any target is built: ``data.block_size`` within
    the model's context (``max_position_embeddings``; longer positions are out of what it was trained on, and the
    target build would run for a long time on them) and ``data.targets.k`` within its vocabulary."""
    from .models import model_vocab_size

    data = config.data
    context = getattr(model.config, "max_position_embeddings", None)
    prefix = data.targets and data.targets.prefix
    extra = len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix and tokenizer is not None else 0
    if data.corpus is not None and context and data.block_size + extra > context:
        what = f"data.block_size {data.block_size}" + (f" + the prefix's {extra} tokens" if extra else "")
        raise ValueError(
            f"{what} exceeds the {role}'s context length (max_position_embeddings = {context}); lower "
            f"data.block_size to at most {context - extra}."
        )
    targets = data.targets if data.corpus is not None else None
    if targets is not None and targets.k > (vocab := model_vocab_size(model, tokenizer)):
        raise ValueError(f"data.targets.k {targets.k} exceeds the {role}'s vocabulary size ({vocab}); lower data.targets.k to "
                         f"at most {vocab}.")


def denoiser_config(config: TrainConfig):
    """The :class:`dftnb.denoise_training.DenoiserConfig` of the ``denoiser`` section, or ``None`` without one."""
    return config.denoiser


def training_arguments(section: dict):
    """``TrainingArguments`` from the ``training`` section; unknown fields raise a ``ValueError`` naming them."""
    from transformers import HfArgumentParser, TrainingArguments

    defaults = {"report_to": "none", "logging_steps": 1}
    section = {k: v for k, v in section.items() if not (k == "max_steps" and v is None)}  # null: train by epochs
    try:
        (args,) = HfArgumentParser(TrainingArguments).parse_dict({**defaults, **section}, allow_extra_keys=False)
    except ValueError as err:
        raise ValueError(f"training section: {err} (these must be transformers.TrainingArguments fields).") from err
    return args


# -- output directory and checkpoints ---------------------------------------------------------------------------------
def previous_run(output_dir: str | Path) -> list[str]:
    """The entries of an earlier run in ``output_dir`` (``checkpoint-*``, ``final``, ``log_history.json``)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name in RUN_ENTRIES or CHECKPOINT.match(p.name))


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            return f"{path.name} is truncated ({size} bytes, shorter than its header)"
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{path.name} is truncated ({size} bytes where its header describes {8 + n + end})"
    return None


def _file_problem(path: Path) -> str | None:
    """Why a checkpoint file is unusable (empty, truncated, not parseable), or None. Cheap: headers and zip
    directories only, never the tensors."""
    try:
        if path.stat().st_size == 0:
            return f"{path.name} is empty"
        if path.suffix == ".safetensors":
            return _safetensors_problem(path)
        if path.suffix == ".json":
            record = json.loads(path.read_text())
            if path.name.endswith(".index.json"):
                missing = sorted({s for s in record.get("weight_map", {}).values() if not (path.parent / s).is_file()})
                if missing:
                    return f"{path.name} lists {missing[0]}, which is missing"
        elif path.suffix in (".pt", ".pth", ".bin"):
            with open(path, "rb") as f:
                zipped = f.read(2) == b"PK"  # torch.save's zip format; an old pickle file is not checked
            if zipped:
                with zipfile.ZipFile(path):  # its directory is at the end: a truncated file has none
                    pass
    except zipfile.BadZipFile:
        return f"{path.name} is truncated (its zip directory is missing)"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{path.name} is truncated or not valid (it does not parse)"
    return None


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why a ``checkpoint-N`` folder cannot be resumed from (typically a save that was interrupted), or None.

    A complete checkpoint has ``trainer_state.json`` (the Trainer writes it last), model weights, and no empty,
    truncated or unparseable file.
    """
    folder = Path(folder)
    if not (folder / "trainer_state.json").is_file():
        return "it has no trainer_state.json"
    entries = list(folder.iterdir())
    if not any((folder / w).is_file() for w in WEIGHT_FILES) and not any(p.is_dir() for p in entries):
        return "it has no model weights (model.safetensors)"
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (problem := _file_problem(path)):
            return problem
    return None


def _checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir``, latest (highest N) first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)), reverse=True)


def resolve_resume(resume: bool | str | None, output_dir: str | Path, verbose: bool = True) -> str | None:
    """The checkpoint folder to resume from: ``None`` (no resume), the last complete ``checkpoint-N`` of
    ``output_dir`` for ``True`` (incomplete ones are skipped and named on stderr), or the given folder once checked.
    """
    if resume is None or resume is False:
        return None
    out = Path(output_dir)
    if resume is True:
        checkpoints = _checkpoints(out)
        if not checkpoints:
            raise FileNotFoundError(
                f"--resume: no checkpoint-* folder in {out} to resume from; run without --resume to start training "
                "(training.save_strategy / save_steps set how often checkpoints are written)."
            )
        skipped = []
        for folder in checkpoints:
            problem = checkpoint_problem(folder)
            if problem is None:
                if verbose:
                    for name, why in skipped:
                        print(f"--resume: skipped {name}: {why} (an interrupted save?)", file=sys.stderr)
                    if skipped:
                        print(f"--resume: resuming from {folder.name}, the last complete checkpoint", file=sys.stderr)
                return str(folder)
            skipped.append((folder.name, problem))
        details = "; ".join(f"{name}: {why}" for name, why in skipped)
        raise ValueError(
            f"--resume: none of the {len(skipped)} checkpoints in {out} is complete ({details}); they are interrupted "
            "saves: start again with --overwrite, or without --resume into another training.output_dir."
        )
    folder = Path(resume)
    if not folder.is_dir():
        raise FileNotFoundError(f"--resume {folder}: no such checkpoint folder; pass --resume alone to resume from "
                                "the last complete checkpoint in training.output_dir.")
    problem = checkpoint_problem(folder)
    if problem:
        complete = next((c.name for c in _checkpoints(folder.parent) if checkpoint_problem(c) is None), None)
        other = f"resume from {folder.parent / complete}" if complete else "start again with --overwrite"
        raise ValueError(
            f"checkpoint {folder} is incomplete: {problem} (an interrupted save?); {other}, or pass --resume without "
            "a folder to pick the last complete checkpoint."
        )
    return str(folder)


def _clear_previous_run(output_dir: Path, entries: list[str]) -> None:
    for name in entries:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# -- model, data, run ------------------------------------------------------------------------------------------------
def load_student(config: TrainConfig, name: str | None = None):
    """``(model, tokenizer)`` for ``name`` (default ``config.model``) in ``config.dtype`` (``"tiny"`` gives a random
    2-layer Llama seeded by ``config.seed``)."""
    from .models import load_model, tiny_model

    dtype, name = getattr(torch, config.dtype), name or config.model
    if name == "tiny":
        model, tokenizer = tiny_model(seed=config.seed)
        return model.to(dtype), tokenizer
    return load_model(name, device="cpu", dtype=dtype)


def load_dataset(config: TrainConfig, model, tokenizer):
    """The training dataset: a saved target dataset, or corpus blocks (with reference-model targets if asked)."""
    return dataset_loader(config, model, tokenizer)(World())


TARGET_BATCH = 4  # blocks per reference forward pass; the shards of a sharded build start on multiples of it


def dataset_loader(config: TrainConfig, model, tokenizer) -> Callable[[World], object]:
    """Read what the dataset is made of (a saved dataset, or the corpus blocks and the reference model: the steps
    that fill the corpus and model caches) and return ``finish(world)``, which returns the dataset.

    ``finish`` builds the reference targets when asked; with a ``cache`` and several processes in ``world`` the
    processes build it together, each its slice of the blocks (:func:`dftnb.target_shards.build_or_load_sharded`),
    so every process must call it.
    """
    from datasets import Dataset

    from .. import target_cache, targets

    data, spec = config.data, config.data.targets
    if data.dataset is not None:
        path = Path(data.dataset)
        if not path.exists():
            raise FileNotFoundError(f"data.dataset {path} does not exist; build it with dftnb.target_cache.build_or_load.")
        dataset = target_cache.load_target_dataset(path)
        return lambda world: dataset

    from .data import corpus_texts, pack_texts

    blocks = pack_texts(tokenizer, corpus_texts(data.corpus, data.split), data.block_size, data.max_blocks)
    if spec is None:
        if config.objective.needs_target:
            raise ValueError(f"method {config.method!r} needs targets: add data.targets (or use method sft/gem).")
        return lambda world: Dataset.from_dict({"input_ids": blocks, "labels": blocks})

    reference, ref_tokenizer = model, tokenizer
    if spec.reference_model not in (None, config.model):
        reference, ref_tokenizer = load_student(config, spec.reference_model)
        check_config_against_model(config, reference, ref_tokenizer, role="reference model")
    params = {"prefix": spec.prefix, "temperature": spec.temperature}

    def build(items=blocks):
        return targets.from_reference_model(reference, ref_tokenizer, items, k=spec.k, max_length=data.block_size,
                                            batch_size=TARGET_BATCH, **params)

    if spec.cache is None:  # record the reference's tokenizer, which build_trainer checks against the student
        return lambda world: target_cache.record_tokenizer_hash(build(), target_cache.tokenizer_hash(ref_tokenizer))
    meta = target_cache.target_metadata(
        reference, ref_tokenizer, source="reference", corpus=f"{data.corpus}/{data.split}", k=spec.k,
        model_name=spec.reference_model or config.model, sequences=len(blocks), seq_len=data.block_size, **params,
    )
    return lambda world: build_or_load_sharded(spec.cache, meta, build, blocks, spec.rebuild,
                                               world=world, align=TARGET_BATCH)


def _note_unchecked_tokenizer(dataset, objective: DFTConfig) -> None:
    """Say on stderr (the CLI silences warnings) when build_trainer cannot compare the targets' tokenizer with the
    student's because the dataset records none."""
    from ..target_cache import target_info

    if not objective.needs_target or "target_ids" not in dataset.column_names:
        return
    try:
        recorded = target_info(dataset).get("tokenizer_hash")
    except ValueError:
        return  # no builder record at all: build_trainer refuses the dataset with its own message
    if recorded is None:
        print("note: the target dataset records no tokenizer hash, so it cannot be checked that its targets were built "
              "with the student's tokenizer (only the vocabulary size is checked); save it through "
              "dftnb.target_cache.build_or_load, which records the hash.", file=sys.stderr)


def run(config: TrainConfig, resume: bool | str | None = None, overwrite: bool = False) -> DFTTrainer:
    """Build everything from a validated ``config`` and train; returns the trainer.

    ``resume``: ``True`` (last complete checkpoint in output_dir), a checkpoint folder, or ``None`` for the config's
    ``resume_from_checkpoint``. An output_dir that holds an earlier run is refused unless resuming or ``overwrite``.
    """
    args = training_arguments(config.training)
    out = Path(args.output_dir)
    file = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if file is not None:
        where = "is a file" if file == out else f"is inside {file}, which is a file"
        raise NotADirectoryError(f"training.output_dir {out} {where}, not a folder: choose a folder for the run "
                                 "(--set training.output_dir=...).")
    resume = resume if resume is not None else config.resume_from_checkpoint
    existing = previous_run(out)
    if resume and overwrite:
        raise ValueError("--resume continues the run in output_dir and --overwrite deletes it: pass one of them.")
    if existing and not resume and not overwrite:
        raise FileExistsError(
            f"training.output_dir {out} already holds a run ({', '.join(existing)}): training again would overwrite "
            "it. Pass --overwrite to replace it, --resume to continue it, or choose another directory "
            "(--set training.output_dir=...)."
        )
    checkpoint = resolve_resume(resume, out, verbose=args.process_index == 0)
    # rank 0 first: it clears a run being overwritten and fills the model and corpus caches the other ranks read
    with args.main_process_first(desc="model and corpus"):
        model, tokenizer = load_student(config)
        check_config_against_model(config, model, tokenizer)  # before any target is built
        finish = dataset_loader(config, model, tokenizer)
        if overwrite and existing and args.process_index == 0:  # only once the model and the data are known good
            _clear_previous_run(out, existing)
    dataset = finish(World.current())  # every rank at once: a target cache is built in slices, one per rank
    if args.process_index == 0:
        _note_unchecked_tokenizer(dataset, config.objective)
    denoiser = config.denoiser
    if denoiser is None:
        trainer = build_trainer(model, tokenizer, dataset, config.objective, args)
    else:
        from ..denoise_training import build_denoiser_trainer, freeze_embeddings

        freeze_embeddings(model, denoiser)
        trainer = build_denoiser_trainer(model, tokenizer, dataset, config.objective, args, denoiser)
    trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    if config.save_final:
        trainer.save_model(str(out / "final"))
    return trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--set", action="extend", nargs="+", default=None, metavar="KEY=VALUE",
                        help="override, e.g. training.max_steps=5; repeat the flag (or list several) for more")
    parser.add_argument("--resume", nargs="?", const=True, default=None,
                        help="resume from the last complete checkpoint in output_dir, or from the given checkpoint folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in output_dir (its checkpoint-*, final and log_history.json)")
    args = parser.parse_args(argv)
    args.set = args.set or []
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from .runner import quiet

    quiet()
    run(load_config(args.config, args.set), resume=args.resume, overwrite=args.overwrite)


if __name__ == "__main__":
    main(sys.argv[1:])
