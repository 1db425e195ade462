"""Command-line DFT training from a YAML config.

    python -m dftnb.lab.train --config configs/dft_reverse_kl.yaml
    accelerate launch -m dftnb.lab.train --config configs/dft_reverse_kl.yaml
    torchrun --nproc_per_node 2 -m dftnb.lab.train --config configs/dft_reverse_kl.yaml
    python -m dftnb.lab.train --config configs/dft_reverse_kl.yaml --set training.max_steps=5 --resume

Config keys (unknown keys are an error, at every level; so is a value of the wrong type)::

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
import dataclasses
import difflib
import enum
import functools
import json
import math
import re
import shutil
import sys
import types
import typing
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from ..target_shards import World, build_or_load_sharded
from ..trainer import METHODS, DFTConfig, DFTTrainer, build_trainer

TOP_KEYS = {"model", "dtype", "seed", "method", "dft", "data", "training", "resume_from_checkpoint", "save_final",
            "denoiser"}
DATA_KEYS = {"dataset", "corpus", "split", "block_size", "max_blocks", "targets"}
TARGET_KEYS = {"source", "reference_model", "k", "prefix", "temperature", "cache", "rebuild"}
DFT_KEYS = {f.name for f in dataclasses.fields(DFTConfig)} - {"divergence"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REBUILD = ("auto", "never", "always")

# The type of every scalar key (the sections dft and training take theirs from DFTConfig / TrainingArguments).
TOP_TYPES = {"model": str, "seed": int, "method": str, "save_final": bool}
DATA_TYPES = {"dataset": str, "corpus": str, "split": str, "block_size": int, "max_blocks": int | None}
TARGET_TYPES = {"source": str, "reference_model": str | None, "k": int, "prefix": str | None, "temperature": float,
                "cache": str | None, "rebuild": str}

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
RUN_ENTRIES = ("log_history.json", "final")  # with checkpoint-*: what a run leaves in its output_dir
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


# -- config ------------------------------------------------------------------------------------------------------------
def _check_keys(section: dict, allowed: set, where: str) -> None:
    if not isinstance(section, dict):
        raise ValueError(f"config section {where!r} must be a mapping, got {type(section).__name__}.")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)} (see `python -m dftnb.lab.train -h`).")


def _matches(value, hint) -> bool:
    """Whether a YAML value has the type ``hint`` (no coercion: ``'5'`` is not an int, ``1`` is a float)."""
    if hint is typing.Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if base is dict:
        return isinstance(value, dict)
    if base in (list, tuple):
        return isinstance(value, (list, tuple))
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return isinstance(value, (str, base))
    return True  # a class a YAML file cannot write (an accelerate config, ...): left to its consumer


def _describe(hint) -> str:
    if hint is None or hint is type(None):
        return "null"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(h) for h in typing.get_args(hint)))
    if typing.get_origin(hint) is typing.Literal:
        return f"one of {list(typing.get_args(hint))}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
             list: "a list", tuple: "a list"}
    return names.get(typing.get_origin(hint) or hint, getattr(hint, "__name__", str(hint)))


def _yaml_hint(value) -> str:
    """Why a number came out of YAML as a string, and how to write it."""
    if not isinstance(value, str):
        return ""
    exponent = re.fullmatch(r"([+-]?\d+(?:\.\d*)?)[eE]([+-]?)(\d+)", value.strip())
    if exponent:
        mantissa, sign, digits = exponent.groups()
        written = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{sign or '+'}{digits}"
        return f"; YAML reads {value} as a string: write {written} (a dot and a signed exponent)"
    try:
        float(value)
    except ValueError:
        return ""
    return "; it is quoted, so YAML reads it as a string: remove the quotes"


def _check_type(where: str, value, hint) -> None:
    if not _matches(value, hint):
        raise ValueError(
            f"{where} must be {_describe(hint)}, got {value!r} ({type(value).__name__}){_yaml_hint(value)}."
        )


def _check_choice(where: str, value, choices) -> None:
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"{where} must be one of {sorted(choices)}, got {value!r}.")


def _check_section_types(section: dict, hints: dict, where: str) -> None:
    for key, value in section.items():
        if key in hints:
            _check_type(f"{where}.{key}" if where else key, value, hints[key])


@functools.cache
def _training_hints() -> dict:
    from transformers import TrainingArguments

    return typing.get_type_hints(TrainingArguments)


def _load_yaml(text: str, where: str):
    """``yaml.safe_load(text)``; a syntax error becomes a ``ValueError`` naming ``where`` (the file or the ``--set``
    item), the line and column, and what to do."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        lines = text.splitlines() or [""]

        def place(mark) -> str:
            line = f"line {mark.line + 1}, " if len(lines) > 1 else ""
            shown = f" {lines[mark.line][:80]!r}" if mark.line < len(lines) else " (the end of the text)"
            return f"{line}column {mark.column + 1}{shown}"

        mark, context = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        at = f" at {place(mark)}" if mark is not None else ""
        if context is not None and getattr(err, "context", None) and (mark is None or context.line != mark.line
                                                                      or context.column != mark.column):
            at += f" ({err.context} that starts at {place(context)})"
        fix = ("indent with spaces: YAML does not allow tabs" if "\\t" in problem else
               "fix the YAML there (see configs/ for examples; quote a string that holds : [ ] { } # or a leading *)")
        raise ValueError(f"{where} is not valid YAML: {problem}{at}; {fix}.") from None


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """``--set a.b=value`` overrides (YAML-parsed values) on a nested config dict, in order."""
    for item in overrides:
        path, sep, value = item.partition("=")
        keys = path.strip().split(".")
        if not sep or not all(keys):
            raise ValueError(f"--set expects key.path=value (e.g. training.max_steps=5), got {item!r}.")
        node = config
        for depth, key in enumerate(keys[:-1]):
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                where = ".".join(keys[: depth + 1])
                raise ValueError(f"--set {item}: {where} is {node!r}, not a mapping, so it has no key {keys[depth + 1]!r}.")
        node[keys[-1]] = _load_yaml(value, f"--set {item}: the value")
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read and validate a YAML config (see the module docstring); returns the nested dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config {path} does not exist; see configs/ for examples.")
    config = _load_yaml(path.read_text(), f"config {path}") or {}
    if not isinstance(config, dict):
        raise ValueError(f"config {path} must be a mapping of keys (model, method, data, training, ...), "
                         f"got a {type(config).__name__}; see configs/ for examples.")
    config = apply_overrides(config, overrides or [])
    validate_config(config)
    return config


def validate_config(config: dict) -> None:
    """Raise ``ValueError`` naming the offending key for anything the CLI would not use: unknown keys, values of the
    wrong type (no coercion), out-of-range sizes and unknown choices."""
    from transformers import TrainingArguments

    from .data import CORPORA, SPLITS

    _check_keys(config, TOP_KEYS, "the top level")
    for required in ("model", "method", "data", "training"):
        if required not in config:
            raise ValueError(f"config needs a {required!r} key (see configs/ for examples).")
    _check_section_types(config, TOP_TYPES, "")
    _check_choice("dtype", config.get("dtype", "float32"), DTYPES)
    resume = config.get("resume_from_checkpoint")
    if not (resume is None or isinstance(resume, (bool, str))):
        raise ValueError(f"resume_from_checkpoint must be true, false, null or a checkpoint folder, got {resume!r}.")
    dft = config.get("dft", {})
    _check_keys(dft, DFT_KEYS, "dft")
    _check_section_types(dft, typing.get_type_hints(DFTConfig), "dft")

    data = config["data"]
    _check_keys(data, DATA_KEYS, "data")
    if ("dataset" in data) == ("corpus" in data):
        raise ValueError("data needs exactly one of 'dataset' (a saved target dataset) or 'corpus' (a corpus name).")
    _check_section_types(data, DATA_TYPES, "data")
    if "corpus" in data:
        _check_choice("data.corpus", data["corpus"], CORPORA)
    _check_choice("data.split", data.get("split", "train"), SPLITS)
    if data.get("block_size", 64) < 2:
        raise ValueError(f"data.block_size must be >= 2 (tokens per training row), got {data['block_size']}.")
    if data.get("max_blocks") is not None and data["max_blocks"] < 1:
        raise ValueError(f"data.max_blocks must be >= 1 (or null for all blocks), got {data['max_blocks']}.")
    if "targets" in data:
        spec = data["targets"]
        _check_keys(spec, TARGET_KEYS, "data.targets")
        _check_section_types(spec, TARGET_TYPES, "data.targets")
        if spec.get("source", "reference") != "reference":
            raise ValueError(
                "the CLI builds targets with source 'reference' only; build other sources (samples, corpus kNN) "
                "with dftnb.target_cache.build_or_load and pass the saved folder as data.dataset."
            )
        if spec.get("k", 64) < 1:
            raise ValueError(f"data.targets.k must be >= 1 (target tokens per position), got {spec['k']}.")
        temperature = spec.get("temperature", 1.0)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"data.targets.temperature must be a finite number > 0 (1.0 keeps the reference's "
                             f"distribution; inf would make every target uniform), got {temperature}.")
        _check_choice("data.targets.rebuild", spec.get("rebuild", "auto"), REBUILD)

    training = config["training"]
    if not isinstance(training, dict) or "output_dir" not in training:
        raise ValueError("training needs at least output_dir (any transformers.TrainingArguments field is allowed).")
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    for key in sorted(set(training) - fields):
        close = difflib.get_close_matches(key, fields, n=1)
        raise ValueError(f"unknown key {key!r} in training: not a transformers.TrainingArguments field"
                         + (f"; did you mean {close[0]!r}?" if close else "."))
    by_epochs = training.get("max_steps", 0) is None  # null: train for num_train_epochs (TrainingArguments' -1)
    _check_section_types({k: v for k, v in training.items() if not (k == "max_steps" and by_epochs)},
                         _training_hints(), "training")
    if not isinstance(training["output_dir"], str) or not training["output_dir"]:
        raise ValueError(f"training.output_dir must be a string (a folder), got {training['output_dir']!r}.")
    check_training_values(training)
    try:
        dft_config(config)  # unknown methods / bad loss options fail here, before any model is loaded
    except ValueError as err:
        raise ValueError(f"method {config['method']!r} / dft section: {err}") from None
    denoiser = denoiser_config(config)
    if denoiser is not None and "corpus" in data and data.get("block_size", 64) < denoiser.min_prefix + denoiser.block_size:
        raise ValueError(
            f"data.block_size {data.get('block_size', 64)} is shorter than denoiser.min_prefix + denoiser.block_size = "
            f"{denoiser.min_prefix + denoiser.block_size}: raise data.block_size or lower the denoiser's sizes."
        )


def check_training_values(training: dict) -> None:
    """The ``training`` values that TrainingArguments accepts but that would train silently wrong (``max_steps`` 0
    or negative trains ``num_train_epochs`` instead) or fail inside the first step (batch size 0, a negative or NaN
    learning rate, ``gradient_accumulation_steps`` 0); raise a ``ValueError`` naming the key and the fix."""
    for key, value in training.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"training.{key} must be a finite number, got {value}.")
    steps = training.get("max_steps")
    if steps is not None and steps < 1:
        raise ValueError(
            f"training.max_steps must be >= 1 (optimizer steps), got {steps}; to train for training.num_train_epochs "
            "instead, remove max_steps (or --set training.max_steps=null)."
        )
    if steps is None and not training.get("num_train_epochs", 3.0) > 0:
        raise ValueError(f"training.num_train_epochs must be > 0 when max_steps is not set, got "
                         f"{training['num_train_epochs']}; or set training.max_steps >= 1.")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if training.get(key, 1) < 1:
            raise ValueError(f"training.{key} must be >= 1, got {training[key]}.")
    if not training.get("learning_rate", 5e-5) > 0:
        raise ValueError(f"training.learning_rate must be a finite number > 0 (e.g. 1.0e-4), got "
                         f"{training['learning_rate']}.")


def check_config_against_model(config: dict, model, tokenizer=None, role: str = "model") -> None:
    """What ``config`` asks of the loaded ``model``, checked before any target is built: ``data.block_size`` within
    the model's context (``max_position_embeddings``; longer positions are out of what it was trained on, and the
    target build would run for a long time on them) and ``data.targets.k`` within its vocabulary."""
    from .models import model_vocab_size

    data = config["data"]
    context = getattr(model.config, "max_position_embeddings", None)
    block_size = data.get("block_size", 64)
    prefix = (data.get("targets") or {}).get("prefix")
    extra = len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix and tokenizer is not None else 0
    if "corpus" in data and context and block_size + extra > context:
        what = f"data.block_size {block_size}" + (f" + the prefix's {extra} tokens" if extra else "")
        raise ValueError(
            f"{what} exceeds the {role}'s context length (max_position_embeddings = {context}); lower "
            f"data.block_size to at most {context - extra}."
        )
    if "corpus" in data and "targets" in data:
        k, vocab = data["targets"].get("k", 64), model_vocab_size(model, tokenizer)
        if k > vocab:
            raise ValueError(f"data.targets.k {k} exceeds the {role}'s vocabulary size ({vocab}); lower data.targets.k "
                             f"to at most {vocab}.")


def denoiser_config(config: dict):
    """The :class:`dftnb.denoise_training.DenoiserConfig` of the ``denoiser`` section, or ``None`` without one."""
    section = config.get("denoiser")
    if section is None:
        return None
    from ..denoise_training import DenoiserConfig

    _check_keys(section, {f.name for f in dataclasses.fields(DenoiserConfig)}, "denoiser")
    _check_section_types(section, typing.get_type_hints(DenoiserConfig), "denoiser")
    return DenoiserConfig(**section)


def dft_config(config: dict) -> DFTConfig:
    return DFTConfig(divergence=METHODS.get(config["method"], config["method"]), **config.get("dft", {}))


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
    return dataset_loader(config, model, tokenizer)(World())


TARGET_BATCH = 4  # blocks per reference forward pass; the shards of a sharded build start on multiples of it


def dataset_loader(config: dict, model, tokenizer) -> Callable[[World], object]:
    """Read what the dataset is made of (a saved dataset, or the corpus blocks and the reference model: the steps
    that fill the corpus and model caches) and return ``finish(world)``, which returns the dataset.

    ``finish`` builds the reference targets when asked; with a ``cache`` and several processes in ``world`` the
    processes build it together, each its slice of the blocks (:func:`dftnb.target_shards.build_or_load_sharded`),
    so every process must call it.
    """
    from datasets import Dataset

    from .. import target_cache, targets

    data = config["data"]
    if "dataset" in data:
        path = Path(data["dataset"])
        if not path.exists():
            raise FileNotFoundError(f"data.dataset {path} does not exist; build it with dftnb.target_cache.build_or_load.")
        dataset = target_cache.load_target_dataset(path)
        return lambda world: dataset

    from .data import corpus_texts, pack_texts

    texts = corpus_texts(data["corpus"], data.get("split", "train"))
    blocks = pack_texts(tokenizer, texts, int(data.get("block_size", 64)), data.get("max_blocks"))
    spec = data.get("targets")
    if spec is None:
        if dft_config(config).needs_target:
            raise ValueError(f"method {config['method']!r} needs targets: add data.targets (or use method sft/gem).")
        return lambda world: Dataset.from_dict({"input_ids": blocks, "labels": blocks})

    reference, ref_tokenizer = model, tokenizer
    if spec.get("reference_model") not in (None, config["model"]):
        reference, ref_tokenizer = load_student({**config, "model": spec["reference_model"]})
        check_config_against_model(config, reference, ref_tokenizer, role="reference model")
    k = int(spec.get("k", 64))
    params = {"prefix": spec.get("prefix"), "temperature": float(spec.get("temperature", 1.0))}
    block_size = int(data.get("block_size", 64))

    def build(items=blocks):
        return targets.from_reference_model(reference, ref_tokenizer, items, k=k, max_length=block_size,
                                            batch_size=TARGET_BATCH, **params)

    if spec.get("cache") is None:  # record the reference's tokenizer, which build_trainer checks against the student
        return lambda world: target_cache.record_tokenizer_hash(build(), target_cache.tokenizer_hash(ref_tokenizer))
    meta = target_cache.target_metadata(
        reference, ref_tokenizer, source="reference", corpus=f"{data['corpus']}/{data.get('split', 'train')}",
        k=k, model_name=str(spec.get("reference_model") or config["model"]), sequences=len(blocks),
        seq_len=block_size, **params,
    )
    return lambda world: build_or_load_sharded(spec["cache"], meta, build, blocks, spec.get("rebuild", "auto"),
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


def run(config: dict, resume: bool | str | None = None, overwrite: bool = False) -> DFTTrainer:
    """Build everything from a validated ``config`` and train; returns the trainer.

    ``resume``: ``True`` (last complete checkpoint in output_dir), a checkpoint folder, or ``None`` for the config's
    ``resume_from_checkpoint``. An output_dir that holds an earlier run is refused unless resuming or ``overwrite``.
    """
    args = training_arguments(config["training"])
    out = Path(args.output_dir)
    file = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if file is not None:
        where = "is a file" if file == out else f"is inside {file}, which is a file"
        raise NotADirectoryError(f"training.output_dir {out} {where}, not a folder: choose a folder for the run "
                                 "(--set training.output_dir=...).")
    resume = resume if resume is not None else config.get("resume_from_checkpoint")
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
        _note_unchecked_tokenizer(dataset, dft_config(config))
    denoiser = denoiser_config(config)
    if denoiser is None:
        trainer = build_trainer(model, tokenizer, dataset, dft_config(config), args)
    else:
        from ..denoise_training import build_denoiser_trainer, freeze_embeddings

        freeze_embeddings(model, denoiser)
        trainer = build_denoiser_trainer(model, tokenizer, dataset, dft_config(config), args, denoiser)
    trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    if config.get("save_final", True):
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
