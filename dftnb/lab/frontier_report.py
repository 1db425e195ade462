"""The second edition's comparisons, read from the stored points only (``results/study-2/points``).

A *configuration* is a family and a position on its curve: ``base``; ``sft`` at a checkpoint step; ``wise`` (WiSE-FT
of SFT's last checkpoint) at a mixing weight α; a DFT family (``<objective>-<target>``) at a step. Each configuration
has one point per seed (the run's seed sets its data order and its sampling seed; the base model is sampled with each
SFT seed). SFT's frontier is built from ``base``, every ``sft`` and every ``wise`` configuration at every sampling
temperature: everything the baseline reaches by training less, interpolating, or sampling hotter or colder.

The comparisons, per DFT family, each a mean over the family's points (configuration x temperature):

1. ``beyond SFT's frontier at matched learning`` (points on both axes): for a DFT point ``d`` = (blind-test accuracy
   ``x_d``, SDS ``y_d``), the reference is every SFT point that learned at least as much (held-out in-domain NLL
   ``≤`` the DFT configuration's; if none did, the most-learned SFT configuration), reduced to its Pareto front
   (low ``x``, high ``y``) joined by straight segments (mixing two settings reaches the points between them). The
   gap is the additive ε-indicator ``−max_r min(y_r − y_d, x_d − x_r)``: positive = ``d`` would have to lose that many
   points on both axes before a point of SFT's front matched it on both (it lies beyond the front), negative = some
   point of SFT's front is better than ``d`` on both axes by that much. It is defined
   for every point (a DFT point more human-like or more diverse than every SFT point still counts). The same over the
   points sampled at T = 1.3 only is the "tolerates higher temperature" row.
2. ``retention at matched learning`` (top-1, points): ``top1_d − R(nll_d)`` per out-of-domain corpus and for the
   HumanEval canonical solutions (mean over problems), ``R`` the linear interpolation of SFT's training curve
   (``base`` + ``sft`` checkpoints) or of WiSE-FT's (``base`` + ``wise`` + the last ``sft`` checkpoint, α = 1) at the
   DFT configuration's in-domain NLL; configurations outside the curve's range are left out (the row says how many
   entered). The article's "< 1% accuracy loss" is read as ``> −1`` point against SFT at the same learning.
3. ``likelihood at matched learning`` (NLL, nats/token): ``R(nll_d) − nll_d`` per corpus, positive = DFT predicts the
   text better at the same in-domain learning.

Intervals: a bootstrap that resamples, in each draw, the seeds of every family (its runs), the prompts, the human
passages and the token blocks, the same draw for every configuration (paired). The seed floor of each comparison is
the same statistic for one SFT seed's checkpoints against the other SFT seeds (re-running the baseline); the
verdicts use :func:`dftnb.measure.stats.decide` with that floor (a comparison without a floor stays undetermined) and
Holm's correction over every row, its p-values read against the claim's threshold moved out by the floor.
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
FRONT_STEPS = 25  # points per segment of SFT's Pareto front joined by straight lines


def parse_point(name: str) -> tuple[str, int, str]:
    """``(family, seed, position)``: ``"base"`` -> ``("base", 0, "0")``, ``"base-s2"`` -> ``("base", 2, "0")``;
    ``"sft-s1@50"`` -> ``("sft", 1, "50")``; ``"sft-s0@wise0.5"`` -> ``("wise", 0, "0.5")``;
    ``"rkl-knn-lam0.5-tau1-s0@25"`` -> ``("rkl-knn-lam0.5-tau1", 0, "25")``."""
    if name == "base" or name.startswith("base-s"):
        return "base", 0 if name == "base" else int(name[len("base-s"):]), "0"
    run, where = name.split("@")
    method, seed = run.rsplit("-s", 1)
    if where.startswith("wise"):
        if method != "sft":
            raise ValueError(f"{name}: only SFT runs are interpolated (WiSE-FT).")
        return "wise", int(seed), where[len("wise"):]
    return method, int(seed), where


def point_label(family: str, seed: int, position: str) -> str:
    """The inverse of :func:`parse_point`."""
    if family == "base":
        return "base" if not seed else f"base-s{seed}"
    if family == "wise":
        return f"sft-s{seed}@wise{position}"
    return f"{family}-s{seed}@{position}"


def _block_means(values: np.ndarray, size: int = TOKEN_BLOCK) -> np.ndarray:
    n = len(values) // size * size
    if n == 0:
        return np.asarray([values.mean()])
    return values[:n].reshape(-1, size).mean(1)


def point_units(folder: Path) -> dict:
    """The unit scores of one stored point (``scores.json``, ``tokens.npz``, ``solutions.csv``): per temperature the
    SDS per prompt, the blind test's share right per prompt and per human passage; per criterion the token-block
    means (the HumanEval solutions per problem)."""
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


@dataclass
class Units:
    """Per-configuration unit scores, one row per seed: the arrays every bootstrap draw indexes."""

    configs: list[tuple[str, str]]  # (family, position)
    temperatures: list[str]
    seeds: list[list[int]]  # per configuration, the seeds of its rows
    sds: list[np.ndarray]  # per configuration [seed, T, prompt]
    model_blind: list[np.ndarray]  # per configuration [seed, T, prompt]: share of the prompt's texts told apart
    human_blind: list[np.ndarray]  # per configuration [seed, T, passage]
    blocks: dict[str, list[np.ndarray]] = field(default_factory=dict)  # criterion -> per configuration [seed, block]

    def index(self, family: str) -> list[int]:
        return [i for i, (f, _) in enumerate(self.configs) if f == family]

    def family_seeds(self, family: str) -> list[int]:
        return sorted({s for i in self.index(family) for s in self.seeds[i]})


def load_units(results: Path, relabel=None) -> Units:
    """Every scored point under ``results/points``, grouped into configurations. ``relabel(family, seed)`` may rename
    a point's family (or drop the point by returning ``None``)."""
    folders = sorted(p.parent for p in (Path(results) / "points").glob("*/scores.json"))
    if not folders:
        raise FileNotFoundError(f"no scored point under {Path(results) / 'points'}; run the study's point and "
                                "score pieces first.")
    grouped: dict[tuple[str, str], dict[int, dict]] = {}
    for folder in folders:
        family, seed, position = parse_point(folder.name)
        if relabel is not None:
            family = relabel(family, seed)
            if family is None:
                continue
        grouped.setdefault((family, position), {})[seed] = point_units(folder)
    configs = sorted(grouped, key=lambda c: (c[0] != "base", c[0] != "sft", c[0] != "wise", c[0], float(c[1])))
    first = next(iter(grouped[configs[0]].values()))
    temperatures = sorted(first["sds"], key=float)
    seeds = [sorted(grouped[c]) for c in configs]

    def stack(c, kind, key=None):
        rows = [grouped[c][s][kind] for s in sorted(grouped[c])]
        if key is None:  # per temperature
            return np.stack([np.stack([r[t] for t in temperatures]) for r in rows])
        return np.stack([r[key] for r in rows])

    return Units(configs, temperatures, seeds, [stack(c, "sds") for c in configs],
                 [stack(c, "model_blind") for c in configs], [stack(c, "human_blind") for c in configs],
                 {k: [stack(c, "blocks", k) for c in configs] for k in first["blocks"]})


class Draws:
    """One bootstrap draw (or, with ``rng=None``, the point estimate): seeds resampled within each family, prompts,
    human passages and token blocks resampled once for every configuration; the statistics under it."""

    def __init__(self, units: Units, rng: np.random.Generator | None):
        self.u = units

        def pick(n):
            return np.arange(n) if rng is None else rng.integers(0, n, size=n)

        self.rows = []
        chosen = {}
        for family in dict.fromkeys(f for f, _ in units.configs):
            pool = units.family_seeds(family)
            chosen[family] = pool if rng is None else list(rng.choice(pool, size=len(pool)))
        for i, (family, _) in enumerate(units.configs):
            have = units.seeds[i]
            rows = [have.index(s) for s in chosen[family] if s in have]
            self.rows.append(rows or list(range(len(have))))  # a configuration missing the drawn seeds: its own
        self.prompts = pick(units.sds[0].shape[-1])
        self.human = pick(units.human_blind[0].shape[-1])
        self.block_index = {k: pick(v[0].shape[-1]) for k, v in units.blocks.items()}

    def sds(self) -> np.ndarray:  # [config, T]
        return np.stack([a[r][..., self.prompts].mean(-1).mean(0) for a, r in zip(self.u.sds, self.rows)])

    def blind(self) -> np.ndarray:  # [config, T], percent
        model = [np.nanmean(a[r][..., self.prompts], -1).mean(0) for a, r in zip(self.u.model_blind, self.rows)]
        human = [np.nanmean(a[r][..., self.human], -1).mean(0) for a, r in zip(self.u.human_blind, self.rows)]
        return 100 * (np.stack(model) + np.stack(human)) / 2

    def block(self, key: str) -> np.ndarray:  # [config]
        idx = self.block_index[key]
        v = np.asarray([a[r][:, idx].mean(-1).mean(0) for a, r in zip(self.u.blocks[key], self.rows)])
        return 100 * v if key.endswith("top1") else v


def pareto_front(x: np.ndarray, y: np.ndarray, steps: int = FRONT_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """The points of ``(x, y)`` no other point beats on both axes (lower ``x``, higher ``y``), sorted by ``x`` and
    joined by straight segments of ``steps`` points each."""
    keep = [i for i in range(len(x)) if not np.any((x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i])))]
    order = sorted(set(keep), key=lambda i: (x[i], y[i]))
    fx, fy = x[order], y[order]
    if len(fx) < 2:
        return fx, fy
    t = np.linspace(0, 1, steps, endpoint=False)
    xs = np.concatenate([fx[i] + t * (fx[i + 1] - fx[i]) for i in range(len(fx) - 1)] + [fx[-1:]])
    ys = np.concatenate([fy[i] + t * (fy[i + 1] - fy[i]) for i in range(len(fy) - 1)] + [fy[-1:]])
    return xs, ys


def beyond_front(x_d: float, y_d: float, front_x: np.ndarray, front_y: np.ndarray) -> float:
    """The additive ε-indicator ``−max_r min(y_r − y_d, x_d − x_r)``: how far ``(x_d, y_d)`` lies beyond the front
    (positive) or behind it (negative), in points on both axes."""
    return float(-np.max(np.minimum(front_y - y_d, x_d - front_x)))


def _interp(x_ref, y_ref, x):
    """Linear interpolation of the curve ``(x_ref, y_ref)`` at ``x`` (NaN outside its range or without a curve)."""
    ok = np.isfinite(x_ref) & np.isfinite(y_ref)
    xs, ys = x_ref[ok], y_ref[ok]
    if xs.size < 2:
        return np.full(len(x), np.nan)
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    out = np.interp(x, xs, ys)
    out[(x < xs[0]) | (x > xs[-1])] = np.nan
    return out


def _mean(values) -> tuple[float, int]:
    values = np.asarray(values, dtype=float)
    ok = np.isfinite(values)
    return (float(values[ok].mean()) if ok.any() else float("nan")), int(ok.sum())


DIVERSITY = "beyond SFT's frontier at matched learning (points)"
TOLERANCE = f"beyond SFT's frontier at matched learning, T = {TOLERANCE_TEMPERATURE} (points)"


def comparison_rows(units: Units, family: str, reference: list[int], draws: Draws) -> dict[str, tuple[float, int]]:
    """``{comparison: (mean over the family's points, how many)}`` under one draw; ``reference`` = the configurations
    of SFT's frontier (indices into ``units.configs``)."""
    fam = units.index(family)
    sds, blind = draws.sds(), draws.blind()
    learning = draws.block("in_domain nll")
    ref = np.asarray(reference)
    gaps = np.full((len(fam), len(units.temperatures)), np.nan)
    for k, c in enumerate(fam):
        matched = ref[learning[ref] <= learning[c]]
        if matched.size == 0:  # learned more than every SFT configuration: the most-learned one
            matched = ref[[np.argmin(learning[ref])]]
        fx, fy = pareto_front(blind[matched].ravel(), sds[matched].ravel())
        gaps[k] = [beyond_front(blind[c, j], sds[c, j], fx, fy) for j in range(len(units.temperatures))]
    out = {DIVERSITY: _mean(gaps)}
    if TOLERANCE_TEMPERATURE in units.temperatures:
        out[TOLERANCE] = _mean(gaps[:, units.temperatures.index(TOLERANCE_TEMPERATURE)])
    last = [i for i in ref if units.configs[i][0] == "sft"]
    last = [i for i in last if float(units.configs[i][1]) == max(float(units.configs[j][1]) for j in last)]
    curves = {"SFT": [i for i in ref if units.configs[i][0] in ("base", "sft")],
              "WiSE-FT": [i for i in ref if units.configs[i][0] in ("base", "wise")] + last}
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


CLAIMS = {  # comparison prefix -> (margin, higher_is_claimed): what the article implies
    "beyond SFT's frontier": (0.0, True),
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
    over ``n_boot`` joint draws of seeds, prompts, human passages and token blocks); comparisons without any matched
    point are left out."""
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
    """The units with SFT seed ``held_seed``'s checkpoints as a family of their own (``sft-held``) and its WiSE and
    base points left out: the floor's "re-run of the baseline" against a frontier built from the other seeds."""
    return load_units(results, relabel=lambda fam, seed: ("sft-held" if fam == "sft" and seed == held_seed else
                                                          None if fam in ("wise", "base") and seed == held_seed
                                                          else fam))


def floor_p_value(d, margin: float, higher: bool, floor: float) -> float:
    """:func:`dftnb.measure.stats.claim_p_value` against the claim's threshold moved out by the seed floor, towards
    the side the estimate lies on (the thresholds :func:`dftnb.measure.stats.decide` reads the interval against)."""
    from ..measure.stats import claim_p_value

    threshold = margin if higher else -margin
    moved = threshold + floor if d.mean >= threshold else threshold - floor
    return claim_p_value(d, moved if higher else -moved, higher)


def verdict_table(results: Path, n_boot: int = N_BOOT, seed: int = SEED):
    """One row per (DFT family, comparison): the difference, its interval, the seed floor, Holm-adjusted p and the
    verdict (:func:`dftnb.measure.stats.decide`; undetermined without a seed floor)."""
    import pandas as pd

    from ..measure.stats import decide, holm

    units = load_units(results)
    reference = reference_configs(units)
    sft_seeds = units.family_seeds("sft") if units.index("sft") else []
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
            floor = floors.get(name, float("nan"))
            rows.append({"family": family, "comparison": name, "difference": d.mean, "ci_low": d.ci_low,
                         "ci_high": d.ci_high, "points": d.n, "seeds": len(units.family_seeds(family)),
                         "seed_floor": floor, "margin": margin, "higher_is_claimed": higher,
                         "p_value": floor_p_value(d, margin, higher, 0.0 if np.isnan(floor) else floor),
                         "interval": d})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = holm(table["p_value"].to_numpy())
    table["verdict"] = ["undetermined" if np.isnan(r.seed_floor) else
                        decide(r.interval, r.margin, r.higher_is_claimed, r.seed_floor, r.p_holm)
                        for r in table.itertuples()]
    return table.drop(columns="interval")


# --------------------------------------------------------------------------------------------------- the report
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
        seeds = units.seeds[i]
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
    out-of-domain top-1 of each retention corpus against in-domain NLL (a family's curve as it trains). The
    frontier drawn is SFT's over every learning; the comparisons use the part that learned at least as much."""
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
    fx, fy = pareto_front(blind[ref].ravel(), sds[ref].ravel())
    ax.plot(fx, fy, color="black", lw=1.5, ls="--", label="SFT's frontier (base, SFT, WiSE-FT; every learning)")
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


ALONE_SLACK = 0.5  # a lone job on all cores keeps the load average near the core count (2.0-2.1 measured on 2)


def cost_table(results: Path):
    """Training cost per objective (median over its runs: wall seconds of the run, seconds per optimiser step and
    that step over SFT's), whether every run trained alone on the machine (15-minute load average at the end ≤ the
    core count + :data:`ALONE_SLACK`), and the kNN-LM targets' build time over one SFT run."""
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
                     "alone on the cores": all(r.get("load_average", [np.inf] * 3)[2] <= r.get("cores", 0) + ALONE_SLACK
                                               for r in rs)})
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
    """The first edition's table writer (CSV with 5 significant digits, rounding zeros, and Markdown)."""
    from .study import _save as save_table

    return save_table(df, None, name, caption, base)


def shown_verdicts(table):
    """The verdict table as a reader sees it: family label, comparison, difference [interval], floor, Holm p."""
    import pandas as pd

    return pd.DataFrame({
        "DFT configuration": [family_label(f) for f in table["family"]],
        "comparison": table["comparison"],
        "difference [95% CI]": [f"{r.difference:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]" for r in table.itertuples()],
        "points": table["points"],
        "seeds": table["seeds"],
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
