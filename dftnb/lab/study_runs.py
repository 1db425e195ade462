"""The study's pieces: what is trained and measured, each piece written to ``results/study/`` as it finishes.

Run by :mod:`dftnb.lab.study` (``make study``). Orchestration, like :mod:`dftnb.lab.benchmark` (whose evaluation it reuses).
The work is cut into
**pieces**, each finished piece written under ``results/study/`` at once (meant to be committed), so an interrupted
study restarts where it stopped:

1. ``targets``: the training rows, 800 packed Shakespeare blocks of 128 tokens (102,400 tokens) from the first half
   of the train split, with kNN-LM "style manifold" targets (keys: 200,000 tokens of the second half, FAISS
   IVF-flat search; ``q = λ p_kNN + (1 − λ) p_ref``, top-64, read with the ``bucket`` tail) and the model's own targets on
   the same blocks (the self-target control); the same for 16 validation blocks. Cached under ``.cache/targets``.
2. ``tune/<method>-lr<η>``: every method gets the same tuning budget: the same five learning rates, a proxy run of
   ``tune_steps`` steps each, scored by its own objective on the validation blocks; the lowest wins (a rule fixed
   before any run). SFT is tuned exactly like every DFT variant. The self-target control reuses reverse KL's rate.
3. ``runs/<method>-s<seed>``: train (same rows, same token budget, AdamW at the tuned constant rate; checkpoints
   under ``.cache/study/train`` so an interrupted run resumes), then evaluate (samples, perplexity of the test
   splits, MMLU stratified, HumanEval all 164; :func:`dftnb.lab.evaluation.evaluate_model`) and write the evaluation
   and ``provenance.json`` (written last: a run with it is finished and skipped).
4. ``mmlu-full/<run>``: all 14,042 MMLU questions for the base model, SFT and reverse-KL DFT (seed 0; chosen before
   any result: reverse KL is the seed article's objective), resumable per subject.
5. ``report``: the tables (CSV + Markdown), figures and the README's results section, regenerated from the stored
   files only (byte-identical on a rerun).
"""

from __future__ import annotations

import datetime
import json
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..methods import labels as method_labels
from ..records import model_record, portable_command, portable_path
from .runner import REPO

RESULTS = REPO / "results" / "study"
BASE_FULL_MMLU = REPO / "results" / "mmlu" / "embedded-cloze-0shot.jsonl"  # written by benchmarks/mmlu.py --evaluate
README_BEGIN, README_END = "<!-- study:begin -->", "<!-- study:end -->"


@dataclass(frozen=True)
class StudyProfile:
    """Sizes of one study profile (``study``: the real one; ``smoke``: the same code path in a minute)."""

    model: str
    block_size: int
    train_blocks: int  # training rows; one epoch of them is the token budget of every run
    batch: int
    learning_rates: tuple[float, ...]
    tune_steps: int
    val_blocks: int
    datastore_tokens: int
    k_neighbors: int
    seeds: tuple[int, ...]
    evaluation: str  # key of dftnb.lab.benchmark.SIZES
    save_steps: int
    full_mmlu: bool
    k: int = 64
    lam: float = 0.25
    knn_temperature: float = 100.0
    tail: str = "bucket"
    datastore_index: str = "ivfflat"  # exact distances in the probed cells; flat search of 100k x 200k keys is hours
    sample_batch: int = 4  # prompts per generate call (x 16 samples = 64 sequences, benchmarks/sampling_budget.py)
    target_entropy: float = 3.0  # nats, the target-entropy sampler's frontier point

    @property
    def steps(self) -> int:
        return self.train_blocks // self.batch

    @property
    def train_tokens(self) -> int:
        return self.steps * self.batch * self.block_size


PROFILES = {
    "smoke": StudyProfile(model="tiny", block_size=32, train_blocks=16, batch=4, learning_rates=(1e-3, 3e-3),
                          tune_steps=2, val_blocks=4, datastore_tokens=2_000, k_neighbors=8, seeds=(0, 1),
                          evaluation="smoke", save_steps=2, full_mmlu=False, target_entropy=9.0,
                          datastore_index="flat"),
    # 100 steps x 8 x 128 = 102,400 tokens per run: chapter 02's 20 steps of 4 x 64 tokens barely move the entropy;
    # at ~6 s per step on 2 cores a run trains in ~11 min.
    "study": StudyProfile(model="embedded", block_size=128, train_blocks=800, batch=8,
                          # five rates, half a decade apart: a first grid of three (1e-5..1e-4) put the choice of
                          # SFT, reverse KL and forward KL on its edge, so it was widened for every method alike
                          # before any full run.
                          learning_rates=(3e-6, 1e-5, 3e-5, 1e-4, 3e-4), tune_steps=16, val_blocks=16, datastore_tokens=200_000,
                          k_neighbors=16, seeds=(0, 1, 2), evaluation="study", save_steps=25, full_mmlu=True),
}

# The registry methods the study trains, in the order they run and are tabled (dftnb.methods.METHOD_REGISTRY): the
# two main DFT variants and SFT get every seed, the others seed 0; all train on the kNN-LM targets.
TRAINED = ("sft", "dft_reverse_kl", "dft_forward_kl", "dft_sinkhorn", "dft_sorted_w1", "gem")
# The study's one variant of a registry method, a control: reverse KL (the registry's dft_reverse_kl, the same
# objective D(p ‖ q) = Σ p log(p / q)) to the model's own targets q = p_base instead of the kNN-LM targets.
SELF_TARGET = "self_target"
SELF_TARGET_METHOD, SELF_TARGET_LABEL = "dft_reverse_kl", "control: reverse KL to its own targets"
# method -> (table label, target rows): the study's view of the registry, plus its control.
METHODS = {**{m: (label, "knn") for m, label in method_labels(TRAINED).items()},
           SELF_TARGET: (SELF_TARGET_LABEL, "self")}
MAIN = ("sft", "dft_reverse_kl", "dft_forward_kl")
FRONTIER = ("base", "sft-s0", "dft_reverse_kl-s0", "dft_forward_kl-s0")  # evaluated at every temperature
FULL_MMLU = ("base", "sft-s0", "dft_reverse_kl-s0")


def extra_samplers(profile: StudyProfile) -> dict[str, tuple[str, dict]]:
    """The frontier's extra points: ``{label: (sampler, parameters)}`` (:func:`dftnb.sampling.sampler_kwargs`)."""
    return {"dynatemp [0.5, 1.5]": ("dynatemp", dict(min_temperature=0.5, max_temperature=1.5)),
            f"target entropy {profile.target_entropy:g} nats": ("target_entropy",
                                                               dict(target_entropy=profile.target_entropy))}


def trainer_method(method: str) -> str:
    """The registry method (:data:`dftnb.methods.METHOD_REGISTRY`) a study method trains with."""
    if method not in METHODS:
        raise ValueError(f"unknown study method {method!r}; the study trains {tuple(METHODS)}.")
    return SELF_TARGET_METHOD if method == SELF_TARGET else method


def run_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def run_label(name: str) -> str:
    """Table label of a run folder name: ``"dft_reverse_kl-s1"`` -> ``"DFT (reverse KL) s1"``."""
    if name == "base":
        return "base"
    method, seed = name.rsplit("-s", 1)
    return f"{METHODS[method][0]} s{seed}"


def plan(profile: StudyProfile) -> list[tuple[str, str]]:
    """Every piece in the order it runs: ``(kind, name)``."""
    pieces = [("targets", "targets"), ("run", "base")]
    pieces += [("tune", f"{m}-lr{lr:g}") for m in METHODS if m != SELF_TARGET for lr in profile.learning_rates]
    # the paired answer first: every seed of the main comparison, then the single-seed methods
    pieces += [("run", run_name(m, s)) for s in profile.seeds for m in MAIN]
    pieces += [("run", run_name(m, profile.seeds[0])) for m in METHODS if m not in MAIN]
    if profile.full_mmlu:
        pieces += [("mmlu-full", name) for name in FULL_MMLU]
    return pieces


def piece_path(results: Path, kind: str, name: str) -> Path:
    """The file whose existence marks a piece finished."""
    return {"targets": results / "targets.json", "tune": results / "tuning" / f"{name}.json",
            "run": results / "runs" / name / "provenance.json",
            "mmlu-full": results / "runs" / name / "mmlu_full.jsonl"}[kind]


# ------------------------------------------------------------------------------------------------ provenance
def provenance(**fields) -> dict:
    """Commit, command, machine and library versions, plus ``fields`` (profile, seed, wall times, ...). The command
    names no absolute path (:func:`portable_command`); a model in ``fields`` belongs there as :func:`model_record`.

    ``dirty`` says whether tracked files other than ``results/`` differ from the commit: the code that ran is the
    commit's only when it is false. Stored results are left out because they change while a study runs (its own
    partial rows, another experiment's committed progress) without changing what the code computes."""
    import datasets
    import torch
    import transformers

    from .experiments import machine_description

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {**fields, "commit": git("rev-parse", "HEAD"), "dirty": bool(dirty), "command": portable_command(),
            "machine": machine_description(), "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "datasets": datasets.__version__, "numpy": np.__version__},
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_json(path: Path, payload) -> None:
    """Write ``payload`` atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_pieces(study, pieces, log=print, tag: str = "study") -> None:
    """Run each ``(kind, name)`` of ``pieces`` that ``study.done`` does not report finished, in order, through
    ``study.run_piece``, logging its start and wall time: the resumable loop of both study editions."""
    for kind, name in pieces:
        if study.done(kind, name):
            continue
        log(f"[{tag}] {kind} {name} ...")
        start = time.perf_counter()
        study.run_piece(kind, name)
        log(f"[{tag}] {kind} {name} done in {time.perf_counter() - start:.0f} s")


# ---------------------------------------------------------------------------------------------------- pieces
class Study:
    """The state shared by the pieces of one study: profile, folders, the tokenizer and the target rows."""

    def __init__(self, profile: str = "study", results: str | Path = RESULTS, work: str | Path | None = None):
        from .models import cache_dir

        if profile not in PROFILES:
            raise ValueError(f"study profile must be one of {sorted(PROFILES)}, got {profile!r}.")
        self.profile_name, self.profile = profile, PROFILES[profile]
        self.results = Path(results)
        self.work = Path(work) if work is not None else cache_dir() / "study" / profile
        self._rows = None

    # -- models and rows
    def base_model(self, training: bool = False):
        from .models import load_model_for_profile

        return load_model_for_profile("smoke" if self.profile.model == "tiny" else "default", self.profile.model,
                                      training=training)

    def rows(self) -> dict:
        """``{"knn"|"self": {"train"|"validation": dataset}}``, built once (target cache) and loaded afterwards."""
        if self._rows is None:
            self._rows = build_rows(self)
        return self._rows

    # -- the pieces
    def done(self, kind: str, name: str) -> bool:
        return piece_path(self.results, kind, name).exists()

    def run_piece(self, kind: str, name: str) -> None:
        if kind == "targets":
            start = time.perf_counter()
            rows = self.rows()
            info = {f"{src}/{split}": {"rows": len(ds), "tokens": int(sum(len(x) for x in ds["input_ids"]))}
                    for src, splits in rows.items() for split, ds in splits.items()}
            write_json(piece_path(self.results, kind, name),
                       provenance(profile=self.profile_name, sizes=asdict(self.profile), rows=info,
                                  wall_s=round(time.perf_counter() - start, 1)))
        elif kind == "tune":
            tune(self, *name.rsplit("-lr", 1))
        elif kind == "run":
            train_and_evaluate(self, name)
        elif kind == "mmlu-full":
            full_mmlu(self, name)

    def learning_rate(self, method: str) -> float:
        """The tuned rate: the lowest validation objective among the proxy runs of ``method`` (reverse KL's for the
        self-target control)."""
        method = "dft_reverse_kl" if method == "self_target" else method
        scores = {}
        for lr in self.profile.learning_rates:
            path = piece_path(self.results, "tune", f"{method}-lr{lr:g}")
            if not path.exists():
                raise FileNotFoundError(f"tuning piece {path.name} is missing: run the study in order "
                                        f"(`python -m dftnb.lab.study --profile {self.profile_name}`).")
            scores[lr] = json.loads(path.read_text())["validation_objective"]
        return min(scores, key=lambda lr: (scores[lr], lr))


def build_rows(study: Study) -> dict:
    """Training and validation rows with kNN-LM targets and with the model's own (reference) targets."""
    from .. import target_cache as TC
    from .. import targets as T
    from ..datastore import build_datastore
    from .data import corpus_texts, pack_texts

    p = study.profile
    model, tokenizer = study.base_model()
    texts = corpus_texts("shakespeare", "train")
    half = len(texts) // 2
    blocks = {"train": pack_texts(tokenizer, texts[:half], p.block_size, p.train_blocks),
              "validation": pack_texts(tokenizer, corpus_texts("shakespeare", "validation"), p.block_size,
                                       p.val_blocks)}
    for split, b in blocks.items():
        want = p.train_blocks if split == "train" else p.val_blocks
        if len(b) < want:
            raise ValueError(f"only {len(b)} blocks of {p.block_size} tokens in Shakespeare {split}, need {want}.")
    store = {}

    def datastore():
        if "ds" not in store:
            store["ds"] = build_datastore(model, tokenizer, texts[half:], p.datastore_tokens, p.block_size,
                                          index=p.datastore_index)
        return store["ds"]

    out = {"knn": {}, "self": {}}
    for split, b in blocks.items():
        common = dict(model_name=p.model, blocks=len(b), seq_len=p.block_size, split=split, study=study.profile_name)
        meta = TC.target_metadata(model, tokenizer, source="knn", corpus="shakespeare/train-half1", k=p.k,
                                  datastore_tokens=p.datastore_tokens, k_neighbors=p.k_neighbors, lam=p.lam,
                                  knn_temperature=p.knn_temperature, index=p.datastore_index, **common)
        out["knn"][split] = TC.build_or_load(
            f"study-{study.profile_name}-knn-{split}", meta,
            lambda b=b: T.from_corpus(model, tokenizer, None, b, k_neighbors=p.k_neighbors, lam=p.lam,
                                      knn_temperature=p.knn_temperature, k=p.k, max_length=p.block_size,
                                      block_size=p.block_size, datastore=datastore()))
        meta = TC.target_metadata(model, tokenizer, source="reference", corpus="shakespeare/train-half1", k=p.k,
                                  **common)
        out["self"][split] = TC.build_or_load(
            f"study-{study.profile_name}-self-{split}", meta,
            lambda b=b: T.from_reference_model(model, tokenizer, b, k=p.k, max_length=p.block_size))
    return out


def _dft_config(study: Study, method: str):
    from ..trainer import DFTConfig, method_config

    return method_config(trainer_method(method), DFTConfig(tail=study.profile.tail))


def _trainer(study: Study, method: str, seed: int, lr: float, steps: int, output_dir: Path, save: bool):
    """The untrained trainer of one run, its step timer and the tokenizer (:func:`dftnb.trainer.method_trainer`, the
    builder of :func:`dftnb.trainer.train_method`); the caller trains it, resuming from a checkpoint if any."""
    from ..trainer import DFTConfig, method_trainer

    model, tokenizer = study.base_model(training=True)
    rows = study.rows()[METHODS[method][1]]["train"]
    trainer, timer = method_trainer(
        model, tokenizer, rows, trainer_method(method), output_dir, dft_config=DFTConfig(tail=study.profile.tail),
        max_steps=steps, per_device_train_batch_size=study.profile.batch, learning_rate=lr, seed=seed,
        data_seed=seed, save_strategy="steps" if save else "no", save_steps=study.profile.save_steps,
        save_total_limit=1,
    )
    return trainer, timer, tokenizer


def tune(study: Study, method: str, lr: str) -> None:
    """One proxy run: ``tune_steps`` steps at rate ``lr`` from the base model, then the method's own objective on
    the validation rows (with the targets the method trains on)."""
    from ..trainer import evaluate_objective, history_frame

    start = time.perf_counter()
    out = study.work / "tune" / f"{method}-lr{lr}"
    shutil.rmtree(out, ignore_errors=True)
    trainer, timer, tokenizer = _trainer(study, method, 0, float(lr), study.profile.tune_steps, out, save=False)
    trainer.train()
    val = study.rows()[METHODS[method][1]]["validation"]
    objective = evaluate_objective(trainer.model, val, _dft_config(study, method), tokenizer.pad_token_id)
    history = history_frame(trainer.state.log_history, method, timer)
    shutil.rmtree(out, ignore_errors=True)
    write_json(piece_path(study.results, "tune", f"{method}-lr{lr}"), provenance(
        profile=study.profile_name, method=method, learning_rate=float(lr), steps=study.profile.tune_steps,
        validation_objective=objective, last_train_loss=float(history["loss"].iloc[-1]),
        wall_s=round(time.perf_counter() - start, 1)))


def train_and_evaluate(study: Study, name: str) -> None:
    """Train run ``name`` (resuming from its last complete checkpoint), evaluate it, write its files."""
    dest = study.results / "runs" / name
    fields = {"profile": study.profile_name, "run": name, "label": run_label(name)}
    if name == "base":
        model, tokenizer = study.base_model()
        train_s = 0.0
    else:
        method, seed = name.rsplit("-s", 1)
        seed, lr = int(seed), study.learning_rate(method)
        model, tokenizer, final = train_model(study, name)
        train_s = float((final / "train_seconds.txt").read_text())
        fields.update(method=method, seed=seed, learning_rate=lr, steps=study.profile.steps,
                      batch=study.profile.batch, block_size=study.profile.block_size,
                      train_tokens=study.profile.train_tokens, tail=study.profile.tail)
    eval_start = time.perf_counter()
    parts = evaluate_run(study, name, model, tokenizer, dest)
    write_json(dest / "provenance.json", provenance(
        **fields, model=model_record(model, study.profile.model if name == "base" else name), train_s=round(train_s, 1),
        eval_s=round(time.perf_counter() - eval_start, 1), eval_parts_s=parts))


def train_model(study: Study, name: str, history_path: Path | None = None):
    """Run ``name``'s trained model: loaded from the work folder, else trained (resuming from its last complete
    checkpoint) and saved there. Returns ``(model, tokenizer, folder)``; the loss history goes to ``history_path``
    (default: the run's ``training.csv``)."""
    from ..trainer import history_frame
    from .models import load_model
    from .train import _checkpoints, resolve_resume

    method, seed = name.rsplit("-s", 1)
    final = study.work / "models" / name
    history_path = history_path or study.results / "runs" / name / "training.csv"
    if (final / "config.json").exists() and history_path.exists():
        model, tokenizer = load_model(str(final))
        return model, tokenizer, final
    # no model, or one whose loss history is gone (e.g. kept by a full-MMLU retrain after its run was deleted):
    # train (again); training is deterministic for a given seed and code
    shutil.rmtree(final, ignore_errors=True)
    start = time.perf_counter()
    out = study.work / "train" / name
    trainer, timer, tokenizer = _trainer(study, method, int(seed), study.learning_rate(method), study.profile.steps,
                                         out, save=True)
    resume = resolve_resume(True, out, verbose=False) if _checkpoints(out) else None
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(final))
    history_path.parent.mkdir(parents=True, exist_ok=True)
    history_frame(trainer.state.log_history, method, timer).to_csv(history_path, index=False, float_format="%.6g")
    shutil.rmtree(out, ignore_errors=True)
    (final / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    return trainer.model.eval(), tokenizer, final


def retrain_and_check(study: Study, name: str, rtol: float = 1e-3):
    """Train run ``name`` again (its weights are not kept in git) and check that it reproduces the committed loss
    curve: the largest relative difference of the per-step losses must stay below ``rtol``. Returns
    ``(model, tokenizer, largest relative difference)``."""
    import pandas as pd

    committed = study.results / "runs" / name / "training.csv"
    if not committed.exists():
        raise FileNotFoundError(f"{committed} is missing: run {name} has not been trained by the study yet; run "
                                f"`python -m dftnb.lab.study --profile {study.profile_name}` in order.")
    again = study.work / "retrained" / f"{name}.csv"
    model, tokenizer, _ = train_model(study, name, history_path=again)
    a, b = pd.read_csv(committed).set_index("step").loss, pd.read_csv(again).set_index("step").loss
    if not a.index.equals(b.index):
        raise ValueError(f"the retrained {name} logged steps {list(b.index)[:5]}..., the committed one "
                         f"{list(a.index)[:5]}...: the study profile changed since the run; delete "
                         f"{study.results / 'runs' / name} and rerun the study to train and evaluate it again.")
    worst = float(((a - b).abs() / a.abs()).max())
    if worst > rtol:
        shutil.rmtree(study.work / "models" / name)  # not the evaluated model: a later piece must not load it unchecked
        raise ValueError(f"the retrained {name} does not reproduce its committed losses (largest relative "
                         f"difference {worst:.2e} > {rtol:g}): its full-MMLU score would not be the evaluated model's. "
                         f"Delete {study.results / 'runs' / name} and rerun the study to train and evaluate it again.")
    return model, tokenizer, worst


def evaluate_run(study: Study, name: str, model, tokenizer, dest: Path) -> dict[str, float]:
    """Samples, perplexity, MMLU and HumanEval of one model, stored as plain files in ``dest``; returns the wall
    seconds of each part."""
    from ..measure.metrics import perplexity
    from ..sampling import sampler_kwargs
    from .benchmark import SIZES, diversity_prompts, evaluate_model
    from .models import generate

    S = SIZES[study.profile.evaluation]
    temperatures = [1.0]
    if name in FRONTIER:
        temperatures = sorted({1.0, *S["temperatures"], *(S["calibration"] if name == "base" else [])})
    prompts = diversity_prompts(per_corpus=S["per_corpus"])
    mmlu_partial = study.work / "mmlu" / f"{name}.jsonl"
    ev = evaluate_model(
        name, model, tokenizer, prompts, temperatures=temperatures, n_samples=S["n"], max_new_tokens=S["new_tokens"],
        humaneval_problems=S["he_problems"], humaneval_tokens=S["he_tokens"], mmlu_limit=S["mmlu_limit"],
        mmlu_subjects=S["mmlu_subjects"], ppl_window=S["window"], ppl_stride=S["stride"],
        ppl_max_tokens=S["ppl_tokens"], seed=0, batch_size=study.profile.sample_batch,
        mmlu_results_path=mmlu_partial,
    )
    seconds = dict(ev.seconds)
    start = time.perf_counter()
    extra = {}
    if name in FRONTIER and name != "base":
        for label, (sampler, params) in extra_samplers(study.profile).items():
            extra[label] = generate(model, tokenizer, prompts, n=S["n"], max_new_tokens=S["new_tokens"], seed=0,
                                    fixed_length=True, batch_size=study.profile.sample_batch,
                                    **sampler_kwargs(sampler, **params))
    # perplexity of the samples under the base model (fidelity of what was sampled, on the base model's scale)
    base, _ = (model, tokenizer) if name == "base" else study.base_model()
    settings = {f"T={t:g}": g for t, g in ev.samples.items()} | extra
    sample_ppl = [{"setting": k, "base_perplexity": perplexity(base, tokenizer, [t for g in v for t in g],
                                                                window=S["window"], stride=S["window"])}
                  for k, v in settings.items()]
    seconds["extra samplers and sample perplexity"] = round(time.perf_counter() - start, 1)
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "samples.json", {"temperature": {f"{t:g}": g for t, g in ev.samples.items()}, "extra": extra})
    _write_csv(dest / "sample_perplexity.csv", sample_ppl)
    ev.perplexity.to_csv(dest / "perplexity.csv", index=False, float_format="%.6g")
    np.savez_compressed(dest / "token_nll.npz", **{c: v.astype(np.float32) for c, v in ev.token_nll.items()})
    if ev.mmlu is not None:
        _write_jsonl(dest / "mmlu.jsonl", [_mmlu_row(r) for r in ev.mmlu.predictions])
    if ev.humaneval is not None:
        _write_jsonl(dest / "humaneval.jsonl", ev.humaneval.per_problem)
    mmlu_partial.unlink(missing_ok=True)
    return seconds


def full_mmlu(study: Study, name: str) -> None:
    """All MMLU test questions for run ``name`` (a trained model must still be in the work folder). The base
    model's full set is read from :data:`BASE_FULL_MMLU` when present (same prompts, 0-shot cloze)."""
    from ..measure.evals import mmlu
    from .models import load_model

    start = time.perf_counter()
    dest = study.results / "runs" / name
    partial = dest / "mmlu_full.partial.jsonl"  # finished subjects, committed with the results: survives a new machine
    extra = {}
    if name == "base" and study.profile.model == "embedded" and BASE_FULL_MMLU.exists():
        rows = [json.loads(line) for line in BASE_FULL_MMLU.read_text(encoding="utf-8").splitlines()]
        source = portable_path(BASE_FULL_MMLU)
        extra = {"model": json.loads(rows[0]["run"])["model"]} if rows and "run" in rows[0] else {}
    else:
        if name == "base":
            model, tokenizer = study.base_model()
        elif (study.work / "models" / name / "config.json").exists():
            model, tokenizer = load_model(str(study.work / "models" / name))
        else:
            model, tokenizer, worst = retrain_and_check(study, name)
            extra = {"retrained": True, "retrained_max_relative_loss_difference": worst}
        dest.mkdir(parents=True, exist_ok=True)
        label = study.profile.model if name == "base" else name  # the rows' key, the same on every machine
        rows, source = mmlu(model, tokenizer, results_path=partial, model_name=label).predictions, "evaluated here"
        extra["model"] = model_record(model, label)
    write_json(dest / "mmlu_full_provenance.json", provenance(profile=study.profile_name, run=name, source=source,
                                                              wall_s=round(time.perf_counter() - start, 1), **extra))
    _write_jsonl(dest / "mmlu_full.jsonl", [_mmlu_row(r) for r in rows])
    partial.unlink(missing_ok=True)


def _mmlu_row(r: dict) -> dict:
    return {k: r[k] for k in ("id", "subject", "answer", "logprobs", "chars", "tokens", "shots")}


def _write_jsonl(path: Path, rows) -> None:
    tmp = path.with_suffix(".partial")
    tmp.write_text("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def _write_csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.6g")
