"""The study, second edition: frontiers instead of points, and DFT targets that differ from the base model.

    python -m dftnb.lab.frontier_study --list                    # the plan: which pieces are done
    python -m dftnb.lab.frontier_study                           # run every unfinished piece (hours; resumable)
    python -m dftnb.lab.frontier_study --profile smoke --results build/frontier-smoke   # the same code in minutes
    python -m dftnb.lab.frontier_study --report                  # only the tables, figure and README section

The first edition (:mod:`dftnb.lab.study`, ``results/study/``) trained every method once at one learning rate and
compared single points; its DFT targets (a kNN-LM mixture with λ = 0.25) sat so close to the base model that the DFT
runs barely left it. This edition asks whether *any* DFT configuration sits above SFT's diversity-fidelity frontier at
matched learning and retention. Its pieces, each written under ``results/study-2/`` as it finishes (meant to be
committed, so a later session resumes where this one stopped):

1. ``targets``: the training rows (the first edition's: packed Shakespeare blocks from the first half of the train
   split) with every target configuration of the sweep, built in one pass over the rows and cached under
   ``.cache/targets``: kNN-LM targets ``q = λ p_kNN + (1 − λ) p_ref`` (:func:`dftnb.targets.from_corpus_grid`; keys
   from the second half of the train split) for each λ and target temperature ``τ`` (``q_τ ∝ q^{1/τ}``), the
   reference model reading a style prefix (context distillation; the exemplars come from the datastore's half, so
   no training row is in its own prefix) and the base model's own targets (the self-target control). For each
   configuration ``targets.csv`` holds ``KL(q ‖ p_base)``, ``H(q)``, ``H(p_base)``, the tail mass and ``−log q(y)``
   over the training tokens (:func:`dftnb.target_statistics.target_statistics`): how far each target sits from the
   model it trains.
2. ``proxy/<objective>-<config>``: a cheap proxy run per target configuration and objective (reverse KL ``rkl``,
   forward KL ``fkl``, reverse KL mixed half-and-half with cross-entropy ``rkl+ce``; plus SFT and reverse KL to the
   self-target), ``proxy_steps`` steps at the common learning rate from the base model, then
   :func:`dftnb.measure.drift.model_drift` on the validation blocks: in-domain NLL (learning), ``KL(p_θ ‖ p_base)``
   (how far it moved) and ``H(p_θ)``. Every method trains at the same rate, the first edition's tuned SFT rate
   (AdamW makes the step size set by the rate, not by the loss's scale); the frontier's "how far" axis is the number
   of steps (checkpoints) and, for SFT, weight interpolation. :func:`picked_configs` applies the rule fixed before
   any proxy ran: among the DFT proxies that learn (validation NLL below the base model's) without sharpening
   (``H(p_θ) ≥ H(p_base)``), the ``picks`` with the largest NLL gain; if fewer qualify, the rest by NLL gain.
3. ``run/<name>-s<seed>``: SFT (``sft_seeds``) and every picked DFT configuration (``dft_seeds``) trained ``steps``
   steps (one epoch of the training rows) at the common rate, the seed setting the initialisation of the data
   order; the weights at each of ``checkpoints`` are kept under ``.cache/frontier-study`` (the frontier's points
   along one training run), the loss history is committed (``runs/<run>/training.csv``). A missing checkpoint
   (another machine) is trained again and must reproduce the committed losses.
4. ``point/<model>``: one point of a frontier: the base model (sampled with each SFT seed), a run at a checkpoint (``<run>@<step>``) or a
   WiSE-FT interpolation of an SFT run's last checkpoint with the base model (``<run>@wise<α>``), evaluated with
   :func:`dftnb.lab.evaluation.evaluate_model`: samples at every ``eval_temperatures`` (27 prompts x 8, the sampling
   seed is the run's), the held-out Shakespeare test split's per-token NLL (learning), every retention corpus's
   per-token NLL and top-1 and the HumanEval canonical solutions' (retention), MMLU one question per subject (floor).
5. ``score/<model>``: the point's samples scored (:mod:`dftnb.lab.frontier_scores`): SDS per prompt and the blind
   test's per-text outcomes at every temperature, ``points/<model>/scores.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .runner import REPO
from .study_runs import provenance, run_pieces, write_json

RESULTS = REPO / "results" / "study-2"


@dataclass(frozen=True)
class FrontierProfile:
    """Sizes of one profile of the second edition (``study``: the real one; ``smoke``: the same code in a minute)."""

    model: str
    block_size: int
    train_blocks: int
    val_blocks: int
    datastore_tokens: int
    k_neighbors: int
    lams: tuple[float, ...]
    target_temperatures: tuple[float, ...]
    k: int = 64
    knn_temperature: float = 100.0
    datastore_index: str = "ivfflat"
    prefix_exemplars: int = 2
    prefix_words: int = 40
    batch_size: int = 8  # rows per forward pass while measuring the targets
    batch: int = 8  # training rows per step
    learning_rate: float = 1e-4  # every method's (the first edition's tuned SFT rate)
    proxy_steps: int = 16
    ce_mix: float = 0.5  # the CE weight of the "rkl+ce" objective
    tail: str = "bucket"
    picks: int = 3
    steps: int = 100
    checkpoints: tuple[int, ...] = (25, 50, 100)
    sft_seeds: tuple[int, ...] = (0, 1, 2)
    dft_seeds: tuple[int, ...] = (0, 1)
    wise_alphas: tuple[float, ...] = (0.25, 0.5, 0.75)
    eval_temperatures: tuple[float, ...] = (0.7, 1.0, 1.3)
    prompts_per_corpus: int = 9  # 27 prompts x 8 samples = 216 texts per temperature, the blind test's size
    samples: int = 8
    new_tokens: int = 32
    in_domain_tokens: int | None = 16_384  # of the Shakespeare test split
    retention_tokens: int | None = 8_192  # per retention corpus
    solutions: int | None = None  # HumanEval canonical solutions scored (None = all 164)
    mmlu_limit: int | None = 1  # questions per subject
    mmlu_subjects: tuple[str, ...] | None = None
    window: int = 256
    stride: int = 256  # disjoint windows: each token scored once (as retention), half the forward passes
    sample_batch: int = 8  # prompts per generate call: 8 x 8 samples = 64 sequences
    score_length: int = 24  # tokens every sample is cut to before scoring (32 generated; decoding and re-encoding
    # can shorten a sample: one of the base model's had 27)


PROFILES = {
    "smoke": FrontierProfile(model="tiny", block_size=32, train_blocks=8, val_blocks=2, datastore_tokens=2_000,
                             k_neighbors=8, lams=(0.25, 1.0), target_temperatures=(1.0, 1.3),
                             datastore_index="flat", batch=4, learning_rate=1e-3, proxy_steps=2, picks=2, steps=4,
                             checkpoints=(2, 4), sft_seeds=(0, 1), dft_seeds=(0,), wise_alphas=(0.5,),
                             eval_temperatures=(1.0, 1.3), prompts_per_corpus=2, samples=4, new_tokens=8,
                             in_domain_tokens=256, retention_tokens=128, solutions=2,
                             mmlu_subjects=("anatomy", "astronomy"), window=64, stride=32, score_length=6),
    # the first edition's rows and datastore (800 x 128 = 102,400 training tokens, 200,000 keys), and a sweep
    # of what sets the target: the kNN weight (0.25 was the first edition's) and a target temperature
    "study": FrontierProfile(model="embedded", block_size=128, train_blocks=800, val_blocks=16,
                             datastore_tokens=200_000, k_neighbors=16, lams=(0.25, 0.5, 1.0),
                             target_temperatures=(1.0, 1.3)),
}


def knn_config_name(lam: float, tau: float) -> str:
    return f"knn-lam{lam:g}-tau{tau:g}"


def target_configs(profile: FrontierProfile) -> list[str]:
    """Every target configuration of the sweep, in the order of ``targets.csv``."""
    return [*(knn_config_name(lam, tau) for lam in profile.lams for tau in profile.target_temperatures),
            "prefix", "self"]


# objective -> (registry method, CE weight); "rkl+ce" takes the profile's ce_mix
OBJECTIVES = {"rkl": ("dft_reverse_kl", 0.0), "fkl": ("dft_forward_kl", 0.0), "rkl+ce": ("dft_reverse_kl", None)}


def proxy_names(profile: FrontierProfile) -> list[str]:
    """The proxy runs: SFT, the self-target control, and every (objective, target configuration) of the sweep."""
    configs = [c for c in target_configs(profile) if c != "self"]
    return ["sft", "rkl-self", *(f"{o}-{c}" for c in configs for o in OBJECTIVES)]


def split_objective(name: str) -> tuple[str, str]:
    """``"rkl+ce-knn-lam0.5-tau1"`` -> ``("rkl+ce", "knn-lam0.5-tau1")``; ``"sft"`` -> ``("sft", "self")``."""
    if name == "sft":
        return "sft", "self"
    objective, config = name.split("-", 1)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r} in {name!r}; one of {sorted(OBJECTIVES)} or 'sft'.")
    return objective, config


def run_names(profile: FrontierProfile, picks: list[str]) -> list[str]:
    """The training runs, seed by seed (every method's first seed before any second): ``sft-s0``, ``<pick>-s0``..."""
    seeds = sorted({*profile.sft_seeds, *profile.dft_seeds})
    return [f"{name}-s{seed}" for seed in seeds
            for name, own in (("sft", profile.sft_seeds), *((p, profile.dft_seeds) for p in picks)) if seed in own]


def point_names(profile: FrontierProfile, run: str) -> list[str]:
    """The frontier points of one run: each checkpoint, and for SFT the WiSE-FT interpolations of its last one."""
    names = [f"{run}@{step}" for step in profile.checkpoints]
    if run.startswith("sft-"):
        names += [f"{run}@wise{alpha:g}" for alpha in profile.wise_alphas]
    return names


def base_point(seed: int) -> str:
    """The base model's point sampled with ``seed``: ``"base"`` for seed 0, ``"base-s1"``... (one per SFT seed, so
    the frontier's base points average as many sampling seeds as its SFT points)."""
    return "base" if seed == 0 else f"base-s{seed}"


def plan(profile: FrontierProfile, results: Path | None = None) -> list[tuple[str, str]]:
    """Every piece in the order it runs: ``(kind, name)``. The DFT runs are known once every proxy has run
    (``results`` holds them); until then the plan stops at SFT's runs."""
    pieces = [("targets", "targets"), *(("proxy", name) for name in proxy_names(profile))]
    pieces += [(kind, base_point(seed)) for seed in profile.sft_seeds for kind in ("point", "score")]
    try:
        picks = picked_configs(results, profile) if results is not None else []
    except ValueError:
        picks = []
    for run in run_names(profile, picks):
        pieces += [("run", run), *((kind, point) for point in point_names(profile, run) for kind in ("point", "score"))]
    return pieces


def piece_path(results: Path, kind: str, name: str) -> Path:
    """The file whose existence marks a piece finished."""
    return {"targets": results / "targets.json", "proxy": results / "proxy" / f"{name}.json",
            "run": results / "runs" / name / "provenance.json",
            "point": results / "points" / name / "provenance.json",
            "score": results / "points" / name / "scores.json"}[kind]


def proxy_table(results: Path, profile: FrontierProfile):
    """The finished proxy runs as a DataFrame indexed by name (``objective``, ``config``, the drift columns,
    ``nll_gain = base_nll − nll``, ``entropy_gain = entropy − base_entropy``)."""
    import json

    import pandas as pd

    rows = {}
    for name in proxy_names(profile):
        path = piece_path(results, "proxy", name)
        if path.exists():
            d = json.loads(path.read_text())
            rows[name] = {"objective": d["objective"], "config": d["config"], **d["drift"]}
    df = pd.DataFrame.from_dict(rows, orient="index")
    if not df.empty:
        df["nll_gain"] = df["base_nll"] - df["nll"]
        df["entropy_gain"] = df["entropy"] - df["base_entropy"]
    return df


def picked_configs(results: Path, profile: FrontierProfile) -> list[str]:
    """The DFT proxies (``objective-config``) that get full runs, by the rule of the module docstring; refuses
    until every proxy has run."""
    df = proxy_table(results, profile)
    missing = [n for n in proxy_names(profile) if n not in df.index]
    if missing:
        raise ValueError(f"proxy runs {missing[:3]}... have not run; run the study's proxy pieces first.")
    dft = df[(df.objective != "sft") & (df.config != "self")].sort_values("nll_gain", ascending=False, kind="stable")
    ok = dft[(dft.nll_gain > 0) & (dft.entropy_gain >= 0)]
    order = [*ok.index, *(n for n in dft.index if n not in ok.index)]
    return order[: profile.picks]


class FrontierStudy:
    """The state shared by the pieces: profile, folders, the base model and the target sets."""

    def __init__(self, profile: str = "study", results: str | Path = RESULTS, work: str | Path | None = None):
        from .models import cache_dir

        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}.")
        self.profile_name, self.profile = profile, PROFILES[profile]
        self.results = Path(results)
        self._work = Path(work) if work is not None else cache_dir() / "frontier-study" / profile
        self._model = None
        self._scorer = None

    def base_model(self):
        from .models import load_model_for_profile

        if self._model is None:
            self._model = load_model_for_profile("smoke" if self.profile.model == "tiny" else "default",
                                                 self.profile.model)
        return self._model

    def blocks(self) -> dict[str, list[list[int]]]:
        """``{"train": rows, "validation": rows}``: packed blocks of the first half of the Shakespeare train split
        and of its validation split (the first edition's rows)."""
        from .data import corpus_texts, pack_texts

        p = self.profile
        _, tokenizer = self.base_model()
        texts = corpus_texts("shakespeare", "train")
        out = {"train": pack_texts(tokenizer, texts[: len(texts) // 2], p.block_size, p.train_blocks),
               "validation": pack_texts(tokenizer, corpus_texts("shakespeare", "validation"), p.block_size,
                                        p.val_blocks)}
        for split, want in (("train", p.train_blocks), ("validation", p.val_blocks)):
            if len(out[split]) < want:
                raise ValueError(f"only {len(out[split])} blocks of {p.block_size} tokens in Shakespeare {split}, "
                                 f"need {want}; lower train_blocks/val_blocks or block_size.")
        return out

    def style_prefix(self) -> str:
        """``prefix_exemplars`` passages of the datastore's half of the train split, each cut to ``prefix_words``
        words: the context-distillation prefix (never one of the training rows)."""
        from .data import corpus_texts

        p = self.profile
        texts = corpus_texts("shakespeare", "train")
        picked = [t for t in texts[len(texts) // 2:] if len(t.split()) >= 20][: p.prefix_exemplars]
        return "\n\n".join(" ".join(t.split()[: p.prefix_words]) for t in picked) + "\n\n"

    def targets(self, split: str = "train") -> dict[str, object]:
        """``{config: dataset}`` for every configuration of :func:`target_configs` on ``split``, loaded from the
        target cache or built (the kNN grid in one pass over the rows)."""
        from .. import target_cache as TC
        from .. import targets as T
        from ..datastore import build_datastore
        from .data import corpus_texts

        p = self.profile
        model, tokenizer = self.base_model()
        rows = self.blocks()[split]
        common = dict(model_name=p.model, blocks=len(rows), seq_len=p.block_size, split=split,
                      edition="frontier", profile=self.profile_name)
        prefix = self.style_prefix()
        metas = {}
        for lam in p.lams:
            for tau in p.target_temperatures:
                metas[knn_config_name(lam, tau)] = TC.target_metadata(
                    model, tokenizer, source="knn", corpus="shakespeare/train-half1", k=p.k,
                    datastore_tokens=p.datastore_tokens, k_neighbors=p.k_neighbors, lam=lam, target_temperature=tau,
                    knn_temperature=p.knn_temperature, index=p.datastore_index, **common)
        metas["prefix"] = TC.target_metadata(model, tokenizer, source="reference", corpus="shakespeare/train-half1",
                                             k=p.k, prefix=prefix, **common)
        metas["self"] = TC.target_metadata(model, tokenizer, source="reference", corpus="shakespeare/train-half1",
                                           k=p.k, **common)
        paths = {name: TC.target_cache_path(f"frontier-{self.profile_name}-{name}-{split}") for name in metas}
        out = {name: TC.load_fresh(paths[name], TC.checked_metadata(metas[name])) for name in metas}
        knn = [name for name in out if name.startswith("knn-") and out[name] is None]
        if knn:
            texts = corpus_texts("shakespeare", "train")
            store = build_datastore(model, tokenizer, texts[len(texts) // 2:], p.datastore_tokens, p.block_size,
                                    index=p.datastore_index)
            grid = T.from_corpus_grid(model, tokenizer, rows, store, [(lam, tau) for lam in p.lams
                                                                      for tau in p.target_temperatures],
                                      k_neighbors=p.k_neighbors, knn_temperature=p.knn_temperature, k=p.k,
                                      max_length=p.block_size)
            for (lam, tau), ds in grid.items():
                name = knn_config_name(lam, tau)
                out[name] = TC.save_cache(paths[name], TC.checked_metadata(metas[name]), ds)
        if out["prefix"] is None:
            out["prefix"] = TC.save_cache(paths["prefix"], TC.checked_metadata(metas["prefix"]),
                                          T.from_reference_model(model, tokenizer, rows, k=p.k,
                                                                 max_length=p.block_size, prefix=prefix))
        if out["self"] is None:
            out["self"] = TC.save_cache(paths["self"], TC.checked_metadata(metas["self"]),
                                        T.from_reference_model(model, tokenizer, rows, k=p.k, max_length=p.block_size))
        return {name: out[name] for name in target_configs(p)}

    # -- the plan
    def plan(self) -> list[tuple[str, str]]:
        return plan(self.profile, self.results)

    def proxy_table(self):
        return proxy_table(self.results, self.profile)

    def picks(self) -> list[str]:
        """The picked DFT configurations, or none while a proxy run is missing."""
        try:
            return picked_configs(self.results, self.profile)
        except ValueError:
            return []

    # -- the pieces
    def done(self, kind: str, name: str) -> bool:
        return piece_path(self.results, kind, name).exists()

    def run_piece(self, kind: str, name: str) -> None:
        if kind == "targets":
            self.targets_piece()
        elif kind == "proxy":
            self.proxy_piece(name)
        elif kind == "run":
            self.train_run(name)
        elif kind == "point":
            self.point_piece(name)
        elif kind == "score":
            self.score_piece(name)

    def work(self) -> Path:
        """The folder of the weights (checkpoints, proxy runs): not committed, rebuilt by training again."""
        return self._work

    def trainer(self, name: str, steps: int, seed: int, output_dir: Path, **training_args):
        """The untrained trainer of ``objective-config`` (or ``sft``) from a fresh copy of the base model, its step
        timer and tokenizer."""
        from ..trainer import DFTConfig, method_trainer
        from .models import load_model_for_profile

        objective, config = split_objective(name)
        method, ce = ("sft", 0.0) if objective == "sft" else OBJECTIVES[objective]
        ce = self.profile.ce_mix if ce is None else ce
        p = self.profile
        model, tokenizer = load_model_for_profile("smoke" if p.model == "tiny" else "default", p.model,
                                                  training=True)
        rows = self.targets("train")[config]
        trainer, timer = method_trainer(model, tokenizer, rows, method, output_dir,
                                        dft_config=DFTConfig(tail=p.tail, ce_weight=ce), max_steps=steps,
                                        per_device_train_batch_size=p.batch, learning_rate=p.learning_rate,
                                        seed=seed, data_seed=seed, **training_args)
        return trainer, timer, tokenizer

    def proxy_piece(self, name: str) -> None:
        """Train ``proxy_steps`` steps of ``name`` (seed 0), measure its drift from the base model on the validation
        blocks, write ``proxy/<name>.json``."""
        import shutil

        from ..measure.drift import model_drift
        from ..modeling import pad_token_id
        from ..trainer import history_frame

        start = time.perf_counter()
        out = self.work() / "proxy" / name
        shutil.rmtree(out, ignore_errors=True)
        trainer, timer, tokenizer = self.trainer(name, self.profile.proxy_steps, 0, out)
        trainer.train()
        train_s = time.perf_counter() - start
        history = history_frame(trainer.state.log_history, name, timer)
        base, _ = self.base_model()
        drift = model_drift(trainer.model, base, self.blocks()["validation"], pad_token_id(tokenizer),
                            batch_size=self.profile.batch_size)
        shutil.rmtree(out, ignore_errors=True)
        objective, config = split_objective(name)
        write_json(piece_path(self.results, "proxy", name), provenance(
            profile=self.profile_name, name=name, objective=objective, config=config, steps=self.profile.proxy_steps,
            learning_rate=self.profile.learning_rate, batch=self.profile.batch, drift=drift,
            losses=[round(float(x), 6) for x in history["loss"]], train_s=round(train_s, 1),
            wall_s=round(time.perf_counter() - start, 1)))

    def targets_piece(self) -> None:
        """Build (or load) every target set of the sweep and write ``targets.csv`` (the statistics of
        :func:`dftnb.target_statistics.target_statistics` over the training tokens) and ``targets.json``
        (provenance, written last)."""
        from ..modeling import pad_token_id
        from ..target_statistics import target_statistics

        start = time.perf_counter()
        sets = self.targets("train")
        built = time.perf_counter() - start
        model, tokenizer = self.base_model()
        stats = target_statistics(model, sets, pad_token_id(tokenizer), batch_size=self.profile.batch_size)
        stats.index.name = "config"
        self.results.mkdir(parents=True, exist_ok=True)
        stats.to_csv(self.results / "targets.csv", float_format="%.6g")
        write_json(piece_path(self.results, "targets", "targets"),
                   provenance(profile=self.profile_name, sizes=asdict(self.profile), prefix=self.style_prefix(),
                              configs=target_configs(self.profile), build_s=round(built, 1),
                              wall_s=round(time.perf_counter() - start, 1)))

    def checkpoint_dir(self, run: str, step: int) -> Path:
        return self.work() / "models" / run / f"step-{step}"

    def train_run(self, run: str, check: bool = False) -> None:
        """Train ``run`` (``<name>-s<seed>``) for ``steps`` steps, resuming from its last complete Trainer checkpoint,
        keeping the weights at every ``checkpoints`` step; write ``runs/<run>/training.csv`` and its provenance.
        ``check``: the run is committed already and is trained again for its weights; its losses must match."""
        import shutil

        import pandas as pd
        from transformers import TrainerCallback

        from ..trainer import history_frame
        from .train import _checkpoints, resolve_resume

        p, study = self.profile, self

        class KeepCheckpoints(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step in p.checkpoints:
                    model.save_pretrained(study.checkpoint_dir(run, state.global_step))

        name, seed = run.rsplit("-s", 1)
        start = time.perf_counter()
        out = self.work() / "train" / run
        trainer, timer, tokenizer = self.trainer(name, p.steps, int(seed), out, save_strategy="steps",
                                                 save_steps=min(p.checkpoints), save_total_limit=1,
                                                 callbacks=[KeepCheckpoints()])
        resume = resolve_resume(True, out, verbose=False) if _checkpoints(out) else None
        trainer.train(resume_from_checkpoint=resume)
        for step in p.checkpoints:
            tokenizer.save_pretrained(self.checkpoint_dir(run, step))
        history = history_frame(trainer.state.log_history, name, timer)
        shutil.rmtree(out, ignore_errors=True)
        dest = self.results / "runs" / run
        if check:
            committed = pd.read_csv(dest / "training.csv").set_index("step").loss
            again = history.set_index("step").loss
            worst = float(((committed - again).abs() / committed.abs()).max())
            if not committed.index.equals(again.index) or worst > 1e-3:
                shutil.rmtree(self.work() / "models" / run)
                raise ValueError(f"run {run} trained again does not reproduce its committed losses (largest "
                                 f"relative difference {worst:.2e}); delete {dest} and its points under "
                                 f"{self.results / 'points'} and rerun the study.")
            return
        dest.mkdir(parents=True, exist_ok=True)
        history.to_csv(dest / "training.csv", index=False, float_format="%.6g")
        objective, config = split_objective(name)
        write_json(piece_path(self.results, "run", run), provenance(
            profile=self.profile_name, run=run, objective=objective, config=config, seed=int(seed),
            steps=p.steps, batch=p.batch, block_size=p.block_size, learning_rate=p.learning_rate,
            ce_weight=(p.ce_mix if objective == "rkl+ce" else 0.0), checkpoints=list(p.checkpoints),
            resumed_from=None if resume is None else Path(resume).name,
            train_s=round(time.perf_counter() - start, 1), step_seconds_median=_median_step(timer),
            # 1-, 5- and 15-minute load averages when training ended: above the core count, other jobs shared the
            # cores and the step time is not a clean measurement
            load_average=[round(x, 2) for x in os.getloadavg()], cores=os.cpu_count()))

    def point_model(self, point: str):
        """``(model, tokenizer, seed)`` of a frontier point (see :func:`point_names`)."""
        from ..weight_interpolation import interpolate_weights
        from .models import load_model

        if point == "base" or point.startswith("base-s"):
            model, tokenizer = self.base_model()
            return model, tokenizer, 0 if point == "base" else int(point[len("base-s"):])
        run, where = point.split("@")
        seed = int(run.rsplit("-s", 1)[1])
        step = max(self.profile.checkpoints) if where.startswith("wise") else int(where)
        if not (self.checkpoint_dir(run, step) / "config.json").exists():
            self.train_run(run, check=True)
        model, tokenizer = load_model(str(self.checkpoint_dir(run, step)))
        if where.startswith("wise"):
            model = interpolate_weights(self.base_model()[0], model, float(where[len("wise"):]))
        return model.eval(), tokenizer, seed

    def point_piece(self, point: str) -> None:
        """Evaluate one frontier point and write its files under ``points/<point>/`` (provenance last)."""
        import numpy as np

        from .benchmark import diversity_prompts
        from .evaluation import evaluate_model

        p = self.profile
        start = time.perf_counter()
        model, tokenizer, seed = self.point_model(point)
        loaded = time.perf_counter() - start
        ev = evaluate_model(
            point, model, tokenizer, diversity_prompts(per_corpus=p.prompts_per_corpus),
            temperatures=p.eval_temperatures, n_samples=p.samples, max_new_tokens=p.new_tokens, humaneval_problems=0,
            mmlu_limit=p.mmlu_limit, mmlu_subjects=None if p.mmlu_subjects is None else list(p.mmlu_subjects),
            ppl_window=p.window, ppl_stride=p.stride, ppl_max_tokens=p.in_domain_tokens, seed=seed,
            batch_size=p.sample_batch, retention_tokens=p.retention_tokens, solution_problems=p.solutions,
            ppl_corpora=("shakespeare",))
        dest = self.results / "points" / point
        dest.mkdir(parents=True, exist_ok=True)
        write_json(dest / "samples.json", {f"{t:g}": groups for t, groups in ev.samples.items()})
        arrays = {"in_domain_nll": ev.token_nll["shakespeare"]}
        for corpus, scores in ev.retention.items():
            arrays[f"{corpus}_nll"], arrays[f"{corpus}_top1"] = scores.nll, scores.top1
        np.savez_compressed(dest / "tokens.npz", **{k: np.asarray(v, dtype=np.float32 if k.endswith("nll") else bool)
                                                    for k, v in arrays.items()})
        ev.solutions.to_csv(dest / "solutions.csv", index=False, float_format="%.6g")
        ev.perplexity.to_csv(dest / "perplexity.csv", index=False, float_format="%.6g")
        rows = [{k: r[k] for k in ("id", "subject", "answer", "logprobs", "chars", "tokens", "shots", "prediction",
                                   "correct")} for r in ev.mmlu.predictions]
        (dest / "mmlu.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
        write_json(piece_path(self.results, "point", point), provenance(
            profile=self.profile_name, point=point, sampling_seed=seed, load_s=round(loaded, 1),
            eval_parts_s=ev.seconds, wall_s=round(time.perf_counter() - start, 1),
            load_average=[round(x, 2) for x in os.getloadavg()], cores=os.cpu_count()))

    def score_piece(self, point: str) -> None:
        """Score the stored samples of ``point`` and write ``points/<point>/scores.json``."""
        from .frontier_scores import PointScorer, score_point

        if self._scorer is None:
            p = self.profile
            self._scorer = PointScorer(self.base_model()[1], p.score_length, p.prompts_per_corpus * p.samples)
        scores = score_point(self.results / "points" / point, self._scorer)
        write_json(piece_path(self.results, "score", point), scores)


def _median_step(timer) -> float | None:
    """The median wall seconds of one optimiser step this process trained (``None`` if it trained none)."""
    import numpy as np

    ends = [timer.seconds[k] for k in sorted(timer.seconds)]
    return round(float(np.median(np.diff([0.0, *ends]))), 2) if ends else None


def run(profile: str = "study", results: str | Path = RESULTS, log=print, work: str | Path | None = None,
        readme: Path | None = None, report_only: bool = False) -> FrontierStudy:
    """Run every unfinished piece in order (a finished piece is skipped; the plan is read again after each piece,
    as the DFT runs join it once the proxies have run), then write the report
    (:func:`dftnb.lab.frontier_report.write_report`; the README section only with ``readme``)."""
    from .frontier_report import write_report

    study = FrontierStudy(profile, results, work)
    while not report_only:
        todo = [piece for piece in plan(study.profile, study.results) if not study.done(*piece)]
        if not todo:
            break
        run_pieces(study, todo[:1], log, "frontier")
    write_report(study, readme)
    return study


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="study")
    parser.add_argument("--results", default=str(RESULTS), help="folder of the stored rows (default results/study-2)")
    parser.add_argument("--list", action="store_true", help="print the plan and which pieces are done")
    parser.add_argument("--report", action="store_true",
                        help="only regenerate the tables, figure, report and README section from the stored files")
    args = parser.parse_args(argv)
    from .runner import HEADLESS_ENV, quiet

    os.environ[HEADLESS_ENV] = "1"
    quiet()
    study = FrontierStudy(args.profile, args.results)
    if args.list:
        for kind, name in plan(study.profile, study.results):
            print(f"{'done' if study.done(kind, name) else 'todo'}  {kind:9s} {name}")
        return
    readme = REPO / "README.md" if Path(args.results).resolve() == RESULTS.resolve() else None
    run(args.profile, args.results, log=lambda line: print(line, flush=True), readme=readme,
        report_only=args.report)


if __name__ == "__main__":
    main(sys.argv[1:])
