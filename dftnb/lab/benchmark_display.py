"""Chapter 06's tables as a reader wants them (rounded, intervals in brackets) and stored (``<out>/tables``)."""

from __future__ import annotations

from pathlib import Path

from .benchmark import IN_DOMAIN, Benchmark
from .data import RETENTION_CORPORA


def training_cost_ratio(*candidates: str | Path):
    """DFT/SFT step-time ratios from the first ``step_time.csv`` found (written by ``benchmarks/step_time.py``),
    or ``None`` when none exists (run ``make bench``)."""
    import pandas as pd

    from ..records import portable_path

    for path in map(Path, candidates):
        if path.exists():
            df = pd.read_csv(path)
            keep = [c for c in ("divergence", "median_step_s", "ratio_vs_sft", "machine") if c in df.columns]
            return df[keep].assign(source=portable_path(path))
    return None


def _fmt(x, spec=".1f"):
    return "n/a" if x is None or x != x else format(x, spec)


def _interval(x, lo, hi, spec=".1f"):
    return "n/a" if x != x else f"{x:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def display_table(table):
    """The table as a reader wants it: accuracy with its minimum detectable difference, SDS and the blind test with
    their CIs, rounded."""
    import pandas as pd

    out = pd.DataFrame({"model": table["model"]})
    for col, label in (("mmlu", "MMLU"), ("humaneval", "HumanEval pass@1")):
        out[f"{label} % (n; MDD)"] = [
            "n/a" if n == 0 else f"{a:.1f} ({n}; ±{m:.0f})"
            for a, n, m in zip(table[col], table[f"{col}_n"], table[f"{col}_mdd"])
        ]
    out["SDS [95% CI]"] = [_interval(*v) for v in zip(table["sds"], table["sds_ci_low"], table["sds_ci_high"])]
    for col in ("d", "s", "c", "v"):
        out[col] = table[col].map(lambda x: _fmt(x, ".3f"))
    out["MAUVE"] = table["mauve"].map(lambda x: _fmt(x, ".3f"))
    out["blind test % [95% CI]"] = [_interval(*v, spec=".0f") for v in
                                    zip(table["blind_test"], table["blind_low"], table["blind_high"])]
    if "blind_n" in table:
        out["texts per side"] = table["blind_n"].map(lambda x: "n/a" if x != x else f"{x:.0f}")
    out["perplexity"] = table["perplexity"].map(lambda x: _fmt(x, ".2f"))
    return out


def display_retention(table):
    """Learning and retention per corpus, pooled over each corpus's tokens: held-out perplexity of the training
    corpus, top-1 % and perplexity of each retention corpus and of the HumanEval canonical solutions, the share of
    unusable HumanEval completions, and the base model's effective temperature of the SDS."""
    import pandas as pd

    models = table[table.model != "human text"]
    out = pd.DataFrame({"model": models["model"]})
    out[f"perplexity ({IN_DOMAIN})"] = models["perplexity"].map(lambda x: _fmt(x, ".2f"))
    for corpus in (*RETENTION_CORPORA, "solutions"):
        if f"top1_{corpus}" in models:
            label = "HumanEval solutions" if corpus == "solutions" else corpus
            out[f"{label}: top-1 % / perplexity"] = [f"{_fmt(a)} / {_fmt(b, '.2f')}" for a, b in
                                                       zip(models[f"top1_{corpus}"], models[f"ppl_{corpus}"])]
    if "humaneval_unusable" in models:
        out["HumanEval empty or unparsable %"] = models["humaneval_unusable"].map(_fmt)
    if "t_eff" in models:
        out["T_eff [95% CI]"] = [
            f"{p} of the base curve" if p in ("above", "below") else _interval(t, lo, hi, ".2f")
            for t, lo, hi, p in zip(models["t_eff"], models["t_eff_low"], models["t_eff_high"],
                                    models["t_eff_position"])]
    return out.reset_index(drop=True)


def display_calibration(calibration):
    """Calibration rows: SDS with CI (where a row has samples grouped by prompt), MAUVE, blind test with CI."""
    import pandas as pd

    cal = calibration.reindex(columns=list(dict.fromkeys([*calibration.columns, "sds", "sds_ci_low", "sds_ci_high"])))
    out = pd.DataFrame({"row": cal["row"]})
    out["SDS [95% CI]"] = [_interval(*v) for v in zip(cal["sds"], cal["sds_ci_low"], cal["sds_ci_high"])]
    out["MAUVE"] = calibration["mauve"].map(lambda x: _fmt(x, ".3f"))
    out["blind test % [95% CI]"] = [_interval(*v, spec=".0f") for v in
                                    zip(calibration["blind_test"], calibration["blind_low"], calibration["blind_high"])]
    return out


def display_paired(paired):
    """Paired differences ``model − reference``: the point, the 95% interval, the units, the p-value (McNemar's for
    the accuracy benchmarks, the bootstrap's otherwise)."""
    import pandas as pd

    return pd.DataFrame({
        "model": paired["model"], "metric": paired["metric"],
        "difference [95% CI]": [_interval(*v, spec="+.2f") + f" {u}" for *v, u in
                                zip(paired["difference"], paired["ci_low"], paired["ci_high"], paired["unit"])],
        "paired over": [f"{n:,} {over}" for n, over in zip(paired["n"], paired["over"])],
        "p": paired["p_value"].map(lambda x: "" if x != x else f"{x:.3f}"),
        "detectable (±points)": paired["mdd"].map(lambda x: "" if x != x else f"{x:.0f}"),
    })


def save_tables(bench: Benchmark, out: str | Path, caption: str) -> dict[str, Path]:
    """``<out>/tables/06_<name>.csv`` (numbers, with date) and ``.md`` (display table under ``caption``) for the
    table, the calibration rows, the paired differences and the frontier."""
    import datetime

    from .plots import markdown_table

    base = Path(out) / "tables"
    base.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    shown = {"benchmark_table": (bench.table, display_table), "calibration": (bench.calibration, display_calibration),
             "paired": (bench.paired, display_paired), "frontier": (bench.frontier, None)}
    paths = {}
    for name, (df, show) in shown.items():
        path = base / f"06_{name}.csv"
        df.assign(date=date).to_csv(path, index=False)
        if show is not None and len(df):
            path.with_suffix(".md").write_text(f"{caption}\n\nDate: {date}\n\n{markdown_table(show(df))}\n")
        paths[name] = path
    return paths
