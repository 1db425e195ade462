"""The sampling budget of an evaluation: batched sampling against one sample at a time.

    python benchmarks/sampling_budget.py            # embedded SmolLM2-135M, 4 prompts x 16 samples x 128 tokens
    python benchmarks/sampling_budget.py --quick    # tiny random model, a smoke check of the script, not a result

Every evaluation in dftnb draws its samples through ``dftnb.lab.models.generate``: left-padded prompts, several per
``model.generate`` call, each with ``num_return_sequences = n``. This script measures its tokens/s at the study's
shape (16 samples per prompt, 128 new tokens, every sample run to full length) for 1, 2, 4 … prompts per call
(16, 32, 64 … sequences decoded together), against the per-sample loop it replaces: ``generate`` with one prompt and
one sequence per call. Same prompts, same number of new tokens, median of ``--repeats`` interleaved rounds.

Goal: the best batch >= 4x batch-1 tokens/s at 16 samples per prompt. The table (``outputs/tables/
sampling_budget.csv``) is the curve; ``best`` marks the batch size that maximised tokens/s on this machine, which is
what the chapters' sizes assume (one ``generate`` call per temperature with all prompts when they fit).
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from common import interleaved_medians, report, resolve_device, verdict

from dftnb.lab.benchmark import diversity_prompts
from dftnb.lab.models import generate, load_model, tiny_model
from dftnb.lab.runner import quiet
from dftnb.sampling import sampler_kwargs

GOAL = 4.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model instead of the embedded one")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts (one corpus opening each, round robin)")
    parser.add_argument("--samples", type=int, default=16, help="samples per prompt")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per sample")
    parser.add_argument("--single", type=int, default=2, help="sequences timed one at a time for the batch-1 rate")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet()
    device = resolve_device(args.device)
    if args.quick:
        model, tokenizer = tiny_model()
        args.tokens, args.samples = 8, 4
    else:
        model, tokenizer = load_model("embedded", device=device)
    prompts = diversity_prompts(per_corpus=-(-args.prompts // 3))[: args.prompts]  # openings of the first corpora
    sample = sampler_kwargs("temperature", temperature=1.0)

    def batched(per_call):
        return lambda: generate(model, tokenizer, prompts, n=args.samples, max_new_tokens=args.tokens, seed=0,
                                batch_size=per_call, fixed_length=True, **sample)

    def one_at_a_time():
        for i in range(args.single):
            generate(model, tokenizer, [prompts[i % len(prompts)]], n=1, max_new_tokens=args.tokens, seed=i,
                     batch_size=1, fixed_length=True, **sample)

    sizes = [b for b in (1, 2, 4, 8, 16) if b <= len(prompts)]
    fns = {"batch 1 (one sequence per call)": one_at_a_time, **{f"{b} prompt(s) per call": batched(b) for b in sizes}}
    with torch.inference_mode():
        times = interleaved_medians(fns, args.repeats, device, warmup=0)
    rows = []
    single_rate = args.single * args.tokens / times["batch 1 (one sequence per call)"]["median"]
    rows.append({"setting": "batch 1 (one sequence per call)", "sequences per call": 1,
                 "tokens": args.single * args.tokens, "median_s": times["batch 1 (one sequence per call)"]["median"],
                 "tokens_per_s": single_rate, "vs batch 1": 1.0})
    for b in sizes:
        name = f"{b} prompt(s) per call"
        tokens = len(prompts) * args.samples * args.tokens
        rate = tokens / times[name]["median"]
        rows.append({"setting": name, "sequences per call": b * args.samples, "tokens": tokens,
                     "median_s": times[name]["median"], "tokens_per_s": rate, "vs batch 1": rate / single_rate})
    df = pd.DataFrame(rows)
    best = df.iloc[1:]["tokens_per_s"].idxmax()
    df["best"] = ["" if i != best else "best" for i in df.index]
    df["met"] = verdict(float(df.loc[best, "vs batch 1"]) >= GOAL)
    title = (f"sampling budget: {'tiny random model' if args.quick else 'embedded SmolLM2-135M'}, {len(prompts)} "
             f"prompts x {args.samples} samples x {args.tokens} new tokens, temperature 1, median of {args.repeats}")
    report(df.round(3), "sampling_budget", title, f"best batched tokens/s >= {GOAL:g} x batch-1 tokens/s", device)


if __name__ == "__main__":
    main()
