"""MMLU cloze scoring at the forward-pass limit, and the full-set accuracy of the embedded model.

    python benchmarks/mmlu.py                 # throughput: embedded SmolLM2-135M, 100 stratified questions, 3 rounds
    python benchmarks/mmlu.py --quick         # tiny random model, a smoke check of the script, not a result
    python benchmarks/mmlu.py --evaluate      # accuracy: all 14,042 questions, cloze 0-shot, resumable (hours on CPU)
    python benchmarks/mmlu.py --evaluate --fmt mc --shots 5 --total 1400   # a stratified subset in another setting

Throughput: the same questions (a stratified sample, ``dftnb.measure.evals.mmlu_subset(total=...)``, so the mix of prompt
lengths is the full set's) scored three ways, interleaved (``common.interleaved_medians``):

* ``shared``: ``score_continuations(share_prefix=True)``: one row per question, the context read once and the four
  answers packed after it under a segment mask, rows packed several to a bin; the LM head only where an answer token
  is predicted;
* ``unshared``: one row per (question, answer), as harnesses do;
* ``plain forward``: ``model(input_ids, attention_mask)`` with full logits on exactly the bins of ``shared``: what a
  forward pass over those tokens costs.

``tokens_per_s`` counts the tokens read (the context once plus each answer but its last token). Goals: shared
``tokens_per_s`` >= 0.8 x plain forward, and the projected time of the full set (its token count with prefix
sharing / measured tokens_per_s) <= 40 min on 2 cores. ``full_set_min_cpu`` projects from CPU time instead (CPU
seconds / torch threads): the wall time on cores the process has to itself; on a busy machine the two differ.
Table ``outputs/tables/mmlu.csv``.

``--evaluate``: :func:`dftnb.measure.evals.mmlu` with per-question rows appended to ``--out`` (a JSONL file, one subject at a
time; a rerun skips finished subjects), then accuracy with its 95% CI next to the model card's figure. SmolLM2-135M-
Instruct's card reports MMLU (cloze) 29.3: lighteval, 0-shot, the mean over the 57 subject tasks
(``mmlu_cloze:_average``, the macro accuracy: what the goal compares), the prompt of
``evals.mmlu_request(fmt="cloze")``, ranked by ``acc_norm`` (log-likelihood per character
of the answer without its leading space). Table ``outputs/tables/mmlu_accuracy.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from common import REPO, interleaved_medians, report, resolve_device, verdict

from dftnb.lab.models import load_model, pad_right, tiny_model
from dftnb.lab.runner import quiet
from dftnb.measure import evals
from dftnb.records import portable_path

RATIO_GOAL = 0.8
FULL_SET_GOAL_MIN = 40
CARD = {"fmt": "cloze", "shots": 0, "accuracy": 29.3}  # SmolLM2-135M-Instruct model card, lighteval acc_norm, macro


def plain_forward(model, rows, max_batch_tokens):
    """Full-logit forward passes (plain causal mask) over the bins ``score_continuations`` packs ``rows`` into."""
    device = next(model.parameters()).device
    bins = [[sum((rows[i][0] for i in members), []) for members in batch]
            for batch in evals.pack_batches(rows, max_batch_tokens)]

    def run():
        with torch.no_grad():
            for batch in bins:
                ids, mask = pad_right(batch, 0, device)
                model(input_ids=ids, attention_mask=mask, use_cache=False)

    return run


def throughput(args, model, tokenizer, device, name):
    questions = evals.load_mmlu()
    sample = evals.mmlu_subset(questions, total=args.questions, seed=args.seed)
    encoded = evals.encode_requests(tokenizer, [evals.mmlu_request(q, "cloze") for q in sample])
    full = evals.encode_requests(tokenizer, [evals.mmlu_request(q, "cloze") for q in questions])
    fed = {share: sum(len(r[0]) for r in evals.pack_requests(encoded, share)) for share in (True, False)}
    full_fed = {share: sum(len(c) * (1 if share else len(xs)) + sum(len(x) - 1 for x in xs) for c, xs in full)
                for share in (True, False)}
    rows = evals.pack_requests(encoded, True)
    fns = {
        "shared": lambda: evals.score_continuations(model, encoded, True, args.max_batch_tokens),
        "unshared": lambda: evals.score_continuations(model, encoded, False, args.max_batch_tokens),
        "plain forward": plain_forward(model, rows, args.max_batch_tokens),
    }
    evals.score_continuations(model, encoded[:2], True, args.max_batch_tokens)  # warm-up (thread pools, allocator)
    res = interleaved_medians(fns, args.repeats, device, warmup=0)
    plain_rate = fed[True] / res["plain forward"]["median"]
    table = []
    for method, r in res.items():
        share = method != "unshared"
        rate = (fed[share]) / r["median"]
        projected = full_fed[share] / rate / 60
        row = {"method": method, "questions": len(sample), "tokens_read": fed[share],
               "median_s": round(r["median"], 2), "cpu_s": round(r["median_cpu"], 2),
               "tokens_per_s": round(rate, 1), "questions_per_s": round(len(sample) / r["median"], 2),
               "vs_plain": round(rate / plain_rate, 3), "full_set_tokens": full_fed[share],
               "full_set_min": round(projected, 1),
               # CPU seconds spread over the torch threads: what the wall time would be with the cores to itself
               "full_set_min_cpu": round(full_fed[share] / fed[share] * r["median_cpu"] / torch.get_num_threads() / 60, 1)}
        if method == "shared":
            row["goal"] = f"tokens/s >= {RATIO_GOAL} x plain; full set <= {FULL_SET_GOAL_MIN} min"
            row["met"] = verdict(rate >= RATIO_GOAL * plain_rate and projected <= FULL_SET_GOAL_MIN)
        table.append(row)
    df = pd.DataFrame(table).fillna("-")
    title = (f"MMLU cloze scoring: {name}, {len(sample)} stratified questions (seed {args.seed}), "
             f"batches <= {args.max_batch_tokens} tokens, median of {args.repeats} interleaved rounds; full set = "
             f"{len(questions)} questions, {full_fed[True]:,} tokens read with prefix sharing, "
             f"{full_fed[False]:,} without")
    report(df, "mmlu", title, f"shared tokens/s >= {RATIO_GOAL} x plain forward; projected full set <= "
           f"{FULL_SET_GOAL_MIN} min on 2 cores", device)


def evaluate(args, model, tokenizer, device, name):
    out = Path(args.out) if args.out else (
        REPO / "results" / "mmlu" / f"{'tiny' if args.quick else 'embedded'}-{args.fmt}-{args.shots}shot"
        f"{'' if args.total is None else f'-{args.total}'}.jsonl")
    start = time.perf_counter()
    res = evals.mmlu(model, tokenizer, fmt=args.fmt, shots=args.shots, total=args.total, seed=args.seed,
                     results_path=out, max_batch_tokens=args.max_batch_tokens, progress=True)
    wall = time.perf_counter() - start
    rows = []
    for norm in ("char", "none") if args.fmt == "cloze" else ("none",):
        r = res.rescored(norm)
        card = CARD["accuracy"] if (args.fmt, args.shots, norm) == (CARD["fmt"], CARD["shots"], "char") else None
        rows.append({
            "fmt": args.fmt, "shots": args.shots, "normalization": norm, "questions": r.n_questions,
            "accuracy": round(100 * r.accuracy, 2), "ci_low": round(100 * r.ci[0], 2), "ci_high": round(100 * r.ci[1], 2),
            "macro": round(100 * r.macro_accuracy, 2), "macro_ci_low": round(100 * r.macro_ci[0], 2),
            "macro_ci_high": round(100 * r.macro_ci[1], 2), "card": "-" if card is None else card,
            "met": verdict(None if card is None else r.macro_ci[0] <= card / 100 <= r.macro_ci[1]),
            "wall_s (this call)": round(wall), "results": portable_path(out),
        })
    title = f"MMLU accuracy (%): {name}, {args.fmt} {args.shots}-shot, 95% CI (Wilson; macro: stratified bootstrap)"
    report(pd.DataFrame(rows), "mmlu_accuracy", title, "the model card's 29.3 (cloze, 0-shot, acc_norm, mean over "
           "the 57 subjects) inside the 95% CI of the macro accuracy", device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model instead of the embedded one")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    parser.add_argument("--questions", type=int, default=100, help="throughput sample size (>= 57, one per subject)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per method")
    parser.add_argument("--max-batch-tokens", type=int, default=4096, help="padded tokens per forward pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluate", action="store_true", help="measure accuracy instead of throughput")
    parser.add_argument("--fmt", default="cloze", choices=evals.MMLU_FORMATS)
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--total", type=int, default=None, help="stratified subset of this many questions")
    parser.add_argument("--out", default=None, help="results JSONL (default results/mmlu/<model>-<fmt>-<k>shot.jsonl)")
    args = parser.parse_args()
    quiet()
    device = resolve_device(args.device)
    if args.quick:
        model, tokenizer = tiny_model(seed=0)
        model.to(device)
        name = "tiny random model (hidden 64, 2 layers)"
    else:
        model, tokenizer = load_model("embedded", device=device)
        name = "embedded SmolLM2-135M-Instruct, float32"
    (evaluate if args.evaluate else throughput)(args, model, tokenizer, device, name)


if __name__ == "__main__":
    main()
