"""The model and text plumbing the method needs, with nothing of the package under it: the cache root, the device,
batching and right padding, a forward pass that also returns the LM head's input, the one batched ``generate``,
packing texts into training blocks, reading JSON lines, and whether a person is watching (progress bars).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import torch

# Set by run_all (papermill) and by `make nbval`: the chapter runs headless, so progress bars stay off stderr.
HEADLESS_ENV = "DFTNB_HEADLESS"


def interactive() -> bool:
    """Whether a person is watching: true in JupyterLab and plain Python, false under the runner, nbval and CI
    (which set ``DFTNB_HEADLESS=1``). Decides whether long loops show progress bars."""
    return os.environ.get(HEADLESS_ENV, "0") != "1"


def cache_dir() -> Path:
    """Root of dftnb's caches: ``$DFTNB_CACHE`` or ``<repo>/.cache`` (gitignored)."""
    root = os.environ.get("DFTNB_CACHE")
    path = Path(root) if root else Path(__file__).resolve().parents[1] / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def get_device(prefer: str | None = None) -> torch.device:
    """The best available device, cuda -> mps -> cpu; ``prefer`` ("cpu", "cuda", ...) overrides when available."""
    if prefer not in (None, "auto"):
        if prefer.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={prefer!r} asked for but CUDA is not available; use device='cpu' or 'auto'.")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_device(model) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    n: int = 1,
    max_new_tokens: int = 32,
    seed: int | None = 0,
    batch_size: int | None = None,
    fixed_length: bool = False,
    stopping_criteria_factory=None,
    **generate_kwargs,
) -> list[list[str]]:
    """``n`` continuations of each prompt, decoded without the prompt, as ``[prompt][sample]``: the one place the
    package calls ``model.generate``.

    Prompts go through left-padded batches of ``batch_size`` prompts (all at once by default) with
    ``num_return_sequences=n``; the global torch RNG is seeded with ``seed`` once before the first batch, so two
    samplers compared at the same seed draw from the same random stream. ``fixed_length=True`` sets
    ``min_new_tokens = max_new_tokens`` (no early end of sequence: every sample has the same token length).
    ``generate_kwargs`` pass through (``do_sample``, ``temperature``, ``logits_processor`` …, typically
    ``dftnb.sampling.sampler_kwargs(name, **params)``); ``stopping_criteria_factory(prompt_length)`` may return a
    ``StoppingCriteriaList`` per batch.
    """
    prompts = list(prompts)
    if not prompts or any(not str(p).strip() for p in prompts):
        raise ValueError("generate needs a non-empty list of non-empty prompts: give the model some text to continue.")
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"need n >= 1 and max_new_tokens >= 1, got n={n}, max_new_tokens={max_new_tokens}.")
    temperature = generate_kwargs.get("temperature")  # NaN fails deep inside generate, inf samples uniformly
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                                    or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"temperature must be a finite number > 0 (1.0 samples the model's distribution), got "
                         f"{temperature!r}; for greedy decoding pass do_sample=False instead.")
    if fixed_length:
        generate_kwargs.setdefault("min_new_tokens", max_new_tokens)
    if seed is not None:
        torch.manual_seed(seed)
    device = model_device(model)
    step = batch_size or len(prompts)
    side, out = tokenizer.padding_side, []
    try:
        tokenizer.padding_side = "left"  # decoder-only generation continues from the last column
        for i in range(0, len(prompts), step):
            chunk = prompts[i : i + step]
            batch = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            length = batch["input_ids"].shape[1]
            extra = {} if stopping_criteria_factory is None else {"stopping_criteria": stopping_criteria_factory(length)}
            tokens = model.generate(
                **batch, max_new_tokens=max_new_tokens, num_return_sequences=n,
                pad_token_id=tokenizer.pad_token_id, **extra, **generate_kwargs,
            )
            texts = tokenizer.batch_decode(tokens[:, length:], skip_special_tokens=True)
            out.extend(texts[j * n : (j + 1) * n] for j in range(len(chunk)))
    finally:
        tokenizer.padding_side = side
    return out


def model_vocab_size(model, tokenizer=None) -> int:
    """The model's output vocabulary size; raises if ``tokenizer`` has ids the model cannot produce."""
    V = int(model.get_output_embeddings().weight.shape[0])
    if tokenizer is not None and len(tokenizer) > V:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {V}: they do not belong together; "
            "load the tokenizer that ships with the model."
        )
    return V


def progress_bar(iterable, progress: bool, desc: str, total: int | None = None):
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not progress, leave=False)


def batches(items: list, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def pad_right(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ``(input_ids, attention_mask)`` (positions of real tokens are unaffected)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def pad_token_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first.")
    return int(pad)


@torch.no_grad()
def forward_with_hidden(model, input_ids, attention_mask, want_hidden: bool = False):
    """Logits (float32) and, optionally, the final hidden states that enter the LM head (float32)."""
    captured = {}
    handle = None
    if want_hidden:
        head = model.get_output_embeddings()
        handle = head.register_forward_hook(lambda mod, args, out: captured.__setitem__("h", args[0]))
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    finally:
        if handle is not None:
            handle.remove()
    return logits, (captured["h"].float() if want_hidden else None)


def as_text_list(texts_or_dataset) -> list:
    """A list of texts (or token-id lists) from a list, or from a ``datasets.Dataset`` with a ``text`` column."""
    if isinstance(texts_or_dataset, str):
        raise ValueError("pass a list of texts, not a single string (wrap it: [text]).")
    if hasattr(texts_or_dataset, "column_names"):
        if "text" not in texts_or_dataset.column_names:
            raise ValueError(f"dataset has no 'text' column (columns: {texts_or_dataset.column_names}).")
        texts_or_dataset = texts_or_dataset["text"]
    items = list(texts_or_dataset)
    if not items:
        raise ValueError("no texts given: pass a non-empty list of texts (or a dataset with a 'text' column).")
    return items


def pack_texts(tokenizer, texts, block_size: int, max_blocks: int | None = None, separator: str = "\n\n") -> list[list[int]]:
    """Concatenate the tokenised ``texts`` (joined by ``separator``) and cut them into full ``block_size`` blocks.

    Short documents (a Shakespeare speech is ~60 tokens) then fill every training row; tokenising lazily stops as
    soon as ``max_blocks`` blocks exist.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}.")
    sep = tokenizer(separator, add_special_tokens=False)["input_ids"] if separator else []
    blocks, buf = [], []
    for text in as_text_list(texts):
        buf += tokenizer(text, add_special_tokens=False)["input_ids"] + sep
        while len(buf) >= block_size:
            blocks.append(buf[:block_size])
            buf = buf[block_size:]
            if max_blocks is not None and len(blocks) >= max_blocks:
                return blocks
    if not blocks:
        raise ValueError(f"the texts hold fewer than block_size={block_size} tokens; pass more text or a smaller block.")
    return blocks


def read_jsonl(path: str | Path):
    """``(line number, object)`` for every non-blank line of a JSON-lines file; a line that is not valid JSON or not
    a JSON object raises a ``ValueError`` naming the file and the line."""
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problem = None if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"
        except json.JSONDecodeError as err:
            problem = f"not valid JSON ({err.msg} at column {err.colno})"
        if problem:
            raise ValueError(f"{path}:{n}: {problem}; each line must be one JSON object: fix or remove that line.")
        yield n, record
