"""Run the numbered notebooks with papermill, and the one-line set-up every chapter starts with.

    python -m dftnb.lab.runner --profile smoke --out build          # what `make test` runs
    python -m dftnb.lab.runner --profile default --out outputs      # what `make run` runs
    python -m dftnb.lab.runner --profile default --out outputs --only 02

An executed chapter of another profile in ``--out`` (the chapters share its figures, tables and models), or a
notebook there that the runner did not write, is never overwritten without ``--overwrite``; rerunning a profile into
its own folder (``make run`` twice, ``--only 02`` after a fix) needs no flag.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import shutil
import sys
import time
import warnings
from pathlib import Path

from ..modeling import HEADLESS_ENV, interactive  # noqa: F401  (the runner sets what they read)

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
PROFILES = ("smoke", "default", "gpu")
KERNEL = "dftnb"


def resolve(path: str | Path) -> Path:
    """A path relative to the repository root (notebooks run with any working directory)."""
    path = Path(path)
    return path if path.is_absolute() else REPO / path


def quiet(progress: bool = False) -> None:
    """Keep library warnings (and, unless ``progress``, progress bars) off stderr, so nbval compares only what a
    chapter prints."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not progress:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity_error()
        datasets.logging.set_verbosity_error()
        if not progress:
            transformers.utils.logging.disable_progress_bar()
            datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_chapter(profile: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Validate ``profile``, silence warnings (and progress bars when headless, see :func:`interactive`), seed every
    RNG, apply the plot theme; return the output folder."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}.")
    quiet(progress=interactive())
    seed_everything(seed)
    from . import plots

    plots.setup()
    out = resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


SOLUTIONS_ENV = "DFTNB_SOLUTIONS"


def solutions_shown() -> bool:
    """Whether exercise solutions print their answer: yes in a headless run (the runner, nbval, CI: the published
    chapters show them), or when a reader sets ``DFTNB_SOLUTIONS=1`` or calls :func:`show_solutions`; no under
    JupyterLab's "Run All", so a room predicts before any answer appears."""
    return not interactive() or os.environ.get(SOLUTIONS_ENV, "0") == "1"


def show_solutions(on: bool = True) -> None:
    """Let the solution cells of this kernel print their answers (run it after the room has predicted)."""
    os.environ[SOLUTIONS_ENV] = "1" if on else "0"


def reveal(*answers) -> None:
    """Print (or display) an exercise's answer if :func:`solutions_shown`, else one line saying how to see it."""
    if not solutions_shown():
        print("Answer hidden until you have predicted: run `show_solutions()` (from dftnb.lab.runner), then this cell.")
        return
    from IPython.display import display

    for answer in answers:
        print(answer) if isinstance(answer, str) else display(answer)


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered chapters ``notebooks/NN_*.ipynb`` in order, optionally only those whose number is in ``only``."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [nb for nb in found if nb.name[:2] in {o.zfill(2) for o in only}]
        if not found:
            raise SystemExit(f"no notebook numbered {only} in {NOTEBOOKS}")
    return found


def executed_profile(path: Path) -> str | None:
    """The profile an executed chapter was run with (papermill records the runner's parameters in the notebook's
    metadata), or None for a file the runner did not write (no such record, or not a readable notebook)."""
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))["metadata"]["papermill"]["parameters"]["profile"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return profile if isinstance(profile, str) else None


def check_out_dir(out: Path, profile: str, chapters: list[Path], overwrite: bool = False) -> None:
    """Refuse, before anything runs, to run ``profile`` into ``out`` where that would destroy or mix with earlier work:
    an executed chapter of another profile anywhere in ``out`` (all chapters share its figures, tables and models),
    or a file at a chapter's output path that the runner did not write. Rerunning a profile into its own folder is
    allowed; ``overwrite`` allows everything."""
    if overwrite or not out.is_dir():
        return
    running = {nb.name for nb in chapters}
    for path in sorted(out.glob("[0-9][0-9]_*.ipynb")):
        held = executed_profile(path)
        if held is None and path.name in running:
            problem = "is not a chapter executed by the runner (it records no profile; edited or saved by hand?)"
        elif held is not None and held != profile:
            problem = f"holds an executed run of profile {held!r}"
        else:
            continue
        other = out.with_name(f"{out.name}-{profile}")
        other = other.relative_to(REPO) if other.is_relative_to(REPO) else other
        raise FileExistsError(
            f"{path} {problem}: running profile {profile!r} into {out} would overwrite it and mix its figures, tables "
            f"and models with this run's. Choose another folder (--out {other}) or pass --overwrite to replace it."
        )


def write_timings(path: Path, rows: list[dict]) -> None:
    """Merge ``rows`` into the timings CSV at ``path``: a rerun notebook replaces its row, the others are kept."""
    merged = {}
    if path.exists():
        with path.open(newline="") as fh:
            merged = {r["notebook"]: r for r in csv.DictReader(fh)}
    merged.update({r["notebook"]: r for r in rows})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["notebook", "profile", "seconds"])
        writer.writeheader()
        writer.writerows(merged[name] for name in sorted(merged))


def ipc_kernel_manager(socket_dir: str | Path):
    """A kernel manager class for papermill whose kernels talk over local IPC sockets (files under ``socket_dir``)
    instead of TCP on loopback: nothing listens on a port, and ipykernel has no reason to warn about unencrypted TCP.
    It also skips the SIGINT that jupyter_client sends an idle kernel right before asking it to shut down, which
    only makes the kernel log "KeyboardInterrupt caught in kernel" to the runner's stderr."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _ip_default(self) -> str:
            return str(Path(socket_dir) / f"kernel-{os.getpid()}-{id(self)}")

        async def _async_interrupt_kernel(self) -> None:
            if not self.shutting_down:  # interrupts asked for by a timeout still go through
                await super()._async_interrupt_kernel()

    return IPCKernelManager


def run_all(profile: str, out_dir: str | Path, only: list[str] | None = None, timeout: int | None = None,
            overwrite: bool = False) -> list[dict]:
    """Execute each chapter with papermill into ``out_dir`` (profile injected), printing one progress line each.

    Refuses (``FileExistsError``, before anything runs) to overwrite another profile's run or a notebook the runner
    did not write, unless ``overwrite`` (:func:`check_out_dir`).

    Writes ``<out_dir>/timings-<profile>.csv``. Stops at the first failing notebook; its partly executed copy is
    kept in ``out_dir`` so the failing cell can be read there. Chapters run headless (``DFTNB_HEADLESS=1``: no
    progress bars) on kernels connected over IPC.
    """
    import tempfile

    import papermill as pm

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}.")
    out = resolve(out_dir)
    chapters = notebooks(only)
    check_out_dir(out, profile, chapters, overwrite)
    os.environ[HEADLESS_ENV] = "1"  # inherited by the kernels papermill starts
    sockets = tempfile.mkdtemp(prefix="dftnb-kernels-")  # the IPC socket files live here, not in notebooks/
    manager = ipc_kernel_manager(sockets)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, nb in enumerate(chapters, 1):
        print(f"[{i}/{len(chapters)}] {nb.name} (profile {profile}) ...", end=" ", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb),
                str(out / nb.name),
                parameters={"profile": profile, "out_dir": str(out_dir)},
                kernel_name=KERNEL,
                progress_bar=False,
                log_output=False,
                cwd=str(NOTEBOOKS),
                execution_timeout=timeout,
                kernel_manager_class=manager,
            )
        except Exception as err:  # papermill raises PapermillExecutionError with the failing cell
            print(f"FAILED after {time.perf_counter() - start:.0f} s:\n{err}", flush=True)
            raise SystemExit(1) from None
        seconds = time.perf_counter() - start
        rows.append({"notebook": nb.name, "profile": profile, "seconds": round(seconds, 1)})
        print(f"done in {seconds:.0f} s -> {out / nb.name}", flush=True)
    shutil.rmtree(sockets, ignore_errors=True)
    timings = out / f"timings-{profile}.csv"
    write_timings(timings, rows)
    total = sum(r["seconds"] for r in rows)
    print(f"{len(rows)} notebook(s) done in {total:.0f} s; timings in {timings}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=PROFILES, default="default")
    parser.add_argument("--out", default="outputs", help="folder for executed notebooks, figures and tables")
    parser.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. --only 00 02")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace executed chapters of another profile (or not written by the runner) in --out")
    args = parser.parse_args(argv)
    try:
        run_all(args.profile, args.out, args.only, args.timeout, overwrite=args.overwrite)
    except FileExistsError as err:
        raise SystemExit(f"dftnb.lab.runner: {err}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
