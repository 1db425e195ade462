"""Cost of the custom samplers inside generate(), and of the block denoiser, against plain sampling.

    python benchmarks/sampling.py            # embedded SmolLM2-135M on CPU (about 3 minutes of CPU time)
    python benchmarks/sampling.py --quick    # tiny random model, a smoke check of the script, not a result
    python benchmarks/sampling.py --device cuda

Goal: each LogitsProcessor adds <= 3% to a plain sampling step. generate() runs the same model calls with or without
a custom processor, so the overhead is the processor's own time per step; it is measured directly
(``proc_share`` = median time of one processor call on a realistic ``(1, V)`` logit row / median time per generated
token, the verdict) and end to end (``ratio`` / ``cpu_ratio`` = median wall / CPU time of generate() with the sampler
over plain temperature sampling, interleaved runs, same number of new tokens; on a busy machine these drift by
more than 3% and are a cross-check only). The denoiser is reported as tokens/s next to autoregressive sampling.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch
from common import interleaved_medians, report, resolve_device, synchronize, verdict

from dftnb.denoise import denoise_generate
from dftnb.lab.models import load_model, tiny_model
from dftnb.sampling import sampler_kwargs

GOAL = 0.03
SAMPLERS = {
    "temperature": dict(temperature=1.0),
    "top_p": dict(top_p=0.9),
    "min_p": dict(min_p=0.05),
    "dynatemp": dict(min_temperature=0.5, max_temperature=1.5),
    "edt": dict(temperature0=1.0, theta=1.0),
    "top_nsigma": dict(n=1.0),
    "mirostat": dict(tau=5.0, eta=0.1),
    "target_entropy": dict(target_entropy=3.0),
}
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def generate_fn(model, ids, new_tokens, name, params):
    mask = torch.ones_like(ids)

    def run():
        torch.manual_seed(0)
        model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       **sampler_kwargs(name, **params))

    return run


def processor_seconds(name, params, vocab_size, device, repeats=100) -> float:
    """Median seconds of one call of the sampler's processor (0 for generate's own warpers), called as in a
    generation: ``input_ids`` grows by one token per call and each step brings a new ``(1, V)`` logit row (Gaussian,
    scale drawn in [2, 4], so the spread of the distribution changes from step to step)."""
    kwargs = sampler_kwargs(name, **params)
    if "logits_processor" not in kwargs:
        return 0.0
    processor = kwargs["logits_processor"]
    gen = torch.Generator().manual_seed(0)
    rows = [(torch.randn(1, vocab_size, generator=gen) * (2 + 2 * torch.rand(1, generator=gen))).to(device)
            for _ in range(repeats)]
    ids = torch.zeros(1, 4, dtype=torch.long, device=device)
    times = []
    for logits in rows:
        synchronize(device)
        start = time.perf_counter()
        processor(ids, logits)
        synchronize(device)
        times.append(time.perf_counter() - start)
        ids = torch.cat([ids, ids[:, -1:]], dim=1)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model instead of the embedded one")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per sampler (default 3)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per generate() (default 24, quick 16)")
    args = parser.parse_args()
    repeats = args.repeats or 3
    new_tokens = args.new_tokens or (16 if args.quick else 24)
    device = resolve_device(args.device)

    model, tokenizer = tiny_model() if args.quick else load_model("embedded", device=device)
    model.to(device)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids.to(device)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    label = "tiny random model" if args.quick else "embedded SmolLM2-135M"

    runs = interleaved_medians(
        {name: generate_fn(model, ids, new_tokens, name, params) for name, params in SAMPLERS.items()},
        repeats, device,
    )
    base = runs["temperature"]
    per_token = base["median"] / new_tokens
    rows = []
    for name, params in SAMPLERS.items():
        share = processor_seconds(name, params, vocab_size, device) / per_token
        rows.append({
            "sampler": name, "model": label, "new_tokens": new_tokens, "median_s": round(runs[name]["median"], 3),
            "ratio": round(runs[name]["median"] / base["median"], 3),
            "cpu_ratio": round(runs[name]["median_cpu"] / base["median_cpu"], 3),
            "proc_ms": round(share * per_token * 1e3, 3), "proc_share": round(share, 4),
            "verdict": verdict(share <= GOAL),
        })
    report(pd.DataFrame(rows), "sampling_overhead", "LogitsProcessor overhead in generate()",
           f"processor time per step <= {GOAL:.0%} of a plain sampling step "
           f"({per_token * 1e3:.1f} ms/token here); ratio and cpu_ratio are end-to-end cross-checks", device)

    mask = torch.ones_like(ids)
    generators = {
        "autoregressive sampling (generate)": lambda: model.generate(
            ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            **sampler_kwargs("temperature", temperature=1.0)),
    }
    for block, steps in [(8, 8), (8, 16)]:
        generators[f"denoiser B={block}, S={steps}"] = (
            lambda block=block, steps=steps: denoise_generate(
                model, tokenizer, ids, max_new_tokens=new_tokens, block_size=block, steps=steps, min_p=0.05,
                noise_scale=1.0, eos_token_id=[], seed=0))
    speed = interleaved_medians(generators, max(2, repeats // 2), device)
    ar = new_tokens / speed["autoregressive sampling (generate)"]["median"]
    rows = [{"generator": name, "model": label, "tokens_per_s": round(new_tokens / s["median"], 2),
             "relative_to_ar": round(new_tokens / s["median"] / ar, 3)} for name, s in speed.items()]
    report(pd.DataFrame(rows), "sampling_denoiser", "Block denoiser vs autoregressive sampling",
           "measured, no target: the denoiser runs S+1 model calls per block of B tokens", device)


if __name__ == "__main__":
    main()
