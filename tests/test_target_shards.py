"""Target construction split across processes (dftnb.target_shards): the assembled cache equals the one-process
build row for row, with two ranks as threads (fast) and as ``torchrun`` processes through ``dftnb.lab.train`` (gloo)."""

import json
import math
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import yaml

from dftnb import target_cache
from dftnb import targets as T
from dftnb.target_shards import World, build_or_load_sharded, merged_info, shard_bounds, shard_folder

K = 8


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("align", [1, 4])
def test_shard_bounds_split_the_items_in_order_on_batch_boundaries(size, align):
    for n in range(0, 23):
        b = shard_bounds(n, size, align)
        assert len(b) == size + 1 and b[0] == 0 and b[-1] == n
        assert all(x <= y for x, y in zip(b, b[1:]))  # contiguous slices, in order, covering every item once
        assert all(x % align == 0 for x in b if x != n)  # every slice starts on a batch boundary
        groups = [-(-(y - x) // align) for x, y in zip(b, b[1:])]  # batches per process
        assert max(groups) - min(groups) <= 1 and sum(groups) == -(-n // align)


def test_merged_info_adds_counts_concatenates_lists_and_refuses_disagreement():
    infos = [{"source": "reference", "k": 8, "skipped": 1, "seen": [3]}, {"source": "reference", "k": 8, "skipped": 2,
                                                                             "seen": [4, 5]}]
    assert merged_info(infos) == {"source": "reference", "k": 8, "skipped": 3, "seen": [3, 4, 5]}
    with pytest.raises(ValueError, match="disagree on 'prefix'"):
        merged_info([{"prefix": "a"}, {"prefix": "b"}])


def _blocks(vocab, n=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [int(x) for x in torch.randint(5, 13, (n,), generator=g)]
    lengths[6] = 1  # too short for a next-token target: skipped, and counted, by the rank that holds it
    return [torch.randint(3, vocab, (m,), generator=g).tolist() for m in lengths]


# Float columns are compared with a tolerance, everything deterministic by construction exactly. A process computes
# its rows in batches of its own shape (rank 1 holds 3 blocks where the one-process build holds 4), and a float32
# log-sum-exp over a differently shaped batch rounds differently on some CPUs (seen on AMD EPYC, never on Intel Xeon).
# * target_tail_mass r = exp(logsumexp of the V - k off-support log-probabilities), float32: the log-sum-exp over V
#   terms is accurate to about log2(V) ulps, and r inherits that as a relative error; 4x that is the margin for the
#   logits' own rounding. At V = 49,152: rtol = 4 * 16 * 1.19e-7 = 7.6e-6 (the AMD run differed by 1.0e-6).
# * target_logprobs are stored in float16: one float32 rounding difference can move a value across a float16 rounding
#   boundary, so a value may differ by at most one float16 ulp at its magnitude (2^-7 = 0.0078 near -10).
# A dropped, duplicated or shifted row still fails on every float column alone (test_float_tolerance_still_finds_...).
def tail_rtol(vocab_size: int) -> float:
    return 4 * math.ceil(math.log2(vocab_size)) * float(np.finfo(np.float32).eps)


def _float_columns_problem(got, want, vocab_size: int) -> str | None:
    """Where the float columns of two builds differ beyond rounding (None when they agree)."""
    if len(got) != len(want):
        return f"{len(got)} rows vs {len(want)}"
    for i, (a, b) in enumerate(zip(got["target_tail_mass"], want["target_tail_mass"])):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape or not np.allclose(a, b, rtol=tail_rtol(vocab_size), atol=0):
            return f"target_tail_mass of row {i}"
    for i, (a, b) in enumerate(zip(got["target_logprobs"], want["target_logprobs"])):
        a, b = np.asarray(a, dtype=np.float16), np.asarray(b, dtype=np.float16)
        if a.shape != b.shape:
            return f"target_logprobs of row {i}"
        ulp = np.spacing(np.maximum(np.abs(a), np.abs(b))).astype(np.float64)
        if (np.abs(a.astype(np.float64) - b.astype(np.float64)) > ulp).any():
            return f"target_logprobs of row {i}"
    return None


def _assert_same_rows(got, want, vocab_size: int):
    assert len(got) == len(want)
    for column in ("input_ids", "labels", "target_ids"):  # integers: the same build, row for row, exactly
        for a, b in zip(got[column], want[column]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=column)
    assert _float_columns_problem(got, want, vocab_size) is None, _float_columns_problem(got, want, vocab_size)


def _run_ranks(size, fn):
    """``fn(world)`` on ``size`` threads sharing one barrier, as ``size`` processes would; returns the results and
    re-raises the first error."""
    barrier = threading.Barrier(size, timeout=120)
    results, errors = [None] * size, []

    def worker(rank):
        try:
            results[rank] = fn(World(rank, size, barrier.wait))
        except Exception as err:  # noqa: BLE001  (re-raised below)
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_two_ranks_assemble_the_one_process_cache_row_for_row(tiny, tmp_path):
    model, tok = tiny
    blocks = _blocks(len(tok))
    meta = target_cache.target_metadata(model, tok, source="reference", corpus="random", k=K, sequences=len(blocks))
    calls = []

    def build(items):
        calls.append(len(items))
        return T.from_reference_model(model, tok, items, k=K, max_length=16, batch_size=4)

    single = target_cache.build_or_load(tmp_path / "single", meta, lambda: build(blocks))
    calls.clear()
    cache = tmp_path / "sharded"
    out = _run_ranks(2, lambda world: build_or_load_sharded(cache, meta, build, blocks, world=world, align=4))
    assert sorted(calls) == [3, 8]  # 3 batches of 4 blocks: two for rank 0, one (3 blocks) for rank 1
    for dataset in out:
        _assert_same_rows(dataset, single, len(tok))
    assert T.target_info(out[1])["skipped"] == T.target_info(single)["skipped"] == 1
    side = target_cache.read_sidecar(cache)
    assert side["metadata"] == json.loads(json.dumps(meta)) and side["rows"] == len(single) == len(blocks) - 1
    assert target_cache.checksum_problem(cache, side) is None and not shard_folder(cache).exists()

    calls.clear()  # a fresh cache is loaded by every rank, nothing is built
    again = _run_ranks(2, lambda world: build_or_load_sharded(cache, meta, build, blocks, world=world, align=4))
    assert calls == [] and again[0]["target_ids"] == single["target_ids"]
    with pytest.raises(target_cache.StaleTargetCacheError, match="stale"):  # every rank refuses: none waits forever
        _run_ranks(2, lambda world: build_or_load_sharded(cache, {**meta, "k": 4}, build, blocks, rebuild="never",
                                                          world=world, align=4))


def test_float_tolerance_still_finds_a_dropped_duplicated_or_shifted_row(tiny, tmp_path):
    """The tolerance above absorbs rounding, not a wrong row: with the integer columns left out, a build whose float
    columns lost, repeated or shifted one row fails, and a second build of the same blocks in other batch shapes
    passes."""
    model, tok = tiny
    blocks = [b for b in _blocks(len(tok)) if len(b) > 1]
    four = T.from_reference_model(model, tok, blocks, k=K, max_length=16, batch_size=4)
    three = T.from_reference_model(model, tok, blocks, k=K, max_length=16, batch_size=3)
    assert _float_columns_problem(three, four, len(tok)) is None
    floats = {c: four[c] for c in ("target_tail_mass", "target_logprobs")}
    n = len(four)
    for label, order in {"dropped": [i for i in range(n) if i != 5] + [n - 1],
                         "duplicated": [0, 0] + list(range(1, n - 1)),
                         "shifted": list(range(1, n)) + [0]}.items():
        bad = {c: [v[i] for i in order] for c, v in floats.items()}
        for column in floats:  # each float column alone catches it
            one_bad = {**floats, column: bad[column]}
            problem = _float_columns_problem(_Rows(one_bad, n), four, len(tok))
            assert problem is not None and column in problem, (label, column)


class _Rows(dict):
    """Columns as lists, with the row count a dataset has."""

    def __init__(self, columns, n):
        super().__init__(columns)
        self.n = n

    def __len__(self):
        return self.n


TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun (part of torch) is not on PATH")
def test_torchrun_builds_the_reference_targets_in_slices(tmp_path):
    """``torchrun --nproc_per_node 2 -m dftnb.lab.train`` on a config with a target cache: the two ranks build 8 and 2 of
    the 10 blocks, rank 0 assembles the cache, and it equals the one-process build row for row."""
    from dftnb.lab.train import load_config, load_dataset, load_student

    config = {
        "model": "tiny", "method": "dft_forward_kl", "save_final": False,
        "data": {"corpus": "shakespeare", "block_size": 16, "max_blocks": 10,
                 "targets": {"source": "reference", "k": K, "cache": str(tmp_path / "ddp-targets")}},
        "training": {"output_dir": str(tmp_path / "ddp"), "max_steps": 1, "per_device_train_batch_size": 2,
                     "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, "ddp_backend": "gloo",
                     "report_to": "none"},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "dftnb.lab.train", "--config",
                             str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    sharded = target_cache.load_target_dataset(tmp_path / "ddp-targets")  # checksums verified
    assert not shard_folder(tmp_path / "ddp-targets").exists()

    one = load_config(path, [f"data.targets.cache={tmp_path / 'one-targets'}"])
    single = load_dataset(one, *load_student(one))  # other batch shapes and threads: floats agree up to rounding
    _assert_same_rows(sharded, single, T.target_info(single)["vocab_size"])
    assert len(single) == 10
    assert (target_cache.read_sidecar(tmp_path / "ddp-targets")["metadata"]
            == target_cache.read_sidecar(tmp_path / "one-targets")["metadata"])


def test_knn_lm_targets_shard_the_same_way_with_one_datastore(tiny, tmp_path):
    """kNN-LM targets (``from_corpus``) over a datastore built once: sliced across two ranks, the same rows."""
    model, tok = tiny
    corpus = [" ".join(f"w{i % 17} w{(i * 7) % 13}" for i in range(j, j + 12)) for j in range(6)]
    store = T.build_datastore(model, tok, corpus, max_datastore_tokens=60, block_size=16)
    queries = _blocks(len(tok), n=7, seed=1)
    meta = target_cache.target_metadata(model, tok, source="knn", corpus="words", k=K, sequences=len(queries))

    def build(items):
        return T.from_corpus(model, tok, corpus, items, k=K, k_neighbors=4, datastore=store, batch_size=4)

    single = target_cache.build_or_load(tmp_path / "single", meta, lambda: build(queries))
    out = _run_ranks(2, lambda world: build_or_load_sharded(tmp_path / "sharded", meta, build, queries, world=world,
                                                            align=4))
    _assert_same_rows(out[0], single, len(tok))
    assert T.target_info(out[0])["datastore_tokens"] == len(store)
