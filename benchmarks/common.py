"""Shared pieces of the benchmark scripts: machine description, reproduction command, timing and result tables.

Every script prints the machine it ran on and the exact command that reproduces its numbers, and writes its table
as CSV under ``outputs/tables/`` (notebook 06 reads them).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from dftnb.lab.experiments import machine_description
from dftnb.records import portable_command

REPO = Path(__file__).resolve().parents[1]
TABLES = REPO / "outputs" / "tables"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


machine = machine_description  # one description of the machine for every table (dftnb.lab.experiments)


def command() -> str:
    """The command line that reproduces this run, with the thread setting it ran under."""
    prefix = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return prefix + portable_command(sys.argv)


def resolve_device(name: str | None) -> torch.device:
    """``"cuda"``/``"cpu"``/``"mps"`` as given; ``None`` picks cuda when present, else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device; use --device cpu.")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {name!r}.")
    return DTYPES[name]


def load_trainable(name: str, device: torch.device, dtype: torch.dtype):
    """``dftnb.lab.models.load_model``, refusing a model that loads as quantized (``Trainer`` cannot fine-tune it)."""
    from dftnb.lab.models import load_model

    model, tokenizer = load_model(name, device=device, dtype=dtype)
    if getattr(model, "hf_quantizer", None) is not None:
        raise RuntimeError(
            f"{name!r} loads as a quantized model ({model.config.quantization_config}), which Trainer refuses to "
            "fine-tune; for the embedded model delete .cache/models/ so it is de-quantised again without the "
            "GGUF quantization_config, or benchmark a float model."
        )
    return model, tokenizer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of ``fn()``, the device synchronised before and after.

    ``cpu`` is this process's CPU time (all threads): on a machine shared with other work it moves much less
    than the wall time, so its ratios are a cross-check of the wall-time ratios.
    """
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, dict]:
    """Median wall time of each callable, run round-robin so slow drift of the machine hits all of them alike.

    ``warmup`` untimed rounds first; then ``repeats`` timed rounds, each running every callable once, in
    alternating order (A B C, C B A, ...) so no method always runs right after the same neighbour.
    Returns ``{name: {"median": wall s, "median_cpu": cpu s, "times": [wall...]}}``.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(timed(fns[name], device))
    return {
        name: {"median": statistics.median(w for w, _ in ts), "median_cpu": statistics.median(c for _, c in ts),
               "times": [w for w, _ in ts]}
        for name, ts in times.items()
    }


def report(df: pd.DataFrame, name: str, title: str, goal: str, device: str | torch.device = "cpu") -> Path:
    """Print ``title``, the goal, the machine, the table and the command; write ``outputs/tables/<name>.csv``."""
    TABLES.mkdir(parents=True, exist_ok=True)
    path = TABLES / f"{name}.csv"
    df.to_csv(path, index=False)
    shown = df.drop(columns=[c for c in ("machine",) if c in df.columns])
    print(f"\n== {title} ==")
    print(f"goal:    {goal}")
    print(f"machine: {machine(device)}")
    print(shown.to_string(index=False))
    print(f"command: {command()}")
    print(f"csv:     {os.path.relpath(path, REPO)}")
    return path


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("PASS" if met else "MISS")
