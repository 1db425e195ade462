"""Target datasets on disk: the Arrow layout, the builder's record, and a cache that is never silently stale.

A target dataset (``datasets.Dataset``, one row per sequence) has the columns ``input_ids`` (T,), ``labels`` (T,;
``-100`` where no loss), ``target_ids`` (T, k) and ``target_logprobs`` (T, k), stored as fixed-size Arrow lists of
``uint16`` ids (``int32`` when ``V > 65,536``) and ``float16`` log-probabilities, plus ``target_tail_mass`` (T,), the
exact tail mass as one float32 per position: ``4k + 4`` bytes of target per token (260 B at k = 64).
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
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .modeling import model_vocab_size
from .records import model_fingerprint, model_label


def id_dtype(vocab_size: int) -> str:
    """Arrow/NumPy dtype of stored ids: ``uint16`` when every id fits (``V <= 65,536``), else ``int32``."""
    return "uint16" if vocab_size <= 2**16 else "int32"


TARGET_FORMAT_VERSION = 2  # v2: float32 target_tail_mass column. Bump when the stored layout or a builder's maths changes: old caches become stale


SIDECAR = "dftnb_target.json"


REQUIRED_METADATA = ("model", "tokenizer_hash", "corpus", "k", "source", "vocab_size")


TARGET_COLUMNS = ("input_ids", "labels", "target_ids", "target_logprobs")


def target_features(k: int, vocab_size: int):
    """``datasets.Features`` of a target dataset; targets are fixed-size lists (no per-token Arrow offsets), and the
    tail mass ``r`` of every position is one float32 (``target_tail_mass``): ``4k + 4`` bytes of target per token."""
    from datasets import Features, List, Value

    ids = id_dtype(vocab_size)
    return Features(
        {
            "input_ids": List(Value(ids)),
            "labels": List(Value("int32")),
            "target_ids": List(List(Value(ids), length=k)),
            "target_logprobs": List(List(Value("float16"), length=k)),
            "target_tail_mass": List(Value("float32")),
        }
    )


def row_tail_mass(row: dict) -> np.ndarray:
    """A row's ``target_tail_mass`` (T,) as float32: the stored one, or (a row built without it)
    ``1 - sum(exp(target_logprobs))`` summed in float64 from the row's log-probabilities before float16 storage."""
    if row.get("target_tail_mass") is not None:
        return np.asarray(row["target_tail_mass"], dtype=np.float32).reshape(-1)
    logprobs = np.asarray(row["target_logprobs"], dtype=np.float64)
    return np.clip(1.0 - np.exp(logprobs).sum(-1), 0.0, 1.0).astype(np.float32)


def rows_to_dataset(rows: list[dict], k: int, vocab_size: int, info: dict | None = None):
    """Build a target ``datasets.Dataset`` from per-sequence NumPy rows (``input_ids`` (T,), ``labels`` (T,),
    ``target_ids`` (T, k), ``target_logprobs`` (T, k) and ``target_tail_mass`` (T,), which :func:`row_tail_mass`
    fills in when a row lacks it); ``info`` (plus ``k`` and ``vocab_size``) is kept as JSON in
    ``dataset.info.description`` (read it back with :func:`target_info`)."""
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
        get = row_tail_mass if name == "target_tail_mass" else (lambda r: np.asarray(r[name]).reshape(-1))
        flat = np.concatenate([get(r) for r in rows]).astype(dtype)
        values = pa.array(flat)
        if width is not None:
            values = pa.FixedSizeListArray.from_arrays(values, width)
        return pa.ListArray.from_arrays(offsets, values)

    for r in rows:
        if np.asarray(r["target_ids"]).shape != (len(r["input_ids"]), k):
            raise ValueError(f"target rows must be (T, k={k}); got {np.asarray(r['target_ids']).shape}.")
        if row_tail_mass(r).shape != (len(r["input_ids"]),):
            raise ValueError(f"target_tail_mass must hold one value per token (T={len(r['input_ids'])},); got "
                             f"{row_tail_mass(r).shape}.")
    table = pa.Table.from_arrays(
        [
            column("input_ids", ids_np),
            column("labels", np.int32),
            column("target_ids", ids_np, k),
            column("target_logprobs", np.float16, k),
            column("target_tail_mass", np.float32),
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


def target_metadata(model, tokenizer, *, source: str, corpus: str, k: int, model_name: str | None = None, **params) -> dict:
    """The cache key of a target build: what :func:`build_or_load` compares against the sidecar.

    ``model`` is ``model_name`` (or the config's ``_name_or_path``), never a local absolute path
    (:func:`dftnb.records.model_label`: the embedded model is ``"embedded"`` wherever its cache lives), plus a
    fingerprint of the weights; ``params`` are the builder's arguments (sizes, temperature, prefix, lam, ...) and
    must be JSON-serialisable.
    """
    from . import __version__

    return {
        "model": model_label(model, model_name or None),
        "model_fingerprint": model_fingerprint(model),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "corpus": corpus,
        "k": int(k),
        "source": source,
        "vocab_size": model_vocab_size(model, tokenizer),
        "code_version": f"dftnb-{__version__}/targets-v{TARGET_FORMAT_VERSION}",
        "params": json.loads(json.dumps(params)),
    }


DATASET_FILES = ("state.json", "dataset_dict.json")  # what Dataset / DatasetDict.save_to_disk write besides data


class StaleTargetCacheError(RuntimeError):
    """A target cache on disk was built from something else (model, tokenizer, corpus, k, code, parameters)."""


class CorruptTargetCacheError(StaleTargetCacheError):
    """A target cache on disk cannot be trusted: a data file is truncated, changed since it was saved (its sha256
    differs from the one in the sidecar) or unreadable, or the sidecar itself is."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_checksums(path: str | os.PathLike) -> dict[str, str]:
    """``{relative file name: sha256}`` of every file under ``path`` except the sidecar (what ``save_to_disk`` wrote)."""
    root = Path(path)
    return {f.relative_to(root).as_posix(): file_sha256(f) for f in sorted(root.rglob("*"))
            if f.is_file() and f.name != SIDECAR}


def checksum_problem(path: str | os.PathLike, side: dict) -> str | None:
    """Why the data files under ``path`` differ from the checksums recorded in ``side`` (the sidecar), or None.

    Only the recorded files are checked, so files added next to them later (``datasets`` cache files) do not count.
    """
    files = side.get("files")
    if not isinstance(files, dict) or not files:
        return f"its {SIDECAR} records no checksum of the data files (it was written by an older dftnb)"
    for name, digest in sorted(files.items()):
        f = Path(path) / name
        if not f.is_file():
            return f"{name} is missing"
        if file_sha256(f) != digest:
            return (f"{name} is corrupt or truncated: its sha256 differs from the one recorded in {SIDECAR} when it "
                    "was saved")
    return None


def record_tokenizer_hash(dataset, digest: str | None):
    """Add the tokenizer hash to a target dataset's builder record (in ``dataset.info``) when it lacks one."""
    if not digest or "target_ids" not in getattr(dataset, "column_names", []):
        return dataset
    try:
        info = target_info(dataset)
    except ValueError:
        return dataset
    if "tokenizer_hash" not in info:
        dataset.info.description = json.dumps({"dftnb_target": {**info, "tokenizer_hash": digest}})
    return dataset


def check_target_tokenizer(dataset, tokenizer, student_vocab_size: int | None = None) -> None:
    """Refuse a target dataset whose builder record names another tokenizer than ``tokenizer``.

    The vocabulary-size check cannot see a tokenizer of the same size with other tokens (or the same tokens in
    another order); the tokenizer hash can. A dataset without one (built outside :func:`build_or_load`) gets a
    warning saying the check could not be made.
    """
    if "target_ids" not in getattr(dataset, "column_names", []):
        return
    info = target_info(dataset)
    recorded = info.get("tokenizer_hash")
    if recorded is None:
        warnings.warn(
            "the target dataset records no tokenizer hash, so it cannot be checked that its targets were built with "
            "the student's tokenizer (only the vocabulary size is checked); build it through "
            "dftnb.target_cache.build_or_load, which records the hash.", UserWarning, stacklevel=3)
        return
    try:
        mine = tokenizer_hash(tokenizer)
    except (AttributeError, TypeError):
        warnings.warn(f"the student's tokenizer ({type(tokenizer).__name__}) has neither a backend tokenizer nor "
                      "get_vocab(), so it cannot be compared with the targets' tokenizer.", UserWarning, stacklevel=3)
        return
    if mine != recorded:
        same = student_vocab_size is not None and int(student_vocab_size) == int(info["vocab_size"])
        size = f" of the same vocabulary size (V={info['vocab_size']})" if same else ""
        raise ValueError(
            f"the targets were built with another tokenizer{size} than the student's (tokenizer sha256 "
            f"{recorded[:12]}... recorded in the dataset, {mine[:12]}... for the student's): the same token id "
            "stands for another token, so training would teach the wrong distribution; rebuild the targets with the "
            "student's tokenizer (build_or_load with target_metadata(reference, student_tokenizer, ...)), or train "
            "the student that goes with the targets' tokenizer."
        )


def load_target_dataset(path: str | os.PathLike, verify: bool = True):
    """``datasets.load_from_disk(path)`` with the checks a saved target dataset needs.

    When the folder has a sidecar (a :func:`build_or_load` cache) its data files must match the sha256 recorded
    there (``verify``), and the builder record gets the tokenizer hash from it. A data file that Arrow cannot read
    (truncated, overwritten) raises :class:`CorruptTargetCacheError` naming the folder and the fix, not a raw
    ``OSError``/``ArrowInvalid``.
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; build it with dftnb.target_cache.build_or_load.")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a saved dataset (a folder); point it at the folder that "
                                 "dftnb.target_cache.build_or_load or Dataset.save_to_disk wrote.")
    side = read_sidecar(path)
    if side is None and not any((path / name).is_file() for name in DATASET_FILES):
        raise FileNotFoundError(
            f"{path} is not a dftnb target cache or a saved dataset: it has no {SIDECAR} and none of "
            f"{', '.join(DATASET_FILES)} (the files Dataset.save_to_disk writes); point it at the folder that "
            "dftnb.target_cache.build_or_load or Dataset.save_to_disk wrote, or build the targets there."
        )
    fix = ("rebuild it with build_or_load(..., rebuild='auto') or delete it" if side is not None else
           "save it again (Dataset.save_to_disk) or rebuild it")
    if side is not None and verify and "files" in side:
        problem = checksum_problem(path, side)
        if problem:
            raise CorruptTargetCacheError(f"target cache {path}: {problem}; {fix}.")
    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError, a truncated stream an OSError
        raise CorruptTargetCacheError(
            f"cannot read the saved dataset {path} ({type(err).__name__}: {err}): a data file is truncated or corrupt "
            f"(an interrupted save or copy?); {fix}."
        ) from err
    return record_tokenizer_hash(dataset, (side or {}).get("metadata", {}).get("tokenizer_hash"))


def target_cache_path(cache: str | os.PathLike) -> Path:
    """A bare name goes under ``cache_dir()/targets/``; anything with a path separator is used as given."""
    from .modeling import cache_dir

    cache = str(cache)
    return Path(cache) if (os.sep in cache or "/" in cache) else cache_dir() / "targets" / cache


def read_sidecar(path: str | os.PathLike) -> dict | None:
    """The sidecar of a cache folder, ``None`` when there is none; an unreadable one raises
    :class:`CorruptTargetCacheError` naming it."""
    side = Path(path) / SIDECAR
    if not side.exists():
        return None
    try:
        record = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptTargetCacheError(
            f"{side} is not valid JSON ({err}; an interrupted write?): the cache cannot be checked; rebuild it with "
            f"build_or_load(..., rebuild='auto') or delete {Path(path)}."
        ) from None
    if not isinstance(record, dict):
        raise CorruptTargetCacheError(f"{side} holds a {type(record).__name__}, not a cache record; rebuild it with "
                                      f"build_or_load(..., rebuild='auto') or delete {Path(path)}.")
    return record


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

    A folder without a sidecar was not written here and is never overwritten. The sidecar records the sha256 of
    every data file; a cache whose files no longer match (truncated, bytes flipped), whose sidecar is unreadable or
    holds no checksum counts as corrupt: rebuilt under ``"auto"`` (with a warning), :class:`CorruptTargetCacheError`
    under ``"never"``. The dataset is written to a temporary folder and renamed into place, so an interrupted build
    leaves the previous cache intact. The builder record of the saved dataset gets the tokenizer hash, which
    :func:`dftnb.trainer.build_trainer` compares with the student's tokenizer.
    Returns the memory-mapped dataset from ``datasets.load_from_disk``. (:mod:`dftnb.target_shards` does the same
    with the build split across processes.)
    """
    wanted = checked_metadata(metadata)
    path = target_cache_path(cache)
    fresh = load_fresh(path, wanted, rebuild)
    return fresh if fresh is not None else save_cache(path, wanted, builder())


def checked_metadata(metadata: dict) -> dict:
    """``metadata`` as it reads back from JSON, after checking it holds :data:`REQUIRED_METADATA`."""
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"target cache metadata lacks {missing}; build it with dftnb.target_cache.target_metadata(...).")
    return json.loads(json.dumps(metadata))


def load_fresh(path: Path, wanted: dict, rebuild: str = "auto"):
    """The cache at ``path`` when it is fresh (its sidecar matches ``wanted``, its files their checksums) and
    ``rebuild`` allows loading it; ``None`` when it must be (re)built. Raises what :func:`build_or_load` describes
    for ``rebuild="never"`` and for a folder not written by dftnb; only reads, never writes."""
    if rebuild not in ("auto", "never", "always"):
        raise ValueError(f"rebuild must be 'auto', 'never' or 'always', got {rebuild!r}.")
    how = f"call build_or_load(..., rebuild='auto') to rebuild it, or delete {path}"
    if not path.exists():
        if rebuild == "never":
            raise StaleTargetCacheError(f"no target cache at {path} and rebuild='never'; {how}.")
        return None
    problem = None
    try:
        side = read_sidecar(path)
    except CorruptTargetCacheError as err:
        side, problem = {}, str(err)
    if side is None:
        raise StaleTargetCacheError(
            f"{path} exists but has no {SIDECAR}: it was not written by dftnb.targets and will not be "
            "overwritten; move it away or choose another cache name."
        )
    stale = [] if problem else _mismatched_keys(side.get("metadata", {}), wanted)
    if not stale and not problem and rebuild != "always":
        problem = checksum_problem(path, side)
        if problem is None:
            try:
                return load_target_dataset(path, verify=False)
            except CorruptTargetCacheError as err:
                problem = str(err)
        else:
            problem = f"target cache {path}: {problem}"
    if problem and rebuild == "never":
        raise CorruptTargetCacheError(problem if "rebuild='auto'" in problem else f"{problem}; {how}.")
    if problem and rebuild == "auto":
        warnings.warn(f"rebuilding the target cache: {problem}", stacklevel=3)
    if stale and rebuild == "never":
        diffs = "; ".join(f"{key}: cached {side['metadata'].get(key)!r} != wanted {wanted.get(key)!r}"
                          for key in stale)
        raise StaleTargetCacheError(f"target cache {path} is stale ({diffs}); {how}.")
    return None


def save_cache(path: Path, wanted: dict, dataset):
    """Check that ``dataset`` is what ``wanted`` describes, save it with its sidecar (metadata, row and token
    counts, builder record, sha256 of every file) into a temporary folder, rename that into ``path`` and return
    the saved dataset, memory-mapped."""
    absent = [c for c in TARGET_COLUMNS if c not in getattr(dataset, "column_names", [])]
    if absent:
        raise ValueError(f"the builder returned no target dataset (missing columns {absent}); return a Dataset "
                         "from from_reference_model / from_samples / from_corpus.")
    info = target_info(dataset)
    if info.get("tokenizer_hash", wanted["tokenizer_hash"]) != wanted["tokenizer_hash"]:
        raise ValueError("the builder recorded another tokenizer than the metadata: build the targets and "
                         "target_metadata with the same tokenizer.")
    if info["k"] != wanted["k"] or info["vocab_size"] != wanted["vocab_size"]:
        raise ValueError(f"built k={info['k']}, V={info['vocab_size']} but the metadata says k={wanted['k']}, "
                         f"V={wanted['vocab_size']}: pass the same k to the builder and to target_metadata.")
    info = {**info, "tokenizer_hash": wanted["tokenizer_hash"]}  # checked against the student by build_trainer
    dataset.info.description = json.dumps({"dftnb_target": info})
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    tokens = int(sum(len(x) for x in dataset["input_ids"]))
    (tmp / SIDECAR).write_text(json.dumps({"metadata": wanted, "rows": len(dataset), "tokens": tokens,
                                           "builder_info": info, "files": data_checksums(tmp)}, indent=2))
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(path)
    return load_target_dataset(path, verify=False)


def arrow_bytes(path: str | os.PathLike) -> int:
    """Total size of the ``.arrow`` data files of a dataset saved with ``save_to_disk``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*.arrow"))
