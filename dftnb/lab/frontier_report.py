"""The second edition's comparisons, read from the stored points only (``results/study-2/points``).

A *configuration* is a family and a position on its curve: ``base``; ``sft`` at a checkpoint step; ``wise`` (WiSE-FT
of SFT's last checkpoint) at a mixing weight α; a DFT family (``<objective>-<target>``) at a step. Seeds of a
configuration are averaged unit by unit (prompts, human passages, token blocks are the same for every point), so
every number below is a mean over seeds. SFT's frontier is built from ``base``, every ``sft`` and every ``wise``
configuration at every sampling temperature: everything the baseline reaches by training less, interpolating, or
sampling hotter or colder.

The comparisons, per DFT family, each a mean over the family's configurations (temperatures) and a bootstrap that
resamples prompts, human passages and token blocks together (paired: the same draws for every configuration):

1. ``diversity at matched fidelity``: ``SDS_d − F(blind_d)``, ``F(x)`` = the highest SDS an SFT configuration
   reaches with a blind-test accuracy ``≤ x`` (as human-like or more); positive = above SFT's frontier.
2. ``retention at matched learning`` (top-1, points): ``top1_d − R(nll_d)`` per out-of-domain corpus and for the
   HumanEval canonical solutions, ``R`` the linear interpolation of SFT's curve (``base`` + ``sft`` checkpoints, and
   separately ``wise``) at the DFT point's in-domain NLL; the article's "< 1% accuracy loss" is ``> −1`` point.
3. ``fidelity at matched diversity, T = 1.3``: ``G(SDS_d) − blind_d``, ``G(y)`` = the lowest blind-test accuracy of
   an SFT configuration with SDS ``≥ y``; positive = more human-like than SFT at the same diversity ("tolerates
   higher temperature").
4. ``likelihood at matched learning`` (NLL, nats/token): ``R(nll_d) − nll_d`` per corpus, positive = DFT predicts
   the diverse text better at the same in-domain learning.

A DFT configuration outside the range of SFT's curve (better fidelity than any SFT point, less in-domain learning
than the base model...) has no matched SFT value and is left out of its mean (the row says how many entered).
The seed floor of each comparison is the same statistic computed for one SFT seed's checkpoints against a frontier
built from the other SFT seeds (re-running the baseline); the verdicts use :func:`dftnb.measure.stats.decide` with
that floor and Holm's correction over every row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

N_BOOT = 1000
SEED = 0
TOKEN_BLOCK = 128  # tokens per resampled block of the token-level scores (neighbouring tokens are correlated)
TOLERANCE_TEMPERATURE = "1.3"


def parse_point(name: str) -> tuple[str, int | None, str]:
    """``(family, seed, position)``: ``"base"`` -> ``("base", None, "0")``; ``"sft-s1@50"`` -> ``("sft", 1, "50")``;
    ``"sft-s0@wise0.5"`` -> ``("wise", 0, "0.5")``; ``"rkl-knn-lam0.5-tau1-s0@25"`` -> ``("rkl-knn-lam0.5-tau1", 0,
    "25")``."""
    if name == "base":
        return "base", None, "0"
    run, where = name.split("@")
    method, seed = run.rsplit("-s", 1)
    if where.startswith("wise"):
        if method != "sft":
            raise ValueError(f"{name}: only SFT runs are interpolated (WiSE-FT).")
        return "wise", int(seed), where[len("wise"):]
    return method, int(seed), where


def point_label(family: str, seed: int | None, position: str) -> str:
    """The inverse of :func:`parse_point`."""
    if family == "base":
        return "base"
    if family == "wise":
        return f"sft-s{seed}@wise{position}"
    return f"{family}-s{seed}@{position}"


@dataclass
class Units:
    """Per-configuration unit scores, averaged over seeds: the arrays every bootstrap draw indexes."""

    configs: list[tuple[str, str]]  # (family, position)
    temperatures: list[str]
    sds: np.ndarray  # [config, T, prompt]
    model_blind: np.ndarray  # [config, T, prompt]: share of the prompt's texts the classifier got right
    human_blind: np.ndarray  # [config, T, passage]
    blocks: dict[str, np.ndarray]  # name -> [config, block]: in-domain / retention NLL and top-1 per token block
    seeds: dict[tuple[str, str], list[int | None]] = field(default_factory=dict)

    def index(self, family: str) -> list[int]:
        return [i for i, (f, _) in enumerate(self.configs) if f == family]


def _block_means(values: np.ndarray, size: int = TOKEN_BLOCK) -> np.ndarray:
    n = len(values) // size * size
    if n == 0:
        return np.asarray([values.mean()])
    return values[:n].reshape(-1, size).mean(1)


def point_units(folder: Path) -> dict:
    """The unit scores of one stored point (``scores.json``, ``tokens.npz``, ``solutions.csv``)."""
    import pandas as pd

    scores = json.loads((folder / "scores.json").read_text(encoding="utf-8"))
    out = {"sds": {}, "model_blind": {}, "human_blind": {}, "blocks": {}}
    for t, s in scores.items():
        n = s["samples_per_prompt"]
        model = np.asarray(s["model_correct"], dtype=float).reshape(-1, n)
        model[model < 0] = np.nan
        out["sds"][t] = np.asarray(s["sds_per_prompt"])
        out["model_blind"][t] = np.nanmean(model, axis=1)
        human = np.asarray(s["human_correct"], dtype=float)
        human[human < 0] = np.nan
        out["human_blind"][t] = human
    tokens = np.load(folder / "tokens.npz")
    for key in tokens.files:
        out["blocks"][key.replace("_nll", " nll").replace("_top1", " top1")] = _block_means(
            tokens[key].astype(np.float64))
    solutions = pd.read_csv(folder / "solutions.csv")
    out["blocks"]["solutions nll"] = (solutions["nll_sum"] / solutions["tokens"]).to_numpy()  # per problem
    out["blocks"]["solutions top1"] = (solutions["top1_hits"] / solutions["tokens"]).to_numpy()
    return out


def load_units(results: Path, relabel=None) -> Units:
    """Every scored point under ``results/points``, grouped into configurations and averaged over seeds.
    ``relabel(family, seed)`` may rename a point's family (or drop the point by returning ``None``)."""
    folders = sorted(p.parent for p in (Path(results) / "points").glob("*/scores.json"))
    if not folders:
        raise FileNotFoundError(f"no scored point under {Path(results) / 'points'}; run the study's point and "
                                "score pieces first.")
    grouped: dict[tuple[str, str], list] = {}
    seeds: dict[tuple[str, str], list] = {}
    for folder in folders:
        family, seed, position = parse_point(folder.name)
        if relabel is not None:
            family = relabel(family, seed)
            if family is None:
                continue
        grouped.setdefault((family, position), []).append(point_units(folder))
        seeds.setdefault((family, position), []).append(seed)
    configs = sorted(grouped, key=lambda c: (c[0] != "base", c[0] != "sft", c[0] != "wise", c[0], float(c[1])))
    temperatures = sorted(grouped[configs[0]][0]["sds"], key=float)

    def mean(kind, key):
        return np.stack([np.nanmean([u[kind][key] for u in grouped[c]], axis=0) for c in configs])

    return Units(configs, temperatures,
                 np.stack([mean("sds", t) for t in temperatures], axis=1),
                 np.stack([mean("model_blind", t) for t in temperatures], axis=1),
                 np.stack([mean("human_blind", t) for t in temperatures], axis=1),
                 {k: mean("blocks", k) for k in grouped[configs[0]][0]["blocks"]}, seeds)


class Draws:
    """Index vectors of one bootstrap draw (or the identity for the point estimate) and the statistics under them."""

    def __init__(self, units: Units, rng: np.random.Generator | None):
        self.u = units

        def pick(n):
            return np.arange(n) if rng is None else rng.integers(0, n, size=n)

        self.prompts = pick(units.sds.shape[-1])
        self.human = pick(units.human_blind.shape[-1])
        self.block_index = {k: pick(v.shape[-1]) for k, v in units.blocks.items()}

    def sds(self) -> np.ndarray:  # [config, T]
        return self.u.sds[..., self.prompts].mean(-1)

    def blind(self) -> np.ndarray:  # [config, T], percent
        model = np.nanmean(self.u.model_blind[..., self.prompts], -1)
        human = np.nanmean(self.u.human_blind[..., self.human], -1)
        return 100 * (model + human) / 2

    def block(self, key: str) -> np.ndarray:  # [config]
        v = self.u.blocks[key][:, self.block_index[key]].mean(-1)
        return 100 * v if key.endswith("top1") else v


def _frontier_max(x_ref, y_ref, x):
    """``F(x) = max{y_ref : x_ref ≤ x}`` (NaN where no reference point is as good)."""
    out = np.full(len(x), np.nan)
    for i, xi in enumerate(x):
        ok = x_ref <= xi
        if ok.any():
            out[i] = y_ref[ok].max()
    return out


def _frontier_min(x_ref, y_ref, y):
    """``G(y) = min{x_ref : y_ref ≥ y}`` (NaN where no reference point is as diverse)."""
    out = np.full(len(y), np.nan)
    for i, yi in enumerate(y):
        ok = y_ref >= yi
        if ok.any():
            out[i] = x_ref[ok].min()
    return out


def _interp(x_ref, y_ref, x):
    """Linear interpolation of the curve ``(x_ref, y_ref)`` at ``x`` (NaN outside its range)."""
    order = np.argsort(x_ref)
    xs, ys = x_ref[order], y_ref[order]
    out = np.interp(x, xs, ys)
    out[(x < xs[0]) | (x > xs[-1])] = np.nan
    return out


def comparison_rows(units: Units, family: str, reference: list[int], draws: Draws) -> dict[str, tuple[float, int]]:
    """``{comparison: (mean over the family's matched configurations, how many)}`` under one draw; ``reference`` =
    the configurations of SFT's frontier (indices into ``units.configs``)."""
    fam = units.index(family)
    sds, blind = draws.sds(), draws.blind()
    ref = np.asarray(reference)
    out = {}
    # 1. diversity at matched fidelity (every temperature)
    x_ref, y_ref = blind[ref].ravel(), sds[ref].ravel()
    gap = sds[fam].ravel() - _frontier_max(x_ref, y_ref, blind[fam].ravel())
    out["diversity at matched fidelity (SDS points)"] = _mean(gap)
    # 3. fidelity at matched diversity at T = 1.3
    if TOLERANCE_TEMPERATURE in units.temperatures:
        t = units.temperatures.index(TOLERANCE_TEMPERATURE)
        gain = _frontier_min(x_ref, y_ref, sds[fam, t]) - blind[fam, t]
        out[f"fidelity at matched diversity, T = {TOLERANCE_TEMPERATURE} (blind-test points)"] = _mean(gain)
    # 2 and 4: retention and likelihood at matched in-domain learning, against SFT's training curve and WiSE-FT's
    learning = draws.block("in_domain nll")
    curves = {"SFT": [i for i in ref if units.configs[i][0] in ("base", "sft")],
              "WiSE-FT": [i for i in ref if units.configs[i][0] in ("base", "wise")]}
    for key in sorted(k for k in units.blocks if k != "in_domain nll"):
        corpus, kind = key.rsplit(" ", 1)
        values = draws.block(key)
        for name, idx in curves.items():
            matched = _interp(learning[idx], values[idx], learning[fam])
            if kind == "top1":
                out[f"retention at matched learning vs {name}: {corpus} top-1 (points)"] = _mean(values[fam] - matched)
            else:
                out[f"likelihood at matched learning vs {name}: {corpus} NLL (nats, + = DFT lower)"] = _mean(
                    matched - values[fam])
    return out


def _mean(values) -> tuple[float, int]:
    values = np.asarray(values, dtype=float)
    ok = np.isfinite(values)
    return (float(values[ok].mean()) if ok.any() else float("nan")), int(ok.sum())


CLAIMS = {  # comparison prefix -> (margin, higher_is_claimed): what the article implies
    "diversity at matched fidelity": (0.0, True),
    "fidelity at matched diversity": (0.0, True),
    "retention at matched learning": (1.0, False),  # "< 1% accuracy loss": no worse than -1 point
    "likelihood at matched learning": (0.0, True),
}


def claim_of(comparison: str) -> tuple[float, bool]:
    return next(v for k, v in CLAIMS.items() if comparison.startswith(k))


def reference_configs(units: Units, exclude: str | None = None) -> list[int]:
    """SFT's frontier: the ``base``, ``sft`` and ``wise`` configurations."""
    return [i for i, (f, _) in enumerate(units.configs) if f in ("base", "sft", "wise") and f != exclude]


def comparisons(units: Units, family: str, reference: list[int], n_boot: int = N_BOOT, seed: int = SEED):
    """``{comparison: PairedDifference}`` for one family against the reference (point estimate, percentile interval
    over ``n_boot`` joint draws of prompts, human passages and token blocks); comparisons without any matched
    configuration are left out."""
    from ..measure.stats import interval_from_draws

    point = comparison_rows(units, family, reference, Draws(units, None))
    rng = np.random.default_rng(seed)
    draws = [comparison_rows(units, family, reference, Draws(units, rng)) for _ in range(n_boot)]
    out = {}
    for name, (value, n) in point.items():
        boot = np.asarray([d[name][0] for d in draws])
        boot = boot[np.isfinite(boot)]
        if n and boot.size >= n_boot // 2:
            out[name] = interval_from_draws(boot, value, n)
    return out


def seed_floor_units(results: Path, held_seed: int) -> Units:
    """The units with SFT seed ``held_seed``'s checkpoints as a family of their own (``sft-held``) and its WiSE
    points left out: the floor's "re-run of the baseline" against a frontier built from the other seeds."""
    units = load_units(results, relabel=lambda fam, seed: ("sft-held" if fam == "sft" and seed == held_seed else
                                                           None if fam == "wise" and seed == held_seed else fam))
    return units


def verdict_table(results: Path, n_boot: int = N_BOOT, seed: int = SEED):
    """One row per (DFT family, comparison): the difference, its interval, the seed floor, Holm-adjusted p and the
    verdict (:func:`dftnb.measure.stats.decide`)."""
    import pandas as pd

    from ..measure.stats import claim_p_value, decide, holm

    units = load_units(results)
    reference = reference_configs(units)
    sft_seeds = sorted({s for (f, _), seeds in units.seeds.items() if f == "sft" for s in seeds})
    floors: dict[str, float] = {}
    for held in sft_seeds if len(sft_seeds) > 1 else []:
        held_units = seed_floor_units(results, held)
        for name, d in comparisons(held_units, "sft-held", reference_configs(held_units), n_boot, seed).items():
            floors[name] = max(floors.get(name, 0.0), abs(d.mean))
    families = [f for f in dict.fromkeys(f for f, _ in units.configs) if f not in ("base", "sft", "wise")]
    rows = []
    for family in families:
        for name, d in comparisons(units, family, reference, n_boot, seed).items():
            margin, higher = claim_of(name)
            rows.append({"family": family, "comparison": name, "difference": d.mean, "ci_low": d.ci_low,
                         "ci_high": d.ci_high, "configurations": d.n, "seed_floor": floors.get(name, float("nan")),
                         "margin": margin, "higher_is_claimed": higher,
                         "p_value": claim_p_value(d, margin, higher), "interval": d})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = holm(table["p_value"].to_numpy())
    table["verdict"] = [decide(r.interval, r.margin, r.higher_is_claimed, 0.0 if np.isnan(r.seed_floor) else r.seed_floor,
                               r.p_holm) for r in table.itertuples()]
    return table.drop(columns="interval")


# --------------------------------------------------------------------------------------------------- the report
FLOAT, ZERO = "%.5g", 1e-12  # as the first edition's tables (stable digits across CPUs)
README_BEGIN, README_END = "<!-- study-2:begin -->", "<!-- study-2:end -->"
FAMILY_LABELS = {"base": "base model", "sft": "SFT (checkpoints)", "wise": "WiSE-FT of SFT"}


def family_label(family: str) -> str:
    """``"rkl+ce-knn-lam0.5-tau1.3"`` -> ``"DFT reverse KL + CE, kNN λ 0.5 τ 1.3"``."""
    if family in FAMILY_LABELS:
        return FAMILY_LABELS[family]
    objective, target = family.split("-", 1)
    what = {"rkl": "reverse KL", "fkl": "forward KL", "rkl+ce": "reverse KL + CE"}.get(objective, objective)
    if target.startswith("knn-"):
        lam, tau = target[len("knn-lam"):].split("-tau")
        target = f"kNN λ {lam} τ {tau}"
    elif target == "prefix":
        target = "style prefix"
    return f"DFT {what}, {target}"


def _mmlu_accuracy(results: Path, family: str, position: str, seeds) -> tuple[float, int]:
    """Accuracy (%) over every seed's questions, and the questions per seed."""
    hits = []
    for seed in seeds:
        path = Path(results) / "points" / point_label(family, seed, position) / "mmlu.jsonl"
        hits += [json.loads(line)["correct"] for line in path.read_text(encoding="utf-8").splitlines()]
    return (100 * float(np.mean(hits)) if hits else float("nan")), len(hits) // max(len(seeds), 1)


def configuration_table(results: Path, units: Units):
    """One row per configuration (seeds averaged): learning, retention, the MMLU floor, and per temperature the
    SDS and the blind-test accuracy."""
    import pandas as pd

    d = Draws(units, None)
    sds, blind = d.sds(), d.blind()
    rows = []
    for i, (family, position) in enumerate(units.configs):
        seeds = units.seeds[(family, position)]
        row = {"family": family, "position": position, "seeds": len(seeds),
               "in-domain NLL": d.block("in_domain nll")[i]}
        for key in sorted(k for k in units.blocks if k != "in_domain nll"):
            row[key.replace("top1", "top-1 %").replace("nll", "NLL")] = d.block(key)[i]
        row["MMLU %"], row["MMLU questions"] = _mmlu_accuracy(results, family, position, seeds)
        for j, t in enumerate(units.temperatures):
            row[f"SDS T={t}"], row[f"blind % T={t}"] = sds[i, j], blind[i, j]
        rows.append(row)
    return pd.DataFrame(rows)


def frontier_figure(units: Units, path: Path, n_boot: int = 300, seed: int = SEED) -> None:
    """Left: SDS against blind-test accuracy, every configuration at every temperature (lines join a family's
    configurations at one temperature; bars: 95% bootstrap intervals); SFT's frontier as a step line. Right: the
    out-of-domain top-1 of each retention corpus against in-domain NLL (a family's curve as it trains)."""
    import matplotlib.pyplot as plt

    from .plots import setup

    setup()
    rng = np.random.default_rng(seed)
    draws = [Draws(units, rng) for _ in range(n_boot)]
    point = Draws(units, None)
    sds, blind = point.sds(), point.blind()
    sds_b, blind_b = np.stack([d.sds() for d in draws]), np.stack([d.blind() for d in draws])
    families = list(dict.fromkeys(f for f, _ in units.configs))
    colors = dict(zip(families, plt.get_cmap("tab10").colors))
    markers = dict(zip(units.temperatures, "os^Dv"))
    retention = sorted(k for k in units.blocks if k.endswith("top1"))
    cols = max(len(retention), 1)
    fig = plt.figure(figsize=(4.6 * cols, 10))
    grid_spec = fig.add_gridspec(2, cols, height_ratios=(1.5, 1))
    axes = [fig.add_subplot(grid_spec[0, :]), *(fig.add_subplot(grid_spec[1, i]) for i in range(len(retention)))]
    ax = axes[0]
    for family in families:
        idx = units.index(family)
        for j, t in enumerate(units.temperatures):
            x, y = blind[idx, j], sds[idx, j]
            xerr = np.abs(np.percentile(blind_b[:, idx, j], [2.5, 97.5], axis=0) - x)
            yerr = np.abs(np.percentile(sds_b[:, idx, j], [2.5, 97.5], axis=0) - y)
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, color=colors[family], marker=markers[t], lw=1, ms=5,
                        capsize=0, alpha=0.85, label=family_label(family) if j == 0 else None)
    ref = reference_configs(units)
    xr, yr = blind[ref].ravel(), sds[ref].ravel()
    grid = np.linspace(xr.min(), max(blind.max(), xr.max()), 200)
    ax.plot(grid, _frontier_max(xr, yr, grid), color="black", lw=1.5, ls="--", drawstyle="steps-post",
            label="SFT's frontier (base, SFT, WiSE-FT)")
    for t, m in markers.items():
        ax.scatter([], [], marker=m, color="gray", label=f"T = {t}")
    ax.set_xlabel("blind-test accuracy, % (50 = indistinguishable from human text)")
    ax.set_ylabel("SDS (0-100)")
    ax.set_title("diversity vs fidelity")
    learning = point.block("in_domain nll")
    for ax, key in zip(axes[1:], retention):
        values = point.block(key)
        for family in families:
            idx = units.index(family)
            idx = sorted(idx, key=lambda i: -learning[i])
            ax.plot(learning[idx], values[idx], marker="o", color=colors[family], lw=1)
        ax.invert_xaxis()
        ax.set_xlabel("held-out Shakespeare NLL (nats/token)")
        ax.set_ylabel("top-1, %")
        ax.set_title(f"retention on {key.split()[0]} as it learns (→)")
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def cost_table(results: Path):
    """Training cost per objective (median over its runs: wall seconds of the run, seconds per optimiser step and
    that step over SFT's), whether every run trained alone on the machine (15-minute load average at the end ≤ the
    core count), and the kNN-LM targets' build time over one SFT run."""
    import pandas as pd

    runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((Path(results) / "runs").glob("*/provenance.json"))]
    rows = []
    by_objective: dict[str, list] = {}
    for r in runs:
        by_objective.setdefault(r["objective"] if r["objective"] == "sft" else f"{r['objective']}-{r['config']}",
                                []).append(r)
    sft_step = np.median([r["step_seconds_median"] for r in by_objective.get("sft", [])]) if "sft" in by_objective \
        else float("nan")
    sft_run = np.median([r["train_s"] for r in by_objective.get("sft", [])]) if "sft" in by_objective else float("nan")
    for objective, rs in by_objective.items():
        step, seconds = float(np.median([r["step_seconds_median"] for r in rs])), float(np.median([r["train_s"]
                                                                                                  for r in rs]))
        rows.append({"what": family_label(objective) if objective != "sft" else "SFT", "runs": len(rs),
                     "seconds per run": seconds, "over one SFT run": seconds / sft_run, "seconds per step": step,
                     "step over SFT's": step / sft_step,
                     "alone on the cores": all(r.get("load_average", [np.inf] * 3)[2] <= r.get("cores", 0) for r in rs)})
    targets = Path(results) / "targets.json"
    if targets.exists():
        t = json.loads(targets.read_text(encoding="utf-8"))
        knn = sum(c.startswith("knn-") for c in t["configs"])
        rows.append({"what": f"building {len(t['configs'])} target sets (the kNN grid's {knn} in one pass: "
                             "datastore forward + training-token forward + search; style prefix; self)", "runs": 1,
                     "seconds per run": t["build_s"], "over one SFT run": t["build_s"] / sft_run,
                     "seconds per step": float("nan"), "step over SFT's": float("nan"), "alone on the cores": False})
    return pd.DataFrame(rows)


def time_split(results: Path) -> dict[str, float]:
    """Wall hours of the finished pieces by kind: targets, proxy runs, training runs, evaluation points (scoring is
    not timed: seconds per point)."""
    results = Path(results)

    def hours(paths, key):
        return sum(json.loads(p.read_text(encoding="utf-8")).get(key, 0.0) for p in paths) / 3600

    out = {"targets": hours([results / "targets.json"] if (results / "targets.json").exists() else [], "wall_s"),
           "proxy runs": hours(sorted((results / "proxy").glob("*.json")), "wall_s"),
           "training runs": hours(sorted((results / "runs").glob("*/provenance.json")), "train_s"),
           "evaluation points": hours(sorted((results / "points").glob("*/provenance.json")), "wall_s")}
    return {k: round(v, 2) for k, v in out.items()}


DESIGN = (
    "Every method trains at one learning rate, the first edition's tuned SFT rate (AdamW sets the step size by "
    "the rate, not by the loss's scale); how far a method moves is traced by its checkpoints (steps 25, 50, 100 of "
    "one epoch) and, for SFT, by WiSE-FT interpolation with the base model, the cheapest way to fine-tune less. The "
    "DFT configurations were chosen from 16-step proxy runs by a rule fixed before any proxy ran (among the proxies "
    "that learn, validation NLL below the base model's, without sharpening, entropy not below the base model's: "
    "the largest NLL gain). The tuning budget is not equal: SFT had one proxy run, DFT 21; the inequality favours "
    "DFT, the side whose claim is tested. T = 1.6 is not sampled: in the first edition every model's samples at "
    "1.6 were far from human text (MAUVE 0.02-0.03).")


def _save(df, name: str, caption: str, base: Path) -> str:
    from .plots import markdown_table

    base.mkdir(parents=True, exist_ok=True)
    floats = df.select_dtypes("float").columns
    df = df.assign(**{c: df[c].mask(df[c].abs() < ZERO, 0.0) for c in floats})
    df.to_csv(base / f"{name}.csv", index=False, float_format=FLOAT)
    md = markdown_table(df)
    (base / f"{name}.md").write_text(f"{caption}\n\n{md}\n", encoding="utf-8")
    return md


def shown_verdicts(table):
    """The verdict table as a reader sees it: family label, comparison, difference [interval], floor, Holm p."""
    import pandas as pd

    return pd.DataFrame({
        "DFT configuration": [family_label(f) for f in table["family"]],
        "comparison": table["comparison"],
        "difference [95% CI]": [f"{r.difference:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]" for r in table.itertuples()],
        "configs": table["configurations"],
        "seed floor": [f"{v:.2f}" for v in table["seed_floor"]],
        "p (Holm)": [f"{v:.3g}" for v in table["p_holm"]],
        "verdict": table["verdict"]})


def write_report(study, readme: Path | None = None, n_boot: int = N_BOOT) -> dict:
    """For ``study`` (a :class:`dftnb.lab.frontier_study.FrontierStudy`: its folder, profile, plan, proxies and
    picks), write ``tables/`` (targets, proxies, configurations, verdicts), ``figures/frontiers.png``, the full report
    ``<results>/README.md`` and, with ``readme``, its section between the study-2 markers, from the stored files
    only (the same bytes on a rerun). Returns the Markdown of each table."""
    import pandas as pd

    results, profile = study.results, study.profile
    tables, base = {}, results / "tables"
    pieces = study.plan()
    done = sum(study.done(kind, name) for kind, name in pieces)
    if (results / "targets.csv").exists():
        targets = pd.read_csv(results / "targets.csv")
        tables["targets"] = _save(targets, "targets", "Each target configuration against the base model over the "
                                  "training tokens (token means; H and −log q(y) read the tail as uniform, compare "
                                  "rows with `self`).", base)
    proxies = study.proxy_table()
    if len(proxies):
        picks = study.picks()
        shown = proxies.reset_index(names="proxy").drop(columns=["tokens"])
        shown["picked"] = shown["proxy"].isin(picks)
        tables["proxies"] = _save(shown, "proxies", f"Proxy runs ({profile.proxy_steps} steps, learning rate "
                                  f"{profile.learning_rate:g}), measured on the validation blocks against the base "
                                  "model; `picked`: the rule's choice for full runs.", base)
    figure = None
    if list((results / "points").glob("*/scores.json")):
        units = load_units(results)
        tables["configurations"] = _save(configuration_table(results, units), "configurations",
                                         "Every configuration, seeds averaged.", base)
        verdicts = verdict_table(results, n_boot=n_boot)
        if len(verdicts):
            _save(verdicts, "verdicts_full", "Every comparison with its claim and p-values.", base)
            tables["verdicts"] = _save(shown_verdicts(verdicts), "verdicts",
                                       "The comparisons of the second edition, per DFT configuration.", base)
        figure = results / "figures" / "frontiers.png"
        frontier_figure(units, figure)
    if list((results / "runs").glob("*/provenance.json")):
        tables["cost"] = _save(cost_table(results), "cost", "Training cost (AMD EPYC or Intel Xeon, 2 cores; "
                               "`alone on the cores` false: another job shared them, the time is an upper bound).",
                               base)
    progress = (f"**{done} of {len(pieces)} pieces of the second edition's plan are finished** "
                f"(`python -m dftnb.lab.frontier_study --list`).")
    if not any(kind == "run" and not name.startswith("sft-") for kind, name in pieces):
        progress += " The picked DFT runs join the plan once every proxy run has finished."
    split = time_split(results)
    parts = ["# The study, second edition: frontiers", "", progress, "",
             "Wall time of the finished pieces (2 cores): " + ", ".join(f"{k} {v:g} h" for k, v in split.items())
             + f"; {sum(split.values()):.2f} h in all.", "", DESIGN, ""]
    for name, title in (("verdicts", "Verdicts"), ("configurations", "Configurations"),
                        ("proxies", "Proxy runs"), ("targets", "Targets"), ("cost", "Cost")):
        if name in tables:
            caption = (base / f"{name}.md").read_text(encoding="utf-8").split("\n\n", 1)[0]
            parts += [f"## {title}", "", caption, "", tables[name], ""]
    if figure is not None:
        parts += ["![frontiers](figures/frontiers.png)", ""]
    (results / "README.md").write_text("\n".join(parts), encoding="utf-8")
    if readme is not None and readme.exists():
        text = readme.read_text(encoding="utf-8")
        if README_BEGIN not in text or README_END not in text:
            raise ValueError(f"{readme} has no {README_BEGIN} ... {README_END} section; add the two markers where "
                             "the second edition's results belong (or pass readme=None).")
        section = [README_BEGIN, "", progress + " Full report: [`results/study-2/README.md`](results/study-2/README.md).",
                   ""]
        if "verdicts" in tables:
            section += [tables["verdicts"], ""]
        if figure is not None:
            section += ["![frontiers](results/study-2/figures/frontiers.png)", ""]
        section += [README_END]
        start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
        readme.write_text(text[:start] + "\n".join(section) + text[end:], encoding="utf-8")
    return tables
