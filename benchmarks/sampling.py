"""Cost of the custom samplers inside generate(), and of the block denoiser, against plain sampling.

    python benchmarks/sampling.py            # embedded SmolLM2-135M on CPU (about 2-3 minutes on 2 cores)
    python benchmarks/sampling.py --quick    # tiny random model, seconds

Goal: each LogitsProcessor adds <= 3% to the time of generate() with plain temperature sampling. Two numbers:
``ratio`` = median wall time of generate() with the sampler / median with plain sampling (runs interleaved, same
number of new tokens), and ``processor_share`` = median time of one processor call on a (1, V) row / median time per
generated token; the second is immune to the machine's load drifting between runs. The denoiser is reported as
tokens/s next to autoregressive sampling.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from dftnb.denoise import denoise_generate
from dftnb.models import load_model, tiny_model
from dftnb.sampling import sampler_kwargs

GOAL = 0.03
SAMPLERS = [
    ("temperature", dict(temperature=1.0)),
    ("top_p", dict(top_p=0.9)),
    ("min_p", dict(min_p=0.05)),
    ("dynatemp", dict(min_temperature=0.5, max_temperature=1.5)),
    ("edt", dict(temperature0=1.0, theta=1.0)),
    ("top_nsigma", dict(n=1.0)),
    ("mirostat", dict(tau=5.0, eta=0.1)),
    ("target_entropy", dict(target_entropy=3.0)),
]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def generate_fn(model, ids, new_tokens, name, params, seed):
    def run():
        torch.manual_seed(seed)
        model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            **sampler_kwargs(name, **params),
        )

    return run


def processor_seconds(name, params, vocab_size, repeats=50) -> float:
    """Median seconds of one processor call on a realistic (1, V) logit row (0 for generate's own warpers)."""
    kwargs = sampler_kwargs(name, **params)
    if "logits_processor" not in kwargs:
        return 0.0
    processor = kwargs["logits_processor"]
    logits = torch.randn(1, vocab_size, generator=torch.Generator().manual_seed(0)) * 3.0
    ids = torch.zeros(1, 4, dtype=torch.long)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        processor(ids, logits)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model instead of the embedded one")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per sampler (default 5, quick 3)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per run (default 32, quick 16)")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 5)
    new_tokens = args.new_tokens or (16 if args.quick else 32)

    model, tokenizer = tiny_model() if args.quick else load_model("embedded")
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    vocab_size = model.get_input_embeddings().weight.shape[0]
    print(
        f"model: {'tiny (random init)' if args.quick else 'embedded SmolLM2-135M'}, CPU {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"{new_tokens} new tokens, median of {runs} interleaved runs"
    )

    for name, params in SAMPLERS:  # warm-up: first calls allocate
        generate_fn(model, ids, 4, name, params, 0)()
    baseline = "temperature"
    times = {name: [] for name, _ in SAMPLERS}
    for run in range(runs):
        for name, params in SAMPLERS:
            times[name].append(timed(generate_fn(model, ids, new_tokens, name, params, run)))
    base = statistics.median(times[baseline])
    per_token = base / new_tokens

    print(f"\n{'sampler':<16}{'median s':>10}{'ratio':>8}{'proc ms':>9}{'proc share':>12}{'goal':>7}")
    for name, params in SAMPLERS:
        med = statistics.median(times[name])
        share = processor_seconds(name, params, vocab_size) / per_token
        verdict = "ok" if share <= GOAL else "over"
        print(
            f"{name:<16}{med:>10.3f}{med / base:>8.3f}{share * per_token * 1e3:>9.3f}{share:>11.1%}"
            f"{verdict:>7}"
        )
    print(f"goal: processor share <= {GOAL:.0%} of a plain sampling step ({per_token * 1e3:.1f} ms/token here)")

    print(f"\n{'generator':<44}{'tokens/s':>10}{'vs AR':>8}")
    ar = [timed(generate_fn(model, ids, new_tokens, "temperature", {}, r)) for r in range(max(2, runs // 2))]
    ar_tps = new_tokens / statistics.median(ar)
    print(f"{'autoregressive sampling (generate)':<44}{ar_tps:>10.1f}{1.0:>8.2f}")
    for block, steps in [(8, 8), (8, 16)]:
        def denoise(block=block, steps=steps):
            denoise_generate(model, tokenizer, ids, max_new_tokens=new_tokens, block_size=block, steps=steps,
                             top_p=0.9, noise_scale=1.0, eos_token_id=[], seed=0)
        dn = [timed(denoise) for _ in range(max(2, runs // 2))]
        tps = new_tokens / statistics.median(dn)
        label = f"denoiser B={block}, S={steps}"
        print(f"{label:<44}{tps:>10.1f}{tps / ar_tps:>8.2f}")


if __name__ == "__main__":
    main()
