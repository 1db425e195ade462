"""How many fine-tuning steps the trained block denoiser needs before its zero-noise invariant holds.

    python -m dftnb.lab.denoiser_curve                        # CE and DFT (forward KL), 400 steps, measured every 100
    python -m dftnb.lab.denoiser_curve --methods sft --steps 800 --every 200
    python -m dftnb.lab.denoiser_curve --methods dft_forward_kl --targets gpu --seed 1 --steps 800   # 1,024 rows
    python -m dftnb.lab.denoiser_curve --methods dft_forward_kl+prefix --targets gpu --steps 800     # + prefix loss
    python -m dftnb.lab.denoiser_curve --methods dft_forward_kl+bucket --targets gpu --steps 800     # bucket target tail
    python -m dftnb.lab.denoiser_curve --report               # table and figure from the stored rows only
    python -m dftnb.lab.denoiser_curve --methods dft_forward_kl --targets gpu --diagnose   # where the last checkpoint misses

Chapter 05 fine-tunes SmolLM2-135M as an SSD-LM-style block denoiser for a few dozen steps, within its CPU budget.
This module continues exactly the chapter's recipe (default profile: the same Shakespeare rows with the model's own
top-64 targets, ``B = 8``, ``K = 5``, cosine schedule, half the rows at zero noise, batch 8, constant learning rate
3e-4, input embeddings fixed) for longer, optionally on more rows (``--targets gpu``: the gpu profile's 1,024
Shakespeare blocks instead of the default 96) and with another seed, and measures along the way the quantity the
chapter's goal is stated in: the share of tokens that the denoiser returns at zero noise with *soft*
``softmax(±K)`` inputs (argmax projection, ``S = 2B`` and ``4B`` steps per block) that equal the same model's greedy
continuation (:func:`dftnb.lab.experiments.greedy_agreement`, 12 held-out Shakespeare prompts × 16 new tokens: one
early wrong token derails the rest of its block, so a handful of prompts gives a curve that jumps by tens of points
between measurements). ``S = B`` is left out: the cosine schedule's first steps feed ``sqrt(ᾱ) K`` far below
``½ ln V``, where the input holds almost no mass on its token, so fewer than ``B`` of the ``B`` steps can be read.
Beside it, ``greedy is a fixed point`` (:func:`dftnb.lab.experiments.greedy_fixed_point_share`): the share of greedy
tokens the last step returns when fed the greedy block itself, i.e. whether the model *reads* a soft input, apart
from whether the iteration reaches it (empty for rows measured before it existed).

Resumable: every measurement is appended to ``results/denoiser/invariant_curve.csv`` as soon as it is taken (one
row per method, training rows, seed, step and ``S``: a *run* is one method x rows x seed), and a Trainer checkpoint
is kept under ``.cache/denoiser_curve/<profile>/<run>`` at each measured step; an interrupted run continues from it.
The collator's draws of block starts and noise levels restart from their seed on a resume, so a resumed run is not
bit-identical to an uninterrupted one: ``provenance-<run>.json`` counts the resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import pandas as pd
from transformers import TrainerCallback

from ..methods import labels as method_labels
from .study_runs import REPO, provenance, write_json

RESULTS = REPO / "results" / "denoiser"
COLUMNS = ("method", "rows", "seed", "step", "steps S", "tokens equal to greedy", "greedy is a fixed point", "block CE",
           "process seconds")
# method -> label: the registry's (dftnb.methods.METHOD_REGISTRY), except SFT, which this curve and chapter 05 call
# "CE" (its objective is the cross-entropy on the clean block tokens); the committed results/denoiser tables print it.
DISPLAY = {"sft": "CE"}
LABELS = method_labels(display=DISPLAY)
# "<method>+<variant>[+<variant>]": (DenoiserConfig fields, DFTConfig fields) each variant changes, and its label
VARIANTS = {"prefix": ({"prefix_loss": True}, {}, "prefix loss"),
            "bucket": ({}, {"tail": "bucket"}, "bucket tail")}


def split_method(method: str) -> tuple[str, dict, dict]:
    """``"dft_forward_kl+prefix"`` -> ``("dft_forward_kl", {"prefix_loss": True}, {})``: the training objective and
    the changes its variants make to the recipe (denoiser fields, then DFT loss fields).

    * ``+prefix``: also train the clean prefix positions, with hard inputs, on the same objective, so the model's
      ordinary next-token path is held to the target too (the CSV's ``block CE`` of such a run is the trainer's
      logged CE, over the prefix positions as well as the block);
    * ``+bucket``: read the target's tail mass as one "everything else" bucket instead of spreading it uniformly over
      the ``V - k`` tokens off its support (:data:`dftnb.sparse_target.TAIL_MODES`); DFT methods only.
    """
    base, *variants = method.split("+")
    denoiser, dft = {}, {}
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"unknown denoiser-curve variant {variant!r} in {method!r}; use one of "
                             f"{sorted(VARIANTS)} after a '+', or the plain method.")
        denoiser.update(VARIANTS[variant][0])
        dft.update(VARIANTS[variant][1])
    if dft and base == "sft":
        raise ValueError(f"{method!r}: a target tail only changes a DFT objective; CE (sft) reads no target.")
    return base, denoiser, dft


def label(method: str) -> str:
    """``dft_forward_kl`` -> ``DFT (forward KL)``; ``sft+prefix`` -> ``CE + prefix loss``."""
    base, *variants = method.split("+")
    return " + ".join([LABELS.get(base, base), *(VARIANTS[v][2] if v in VARIANTS else v for v in variants)])


def recipe(seed: int = 0):
    """The curve's denoiser recipe (chapter 05's): ``B = 8``, ``K = 5``, cosine schedule, prefix 4-24 tokens, half
    the rows at zero noise; measured on ``2B`` new tokens."""
    from ..denoise_training import DenoiserConfig

    return DenoiserConfig(block_size=8, K=5.0, schedule="cosine", min_prefix=4, max_prefix=24,
                          zero_noise_fraction=0.5, seed=seed)


def held_out_prompts(n: int) -> list[str]:
    """The first ten words of the first ``n`` Shakespeare test texts: the prompts every measurement uses."""
    from .data import corpus_texts

    return [" ".join(t.split()[:10]) for t in corpus_texts("shakespeare", "test", n=n)]


def checkpoints(out: Path) -> list[Path]:
    """The Trainer checkpoints under ``out``, oldest step first."""
    return sorted(Path(out).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def run_name(method: str, rows: int, seed: int) -> str:
    """One curve: ``method`` fine-tuned on ``rows`` training rows with ``seed`` (names its checkpoint folder and
    its ``provenance-<run>.json``)."""
    return f"{method}-{rows}rows-s{seed}"


def stored_rows(results: Path = RESULTS) -> pd.DataFrame:
    path = results / "invariant_curve.csv"
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    df = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; it was written by an older dftnb.lab.denoiser_curve: add "
                         "them (each run's rows and seed are in its provenance json; a measurement column such as "
                         "'greedy is a fixed point' may be left empty) or move the file away.")
    return df


class InvariantCallback(TrainerCallback):
    """Every ``every`` optimiser steps: measure :func:`~dftnb.lab.experiments.greedy_agreement` at each ``S``,
    append the rows to the curve's CSV, and ask the Trainer to save a checkpoint (the resume point)."""

    def __init__(self, measure, every: int, done: set[int]):
        self.measure, self.every, self.done = measure, every, done

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            if state.global_step not in self.done:
                ce = [r["ce"] for r in state.log_history if "ce" in r and r.get("step", 0) > state.global_step - self.every]
                model.eval()
                self.measure(model, state.global_step, sum(ce) / len(ce) if ce else float("nan"))
                model.train()
                self.done.add(state.global_step)
            control.should_save = True
        return control


def _measure(out_csv: Path, method: str, n_rows: int, tokenizer, prompts, n_tokens: int, config, s_values,
             start: float, model, step: int, ce: float) -> None:
    """Append the invariant of ``model`` after ``step`` steps, at each ``S`` of ``s_values``, to ``out_csv``."""
    from ..denoise import alpha_bar
    from .experiments import greedy_agreement, greedy_continuations, greedy_fixed_point_share

    greedy = greedy_continuations(model, tokenizer, prompts, n_tokens)
    new = [{"method": method, "rows": n_rows, "seed": config.seed, "step": step, "steps S": s,
            "tokens equal to greedy": round(greedy_agreement(model, tokenizer, prompts, n_tokens, config.block_size, s,
                                                             config.K, config.schedule, greedy=greedy), 6),
            "greedy is a fixed point": round(greedy_fixed_point_share(
                model, tokenizer, prompts, n_tokens, config.block_size, config.K, alpha_bar(1, s, config.schedule),
                greedy=greedy), 6),
            "block CE": round(ce, 6), "process seconds": round(time.perf_counter() - start, 1)}
           for s in s_values]
    fresh = not out_csv.exists()
    with out_csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if fresh:
            writer.writeheader()
        writer.writerows(new)
    print(f"[denoiser-curve] {run_name(method, n_rows, config.seed)} step {step}: "
          + ", ".join(f"S={r['steps S']} {r['tokens equal to greedy']:.0%}" for r in new), flush=True)


def run_curve(methods=("sft", "dft_forward_kl"), steps: int = 400, every: int = 100, results: Path = RESULTS,
              work: Path | None = None, seed: int = 0, profile: str = "default", n_prompts: int = 12,
              s_multiples=(2, 4), targets: str | None = None) -> pd.DataFrame:
    """Train each method's denoiser to ``steps`` (resuming), measuring the invariant at step 0 and every ``every``
    on ``n_prompts`` held-out Shakespeare prompts at ``S = m · B`` for each ``m`` in ``s_multiples``.
    ``targets`` names the profile whose Shakespeare target rows train it (default: ``profile``'s; ``"gpu"``: 1,024
    rows). ``profile="smoke"`` runs the same code on the tiny random model (tests)."""
    import torch

    from ..denoise_training import train_denoiser
    from ..trainer import DFTConfig
    from .experiments import shakespeare_targets
    from .models import cache_dir, load_model_for_profile
    from .runner import quiet

    if steps % every:
        raise ValueError(f"steps ({steps}) must be a multiple of every ({every}): the last step is a measured one.")
    work = Path(work) if work is not None else cache_dir() / "denoiser_curve" / profile
    results.mkdir(parents=True, exist_ok=True)
    out_csv = results / "invariant_curve.csv"
    base_recipe = recipe(seed)
    variants = {method: split_method(method) for method in methods}  # refuse a bad name before any work
    prompts = held_out_prompts(n_prompts)
    n_tokens = 2 * base_recipe.block_size
    for method in methods:
        objective, changes, loss_changes = variants[method]
        config = replace(base_recipe, **changes)
        torch.manual_seed(seed)
        model, tokenizer = load_model_for_profile(profile, "embedded", training=True)
        rows = shakespeare_targets(targets or profile, model, tokenizer)
        run = run_name(method, len(rows), seed)
        stored = stored_rows(results)
        mine = (stored["method"] == method) & (stored["rows"] == len(rows)) & (stored["seed"] == seed)
        done = set(stored.loc[mine, "step"].astype(int))

        measure = partial(_measure, out_csv, method, len(rows), tokenizer, prompts, n_tokens, config,
                          [m * config.block_size for m in s_multiples], time.perf_counter())
        if 0 not in done:
            model.eval()
            measure(model, 0, float("nan"))
            done.add(0)
        if max(done) >= steps:
            continue
        out = work / run
        saved = checkpoints(out)
        resume = str(saved[-1]) if saved else None
        meta_path = results / f"provenance-{run}.json"
        meta = json.loads(meta_path.read_text()) if resume and meta_path.exists() else {}
        resumes = meta.get("resumes", -1) + 1 if resume else 0
        write_json(meta_path, {**meta, "method": method, "rows": len(rows), "seed": seed, "steps": steps,
                               "resumes": resumes, "complete": False})
        start = time.perf_counter()
        quiet()
        train_denoiser(model, tokenizer, rows, objective, out, denoiser=config, dft_config=DFTConfig(**loss_changes),
                       max_steps=steps, per_device_train_batch_size=8, learning_rate=3e-4, seed=seed, save_strategy="steps",
                       save_steps=every, save_total_limit=1, callbacks=[InvariantCallback(measure, every, done)],
                       resume_from_checkpoint=resume)
        write_json(meta_path, provenance(method=method, rows=len(rows), targets=targets or profile, steps=steps, every=every, seed=seed, resumes=resumes,
                                         complete=True, profile=profile, prompts=n_prompts,
                                         s_values=[m * config.block_size for m in s_multiples],
                                         denoiser=config.__dict__, loss=loss_changes, batch=8, learning_rate=3e-4,
                                         wall_s=round(meta.get("wall_s", 0.0) + time.perf_counter() - start, 1),
                                         threads=torch.get_num_threads()))
    return report(results)


def diagnose(method: str, seed: int = 0, results: Path = RESULTS, work: Path | None = None, profile: str = "default",
             targets: str | None = None, n_prompts: int = 12, s_values=(8, 32, 64),
             alpha_bars=(0.3, 0.6, 0.8, 0.9, 0.95, 1.0)) -> dict:
    """Where a run's last checkpoint loses greedy, written to ``diagnosis-<run>.json`` beside the curve.

    * ``fixed point by alpha_bar``: :func:`~dftnb.lab.experiments.greedy_fixed_point_share` at each ``ᾱ`` (how well
      the model reads a soft input of that sharpness);
    * ``tokens equal to greedy by S`` and ``first mismatch by S`` (per prompt, the index of the first new token that
      differs from greedy, ``n_tokens`` if none): if more steps change nothing, the iteration has converged and
      every miss comes from a fixed-point error; one early miss derails the rest of its block and every later block;
    * ``own greedy equal to base greedy``: the share of the run's greedy tokens equal to the untrained model's
      greedy continuation (how far the ordinary next-token path moved in training; the invariant is stated against
      the run's own greedy).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .experiments import (
        SHAKESPEARE_TARGET_SIZES,
        greedy_continuations,
        greedy_fixed_point_share,
        greedy_matches,
    )
    from .models import cache_dir, load_model_for_profile

    split_method(method)
    run = run_name(method, SHAKESPEARE_TARGET_SIZES[targets or profile][0], seed)  # the rows it was trained on
    work = Path(work) if work is not None else cache_dir() / "denoiser_curve" / profile
    saved = checkpoints(work / run)
    if not saved:
        raise FileNotFoundError(f"no checkpoint of {run} under {work / run}: train it first with `python -m "
                                f"dftnb.lab.denoiser_curve --methods {method}` (same --targets and --seed).")
    base, tokenizer = load_model_for_profile(profile, "embedded")
    model = AutoModelForCausalLM.from_pretrained(saved[-1], dtype=torch.float32).eval()
    prompts = held_out_prompts(n_prompts)
    config = recipe(seed)
    block, k, n_tokens = config.block_size, config.K, 2 * config.block_size
    greedy = greedy_continuations(model, tokenizer, prompts, n_tokens)
    untrained = greedy_continuations(base, tokenizer, prompts, n_tokens)
    out = {"run": run, "step": int(saved[-1].name.split("-")[1]), "prompts": n_prompts, "new tokens": n_tokens,
           "own greedy equal to base greedy": sum(int((g[0, -n_tokens:] == u[0, -n_tokens:]).sum())
                                                  for (_, g), (_, u) in zip(greedy, untrained)) / (n_tokens * n_prompts),
           "fixed point by alpha_bar": {}, "tokens equal to greedy by S": {}, "first mismatch by S": {}}
    with torch.no_grad():
        for a in alpha_bars:
            out["fixed point by alpha_bar"][str(a)] = greedy_fixed_point_share(model, tokenizer, prompts, n_tokens,
                                                                               block, k, a, greedy=greedy)
        for steps in s_values:
            matches = greedy_matches(model, tokenizer, prompts, n_tokens, block, steps, k, config.schedule, greedy)
            out["tokens equal to greedy by S"][str(steps)] = sum(int(m.sum()) for m in matches) / (n_tokens * n_prompts)
            out["first mismatch by S"][str(steps)] = [int((~m).nonzero()[0]) if not bool(m.all()) else n_tokens
                                                      for m in matches]
    write_json(results / f"diagnosis-{run}.json", provenance(**out, profile=profile))
    return out


def report(results: Path = RESULTS) -> pd.DataFrame:
    """``invariant_curve.md`` and ``invariant_curve.png`` from the stored rows: per run and step, the share of tokens
    equal to greedy at each ``S`` and, where measured, the share for which greedy is a fixed point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .plots import markdown_table

    df = stored_rows(results)
    if df.empty:
        raise FileNotFoundError(f"no rows in {results / 'invariant_curve.csv'}: run `python -m dftnb.lab.denoiser_curve` first.")
    df = df.assign(objective=df["method"].map(label))
    df["run"] = [f"{o}, {r} rows, seed {s}" for o, r, s in zip(df["objective"], df["rows"], df["seed"])]
    index = ["objective", "rows", "seed", "step"]
    table = df.pivot_table(index=index, columns="steps S", values="tokens equal to greedy")
    table.columns = [f"S = {int(c)}" for c in table.columns]
    fixed = df.pivot_table(index=index, columns="steps S", values="greedy is a fixed point")  # all-empty: no columns
    fixed.columns = [f"fixed point, S = {int(c)}" for c in fixed.columns]
    table = table.join(fixed).reset_index()
    (results / "invariant_curve.md").write_text(markdown_table(table, floatfmt=".3f") + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(9.5, 4.0))
    sns.lineplot(data=df, x="step", y="tokens equal to greedy", hue="run", style="steps S", marker="o", ax=ax)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)  # outside the curves
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.set_xlabel("fine-tuning steps (batch 8)")
    ax.set_title("zero-noise invariant with soft K = 5 inputs (goal 0.95, dashed)")
    fig.tight_layout()
    fig.savefig(results / "invariant_curve.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return table


def committed_curve(results: Path = RESULTS) -> str:
    """The stored curve as Markdown (what chapter 05 renders without training anything): the table of
    ``invariant_curve.md`` and what produced it, or a line saying how to make it."""
    table = results / "invariant_curve.md"
    if not table.exists():
        return "No stored curve yet: `python -m dftnb.lab.denoiser_curve` writes it to `results/denoiser/`."
    runs, prompts = [], "?"
    for path in sorted(results.glob("provenance-*.json")):
        meta = json.loads(path.read_text())
        if meta.get("complete"):
            prompts = meta.get("prompts", prompts)
            runs.append(f"{label(meta['method'])}, {meta['rows']} rows, seed {meta['seed']}: "
                        f"{meta['steps']} steps in "
                        f"{meta['wall_s'] / 60:.0f} min ({meta['threads']} thread(s), {meta['machine']}, "
                        f"commit {meta['commit'][:7]}, resumed {meta['resumes']} time(s))")
        elif "method" in meta:  # interrupted or still running: its measured rows are in the table
            mine = stored_rows(results).query("method == @meta['method'] and rows == @meta['rows'] and "
                                              "seed == @meta['seed']")
            runs.append(f"{label(meta['method'])}, {meta['rows']} rows, seed {meta['seed']}: "
                        f"not finished, measured up to step {int(mine['step'].max()) if len(mine) else 0} of "
                        f"{meta['steps']}")
    return ("Tokens equal to greedy at zero noise with soft $K=5$ inputs, by fine-tuning step and steps per block $S$ "
            f"({prompts} held-out Shakespeare prompts x 16 tokens; `results/denoiser/invariant_curve.csv`); "
            "*fixed point*: the share the last step returns when fed the greedy block itself (reads a soft input).\n\n"
            + table.read_text(encoding="utf-8") + "\n" + "; ".join(runs))


def derailed_agreement(fixed_point: float, n_tokens: int) -> float:
    """Expected share of ``n_tokens`` equal to greedy if each token is a fixed point with probability ``f``
    independently and the first miss derails every token after it: ``(1/n) Σ_{j=1..n} f^j``."""
    return sum(fixed_point ** j for j in range(1, n_tokens + 1)) / n_tokens


def committed_diagnosis(results: Path = RESULTS) -> str:
    """The stored ``diagnosis-*.json`` as a Markdown table (one row per run), with the agreement that derailing alone
    would predict from the fixed point at ``ᾱ = 1``, or a line saying how to make them."""
    from .plots import markdown_table

    rows = []
    for path in sorted(results.glob("diagnosis-*.json")):
        d = json.loads(path.read_text())
        method, rest = d["run"].rsplit("-", 2)[0], d["run"].rsplit("-", 2)[1:]
        row = {"run": f"{label(method)}, {rest[0].removesuffix('rows')} rows, {rest[1].replace('s', 'seed ', 1)}",
               "step": d["step"], "own greedy = untrained greedy": d["own greedy equal to base greedy"]}
        fixed, equal = d["fixed point by alpha_bar"], d["tokens equal to greedy by S"]  # keys sorted as text on disk
        row.update({f"fixed point, ᾱ = {float(a):.2g}": fixed[a] for a in sorted(fixed, key=float)})
        row.update({f"equal to greedy, S = {s}": equal[s] for s in sorted(equal, key=int)})
        last = max(d["first mismatch by S"], key=int)
        row[f"prompts without a miss, S = {last}"] = (f"{sum(f == d['new tokens'] for f in d['first mismatch by S'][last])}"
                                                      f" of {d['prompts']}")
        top = max(fixed, key=float)
        row[f"derailing alone predicts (from ᾱ = {float(top):.2g})"] = derailed_agreement(fixed[top], d["new tokens"])
        rows.append(row)
    if not rows:
        return "No stored diagnosis yet: `python -m dftnb.lab.denoiser_curve --methods <method> --diagnose` writes one."
    table = pd.DataFrame(rows).set_index("run").map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    return markdown_table(table.T.reset_index(names="measured"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="sft,dft_forward_kl",
                        help="comma-separated: sft, dft_forward_kl, ...; variants: +prefix (also train the prefix), "
                             "+bucket (bucket target tail)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=12, help="held-out prompts per measurement")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model's training and the collator's draws")
    parser.add_argument("--targets", choices=("default", "gpu"), default=None,
                        help="whose Shakespeare target rows to train on: default (96) or gpu (1,024)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--report", action="store_true", help="only the table and figure from the stored rows")
    parser.add_argument("--diagnose", action="store_true",
                        help="where each method's last checkpoint loses greedy: writes diagnosis-<run>.json")
    args = parser.parse_args(argv)
    if args.diagnose:
        for method in args.methods.split(","):
            print(json.dumps(diagnose(method, args.seed, Path(args.results), targets=args.targets,
                                      n_prompts=args.prompts), indent=1))
    elif args.report:
        print(report(Path(args.results)).to_string(index=False))
    else:
        print(run_curve(tuple(args.methods.split(",")), args.steps, args.every, Path(args.results), seed=args.seed,
                        n_prompts=args.prompts, targets=args.targets).to_string(index=False))


if __name__ == "__main__":
    main()
