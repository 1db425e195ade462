"""Wall time of every notebook in the smoke and default profiles against the budgets.

    python benchmarks/pipeline.py                  # read build/timings-smoke.csv and outputs/timings-default.csv
    python benchmarks/pipeline.py --run smoke      # run the smoke profile first (python -m dftnb.lab.runner), then read
    python benchmarks/pipeline.py --run default    # the whole default profile (up to 45 min on 2 cores)

The timings are the ``timings-<profile>.csv`` files ``python -m dftnb.lab.runner`` writes (seconds per notebook,
papermill start to end, kernel start-up included). A notebook with no timing is shown as ``not run``; a total is a
pass only when every chapter has a timing. Budgets (docs/design.md, profiles): each smoke notebook < 90 s; all default
notebooks together <= 45 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse

import pandas as pd
from common import REPO, machine, report

from dftnb.lab.runner import notebooks, run_all

OUT = {"smoke": "build", "default": "outputs"}
SMOKE_EACH_S = 90
DEFAULT_TOTAL_S = 45 * 60


def read_timings(profile: str) -> dict[str, float]:
    path = REPO / OUT[profile] / f"timings-{profile}.csv"
    if not path.exists():
        return {}
    df = pd.read_csv(path)
    return dict(zip(df["notebook"], df["seconds"].astype(float)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", choices=tuple(OUT), help="execute this profile with dftnb.lab.runner before reading")
    args = parser.parse_args()
    if args.run:
        run_all(args.run, OUT[args.run])
    smoke, default = read_timings("smoke"), read_timings("default")
    chapters = [nb.name for nb in notebooks()]
    chapters += sorted((set(smoke) | set(default)) - set(chapters))

    rows = []
    for name in chapters:
        s, d = smoke.get(name), default.get(name)
        rows.append({
            "notebook": name,
            "smoke_s": "not run" if s is None else s,
            "smoke_goal": f"< {SMOKE_EACH_S}",
            "smoke_met": "-" if s is None else ("PASS" if s < SMOKE_EACH_S else "MISS"),
            "default_s": "not run" if d is None else d,
        })
    complete_smoke = all(n in smoke for n in chapters)
    complete_default = all(n in default for n in chapters)
    total_smoke, total_default = sum(smoke.values()), sum(default.values())
    rows.append({
        "notebook": "TOTAL",
        "smoke_s": round(total_smoke, 1),
        "smoke_goal": f"each < {SMOKE_EACH_S}",
        "smoke_met": ("PASS" if all(v < SMOKE_EACH_S for v in smoke.values()) else "MISS")
        if complete_smoke else "incomplete",
        "default_s": round(total_default, 1),
        "default_goal": f"<= {DEFAULT_TOTAL_S} ({DEFAULT_TOTAL_S // 60} min)",
        "default_met": ("PASS" if total_default <= DEFAULT_TOTAL_S else "MISS") if complete_default else "incomplete",
    })
    df = pd.DataFrame(rows).fillna("-")
    df["machine"] = machine("cpu")
    title = (f"Notebook wall time (s) from {OUT['smoke']}/timings-smoke.csv and {OUT['default']}/timings-default.csv; "
             f"{len(chapters)} chapters")
    report(df, "pipeline", title, f"smoke: each notebook < {SMOKE_EACH_S} s; default: all <= {DEFAULT_TOTAL_S // 60} "
           "min on 2 CPU cores (machine below is where this table was printed; the timings come from the runs)")


if __name__ == "__main__":
    main()
