"""A real kNN-LM datastore: 200k keys from the corpus half, exact vs IVF-PQ search, storage and recall.

    python benchmarks/datastore.py              # embedded SmolLM2-135M, 200,000 keys from Shakespeare (~10 min, 2 cores)
    python benchmarks/datastore.py --quick      # tiny random model, 5,000 keys, a smoke check, not a result

The keys are the reference model's final hidden states over the second half of the Shakespeare train split (the
half chapter 02 uses as its "style manifold"; the first half holds the query blocks), built by
``dftnb.datastore.build_datastore`` in one pass. Then, on the same keys:

* ``exact``: ``IndexFlatL2`` (what ``index="auto"`` uses up to 65,536 keys);
* ``ivfpq``: ``IndexIVFPQ``, ``4·sqrt(N)`` lists, 64 sub-quantisers of 8 bits (64 B/key), ``nprobe`` 32
  (``index="auto"`` beyond 65,536 keys);
* ``ivfflat``: the same inverted file over the uncompressed keys (what the study uses): exact distances in the probed
  cells, so its recall shows what the probing alone loses and IVF-PQ's what the 64-byte codes lose on top.

Queries are hidden states of validation-split positions. Reported: bytes per key searched, neighbour search time
per query against the forward pass per token (measured while building the keys), and the recall of IVF-PQ's
``k_neighbors`` neighbours against the exact ones. Goals: >= 200k keys; search <= 20% of the forward pass per
token; <= 64 B/key; recall >= 0.9 at the neighbours used (``--k-neighbors``, chapter 02's 16).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from common import report, resolve_device, verdict

from dftnb.datastore import build_datastore, faiss_index
from dftnb.lab import data
from dftnb.lab.models import batches, forward_with_hidden, load_model, pad_right, pad_token_id, tiny_model
from dftnb.lab.runner import quiet

GOALS = {"keys": 200_000, "search_share": 0.20, "bytes_per_key": 64, "recall": 0.9}


def query_states(model, tokenizer, n_queries: int, block: int = 128) -> torch.Tensor:
    """Final hidden states at ``n_queries`` positions of the Shakespeare validation split."""
    blocks = data.pack_texts(tokenizer, data.corpus_texts("shakespeare", "validation"), block,
                             -(-n_queries // (block - 1)))
    out = []
    with torch.no_grad():
        for batch in batches(blocks, 8):
            ids, mask = pad_right(batch, pad_token_id(tokenizer), model.device)
            _, hidden = forward_with_hidden(model, ids, mask, want_hidden=True)
            out.append(hidden[:, :-1].reshape(-1, hidden.shape[-1]).float().cpu())
    return torch.cat(out)[:n_queries]


def search_seconds(index, queries: np.ndarray, k: int, repeats: int = 3) -> tuple[float, np.ndarray]:
    """Median seconds per query of ``index.search`` over all queries, and the neighbour ids."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = index.search(queries, k)
        times.append((time.perf_counter() - start) / len(queries))
    return float(np.median(times)), ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny random model, 5,000 keys")
    parser.add_argument("--device", default=None)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--k-neighbors", type=int, default=16)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4 sqrt(N))")
    args = parser.parse_args()
    quiet()
    device = resolve_device(args.device)
    if args.quick:
        model, tokenizer = tiny_model()
        args.keys, args.queries, args.nlist = 5_000, 200, 16
    else:
        model, tokenizer = load_model("embedded", device=device)
    texts = data.corpus_texts("shakespeare", "train")
    start = time.perf_counter()
    store = build_datastore(model, tokenizer, texts[len(texts) // 2:], max_datastore_tokens=args.keys, index="none")
    forward_per_token = (time.perf_counter() - start) / len(store)
    queries = query_states(model, tokenizer, args.queries).numpy()
    rows, exact_ids = [], None
    for kind in ("flat", "ivfpq", "ivfflat"):
        t0 = time.perf_counter()
        index = faiss_index(store.keys, kind, nlist=args.nlist, nprobe=args.nprobe,
                            m=64 if store.keys.shape[1] % 64 == 0 else 16)
        build_s = time.perf_counter() - t0
        per_query, ids = search_seconds(index, queries, args.k_neighbors)
        if kind == "flat":
            exact_ids = ids
        recall = float(np.mean([len(set(a) & set(e)) / args.k_neighbors for a, e in zip(ids, exact_ids)]))
        code = index.pq.code_size if kind == "ivfpq" else 4 * index.d
        rows.append({
            "index": type(index).__name__, "keys": len(store), "dim": index.d, "bytes_per_key": code,
            "build_s": round(build_s, 1), "search_ms_per_query": round(1e3 * per_query, 3),
            "forward_ms_per_token": round(1e3 * forward_per_token, 3),
            "search_share": round(per_query / forward_per_token, 3), f"recall@{args.k_neighbors}": round(recall, 4),
        })
    df = pd.DataFrame(rows)
    pq = df.iloc[1]
    df["met"] = [verdict(r["keys"] >= GOALS["keys"] and r["search_share"] <= GOALS["search_share"]
                         and (i == 0 or r[f"recall@{args.k_neighbors}"] >= GOALS["recall"])
                         and (r["index"] != "IndexIVFPQ" or r["bytes_per_key"] <= GOALS["bytes_per_key"]))
                 for i, r in df.iterrows()]
    title = (f"kNN-LM datastore: {len(store):,} keys ({'tiny random model' if args.quick else 'embedded SmolLM2-135M'}, "
             f"Shakespeare train, 2nd half), {len(queries)} validation queries, k = {args.k_neighbors}, "
             f"IVF-PQ nprobe {args.nprobe}; fp16 keys would take {2 * int(pq['dim'])} B/key")
    report(df, "datastore", title, f">= {GOALS['keys']:,} keys, search <= {GOALS['search_share']:.0%} of the "
           f"forward pass per token, <= {GOALS['bytes_per_key']} B/key and recall >= {GOALS['recall']} (IVF-PQ)", device)


if __name__ == "__main__":
    main()
