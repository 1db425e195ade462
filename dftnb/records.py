"""How results name what produced them: a model by name and content hash, a path relative to the repository, a
command without the machine's absolute paths. Committed results must not depend on, or reveal, where they were
computed; every writer of provenance (the study, the MMLU harness, the target cache key, the benchmarks) uses these.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent
CACHE_ENV = "DFTNB_CACHE"


def portable_path(path: str | os.PathLike) -> str:
    """``path`` as provenance records it, never absolute: relative to the repository root when inside it (posix
    separators), ``$DFTNB_CACHE/<rest>`` when inside that cache, otherwise only its name. A relative path is returned
    unchanged."""
    raw = os.fspath(path)
    p = Path(raw)
    if not p.is_absolute():
        return raw
    roots = [(REPO, "")]
    if os.environ.get(CACHE_ENV):
        roots.append((Path(os.environ[CACHE_ENV]), f"${CACHE_ENV}/"))
    for candidate in (Path(os.path.normpath(p)), p.resolve()):
        for root, prefix in roots:
            for base in (root, root.resolve()):
                if candidate.is_relative_to(base):
                    return prefix + candidate.relative_to(base).as_posix()
    return p.name


def portable_argv(argv: list[str] | None = None) -> list[str]:
    """The command line ``argv`` (default ``sys.argv``) as provenance records it: a module of this package as
    ``python -m dftnb[.<subpackage>].<module>``, any other ``.py`` script as ``python <script>``, and every absolute path (an
    argument or the value of ``--flag=path``) through :func:`portable_path`."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return []

    def arg(a: str) -> str:
        key, eq, value = a.partition("=")
        if eq and key.startswith("-") and os.path.isabs(value):
            return f"{key}={portable_path(value)}"
        return portable_path(a) if os.path.isabs(a) else a

    script = Path(argv[0])
    if script.suffix == ".py" and script.resolve().is_relative_to(PACKAGE):
        head = ["python", "-m", ".".join(script.resolve().relative_to(REPO).with_suffix("").parts)]
    elif script.suffix == ".py":
        head = ["python", arg(argv[0])]
    else:
        head = [arg(argv[0])]
    return head + [arg(a) for a in argv[1:]]


def portable_command(argv: list[str] | None = None) -> str:
    """:func:`portable_argv` as one shell line."""
    return shlex.join(portable_argv(argv))


def model_label(model=None, name: str | os.PathLike | None = None) -> str:
    """How provenance names a model: ``name`` (default: the config's ``_name_or_path``) as given when it is a
    Hugging Face id, a relative path or a run name (the embedded SmolLM2-135M-Instruct is ``"embedded"``: its loader
    names it so); an absolute path through :func:`portable_path`; a model without a name by its ``model_type`` (or
    class). Never a local absolute path."""
    if name is None and model is not None:
        name = getattr(model.config, "_name_or_path", "") or ""
    name = os.fspath(name) if name is not None else ""
    if not name:
        return (getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__) if model else ""
    return portable_path(name) if Path(name).is_absolute() else name


def model_record(model, name: str | os.PathLike | None = None) -> dict:
    """``{"name": model_label(model, name), "hash": model_fingerprint(model)}``: a model as provenance records it,
    its name plus a content hash of its config and weights."""
    return {"name": model_label(model, name), "hash": model_fingerprint(model)}


# Config entries that change how a model runs, not what it outputs: the Trainer flips ``use_cache`` (gradient
# checkpointing), loaders set the attention kernel, the name and the library version; parameter dtypes are hashed
# with the weights. They are left out of :func:`model_fingerprint`, at every level of nested (composite) configs.
RUNTIME_CONFIG_KEYS = frozenset({
    "use_cache", "output_attentions", "output_hidden_states", "return_dict", "torchscript", "_name_or_path",
    "transformers_version", "_commit_hash", "_attn_implementation", "_attn_implementation_autoset",
    "_attn_implementation_internal", "attn_implementation", "torch_dtype", "dtype", "gradient_checkpointing",
})


def _output_config(value):
    """A config dict without :data:`RUNTIME_CONFIG_KEYS`, recursively."""
    if isinstance(value, dict):
        return {k: _output_config(v) for k, v in value.items() if k not in RUNTIME_CONFIG_KEYS}
    if isinstance(value, (list, tuple)):
        return [_output_config(v) for v in value]
    return value


def model_fingerprint(model) -> str:
    """sha256 over what determines the model's outputs: its config without runtime flags (``use_cache``, the
    attention kernel, ... : :data:`RUNTIME_CONFIG_KEYS`) and the raw bytes of every parameter (distinguishes seeds
    and fine-tunes). A Trainer setting ``use_cache=False`` therefore does not make a valid target cache stale."""
    config = json.dumps(_output_config(model.config.to_dict()), sort_keys=True, default=str)
    h = hashlib.sha256(config.encode())
    for name, p in model.state_dict().items():
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
