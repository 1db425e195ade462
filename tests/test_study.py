"""The study's plumbing on its smoke profile (tiny model): the plan is fair, every piece writes its files, a rerun
skips all of them and regenerates the tables, the full report and the README section byte for byte (the committed ones
included), an interrupted run resumes from its checkpoint with the
same losses, and the verdict over seeds is only as strong as its weakest seed."""

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal
from transformers import TrainerCallback

from dftnb import records
from dftnb.lab import study as S
from dftnb.lab import study_runs as R
from dftnb.lab.benchmark import SIZES


class Interrupt(RuntimeError):
    pass


def test_the_plan_gives_every_method_the_same_budget():
    for profile in R.PROFILES.values():
        pieces = R.plan(profile)
        tunes = [n for k, n in pieces if k == "tune"]
        runs = [n for k, n in pieces if k == "run"]
        trained = set(R.METHODS) - {"self_target"}
        for method in trained:  # the same learning rates for SFT and every DFT variant
            assert sorted(n for n in tunes if n.startswith(f"{method}-lr")) == sorted(
                f"{method}-lr{lr:g}" for lr in profile.learning_rates)
        for method in R.MAIN:
            assert [n for n in runs if n.rsplit("-s", 1)[0] == method] == [f"{method}-s{s}" for s in profile.seeds]
        assert set(R.METHODS) <= {n.rsplit("-s", 1)[0] for n in runs if n != "base"}
        order = [k for k, _ in pieces]
        assert order[0] == "targets" and max(i for i, k in enumerate(order) if k == "tune") < order.index("run", 2)
    study = R.PROFILES["study"]
    assert study.train_tokens >= 100_000 and len(study.seeds) >= 3


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in {".csv", ".md", ".png"}}


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    readme = root / "README.md"
    readme.write_text(f"# x\n\n{R.README_BEGIN}\nSECTION-BEFORE-THE-REPORT\n{R.README_END}\n\ntail\n")
    study = R.Study("smoke", root / "results", root / "work")
    S.run_study("smoke", study.results, study.work, log=lambda _: None)
    S.report(study, readme)
    return study, readme


def test_every_piece_writes_its_rows_and_provenance(smoke_study):
    study, readme = smoke_study
    assert all(row["done"] for row in S.status("smoke", study.results))
    run = study.results / "runs" / "dft_reverse_kl-s1"
    for name in ("samples.json", "perplexity.csv", "token_nll.npz", "mmlu.jsonl", "humaneval.jsonl",
                 "sample_perplexity.csv", "training.csv", "provenance.json"):
        assert (run / name).stat().st_size > 0, name
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["seed"] == 1 and prov["train_tokens"] == study.profile.train_tokens
    assert {"commit", "command", "machine", "versions", "train_s", "eval_s"} <= set(prov)
    parts = prov["eval_parts_s"]  # where the evaluation's time went
    assert {"samples", "perplexity", "humaneval", "mmlu"} <= set(parts) and sum(parts.values()) <= prov["eval_s"] + 0.5
    # the rate a run trained with is the argmin of its method's stored proxy runs
    tuned = {lr: json.loads((study.results / "tuning" / f"dft_reverse_kl-lr{lr:g}.json").read_text())
             for lr in study.profile.learning_rates}
    assert prov["learning_rate"] == min(tuned, key=lambda lr: tuned[lr]["validation_objective"])
    self_prov = json.loads((study.results / "runs" / "self_target-s0" / "provenance.json").read_text())
    assert self_prov["learning_rate"] == json.loads(
        (study.results / "runs" / "dft_reverse_kl-s0" / "provenance.json").read_text())["learning_rate"]
    # frontier runs carry every temperature and the extra samplers; the others T = 1 only
    sizes = SIZES[study.profile.evaluation]
    frontier = json.loads((study.results / "runs" / "sft-s0" / "samples.json").read_text())
    assert set(map(float, frontier["temperature"])) == {1.0, *sizes["temperatures"]} and len(frontier["extra"]) == 2
    base = json.loads((study.results / "runs" / "base" / "samples.json").read_text())
    assert set(map(float, base["temperature"])) == {1.0, *sizes["temperatures"], *sizes["calibration"]}
    assert list(json.loads((study.results / "runs" / "gem-s0" / "samples.json").read_text())["temperature"]) == ["1"]
    text, report = readme.read_text(), (study.results / S.REPORT).read_text()
    assert "SECTION-BEFORE-THE-REPORT" not in text and text.endswith("tail\n")
    # the full report holds every table; the README section only the verdict, the figure and a link to the report
    for title in ("**Table (T = 1)**", "**Paired differences vs SFT**", "**Seed variance**", "**Calibration rows**",
                  "**Cost**", "**Tuning**", "**For a sceptical reader.**", "![frontier](figures/frontier.png)"):
        assert title in report, title
    section = text[text.index(R.README_BEGIN):text.index(R.README_END)]
    assert "**Verdict per method (all seeds must agree)**" in section and f"results/study/{S.REPORT}" in section
    assert "![frontier](results/study/figures/frontier.png)" in section
    assert "**Table (T = 1)**" not in section and "**For a sceptical reader.**" not in section
    verdict = (study.results / "tables" / "verdict_by_method.md").read_text().split("\n\n", 1)[1]
    assert verdict.strip() in section and verdict.strip() in report


def test_paired_rows_compare_each_seed_with_sft_of_that_seed(smoke_study):
    study, _ = smoke_study
    paired = pd.read_csv(study.results / "tables" / "paired.csv")
    refs = dict(zip(paired.model, paired.reference))
    assert refs["DFT (reverse KL) s1"] == "SFT s1" and refs["GEM s0"] == "SFT s0"
    assert refs["SFT s1"] == "SFT s0"  # the baseline's own seed variance, against seed 0
    table = pd.read_csv(study.results / "tables" / "table.csv")
    assert {"base", "SFT s0", "SFT s1", "control: reverse KL to its own targets s0"} <= set(table.model)
    cost = pd.read_csv(study.results / "tables" / "cost.csv").set_index("run").median_step_s
    ratios = pd.read_csv(study.results / "tables" / "cost.csv").set_index("run").step_ratio_vs_sft
    # stored with 5 significant digits, each of the three: a ratio of rounded values agrees to about 1e-4
    assert ratios["DFT (reverse KL) s1"] == pytest.approx(cost["DFT (reverse KL) s1"] / cost["SFT s1"], rel=2e-4)
    assert ratios["GEM s0"] == pytest.approx(cost["GEM s0"] / cost["SFT s0"], rel=2e-4)


def test_the_readme_paragraph_reads_each_criterion_as_the_verdict_table_does(smoke_study):
    study, readme = smoke_study
    text = (study.results / S.REPORT).read_text()
    paragraph = next(line for line in text.splitlines() if line.startswith("**For a sceptical reader.**"))
    by_method = pd.read_csv(study.results / "tables" / "verdict_by_method.csv", keep_default_na=False)
    for criterion, rows in by_method.groupby("criterion", sort=False):
        sentence = paragraph.split(f"*{criterion}*: ", 1)[1].split(". ", 1)[0]
        for outcome, group in rows.groupby("verdict"):
            listed = sentence.split(f"{outcome} for ", 1)[1].split("; ", 1)[0]
            assert all(f"{m} (" in listed for m in group.method), (criterion, outcome, listed)
    trained = [r for r in S.finished_runs(study) if r != "base"]
    assert paragraph.count(" seed") >= 2 and f"{len(trained)} fine-tuned models" in paragraph
    assert f"{study.profile.train_tokens:,} tokens" in paragraph and "It does not show:" in paragraph
    assert paragraph in S.committed_results(study.results, "smoke")  # chapter 06 renders the same paragraph


def test_a_rerun_skips_every_piece_and_regenerates_the_tables_byte_for_byte(smoke_study, monkeypatch):
    study, readme = smoke_study
    before, text = _digests(study.results), readme.read_text()
    assert len(before) > 10

    def refuse(self, kind, name):
        raise AssertionError(f"finished piece {kind} {name} was run again")

    monkeypatch.setattr(R.Study, "run_piece", refuse)
    S.run_study("smoke", study.results, study.work, log=lambda _: None)
    S.report(study, readme)
    assert _digests(study.results) == before and readme.read_text() == text
    assert f"{S.REPORT}" in before  # the full report is one of the regenerated files
    S.write_documents(study, readme)  # the documents alone, from the stored tables: the same bytes
    assert _digests(study.results) == before and readme.read_text() == text


def test_the_committed_report_and_readme_section_regenerate_from_the_committed_tables(tmp_path):
    """``results/study/README.md`` and the README's study section are exactly what :func:`write_documents` writes
    from the committed rows (``python -m dftnb.lab.study --documents``): nobody edited them by hand, and a
    regeneration would not change them."""
    results = tmp_path / "study"
    shutil.copytree(R.RESULTS, results)
    readme = tmp_path / "README.md"
    shutil.copy(R.REPO / "README.md", readme)
    report, section = S.write_documents(R.Study("study", results), readme)
    committed = (R.RESULTS / S.REPORT).read_text(encoding="utf-8")
    assert report == committed, "regenerate: python -m dftnb.lab.study --documents"
    assert readme.read_text(encoding="utf-8") == (R.REPO / "README.md").read_text(encoding="utf-8"), (
        "the README's study section differs from its regeneration: python -m dftnb.lab.study --documents")
    assert section.startswith(R.README_BEGIN) and section.endswith(R.README_END)


def test_an_interrupted_run_resumes_from_its_checkpoint_with_the_same_losses(smoke_study, tmp_path, monkeypatch):
    done, _ = smoke_study
    study = R.Study("smoke", tmp_path / "results", tmp_path / "work")
    shutil.copytree(done.results / "tuning", study.results / "tuning")
    make_trainer = R._trainer

    class StopAfterCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == study.profile.save_steps + 1:
                raise Interrupt

    def interrupted(*args, **kwargs):
        trainer, timer, tokenizer = make_trainer(*args, **kwargs)
        trainer.add_callback(StopAfterCheckpoint())
        return trainer, timer, tokenizer

    monkeypatch.setattr(R, "_trainer", interrupted)
    with pytest.raises(Interrupt):
        R.train_and_evaluate(study, "sft-s0")
    assert (study.work / "train" / "sft-s0" / f"checkpoint-{study.profile.save_steps}").is_dir()
    assert not (study.results / "runs" / "sft-s0" / "provenance.json").exists()
    monkeypatch.setattr(R, "_trainer", make_trainer)
    R.train_and_evaluate(study, "sft-s0")
    resumed = pd.read_csv(study.results / "runs" / "sft-s0" / "training.csv")
    whole = pd.read_csv(done.results / "runs" / "sft-s0" / "training.csv")
    assert list(resumed.step) == list(whole.step) == list(range(1, study.profile.steps + 1))
    assert resumed.loss.tolist() == pytest.approx(whole.loss.tolist(), rel=1e-4)


def test_a_model_not_kept_is_retrained_and_must_reproduce_its_committed_losses(smoke_study, tmp_path):
    """Weights are not committed, so a later piece (full MMLU) trains a finished run again on a new machine; the
    retrained model is used only when its loss curve matches the committed one."""
    done, _ = smoke_study
    study = R.Study("smoke", tmp_path / "results", tmp_path / "work")  # a new machine: no work folder
    shutil.copytree(done.results / "tuning", study.results / "tuning")
    shutil.copytree(done.results / "runs" / "sft-s0", study.results / "runs" / "sft-s0")
    model, _, worst = R.retrain_and_check(study, "sft-s0")
    assert worst <= 1e-3 and (study.work / "models" / "sft-s0" / "config.json").exists()
    committed = study.results / "runs" / "sft-s0" / "training.csv"
    # a kept model whose run has no loss history (the run was deleted to be redone) is trained again, not reused
    committed.rename(tmp_path / "training-before.csv")
    R.train_model(study, "sft-s0")
    losses = ["step", "loss", "divergence", "ce"]  # not "seconds": timings differ between runs
    assert_frame_equal(pd.read_csv(committed)[losses], pd.read_csv(tmp_path / "training-before.csv")[losses], rtol=1e-3)
    curve = pd.read_csv(committed)
    curve.loc[curve.index[-1], "loss"] *= 1.01  # a run that was trained differently
    curve.to_csv(committed, index=False)
    shutil.rmtree(study.work / "models" / "sft-s0")
    with pytest.raises(ValueError, match="does not reproduce its committed losses"):
        R.retrain_and_check(study, "sft-s0")
    assert not (study.work / "models" / "sft-s0").exists()  # a later piece must not pick up the rejected model
    with pytest.raises(FileNotFoundError, match="has not been trained by the study yet"):
        R.retrain_and_check(study, "sft-s1")


def test_seed_verdict_needs_every_seed():
    rows = pd.DataFrame([
        {"model": "DFT (a) s0", "criterion": "c", "difference": 1.0, "verdict": "supported"},
        {"model": "DFT (a) s1", "criterion": "c", "difference": 2.0, "verdict": "supported"},
        {"model": "DFT (b) s0", "criterion": "c", "difference": 1.0, "verdict": "supported"},
        {"model": "DFT (b) s1", "criterion": "c", "difference": -1.0, "verdict": "undetermined"},
        {"model": "DFT (c) s0", "criterion": "c", "difference": -3.0, "verdict": "refuted"},
    ])
    out = S.seed_verdict(rows).set_index("method")
    assert out.loc["DFT (a)", "verdict"] == "supported" and out.loc["DFT (a)", "seeds"] == 2
    assert out.loc["DFT (b)", "verdict"] == "undetermined"
    assert out.loc["DFT (c)", "verdict"] == "refuted" and out.loc["DFT (a)", "differences"] == "+1.00, +2.00"


def test_a_readme_without_the_markers_is_refused(smoke_study, tmp_path):
    study, _ = smoke_study
    readme = tmp_path / "README.md"
    readme.write_text("# nothing to replace\n")
    with pytest.raises(ValueError, match="study:begin"):
        S.report(study, readme)
    with pytest.raises(ValueError, match="study:begin"):
        S.write_documents(study, readme)
    assert readme.read_text() == "# nothing to replace\n"


def test_provenance_is_dirty_for_changed_code_not_for_changed_results(tmp_path, monkeypatch):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "dftnb").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "dftnb" / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "rows.csv").write_text("a\n1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    monkeypatch.setattr(R, "REPO", tmp_path)
    assert R.provenance()["dirty"] is False
    (tmp_path / "results" / "rows.csv").write_text("a\n1\n2\n")  # a study's partial rows growing
    assert R.provenance()["dirty"] is False
    (tmp_path / "dftnb" / "code.py").write_text("x = 2\n")
    assert R.provenance()["dirty"] is True


ABSOLUTE = re.compile(r"(/work/|/root/|/home/|/tmp/)")


def test_provenance_names_models_and_paths_without_absolute_paths(tiny, tmp_path, monkeypatch):
    from dftnb.lab.models import EMBEDDED
    from dftnb.target_cache import model_fingerprint

    monkeypatch.delenv("DFTNB_CACHE", raising=False)
    model, _ = tiny
    for path in (R.REPO / "results" / "mmlu" / "x.jsonl", tmp_path / "run" / "checkpoint-3", "/", "/tmp", "rel/x"):
        got = records.portable_path(path)
        assert not Path(got).is_absolute() and not ABSOLUTE.search(got), (path, got)
    assert records.portable_path(R.REPO / "results" / "mmlu" / "x.jsonl") == "results/mmlu/x.jsonl"
    monkeypatch.setenv("DFTNB_CACHE", str(tmp_path))
    assert records.portable_path(tmp_path / "study" / "models" / "sft-s0") == "$DFTNB_CACHE/study/models/sft-s0"
    monkeypatch.delenv("DFTNB_CACHE")

    record = records.model_record(model, "sft-s0")
    assert record == {"name": "sft-s0", "hash": model_fingerprint(model)} and len(record["hash"]) == 16
    assert records.model_record(model)["name"] == "llama"  # no name at all: its model type
    assert records.model_label(None, EMBEDDED) == EMBEDDED
    for name in (tmp_path / "sft-s0", str(tmp_path / "sft-s0"), R.REPO / ".cache" / "study" / "models" / "gem-s0"):
        label = records.model_label(model, name)
        assert not Path(label).is_absolute() and not ABSOLUTE.search(label), (name, label)
    assert records.model_label(model, "HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # a hub id as given

    argv = [str(records.PACKAGE / "lab" / "denoiser_curve.py"), "--results", str(tmp_path / "r"), f"--work={tmp_path / 'w'}"]
    assert records.portable_command(argv) == "python -m dftnb.lab.denoiser_curve --results r --work=w"
    monkeypatch.setattr(sys, "argv", ["/root/.venv/bin/pytest", str(R.REPO / "tests" / "test_study.py")])
    assert R.provenance()["command"] == "pytest tests/test_study.py"


def test_committed_results_record_no_absolute_local_path():
    """Results are committed: no file under results/ may name where it was computed (a model by name and hash,
    a path relative to the repository root; see dftnb.records)."""
    found = []
    for path in sorted((R.REPO / "results").rglob("*")):
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary (figures, npz)
            continue
        found += [f"{path.relative_to(R.REPO)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
                  for m in ABSOLUTE.finditer(text)][:3]
    assert not found, "absolute local paths in committed results:\n" + "\n".join(found)
