"""Target construction split across processes (dftnb.target_shards): the assembled cache equals the one-process
build row for row, with two ranks as threads (fast) and as ``torchrun`` processes through ``dftnb.train`` (gloo)."""

import json
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


def _assert_same_rows(got, want):
    assert len(got) == len(want)
    for column in ("input_ids", "labels", "target_ids", "target_tail_mass"):
        for a, b in zip(got[column], want[column]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=column)
    for a, b in zip(got["target_logprobs"], want["target_logprobs"]):  # float16 storage: same forward passes
        np.testing.assert_array_equal(np.asarray(a, dtype=np.float16), np.asarray(b, dtype=np.float16))


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
        _assert_same_rows(dataset, single)
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


TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun (part of torch) is not on PATH")
def test_torchrun_builds_the_reference_targets_in_slices(tmp_path):
    """``torchrun --nproc_per_node 2 -m dftnb.train`` on a config with a target cache: the two ranks build 8 and 2 of
    the 10 blocks, rank 0 assembles the cache, and it equals the one-process build row for row."""
    from dftnb.train import load_config, load_dataset, load_student

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
    result = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "dftnb.train", "--config",
                             str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    sharded = target_cache.load_target_dataset(tmp_path / "ddp-targets")  # checksums verified
    assert not shard_folder(tmp_path / "ddp-targets").exists()

    one = load_config(path, [f"data.targets.cache={tmp_path / 'one-targets'}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran: the same reductions, so the same float16 log-probabilities
    try:
        single = load_dataset(one, *load_student(one))
    finally:
        torch.set_num_threads(threads)
    _assert_same_rows(sharded, single)
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
    _assert_same_rows(out[0], single)
    assert T.target_info(out[0])["datastore_tokens"] == len(store)
