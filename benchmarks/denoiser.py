"""Trained block denoiser vs autoregressive sampling: tokens/s at fewer steps than block positions (S < B).

    python benchmarks/denoiser.py            # embedded SmolLM2-135M on CPU: a short denoiser fine-tune, then timing
    python benchmarks/denoiser.py --quick    # tiny random model, a smoke check of the script, not a result

Goal: the trained denoiser at S < B generates >= 1.2x the tokens/s of generate() (temperature 1), one prompt, batch 1.
A block of B tokens costs S + 1 model calls over B - 1 positions against B single-position calls, so (S + 1) / B
calls per token is the ceiling where per-call overhead dominates. The model is first fine-tuned as a denoiser
(dftnb.denoise_training, DFT forward KL to its own top-64, K = 5, a few steps: fine-tuning changes what a step
predicts, not what it costs), then AR and the denoiser at S = B and S < B are timed in interleaved rounds of one run.
"""

from __future__ import annotations

import argparse
import tempfile

import pandas as pd
import torch
from common import interleaved_medians, report, resolve_device, verdict

from dftnb.denoise import denoise_generate
from dftnb.denoise_training import DenoiserConfig, train_denoiser
from dftnb.lab.experiments import shakespeare_targets
from dftnb.lab.models import load_model, tiny_model
from dftnb.sampling import sampler_kwargs

GOAL = 1.2
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model instead of the embedded one")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--block", type=int, default=8, help="block size B (default 8)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps S < B (default 2)")
    parser.add_argument("--train-steps", type=int, default=None, help="fine-tuning steps (default 10, quick 2)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per call (default 32, quick 16)")
    args = parser.parse_args()
    if not 1 <= args.steps < args.block:
        parser.error(f"--steps must be in [1, --block) for S < B, got S = {args.steps}, B = {args.block}.")
    device = resolve_device(args.device)
    new_tokens = args.new_tokens or (16 if args.quick else 32)
    train_steps = args.train_steps if args.train_steps is not None else (2 if args.quick else 10)
    model, tokenizer = tiny_model() if args.quick else load_model("embedded", device="cpu")
    label = "tiny random model" if args.quick else "embedded SmolLM2-135M"

    rows = shakespeare_targets("smoke" if args.quick else "default", model, tokenizer)
    config = DenoiserConfig(block_size=args.block, K=5.0, min_prefix=4, max_prefix=24, zero_noise_fraction=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = train_denoiser(model, tokenizer, rows, "dft_forward_kl", tmp, denoiser=config, max_steps=train_steps,
                                  per_device_train_batch_size=8, learning_rate=3e-4, use_cpu=device.type == "cpu")
    model.to(device).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids.to(device)
    mask = torch.ones_like(ids)

    def denoiser(steps):
        return lambda: denoise_generate(model, tokenizer, ids, max_new_tokens=new_tokens, block_size=args.block,
                                        steps=steps, K=5.0, noise_scale=1.0, projection="sample", min_p=0.05,
                                        eos_token_id=[], seed=0)

    runs = interleaved_medians({
        "autoregressive sampling (generate)": lambda: model.generate(
            ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            **sampler_kwargs("temperature", temperature=1.0)),
        f"trained denoiser B={args.block}, S={args.block}": denoiser(args.block),
        f"trained denoiser B={args.block}, S={args.steps}": denoiser(args.steps),
    }, args.repeats, device)
    ar = runs["autoregressive sampling (generate)"]
    table = []
    for name, r in runs.items():
        ratio = ar["median"] / r["median"]
        fast = name.endswith(f"S={args.steps}") and "denoiser" in name
        table.append({"generator": name, "model": label, "train_steps": train_steps, "new_tokens": new_tokens,
                      "tokens_per_s": round(new_tokens / r["median"], 2), "relative_to_ar": round(ratio, 3),
                      "cpu_ratio": round(ar["median_cpu"] / r["median_cpu"], 3),
                      "verdict": verdict(ratio >= GOAL) if fast else "-"})
    report(pd.DataFrame(table), "denoiser_speed", "Trained denoiser vs autoregressive sampling",
           f"trained denoiser at S = {args.steps} < B = {args.block}: >= {GOAL}x the tokens/s of generate()", device)


if __name__ == "__main__":
    main()
