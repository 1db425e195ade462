"""The YAML config of ``python -m dftnb.lab.train`` as typed dataclasses, one per section (``dft``:
:class:`dftnb.trainer.DFTConfig` fields, ``denoiser``: :class:`dftnb.denoise_training.DenoiserConfig`, ``training``:
``transformers.TrainingArguments`` fields). A bad input raises a ``ValueError`` naming the key and the fix: an unknown
key (and the allowed ones), a missing one, a value out of range or of the wrong type, checked as YAML wrote it
(``'5'`` is not an integer; an integer is a number, stored as a float).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from transformers import TrainingArguments

from ..denoise_training import DenoiserConfig
from ..trainer import METHODS, DFTConfig
from .data import CORPORA, SPLITS

# annotation -> (the Python types a YAML value of it may have, how an error message names it)
YAML_TYPES = {bool: (bool, "true or false"), int: (int, "an integer"), float: ((int, float), "a number"),
              str: (str, "a string"), dict: (dict, "a mapping"), list: (list, "a list"), tuple: (list, "a list"),
              type(None): (type(None), "null")}


class _Keyed:
    """Read access by key as well (``config["data"]["split"]``, ``config.get("dtype")``), as in the YAML mapping."""

    def __getitem__(self, key: str):
        return getattr(self, key)

    def get(self, key: str, default=None):
        return getattr(self, key, default)


def _at_least(key: str, value, low: int, meaning: str = "") -> None:
    if value is not None and value < low:
        raise ValueError(f"{key} must be >= {low}{f' ({meaning})' if meaning else ''}, got {value}.")


@dataclass
class TargetsConfig(_Keyed):
    """``data.targets``: the reference model's top-``k`` of ``softmax(z_ref / temperature)`` at every position of
    the corpus blocks, by teacher forcing (:func:`dftnb.targets.from_reference_model`)."""

    source: Literal["reference"] = field(default="reference", metadata={"expected": (
        "'reference' (build other sources, samples or corpus kNN, with dftnb.target_cache.build_or_load and pass the "
        "saved folder as data.dataset)")})
    reference_model: str | None = None
    k: int = 64
    prefix: str | None = None
    temperature: float = 1.0
    cache: str | None = None
    rebuild: Literal["auto", "never", "always"] = "auto"

    def __post_init__(self):
        _at_least("data.targets.k", self.k, 1, "target tokens per position")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"data.targets.temperature must be a finite number > 0 (1.0 keeps the reference's "
                             f"distribution; inf would make every target uniform), got {self.temperature}.")


@dataclass
class DataConfig(_Keyed):
    """``data``: a saved target ``dataset`` or a ``corpus`` split packed into blocks (with reference ``targets``)."""

    dataset: str | None = None
    corpus: Literal[CORPORA] | None = None
    split: Literal[tuple(SPLITS)] = "train"
    block_size: int = 64
    max_blocks: int | None = None
    targets: TargetsConfig | None = None

    def __post_init__(self):
        if (self.dataset is None) == (self.corpus is None):
            raise ValueError("data needs exactly one of 'dataset' (a saved target dataset) or 'corpus' (a corpus name).")
        _at_least("data.block_size", self.block_size, 2, "tokens per training row")
        _at_least("data.max_blocks", self.max_blocks, 1, "or null for all blocks")


@dataclass
class TrainConfig(_Keyed):
    """One training run (:mod:`dftnb.lab.train` lists the keys). ``objective`` is the :class:`DFTConfig` of
    ``method`` and the ``dft`` fields; ``training`` becomes ``TrainingArguments`` when the run starts."""

    model: str
    method: str
    data: DataConfig
    training: dict
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = 0
    dft: dict = field(default_factory=dict)
    resume_from_checkpoint: bool | str | None = field(default=None,
                                                      metadata={"expected": "true, false, null or a checkpoint folder"})
    save_final: bool = True
    denoiser: DenoiserConfig | None = None
    objective: DFTConfig = field(init=False)

    def __post_init__(self):
        self.training = checked_training(self.training)
        values = section_values(DFTConfig, self.dft, "dft", exclude={"divergence"})
        try:  # unknown methods / bad loss options fail here, before any model is loaded
            self.objective = DFTConfig(divergence=METHODS.get(self.method, self.method), **values)
        except ValueError as err:
            raise ValueError(f"method {self.method!r} / dft section: {err}") from None
        needed = 0 if self.denoiser is None else self.denoiser.min_prefix + self.denoiser.block_size
        if self.data.corpus is not None and self.data.block_size < needed:
            raise ValueError(f"data.block_size {self.data.block_size} is shorter than denoiser.min_prefix + "
                             f"denoiser.block_size = {needed}: raise data.block_size or lower the denoiser's sizes.")


# -- typed parsing -----------------------------------------------------------------------------------------------------
def _members(hint) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _matches(value, hint) -> bool:
    """Whether a YAML value has the type ``hint``, without coercion (``'5'`` is not an int, ``1`` is a float)."""
    if len(members := _members(hint)) > 1:
        return any(_matches(value, h) for h in members)
    if typing.get_origin(hint) is Literal:
        return value in typing.get_args(hint)
    base = typing.get_origin(hint) or hint
    return isinstance(value, YAML_TYPES.get(base, (base,))[0]) and (base is bool or not isinstance(value, bool))


def _describe(hint) -> str:
    if len(members := _members(hint)) > 1:
        return " or ".join(dict.fromkeys(_describe(h) for h in members))
    if typing.get_origin(hint) is Literal:
        return f"one of {sorted(typing.get_args(hint))}"
    base = typing.get_origin(hint) or hint
    if dataclasses.is_dataclass(base):
        return "a mapping"
    return YAML_TYPES[base][1] if base in YAML_TYPES else getattr(base, "__name__", str(hint))


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


def typed_value(key: str, value, hint, expected: str | None = None):
    """``value`` if it has the type ``hint`` (an integer for a float becomes a float), else a ``ValueError`` naming
    ``key``, what it must be (``expected``, or the type's description) and what YAML read."""
    if not _matches(value, hint):
        raise ValueError(f"{key} must be {expected or _describe(hint)}, got {value!r} ({type(value).__name__})"
                         f"{_yaml_hint(value)}.")
    members = _members(hint)
    return float(value) if float in members and int not in members and type(value) is int else value


def section_values(cls, section: dict, where: str, exclude=()) -> dict:
    """The keyword arguments of dataclass ``cls`` in the config mapping ``section`` at ``where`` (``""``: the top
    level), checked: an unknown or missing key or a value of the wrong type raises a ``ValueError`` naming it; a
    mapping for a field whose type is a dataclass is parsed in turn (:func:`parse_section`)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in exclude}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where or 'the top level'}; allowed: {sorted(fields)} "
                         "(see `python -m dftnb.lab.train -h`).")
    for name, f in fields.items():
        if name not in section and f.default is f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where or 'config'} needs a {name!r} key (see configs/ for examples).")
    hints, values = typing.get_type_hints(cls), {}
    for name, value in section.items():
        key = f"{where}.{name}" if where else name
        nested = next((h for h in _members(hints[name]) if dataclasses.is_dataclass(h)), None)
        values[name] = (parse_section(nested, value, key) if nested and isinstance(value, dict)
                        else typed_value(key, value, hints[name], fields[name].metadata.get("expected")))
    return values


def parse_section(cls, section, where: str):
    """The dataclass ``cls`` of ``section`` (:func:`section_values`); its ``__post_init__`` checks the ranges."""
    return cls(**section_values(cls, section, where))


def checked_training(training) -> dict:
    """The ``training`` section: ``TrainingArguments`` fields (``max_steps: null`` trains by epochs) of the right
    types, refusing the values that TrainingArguments accepts but that would train silently wrong (``max_steps`` 0 or
    negative trains ``num_train_epochs`` instead) or fail inside the first step (a batch size of 0, a negative or NaN
    learning rate, ``gradient_accumulation_steps`` 0)."""
    if not isinstance(training, dict) or "output_dir" not in training:
        raise ValueError("training needs at least output_dir (any transformers.TrainingArguments field is allowed).")
    hints = typing.get_type_hints(TrainingArguments)
    for key in sorted(set(training) - set(hints)):
        close = difflib.get_close_matches(key, hints, n=1)
        raise ValueError(f"unknown key {key!r} in training: not a transformers.TrainingArguments field"
                         + (f"; did you mean {close[0]!r}?" if close else "."))
    training = {key: value if (key, value) == ("max_steps", None) else typed_value(f"training.{key}", value, hints[key])
                for key, value in training.items()}
    if not training["output_dir"]:  # a string or None by its type
        raise ValueError(f"training.output_dir must be a string (a folder), got {training['output_dir']!r}.")
    for key, value in training.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"training.{key} must be a finite number, got {value}.")
    steps = training.get("max_steps")
    if steps is not None and steps < 1:
        raise ValueError(f"training.max_steps must be >= 1 (optimizer steps), got {steps}; to train for "
                         "training.num_train_epochs instead, remove max_steps (or --set training.max_steps=null).")
    if steps is None and not training.get("num_train_epochs", 3.0) > 0:
        raise ValueError(f"training.num_train_epochs must be > 0 when max_steps is not set, got "
                         f"{training['num_train_epochs']}; or set training.max_steps >= 1.")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        _at_least(f"training.{key}", training.get(key), 1)
    if not training.get("learning_rate", 5e-5) > 0:
        raise ValueError(f"training.learning_rate must be a finite number > 0 (e.g. 1.0e-4), got "
                         f"{training['learning_rate']}.")
    return training


# -- YAML and --set ----------------------------------------------------------------------------------------------------
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


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of the YAML file ``path`` with the ``--set`` ``overrides`` applied."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config {path} does not exist; see configs/ for examples.")
    config = _load_yaml(path.read_text(), f"config {path}") or {}
    if not isinstance(config, dict):
        raise ValueError(f"config {path} must be a mapping of keys (model, method, data, training, ...), "
                         f"got a {type(config).__name__}; see configs/ for examples.")
    return parse_section(TrainConfig, apply_overrides(config, overrides or []), "")
