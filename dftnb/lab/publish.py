"""The committed chapters carry the outputs of the default profile, so a reader sees the figures without running them.

    make run && make publish                     # execute every chapter (profile default), copy the outputs in
    python -m dftnb.lab.publish outputs          # the same for chapters executed into outputs/
    python -m dftnb.lab.publish --stale          # which committed chapters' outputs no longer match their code

:func:`publish` copies the outputs of each executed chapter into ``notebooks/`` cell by cell (matched by cell id;
papermill's injected parameter cell is left out), so the committed cell sources stay exactly as written. The first
code cell's outputs start with a line that says which run made them (profile, date, machine, commit), and the
notebook's metadata keeps the sha256 of its code cells at that run: :func:`stale_chapters` compares it with the code
cells of today, so a chapter whose code changed since is found before its old outputs mislead a reader.

The same call writes the run's measured times (``timings-default.csv``, written by the runner): in each published
chapter the text between ``<!-- runtime -->`` and ``<!-- /runtime -->`` in its Markdown cells, and in the README
the text between ``<!-- runtime:NN -->`` and ``<!-- /runtime -->`` for chapter NN and between
``<!-- runtime:total -->`` and ``<!-- /runtime -->`` for all of them, each as :func:`runtime_text` words it
(``about 4 min``: whole minutes rounded up; ``under 1 min``). Only Markdown changes, so the code digest, and with it
:func:`stale_chapters`, is untouched.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

from .runner import NOTEBOOKS, REPO, executed_profile

PROFILE = "default"  # the profile whose outputs are committed
HEADER = "Outputs of the {profile} profile, run on {date} on {machine}, commit {commit}.\n"
RUNTIME = re.compile(r"(<!-- runtime -->)(.*?)(<!-- /runtime -->)", re.S)  # in a chapter's Markdown cells
README_RUNTIME = re.compile(r"(<!-- runtime:(\d\d|total) -->)(.*?)(<!-- /runtime -->)", re.S)  # in README.md
README = REPO / "README.md"


class MissingRuntimeMarker(ValueError):
    """A published chapter (or the README) has no place for its measured run time; its outputs were written."""


def runtime_text(seconds: float) -> str:
    """A run time as the chapters state it: ``under 1 min`` below 60 s, else ``about ⌈seconds / 60⌉ min``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a run time must be a finite number of seconds >= 0, got {seconds!r}")
    return "under 1 min" if seconds < 60 else f"about {math.ceil(seconds / 60)} min"


def read_timings(path: str | Path, profile: str = PROFILE) -> dict[str, float]:
    """``{notebook file name: seconds}`` of ``profile`` from the runner's ``timings-<profile>.csv`` (empty if none)."""
    path = Path(path)
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {r["notebook"]: float(r["seconds"]) for r in csv.DictReader(fh) if r.get("profile", profile) == profile}


def set_chapter_runtime(nb: dict, text: str) -> int:
    """Put ``text`` between every ``<!-- runtime -->`` / ``<!-- /runtime -->`` pair of the chapter's Markdown cells
    (the cell source keeps its form: a string or a list of lines); returns how many pairs were found."""
    found = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        new, n = RUNTIME.subn(lambda m: m.group(1) + text + m.group(3), source)
        if n:
            found += n
            cell["source"] = new.splitlines(keepends=True) if isinstance(cell["source"], list) else new
    return found


def set_readme_runtimes(text: str, seconds: dict[str, float]) -> tuple[str, set[str]]:
    """The README with the run time of each chapter ``NN`` in ``seconds`` (``{"02": 361.0}``) and, when every chapter
    the README marks has one, their total; returns the text and the chapters of ``seconds`` it has no marker for."""
    marked = {m.group(2) for m in README_RUNTIME.finditer(text)} - {"total"}

    def fill(m: re.Match) -> str:
        key = m.group(2)
        if key == "total":
            if not marked or not marked <= set(seconds):
                return m.group(0)
            return m.group(1) + runtime_text(sum(seconds[k] for k in marked)) + m.group(4)
        return m.group(1) + runtime_text(seconds[key]) + m.group(4) if key in seconds else m.group(0)

    return README_RUNTIME.sub(fill, text), set(seconds) - marked


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, nb: dict) -> None:
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def code_digest(nb: dict) -> str:
    """sha256 of a chapter's code cells (their sources, in order; papermill's injected cell left out): what its
    outputs depend on besides the library and the data."""
    h = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "injected-parameters" not in cell.get("metadata", {}).get("tags", []):
            h.update("".join(cell["source"]).encode() + b"\0")
    return h.hexdigest()


def _commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (with uncommitted changes to dftnb/)" if git("status", "--porcelain", "--", "dftnb") else "")


def publish(out_dir: str | Path, notebooks_dir: str | Path = NOTEBOOKS, machine: str | None = None,
            readme: str | Path | None = README) -> list[str]:
    """Copy the outputs of the chapters executed with the default profile in ``out_dir`` into ``notebooks_dir``, and
    their measured run times (``out_dir/timings-default.csv``) into the chapters' and the README's runtime markers;
    returns the names of the chapters written. A chapter whose run failed or has not ended is left as it is; one of
    another profile, or executed from other code than the committed chapter's, is refused (rerun it first). A
    chapter or README without a runtime marker is reported by :class:`MissingRuntimeMarker` after everything else
    has been written."""
    out_dir, notebooks_dir = Path(out_dir), Path(notebooks_dir)
    timings = read_timings(out_dir / f"timings-{PROFILE}.csv")
    unmarked = []
    if machine is None:
        from .experiments import machine_description

        machine = machine_description()
    header = {"profile": PROFILE, "machine": machine, "commit": _commit()}  # the run's: publish right after it
    written = []
    for source in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        executed = out_dir / source.name
        if not executed.exists():
            continue
        ran = _read(executed)
        record = ran.get("metadata", {}).get("papermill", {})
        if record.get("exception") or not record.get("end_time"):  # failed, or still running (papermill saves as it goes)
            print(f"not published: {executed} did not run to its end")
            continue
        profile = executed_profile(executed)
        if profile != PROFILE:
            raise ValueError(f"{executed} was run with profile {profile!r}; the committed chapters carry the "
                             f"{PROFILE!r} profile's outputs: run `make run` (profile {PROFILE}) first.")
        nb = _read(source)
        header["date"] = record["end_time"][:10]
        if code_digest(nb) != code_digest(ran):
            raise ValueError(f"{executed} was executed from other code than {source}: rerun it "
                             f"(`python -m dftnb.lab.runner --only {source.name[:2]}`) and publish again.")
        by_id = {cell.get("id"): cell for cell in ran["cells"]}
        first = True
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            done = by_id[cell["id"]]
            cell["outputs"], cell["execution_count"] = done.get("outputs", []), done.get("execution_count")
            if first:
                cell["outputs"] = [{"name": "stdout", "output_type": "stream",
                                    "text": HEADER.format(**header)}] + cell["outputs"]
                first = False
        if source.name in timings and not set_chapter_runtime(nb, runtime_text(timings[source.name])):
            unmarked.append(f"{source.name} (no <!-- runtime -->...<!-- /runtime --> in its Markdown cells: put the "
                            "pair around the run time its intro states)")
        nb["metadata"]["dftnb"] = {"outputs": {**header, "code_sha256": code_digest(nb)}}
        _write(source, nb)
        written.append(source.name)
    if not written:
        raise FileNotFoundError(f"no executed chapter in {out_dir} that ran to its end: run `make run` (profile "
                                f"{PROFILE}) first.")
    if readme is not None and Path(readme).exists():
        readme = Path(readme)
        seconds = {name[:2]: timings[name] for name in written if name in timings}
        before = readme.read_text(encoding="utf-8")
        text, missing = set_readme_runtimes(before, seconds)
        if text != before:
            readme.write_text(text, encoding="utf-8")
        unmarked += [f"{readme.name} (no <!-- runtime:{nn} -->...<!-- /runtime --> for chapter {nn}: put the pair in "
                     "its row of the chapter table)" for nn in sorted(missing)]
    if unmarked:
        raise MissingRuntimeMarker(f"published {', '.join(written)}, but found no place for the measured run time "
                                   f"in: {'; '.join(unmarked)}. Add the markers, then `make publish` again.")
    return written


def stale_chapters(notebooks_dir: str | Path = NOTEBOOKS) -> dict[str, str]:
    """``{chapter: why}`` for each committed chapter whose outputs are missing or were made from other code (the
    message of the latter says "its code changed")."""
    stale = {}
    for path in sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb")):
        nb = _read(path)
        record = nb.get("metadata", {}).get("dftnb", {}).get("outputs")
        if record is None:
            stale[path.name] = "carries no published outputs"
        elif record["code_sha256"] != code_digest(nb):
            stale[path.name] = f"its code changed since the outputs of {record['date']} (commit {record['commit']})"
    return stale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="outputs", help="folder of chapters executed by `make run`")
    parser.add_argument("--stale", action="store_true", help="only list the chapters whose outputs are stale")
    args = parser.parse_args(argv)
    if args.stale:
        stale = stale_chapters()
        for name, why in stale.items():
            print(f"{name}: {why}; refresh with `make run && make publish`")
        raise SystemExit(1 if stale else 0)
    out = Path(args.out) if Path(args.out).is_absolute() else REPO / args.out
    try:
        written = publish(out)
    except MissingRuntimeMarker as err:
        raise SystemExit(str(err)) from None
    for name in written:
        print(f"published {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
