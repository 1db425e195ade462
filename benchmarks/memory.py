"""Peak memory of the DFT loss (chunked vs full logits) and of a DFT training step against an SFT step.

    python benchmarks/memory.py                                  # CPU: peak RSS per variant (~3 min on 2 cores)
    python benchmarks/memory.py --quick                          # tiny model for the step part (about a minute)
    python benchmarks/memory.py --device cuda --dtype bf16       # GPU: torch.cuda.max_memory_allocated

Each variant runs in a fresh subprocess, so one variant's allocator state cannot hide another's peak. After the
set-up (inputs, model, targets, a warm-up step for the training-step variants) the process resets its peak (Linux
``/proc/self/clear_refs``; ``ru_maxrss`` high-water mark where that is not available, named in the ``method``
column) and records its resident set; the reported ``peak_mb`` is the peak during the measured work minus that
baseline. On CUDA the same is done with ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated``.
Workers run with ``MALLOC_MMAP_THRESHOLD_=1048576`` (glibc), so freed tensors leave the resident set at once.

1. Loss: forward + backward of the divergence for T = 2048 positions over V = 49,152 tokens (T·V ~ 1.0e8) from
   hidden states of size 64: ``naive`` computes the full ``(T, V)`` logits and the per-row loss on them;
   ``chunked`` is ``dft_loss(hidden, target, lm_head_weight=W, chunk_size=c)``. Goal: chunked <= 0.25 x naive.
2. Step: one ``DFTTrainer.training_step`` + ``AdamW.step()`` on the embedded model (4x128 tokens, k = 64 targets of
   the model itself), after a warm-up step that allocates the optimizer state. Goal: DFT / SFT <= 1.05.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from common import REPO, load_trainable, machine, report, resolve_device, resolve_dtype, verdict

LOSS_GOAL = 0.25
STEP_GOAL = 1.05
LOSS_T, LOSS_H, VOCAB, K = 2048, 64, 49152, 64


# ----------------------------------------------------------------------------------------------------------------
# Inside a worker subprocess
# ----------------------------------------------------------------------------------------------------------------
class PeakMeter:
    """Peak memory above a baseline: resident set on CPU, allocated bytes on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        clear_refs = Path("/proc/self/clear_refs")
        self.method = "cuda max_memory_allocated" if device.type == "cuda" else (
            "VmHWM after clear_refs" if clear_refs.exists() else "ru_maxrss high-water mark")

    @staticmethod
    def _status_kb(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"/proc/self/status has no {field}")

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = self._status_kb("VmRSS") * 1024
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def stop(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = self._status_kb("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"peak_mb": (peak - self.base) / 2**20, "total_peak_mb": peak / 2**20, "method": self.method}


def loss_worker(spec: dict) -> dict:
    """Forward + backward of one loss variant on T x H hidden states and a (V, H) head."""
    from dftnb.losses import loss_function
    from dftnb.objective import dft_loss
    from dftnb.targets import SparseTarget

    device, dtype = torch.device(spec["device"]), resolve_dtype(spec["dtype"])
    saved = torch.load(spec["target_file"])
    target = SparseTarget(saved["ids"].to(device), saved["logprobs"].to(device), VOCAB)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(LOSS_T, LOSS_H, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(VOCAB, LOSS_H, generator=g) * 0.3).to(device, dtype).requires_grad_()
    divergence = spec["divergence"]
    meter = PeakMeter(device)
    meter.start()
    if spec["variant"] == "naive":
        logits = hidden @ weight.T
        loss = loss_function(divergence)(logits, target).mean()
    else:
        loss = dft_loss(hidden, target, divergence, lm_head_weight=weight, chunk_size=spec["chunk_size"])
    loss.backward()
    return meter.stop()


def step_worker(spec: dict) -> dict:
    """One training step of ``spec['divergence']`` after a warm-up step (optimizer state allocated)."""
    from step_time import make_batch, step_functions

    from dftnb.lab.models import tiny_model
    from dftnb.lab.runner import quiet

    quiet()
    device, dtype = torch.device(spec["device"]), resolve_dtype(spec["dtype"])
    torch.manual_seed(0)
    if spec["quick"]:
        model, tokenizer = tiny_model(seed=0)
        model.to(device=device, dtype=dtype)
    else:
        model, tokenizer = load_trainable("embedded", device, dtype)
    batch = make_batch(model, tokenizer, spec["batch_size"], spec["seq_len"], K, device)
    divergence = spec["divergence"]
    with tempfile.TemporaryDirectory() as out_dir:
        # the same step as benchmarks/step_time.py: DFTTrainer.training_step + AdamW (lr 0), no logged statistics
        steps = step_functions(model, batch, device, False, out_dir, [] if divergence == "ce" else [divergence])
        step = steps["sft" if divergence == "ce" else divergence]

        step()  # warm-up: allocates the AdamW state and runs the trainer's one-time head check
        meter = PeakMeter(device)
        meter.start()
        step()
        return meter.stop()


# ----------------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------------
def run_worker(spec: dict) -> dict:
    """Run one variant in a fresh interpreter; its last stdout line is the JSON result."""
    code = (f"import sys, json; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import memory; "
            f"print(json.dumps(memory.{spec['kind']}_worker(json.loads(sys.argv[1]))))")
    # A fixed glibc mmap threshold: blocks >= 1 MiB are always mapped and returned on free. With glibc's default
    # (a threshold that grows to the largest freed block) freed tensors stay in the heap, so the resident peak
    # depends on the order of past allocations rather than on the tensors alive at once.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", str(1 << 20))}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, cwd=REPO,
                          env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_loss_target(path: Path) -> None:
    """Top-k targets of random logits for the loss part, saved once so no worker builds (T, V) logits itself."""
    from dftnb.targets import SparseTarget

    g = torch.Generator().manual_seed(1)
    ids, logprobs = [], []
    for start in range(0, LOSS_T, 256):
        logits = torch.randn(min(256, LOSS_T - start), VOCAB, generator=g) * 3.0
        target = SparseTarget.from_logits(logits, K)
        ids.append(target.ids)
        logprobs.append(target.logprobs)
    torch.save({"ids": torch.cat(ids), "logprobs": torch.cat(logprobs)}, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model for the training-step part")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="fp32", help="fp32 or bf16")
    parser.add_argument("--loss-divergence", default="reverse_kl", help="divergence of the loss part")
    parser.add_argument("--chunk-sizes", default="256,1024", help="chunk sizes of the chunked loss (256 = default of dft_loss)")
    parser.add_argument("--step-divergences", default="forward_kl,reverse_kl,sinkhorn",
                        help="DFT divergences compared with SFT in the training-step part")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    device = resolve_device(args.device)
    resolve_dtype(args.dtype)
    base = {"device": str(device), "dtype": args.dtype}
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        target_file = Path(tmp) / "target.pt"
        make_loss_target(target_file)
        loss_spec = {**base, "kind": "loss", "divergence": args.loss_divergence, "target_file": str(target_file)}
        naive = run_worker({**loss_spec, "variant": "naive"})
        rows.append({"part": "loss", "variant": f"naive full logits ({args.loss_divergence})", **naive,
                     "ratio": 1.0, "goal": "-", "met": "-"})
        for chunk in [int(c) for c in args.chunk_sizes.split(",")]:
            res = run_worker({**loss_spec, "variant": "chunked", "chunk_size": chunk})
            ratio = res["peak_mb"] / naive["peak_mb"]
            rows.append({"part": "loss", "variant": f"dft_loss chunk_size={chunk}", **res, "ratio": ratio,
                         "goal": f"<= {LOSS_GOAL}", "met": verdict(ratio <= LOSS_GOAL)})

    step_spec = {**base, "kind": "step", "quick": args.quick, "batch_size": args.batch_size, "seq_len": args.seq_len}
    sft = run_worker({**step_spec, "divergence": "ce"})
    rows.append({"part": "step", "variant": "sft (ce)", **sft, "ratio": 1.0, "goal": "-", "met": "-"})
    for divergence in args.step_divergences.split(","):
        res = run_worker({**step_spec, "divergence": divergence})
        ratio = res["peak_mb"] / sft["peak_mb"]
        rows.append({"part": "step", "variant": divergence, **res, "ratio": ratio,
                     "goal": f"<= {STEP_GOAL}", "met": verdict(ratio <= STEP_GOAL)})

    df = pd.DataFrame(rows)
    df["peak_mb"] = df["peak_mb"].round(1)
    df["total_peak_mb"] = df["total_peak_mb"].round(1)
    df["ratio"] = df["ratio"].round(3)
    df["machine"] = machine(device)
    model = "tiny model" if args.quick else "embedded SmolLM2-135M"
    title = (f"Peak memory above baseline: loss T={LOSS_T}, V={VOCAB}, H={LOSS_H} (T·V={LOSS_T * VOCAB:.2e}); "
             f"step {model}, {args.batch_size}x{args.seq_len} tokens, k={K}, {args.dtype}")
    report(df, "memory", title, f"chunked loss <= {LOSS_GOAL} x naive; DFT step <= {STEP_GOAL} x SFT step", device)


if __name__ == "__main__":
    main()
