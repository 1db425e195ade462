"""Target construction against its physical floor, the reference model's forward pass.

    python benchmarks/target_build.py            # embedded SmolLM2-135M, 32 Shakespeare blocks x 128 tokens, k = 64
    python benchmarks/target_build.py --quick    # tiny random model, a smoke check of the script, not a result

Three ways over the same token blocks, batch 4, interleaved rounds (median of ``--repeats``):

* ``forward only``: ``model(input_ids, attention_mask)`` with full logits, nothing kept: the floor;
* ``top-k targets``: ``dftnb.targets.from_reference_model`` (k = 64): forward, top-k, exact tail mass, rows into an
  Arrow-backed ``datasets.Dataset``;
* ``sampled targets``: the same with ``sampling="sampled"`` (64 tokens drawn per position).

``vs forward`` is the ratio of tokens/s in wall time (the goal); ``cpu vs forward`` the same ratio in process CPU
time, a cross-check that moves much less when other work shares the machine.

Goal: each builder's tokens/s >= 0.8 x forward-only tokens/s (top-k, sampling and storage add at most 25% to the
forward pass). Table ``outputs/tables/target_build.csv``.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from common import interleaved_medians, report, resolve_device, verdict

from dftnb.lab import data
from dftnb.lab.models import batches, load_model, pad_right, pad_token_id, tiny_model
from dftnb.lab.runner import quiet
from dftnb.targets import from_reference_model

GOAL = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model instead of the embedded one")
    parser.add_argument("--device", default=None)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet()
    device = resolve_device(args.device)
    model, tokenizer = tiny_model() if args.quick else load_model("embedded", device=device)
    blocks = data.pack_texts(tokenizer, data.corpus_texts("shakespeare", "train"), args.block_size, args.blocks)
    tokens = sum(len(b) for b in blocks)

    def forward_only():
        with torch.no_grad():
            for batch in batches(blocks, 4):
                ids, mask = pad_right(batch, pad_token_id(tokenizer), model.device)
                model(input_ids=ids, attention_mask=mask, use_cache=False)

    def build(sampling):
        return lambda: from_reference_model(model, tokenizer, blocks, k=args.k, max_length=args.block_size,
                                            batch_size=4, sampling=sampling)

    fns = {"forward only": forward_only, "top-k targets": build("topk"), "sampled targets": build("sampled")}
    times = interleaved_medians(fns, args.repeats, device)
    floor = tokens / times["forward only"]["median"]
    rows = []
    for name, t in times.items():
        rate = tokens / t["median"]
        rows.append({"method": name, "tokens": tokens, "median_s": round(t["median"], 3),
                     "tokens_per_s": round(rate, 1), "vs forward": round(rate / floor, 3),
                     # the same ratio in process CPU time: moves much less when other work shares the cores
                     "cpu vs forward": round(times["forward only"]["median_cpu"] / t["median_cpu"], 3),
                     "met": "-" if name == "forward only" else verdict(rate >= GOAL * floor)})
    title = (f"target construction: {'tiny random model' if args.quick else 'embedded SmolLM2-135M'}, {args.blocks} "
             f"blocks x {args.block_size} tokens, k = {args.k}, batch 4, median of {args.repeats} interleaved rounds")
    report(pd.DataFrame(rows), "target_build", title, f"builder tokens/s >= {GOAL} x forward-only tokens/s", device)


if __name__ == "__main__":
    main()
