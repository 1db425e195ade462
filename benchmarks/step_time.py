"""Training-step time of DFT against SFT, through the trainer's own loss path.

    python benchmarks/step_time.py                               # embedded SmolLM2-135M, 4x128 tokens, CPU (~6 min)
    python benchmarks/step_time.py --quick                       # tiny random model, 3 repeats (seconds)
    python benchmarks/step_time.py --device cuda --dtype bf16    # GPU
    python benchmarks/step_time.py --loss-only                   # dft_loss alone on the model's hidden states
    python benchmarks/step_time.py --breakdown                   # where a step's time goes, per operator, vs SFT

One step = ``DFTTrainer.training_step`` (forward, ``compute_loss`` -> chunked ``dft_loss`` on hidden states and the
LM head weight, backward) + ``AdamW.step()`` + ``zero_grad()``, on the same batch for every method. SFT is the same
trainer with ``divergence="ce"``; ``--hf-baseline`` adds ``sft_hf`` (stock ``model(..., labels=...)`` loss on full
logits) as a reference row. The targets are top-k (k = 64) of the model's own logits, built under ``no_grad`` before timing and
stored like the target cache (ids, float16 log-probabilities). Methods run round-robin (ABC, CBA, ...) after one
warm-up round; the table holds each method's median step time and its ratio to SFT's median (``cpu_ratio``: the
same ratio of median process CPU time, a cross-check that moves less when other work shares the machine;
``paired_ratio``: the median over rounds of the method's time over SFT's time in the same round).

Goals (arithmetic limit ~ +1%: the divergence is ~0.7% of a step's FLOPs for the embedded model):
ratio <= 1.05 for the KL family, JSD and TVD; <= 1.15 for wasserstein_sorted; <= 1.5 for sinkhorn (k = 64).
The seed article reports +20-30% for DFT over SFT.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import pandas as pd
import torch
from common import (
    interleaved_medians,
    load_trainable,
    machine,
    report,
    resolve_device,
    resolve_dtype,
    verdict,
)

from dftnb.lab.data import pack_texts
from dftnb.lab.models import tiny_model
from dftnb.lab.runner import quiet
from dftnb.targets import IGNORE_INDEX, SparseTarget
from dftnb.trainer import DFTConfig, DFTTrainer, default_training_args

GOALS = {  # divergence -> (goal on the DFT/SFT ratio of median step time, divergence_kwargs)
    "forward_kl": (1.05, {}),
    "reverse_kl": (1.05, {}),
    "jsd": (1.05, {}),
    "tvd": (1.05, {}),
    "wasserstein_sorted": (1.15, {}),
    "sinkhorn": (1.5, {"k": 64}),
}


def make_batch(model, tokenizer, batch_size: int, seq_len: int, k: int, device: torch.device) -> dict:
    """Shakespeare blocks of ``seq_len`` tokens and their top-k targets from the model itself (no grad).

    The log-probabilities go through float16 as in the stored target cache, then back to float32 as the collator
    returns them.
    """
    from dftnb.lab.data import corpus_texts

    blocks = pack_texts(tokenizer, corpus_texts("shakespeare", "train", n=400), seq_len, batch_size)
    if len(blocks) < batch_size:
        raise RuntimeError(f"only {len(blocks)} blocks of {seq_len} tokens in the corpus sample; lower --seq-len.")
    input_ids = torch.tensor(blocks, dtype=torch.long, device=device)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()
    target = SparseTarget.from_logits(logits, k)
    del logits
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": input_ids.clone(),
        "target_ids": target.ids,
        "target_logprobs": target.logprobs.half().float(),
    }


def step_functions(model, batch: dict, device: torch.device, log_stats: bool, out_dir: str, divergences: list[str],
                   hf_baseline: bool = False):
    """One callable per method, each doing forward + backward + optimizer step on ``batch``."""
    # lr = 0 keeps the weights (and so every method's inputs) identical across steps; AdamW does the same work.
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    args = default_training_args(out_dir, use_cpu=device.type != "cuda", bf16=False)
    n_items = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def trainer_step(divergence: str, kwargs: dict):
        config = DFTConfig(divergence=divergence, divergence_kwargs=kwargs, log_stats=log_stats)
        trainer = DFTTrainer(model=model, args=args, dft_config=config)

        def step():
            trainer.training_step(model, dict(batch), n_items)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def hf_step():
        model.train()
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fns = {"sft": trainer_step("ce", {})}
    fns.update({name: trainer_step(name, GOALS[name][1]) for name in divergences})
    if hf_baseline:
        fns["sft_hf"] = hf_step
    return fns


def loss_functions(model, batch: dict, divergences: list[str]):
    """One callable per method doing forward + backward of ``dft_loss`` alone, on the model's own final hidden states
    of ``batch`` and its LM-head weight (what ``DFTTrainer.compute_loss`` hands to the loss), no model pass."""
    from dftnb.objective import dft_loss
    from dftnb.trainer import final_hidden_states

    with torch.no_grad():
        hidden = final_hidden_states(model, batch)[0][:, :-1].detach()
    hidden.requires_grad_(True)
    weight = model.get_output_embeddings().weight
    embeddings = model.get_input_embeddings().weight.detach()
    labels = batch["labels"][:, 1:]
    target = SparseTarget(batch["target_ids"][:, :-1], batch["target_logprobs"][:, :-1], weight.shape[0])

    def loss_step(divergence: str, kwargs: dict):
        def step():
            extra = {"embeddings": embeddings} if divergence == "sinkhorn" else {}
            loss = dft_loss(hidden, None if divergence == "ce" else target, divergence, lm_head_weight=weight,
                            labels=labels, **extra, **kwargs)
            loss.backward()
            hidden.grad = weight.grad = None

        return step

    fns = {"sft": loss_step("ce", {})}
    fns.update({name: loss_step(name, GOALS[name][1]) for name in divergences})
    return fns


def operator_breakdown(fns: dict, repeats: int, top: int = 12) -> pd.DataFrame:
    """Self CPU time per operator and step (``torch.profiler``), each method in interleaved rounds after a warm-up.

    Rows: the ``top`` operators whose per-step time differs most from SFT's in any method, then ``(all operators)``.
    Columns: ms per step for each method, and ``<method> - sft``. The profiler adds its own overhead per operator
    call, so the totals exceed plain step times; the differences show where a method's extra time goes.
    """
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    names = list(fns)
    for name in names:
        fns[name]()
    per_op = {name: Counter() for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fns[name]()
            for event in prof.key_averages():
                per_op[name][event.key] += event.self_cpu_time_total / 1e3 / repeats
    frame = pd.DataFrame(per_op).fillna(0.0)
    for name in names[1:]:
        frame[f"{name} - sft"] = frame[name] - frame["sft"]
    diffs = frame[[f"{n} - sft" for n in names[1:]]].abs().max(axis=1)
    shown = frame.loc[diffs.sort_values(ascending=False).index[:top]]
    total = frame.sum().to_frame("(all operators)").T
    return pd.concat([shown, total]).round(2).rename_axis("operator").reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model, 3 repeats")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="fp32", help="fp32 or bf16 (model weights; bf16 for GPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per method (default 9, quick 3)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--k", type=int, default=64, help="target support size")
    parser.add_argument("--divergences", default=",".join(GOALS), help="comma-separated subset to time")
    parser.add_argument("--hf-baseline", action="store_true",
                        help="also time the stock HF loss on full logits (model(..., labels=...)) as a reference row")
    parser.add_argument("--loss-only", action="store_true",
                        help="time forward + backward of dft_loss alone (same hidden states, LM head, targets)")
    parser.add_argument("--breakdown", action="store_true",
                        help="profile each method's step per operator and show where it differs from SFT's")
    parser.add_argument("--log-stats", action="store_true",
                        help="keep DFTConfig.log_stats on (an extra no-grad CE/entropy pass, same for every method)")
    args = parser.parse_args()
    quiet()
    repeats = args.repeats or (3 if args.quick else 9)
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}.")
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    divergences = args.divergences.split(",")
    unknown = sorted(set(divergences) - set(GOALS))
    if unknown:
        raise ValueError(f"--divergences: unknown {unknown}; choose from {','.join(GOALS)}.")
    torch.manual_seed(0)
    if args.quick:
        model, tokenizer = tiny_model(seed=0)
        model.to(device=device, dtype=dtype)
        model_name = "tiny (hidden 64, 2 layers)"
    else:
        model, tokenizer = load_trainable("embedded", device, dtype)
        model_name = "embedded SmolLM2-135M"
    batch = make_batch(model, tokenizer, args.batch_size, args.seq_len, args.k, device)
    with tempfile.TemporaryDirectory() as out_dir:
        if args.loss_only:
            fns = loss_functions(model, batch, divergences)
        else:
            fns = step_functions(model, batch, device, args.log_stats, out_dir, divergences, args.hf_baseline)
        if args.breakdown:
            df = operator_breakdown(fns, repeats)
            report(df, "step_breakdown", f"Self CPU ms per step and operator, {model_name}, {args.batch_size}x"
                   f"{args.seq_len} tokens, k={args.k}, mean of {repeats} profiled interleaved rounds",
                   "none (a breakdown: '<method> - sft' is where a method's extra time goes)", device)
            return
        results = interleaved_medians(fns, repeats, device, warmup=1)

    sft = results["sft"]["median"]
    rows = []
    for name, res in results.items():
        goal = GOALS[name][0] if name in GOALS and not args.loss_only else None  # the goals are on whole steps
        ratio = res["median"] / sft
        rows.append({
            "divergence": name,
            "median_step_s": round(res["median"], 4),
            "ratio_vs_sft": round(ratio, 3),
            "extra_s": round(res["median"] - sft, 4),
            "goal": "-" if goal is None else f"<= {goal}",
            "met": verdict(None if goal is None else ratio <= goal),
            "spread_s": f"{min(res['times']):.3f}-{max(res['times']):.3f}",
            # median over rounds of (this method / SFT in the same round): drift between rounds cancels
            "paired_ratio": round(statistics.median(t / s for t, s in zip(res["times"], results["sft"]["times"])), 3),
            "cpu_ratio": round(res["median_cpu"] / results["sft"]["median_cpu"], 3),
            "machine": machine(device),
        })
    df = pd.DataFrame(rows)
    tokens = args.batch_size * args.seq_len
    what = "dft_loss forward + backward alone" if args.loss_only else "step time"
    title = (f"DFT vs SFT {what}: {model_name}, {args.batch_size}x{args.seq_len} = {tokens} tokens, "
             f"k={args.k}, {args.dtype}, median of {repeats} interleaved rounds (sft = 'ce')")
    if args.loss_only:
        report(df, "loss_time", title, "none (a breakdown: extra_s is what each divergence adds to the loss)", device)
    else:
        report(df, "step_time", title, "DFT/SFT <= 1.05 KL/JSD/TVD, <= 1.15 wasserstein_sorted, <= 1.5 sinkhorn",
               device)


if __name__ == "__main__":
    main()
