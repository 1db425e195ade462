"""Bytes per token of the cached top-k targets against a dense fp16 row, and what the truncation loses.

    python benchmarks/storage.py            # cache files from the tiny model, KL on the embedded model (~1 min)
    python benchmarks/storage.py --quick    # KL on the tiny random model instead (seconds)

Storage: for each k the same token blocks get reference targets (``dftnb.targets.from_reference_model``) that are
written with the target cache (``build_or_load`` into a temporary folder: Arrow files + sidecar). Measured from the
saved files: ``file_B_per_token`` = all ``.arrow`` bytes / tokens (input ids, labels, list offsets and schema
included) and ``target_B_per_token`` = the value buffers of the ``target_ids`` + ``target_logprobs`` +
``target_tail_mass`` columns of the memory-mapped saved table / tokens (their per-sequence list offsets, 8 B a sequence, are in the file size). ``formula_B`` is ``dftnb.targets.storage_bytes(k, V)``, ``dense_fp16_B`` is
``2·V``. The model does not change the size, so the tiny model builds the files.

Truncation error: ``KL(p ‖ q_k)`` (``dftnb.targets.truncation_kl``) of the embedded model's next-token distribution
``p`` at every position of held-out blocks of the three corpora, against its top-k + uniform tail ``q_k``.
Goal: <= 260 B/token of target at k = 64 (4k + 4: ids, log-probabilities and the tail mass r).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import datasets
import pandas as pd
import torch
from common import machine, report

from dftnb.lab.data import CORPORA, corpus_texts, pack_texts
from dftnb.lab.models import load_model, tiny_model
from dftnb.lab.runner import quiet
from dftnb.target_cache import arrow_bytes, build_or_load, target_metadata
from dftnb.targets import dense_storage_bytes, from_reference_model, storage_bytes, truncation_kl

KS = (8, 16, 32, 64, 128)
GOAL_K, GOAL_BYTES = 64, 260
TARGET_COLUMNS = ("target_ids", "target_logprobs", "target_tail_mass")


def saved_sizes(model, tokenizer, blocks: list[list[int]], k: int, folder: Path) -> dict:
    """Write the reference targets of ``blocks`` with the target cache and measure the saved files."""
    meta = target_metadata(model, tokenizer, source="reference", corpus="shakespeare/train", k=k,
                           sequences=len(blocks), seq_len=len(blocks[0]))
    path = folder / f"k{k}"
    dataset = build_or_load(path, meta, lambda: from_reference_model(model, tokenizer, blocks, k=k,
                                                                     max_length=len(blocks[0])))
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    table = datasets.load_from_disk(str(path)).data.table
    # payload = the flat value buffers under list<fixed_size_list<...>> (list<float> for the tail mass); the
    # per-sequence offsets stay in the file size
    def payload(chunk):
        values = chunk.values
        return values.values.nbytes if hasattr(values, "values") else values.nbytes

    target_bytes = sum(payload(chunk) for name in TARGET_COLUMNS for chunk in table.column(name).chunks)
    return {"tokens": tokens, "file_B_per_token": arrow_bytes(path) / tokens,
            "target_B_per_token": target_bytes / tokens}


@torch.no_grad()
def held_out_logits(model, tokenizer, blocks_per_corpus: int, seq_len: int) -> torch.Tensor:
    """Next-token logits ``(positions, V)`` of the model on validation blocks of each corpus."""
    out = []
    for name in CORPORA:
        blocks = pack_texts(tokenizer, corpus_texts(name, "validation"), seq_len, blocks_per_corpus)
        for block in blocks:
            out.append(model(input_ids=torch.tensor([block])).logits[0].float())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="truncation KL on the tiny random model")
    parser.add_argument("--blocks", type=int, default=32, help="token blocks written to each cache")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--kl-blocks", type=int, default=None, help="validation blocks per corpus for the KL "
                        "(default 4, quick 1)")
    args = parser.parse_args()
    quiet()
    tiny, tokenizer = tiny_model(seed=0)
    vocab = int(tiny.get_output_embeddings().weight.shape[0])
    blocks = pack_texts(tokenizer, corpus_texts("shakespeare", "train", n=400), args.seq_len, args.blocks)

    if args.quick:
        kl_model, kl_name = tiny, "tiny random model"
    else:
        kl_model, _ = load_model("embedded")
        kl_name = "embedded SmolLM2-135M"
    logits = held_out_logits(kl_model, tokenizer, args.kl_blocks or (1 if args.quick else 4), args.seq_len)
    probs_sorted = torch.softmax(logits.double(), -1).sort(-1, descending=True).values

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in KS:
            sizes = saved_sizes(tiny, tokenizer, blocks, k, Path(tmp))
            kl = truncation_kl(logits, k)
            tail = 1.0 - probs_sorted[:, :k].sum(-1)
            formula = storage_bytes(k, vocab)
            goal = k == GOAL_K
            rows.append({
                "k": k,
                "file_B_per_token": round(sizes["file_B_per_token"], 1),
                "target_B_per_token": round(sizes["target_B_per_token"], 1),
                "formula_B": formula,
                "dense_fp16_B": dense_storage_bytes(vocab),
                "dense_over_target": round(dense_storage_bytes(vocab) / sizes["target_B_per_token"], 1),
                "kl_mean_nats": round(kl.mean().item(), 4),
                "kl_p95_nats": round(kl.quantile(0.95).item(), 4),
                "tail_mass_mean": round(tail.mean().item(), 4),
                "goal": f"<= {GOAL_BYTES} B" if goal else "-",
                "met": ("PASS" if sizes["target_B_per_token"] <= GOAL_BYTES else "MISS") if goal else "-",
                "machine": machine("cpu"),
            })
    df = pd.DataFrame(rows)
    title = (f"Target cache size (V={vocab}, {args.blocks}x{args.seq_len} tokens per cache) and truncation "
             f"KL(p||q_k) on {logits.shape[0]} held-out positions of the {kl_name} ({', '.join(CORPORA)})")
    report(df, "storage", title, f"<= {GOAL_BYTES} B/token of target at k={GOAL_K}")


if __name__ == "__main__":
    main()
