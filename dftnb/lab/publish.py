"""The committed chapters carry the outputs of the default profile, so a reader sees the figures without running them.

    make run && make publish                     # execute every chapter (profile default), copy the outputs in
    python -m dftnb.lab.publish outputs          # the same for chapters executed into outputs/
    python -m dftnb.lab.publish --stale          # which committed chapters' outputs no longer match their code

:func:`publish` copies the outputs of each executed chapter into ``notebooks/`` cell by cell (matched by cell id;
papermill's injected parameter cell is left out), so the committed cell sources stay exactly as written. The first
code cell's outputs start with a line that says which run made them (profile, date, machine, commit), and the
notebook's metadata keeps the sha256 of its code cells at that run: :func:`stale_chapters` compares it with the code
cells of today, so a chapter whose code changed since is found before its old outputs mislead a reader.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from .runner import NOTEBOOKS, REPO, executed_profile

PROFILE = "default"  # the profile whose outputs are committed
HEADER = "Outputs of the {profile} profile, run on {date} on {machine}, commit {commit}.\n"


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


def publish(out_dir: str | Path, notebooks_dir: str | Path = NOTEBOOKS, machine: str | None = None) -> list[str]:
    """Copy the outputs of the chapters executed with the default profile in ``out_dir`` into ``notebooks_dir``;
    returns the names of the chapters written. A chapter whose run failed or has not ended is left as it is; one of
    another profile, or executed from other code than the committed chapter's, is refused (rerun it first)."""
    out_dir, notebooks_dir = Path(out_dir), Path(notebooks_dir)
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
        nb["metadata"]["dftnb"] = {"outputs": {**header, "code_sha256": code_digest(nb)}}
        _write(source, nb)
        written.append(source.name)
    if not written:
        raise FileNotFoundError(f"no executed chapter in {out_dir} that ran to its end: run `make run` (profile "
                                f"{PROFILE}) first.")
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
    for name in publish(out):
        print(f"published {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
