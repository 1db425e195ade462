"""Target construction split across processes (``torchrun`` / ``accelerate launch``), assembled into one cache.

Under data-parallel training every process needs the same target dataset. :func:`build_or_load_sharded` builds it
once in total instead of once per process: with ``P`` processes, process ``p`` builds targets for its contiguous
slice of the inputs (a forward pass of the reference model per row), writes them to a shard folder next to the cache,
and after a barrier process 0 concatenates the shards in input order and saves the result as an ordinary
:func:`dftnb.target_cache.build_or_load` cache (sidecar, checksums, atomic rename). After a second barrier every
process loads that cache. The work per process is ``1 / P`` of the build; the assembly reads and writes the targets
once (``4k + 4`` bytes per token, :func:`dftnb.targets.storage_bytes`).

A builder that treats its inputs one batch at a time gives the same rows as the single-process build when every
slice starts at a multiple of its batch size (``align``): the same batches go through the same forward passes.
A builder that draws (``sampling="sampled"``) restarts its generator in every slice, so its draws differ from the
single-process ones (equally distributed, not equal). kNN-LM targets (:func:`dftnb.targets.from_corpus`) shard the
same way when every process passes the same prebuilt ``datastore``: the slices are the queries, the keys are shared.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .target_cache import (
    build_or_load,
    checked_metadata,
    load_fresh,
    load_target_dataset,
    save_cache,
    target_cache_path,
    target_info,
)


def _no_barrier() -> None:
    return None


@dataclass(frozen=True)
class World:
    """This process's place among the processes that build together: ``rank`` in ``[0, size)`` and a ``barrier``
    that returns once every process has called it."""

    rank: int = 0
    size: int = 1
    barrier: Callable[[], None] = field(default=_no_barrier, repr=False)

    @classmethod
    def current(cls) -> World:
        """The ``torch.distributed`` process group when one is initialised (``torchrun``, ``accelerate launch``
        after the Trainer's arguments set it up), else a world of one process."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), dist.barrier)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} but no torch.distributed process group is initialised; "
                "create the TrainingArguments (or call torch.distributed.init_process_group) before building targets."
            )
        return cls()


def shard_bounds(n: int, size: int, align: int = 1) -> list[int]:
    """``size + 1`` cut points ``0 = b_0 <= ... <= b_size = n``: process ``p`` takes items ``[b_p, b_{p+1})``.

    The ``ceil(n / align)`` groups of ``align`` items are split as evenly as possible (the first ``groups mod size``
    processes get one group more), so every slice but the last starts and ends on a multiple of ``align``.
    """
    if size < 1 or align < 1:
        raise ValueError(f"size and align must be >= 1, got size={size}, align={align}.")
    groups = -(-n // align)
    return [min(n, align * (p * (groups // size) + min(p, groups % size))) for p in range(size + 1)]


def merged_info(infos: list[dict]) -> dict:
    """One builder record from the records of the shards: counts (ints that differ) add up, lists concatenate in
    shard order, every other entry must agree."""
    merged = {}
    for key in infos[0]:
        values = [info.get(key) for info in infos]
        if all(v == values[0] for v in values):
            merged[key] = values[0]
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            merged[key] = sum(values)
        elif all(isinstance(v, list) for v in values):
            merged[key] = [x for v in values for x in v]
        else:
            raise ValueError(f"the shards' builder records disagree on {key!r} ({values}): every process must build "
                             "with the same parameters.")
    return merged


def assemble(parts: list):
    """The shards' datasets concatenated in order, with one builder record (:func:`merged_info`)."""
    from datasets import concatenate_datasets

    dataset = concatenate_datasets(parts)
    dataset.info.description = json.dumps({"dftnb_target": merged_info([target_info(p) for p in parts])})
    return dataset


def shard_folder(cache: str | os.PathLike) -> Path:
    """Where :func:`build_or_load_sharded` keeps the shards of ``cache`` while they are built."""
    path = target_cache_path(cache)
    return path.with_name(f"{path.name}.shards")


def build_or_load_sharded(
    cache: str | os.PathLike,
    metadata: dict,
    build: Callable[[Sequence], object],
    items: Sequence,
    rebuild: str = "auto",
    world: World | None = None,
    align: int = 1,
):
    """:func:`dftnb.target_cache.build_or_load` with the build split across the processes of ``world``.

    ``build(items_slice)`` returns the target dataset of a slice of ``items`` (e.g. ``from_reference_model`` over
    some token blocks); ``align`` is its batch size (:func:`shard_bounds`). Every process calls this with the same
    arguments. Each first checks the cache (read only, :func:`dftnb.target_cache.load_fresh`); a fresh one is
    loaded by all. Otherwise process ``p`` builds its slice into ``<cache>.shards/<p>``; then process 0 assembles
    the shards in order, saves the cache and deletes the shard folder; then every process loads the cache. With one
    process this is ``build_or_load(cache, metadata, lambda: build(items), rebuild)``.
    """
    world = world or World()
    if world.size == 1:
        return build_or_load(cache, metadata, lambda: build(items), rebuild)
    if not len(items):
        raise ValueError("no inputs to build targets from: pass at least one text or token block.")
    wanted, path, shards = checked_metadata(metadata), target_cache_path(cache), shard_folder(cache)
    fresh = load_fresh(path, wanted, rebuild)
    world.barrier()  # every process has looked at the cache before process 0 may replace it
    if fresh is not None:
        return fresh
    bounds = shard_bounds(len(items), world.size, align)
    lo, hi = bounds[world.rank], bounds[world.rank + 1]
    if lo < hi:
        part = build(items[lo:hi])
        tmp, done = shards / f"{world.rank}.partial", shards / str(world.rank)
        for old in (tmp, done):  # left by an interrupted build
            shutil.rmtree(old, ignore_errors=True)
        part.save_to_disk(str(tmp))
        tmp.rename(done)
    world.barrier()  # every shard is on disk
    if world.rank == 0:
        folders = [shards / str(p) for p in range(world.size) if bounds[p] < bounds[p + 1]]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise FileNotFoundError(f"target shards {missing} are missing after the barrier: the processes do not share "
                                    f"the folder {shards.parent}; put the cache on a file system every process sees.")
        save_cache(path, wanted, assemble([load_target_dataset(f, verify=False) for f in folders]))
        shutil.rmtree(shards, ignore_errors=True)
    world.barrier()  # the cache is saved
    return load_target_dataset(path, verify=False)
