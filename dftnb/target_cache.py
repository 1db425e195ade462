"""Target datasets on disk: the Arrow layout, the builder's record, and a cache that is never silently stale.

A target dataset (``datasets.Dataset``, one row per sequence) has the columns ``input_ids`` (T,), ``labels`` (T,;
``-100`` where no loss), ``target_ids`` (T, k) and ``target_logprobs`` (T, k), stored as fixed-size Arrow lists of
``uint16`` ids (``int32`` when ``V > 65,536``) and ``float16`` log-probabilities: ``4k`` bytes of target per token.
The builder's record (``k``, ``vocab_size``, ``source``, parameters) travels in ``dataset.info`` (:func:`target_info`).

:func:`build_or_load` keeps a built dataset under ``.cache/targets/<name>`` with a ``dftnb_target.json`` sidecar
(model and a fingerprint of its weights, tokenizer hash, corpus, k, source, vocabulary size, code version,
parameters) and refuses, or with ``rebuild="auto"`` rebuilds, a cache whose sidecar does not match what is asked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .models import model_vocab_size


def id_dtype(vocab_size: int) -> str:
    """Arrow/NumPy dtype of stored ids: ``uint16`` when every id fits (``V <= 65,536``), else ``int32``."""
    return "uint16" if vocab_size <= 2**16 else "int32"


TARGET_FORMAT_VERSION = 1  # bump when the stored layout or a builder's maths changes: old caches become stale


SIDECAR = "dftnb_target.json"


REQUIRED_METADATA = ("model", "tokenizer_hash", "corpus", "k", "source", "vocab_size")


TARGET_COLUMNS = ("input_ids", "labels", "target_ids", "target_logprobs")


def target_features(k: int, vocab_size: int):
    """``datasets.Features`` of a target dataset; targets are fixed-size lists (no per-token Arrow offsets)."""
    from datasets import Features, List, Value

    ids = id_dtype(vocab_size)
    return Features(
        {
            "input_ids": List(Value(ids)),
            "labels": List(Value("int32")),
            "target_ids": List(List(Value(ids), length=k)),
            "target_logprobs": List(List(Value("float16"), length=k)),
        }
    )


def rows_to_dataset(rows: list[dict], k: int, vocab_size: int, info: dict | None = None):
    """Build a target ``datasets.Dataset`` from per-sequence NumPy rows (``input_ids`` (T,), ``labels`` (T,),
    ``target_ids`` (T, k), ``target_logprobs`` (T, k)); ``info`` (plus ``k`` and ``vocab_size``) is kept as JSON
    in ``dataset.info.description`` (read it back with :func:`target_info`)."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    if not rows:
        raise ValueError("no target rows to store: every input was empty or shorter than 2 tokens.")
    features = target_features(k, vocab_size)
    ids_np = np.dtype(id_dtype(vocab_size))
    lengths = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))

    def column(name, dtype, width=None):
        flat = np.concatenate([np.asarray(r[name]).reshape(-1) for r in rows]).astype(dtype)
        values = pa.array(flat)
        if width is not None:
            values = pa.FixedSizeListArray.from_arrays(values, width)
        return pa.ListArray.from_arrays(offsets, values)

    for r in rows:
        if np.asarray(r["target_ids"]).shape != (len(r["input_ids"]), k):
            raise ValueError(f"target rows must be (T, k={k}); got {np.asarray(r['target_ids']).shape}.")
    table = pa.Table.from_arrays(
        [
            column("input_ids", ids_np),
            column("labels", np.int32),
            column("target_ids", ids_np, k),
            column("target_logprobs", np.float16, k),
        ],
        schema=features.arrow_schema,
    )
    meta = {"k": k, "vocab_size": vocab_size, **(info or {})}
    ds_info = datasets.DatasetInfo(features=features, description=json.dumps({"dftnb_target": meta}))
    return datasets.Dataset(InMemoryTable(table), info=ds_info)


def target_info(dataset) -> dict:
    """The builder's record (``k``, ``vocab_size``, ``source``, parameters) kept in a target dataset's info."""
    try:
        return json.loads(dataset.info.description)["dftnb_target"]
    except (TypeError, ValueError, KeyError):
        raise ValueError(
            "this dataset carries no dftnb target info; build it with dftnb.targets.from_reference_model, "
            "from_samples or from_corpus (or load it with build_or_load)."
        ) from None


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer's full serialisation (vocabulary, merges, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def model_fingerprint(model) -> str:
    """sha256 over the model config and the raw bytes of every parameter (distinguishes seeds and fine-tunes)."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, p in model.state_dict().items():
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def target_metadata(model, tokenizer, *, source: str, corpus: str, k: int, model_name: str | None = None, **params) -> dict:
    """The cache key of a target build: what :func:`build_or_load` compares against the sidecar.

    ``model`` is ``model_name`` (or the config's ``_name_or_path``) plus a fingerprint of the weights; ``params``
    are the builder's arguments (sizes, temperature, prefix, lam, ...) and must be JSON-serialisable.
    """
    from . import __version__

    return {
        "model": model_name or getattr(model.config, "_name_or_path", "") or model.config.model_type,
        "model_fingerprint": model_fingerprint(model),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "corpus": corpus,
        "k": int(k),
        "source": source,
        "vocab_size": model_vocab_size(model, tokenizer),
        "code_version": f"dftnb-{__version__}/targets-v{TARGET_FORMAT_VERSION}",
        "params": json.loads(json.dumps(params)),
    }


class StaleTargetCacheError(RuntimeError):
    """A target cache on disk was built from something else (model, tokenizer, corpus, k, code, parameters)."""


def target_cache_path(cache: str | os.PathLike) -> Path:
    """A bare name goes under ``cache_dir()/targets/``; anything with a path separator is used as given."""
    from .models import cache_dir

    cache = str(cache)
    return Path(cache) if (os.sep in cache or "/" in cache) else cache_dir() / "targets" / cache


def read_sidecar(path: str | os.PathLike) -> dict | None:
    side = Path(path) / SIDECAR
    return json.loads(side.read_text()) if side.exists() else None


def _mismatched_keys(stored: dict, wanted: dict) -> list[str]:
    return sorted(key for key in set(stored) | set(wanted) if stored.get(key) != wanted.get(key))


def build_or_load(
    cache: str | os.PathLike, metadata: dict, builder: Callable[[], object], rebuild: str = "auto"
):
    """Load a cached target dataset whose sidecar matches ``metadata``, otherwise build, save and load it.

    ``cache``: a name under ``cache_dir()/targets`` or a folder path. ``metadata``: the cache key, normally from
    :func:`target_metadata` (must hold ``model, tokenizer_hash, corpus, k, source, vocab_size``). ``rebuild``:

    * ``"auto"``  - a missing or mismatching cache is (re)built; a matching one is loaded;
    * ``"never"`` - a mismatching or missing cache raises :class:`StaleTargetCacheError` naming the keys;
    * ``"always"`` - rebuild regardless.

    A folder without a sidecar was not written here and is never overwritten. The dataset is written to a
    temporary folder and renamed into place, so an interrupted build leaves the previous cache intact.
    Returns the memory-mapped dataset from ``datasets.load_from_disk``.
    """
    import datasets

    if rebuild not in ("auto", "never", "always"):
        raise ValueError(f"rebuild must be 'auto', 'never' or 'always', got {rebuild!r}.")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"target cache metadata lacks {missing}; build it with dftnb.targets.target_metadata(...).")
    wanted = json.loads(json.dumps(metadata))
    path = target_cache_path(cache)
    how = f"call build_or_load(..., rebuild='auto') to rebuild it, or delete {path}"
    if path.exists():
        side = read_sidecar(path)
        if side is None:
            raise StaleTargetCacheError(
                f"{path} exists but has no {SIDECAR}: it was not written by dftnb.targets and will not be "
                "overwritten; move it away or choose another cache name."
            )
        stale = _mismatched_keys(side.get("metadata", {}), wanted)
        if not stale and rebuild != "always":
            return datasets.load_from_disk(str(path))
        if stale and rebuild == "never":
            diffs = "; ".join(f"{key}: cached {side['metadata'].get(key)!r} != wanted {wanted.get(key)!r}"
                              for key in stale)
            raise StaleTargetCacheError(f"target cache {path} is stale ({diffs}); {how}.")
    elif rebuild == "never":
        raise StaleTargetCacheError(f"no target cache at {path} and rebuild='never'; {how}.")
    dataset = builder()
    absent = [c for c in TARGET_COLUMNS if c not in getattr(dataset, "column_names", [])]
    if absent:
        raise ValueError(f"the builder returned no target dataset (missing columns {absent}); return a Dataset "
                         "from from_reference_model / from_samples / from_corpus.")
    info = target_info(dataset)
    if info["k"] != wanted["k"] or info["vocab_size"] != wanted["vocab_size"]:
        raise ValueError(f"built k={info['k']}, V={info['vocab_size']} but the metadata says k={wanted['k']}, "
                         f"V={wanted['vocab_size']}: pass the same k to the builder and to target_metadata.")
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    tokens = int(sum(len(x) for x in dataset["input_ids"]))
    (tmp / SIDECAR).write_text(json.dumps({"metadata": wanted, "rows": len(dataset), "tokens": tokens,
                                           "builder_info": info}, indent=2))
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(path)
    return datasets.load_from_disk(str(path))


def arrow_bytes(path: str | os.PathLike) -> int:
    """Total size of the ``.arrow`` data files of a dataset saved with ``save_to_disk``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*.arrow"))
