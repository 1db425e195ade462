"""The second edition (:mod:`dftnb.lab.frontier_study`) on the smoke profile: every target configuration is
built, measured and cached, the statistics order the known cases, the proxies pick the DFT runs by the stated rule,
every run and frontier point writes its files, a lost checkpoint is trained again and must reproduce the committed
losses, and a finished piece is not run again."""

import json

import pandas as pd
import pytest

from dftnb.lab import frontier_study as FS
from dftnb.target_statistics import COLUMNS


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    results, work = tmp_path_factory.mktemp("frontier"), tmp_path_factory.mktemp("frontier-work")
    logs = []
    FS.run("smoke", results, log=logs.append, work=work)
    return results, logs, work


def test_targets_piece_writes_every_configuration(smoke):
    results, logs, _ = smoke
    table = pd.read_csv(results / "targets.csv", index_col="config")
    profile = FS.PROFILES["smoke"]
    assert list(table.index) == FS.target_configs(profile)
    assert len(table.index) == len(profile.lams) * len(profile.target_temperatures) + 2
    assert set(COLUMNS) <= set(table.columns)
    prov = json.loads((results / "targets.json").read_text())
    assert prov["profile"] == "smoke" and prov["configs"] == list(table.index)
    assert any("targets targets done" in line for line in logs)


def test_statistics_order_the_known_cases(smoke):
    results, _, _ = smoke
    t = pd.read_csv(results / "targets.csv", index_col="config")
    # the model's own top-64 targets: KL to the model ~0 (the bucket reading of its own distribution)
    assert t.loc["self", "kl_to_model"] == pytest.approx(0.0, abs=1e-4)
    # more weight on the neighbours moves the target away from the model
    assert t.loc["knn-lam1-tau1", "kl_to_model"] > t.loc["knn-lam0.25-tau1", "kl_to_model"] > 1e-3
    # a target temperature above 1 flattens the target
    assert t.loc["knn-lam0.25-tau1.3", "entropy"] > t.loc["knn-lam0.25-tau1", "entropy"]
    # one forward pass of one model on the same rows: one model entropy for every configuration
    assert t["model_entropy"].nunique() == 1 and t["tokens"].nunique() == 1


def test_the_prefix_never_holds_a_training_row():
    study = FS.FrontierStudy("smoke")
    prefix = study.style_prefix()
    _, tokenizer = study.base_model()
    train = [tokenizer.decode(b) for b in study.blocks()["train"]]
    assert prefix.strip() and not any(prefix.split("\n\n")[0][:60] in row for row in train)


def test_a_finished_piece_is_skipped(smoke):
    results, _, work = smoke
    before = (results / "targets.csv").read_bytes()
    logs = []
    FS.run("smoke", results, log=logs.append, work=work)
    assert logs == [] and (results / "targets.csv").read_bytes() == before


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="profile must be one of"):
        FS.FrontierStudy("huge")


def test_proxies_and_the_pick_rule(smoke):
    results, _, _ = smoke
    profile = FS.PROFILES["smoke"]
    table = FS.proxy_table(results, profile)
    assert list(table.index) == FS.proxy_names(profile)
    assert (table["tokens"] > 0).all() and (table["kl_to_base"] >= 0).all()
    # the self-target control barely moves the model (its reverse KL gradient is ~0); SFT moves it
    assert table.loc["rkl-self", "kl_to_base"] < table.loc["sft", "kl_to_base"]
    picks = FS.picked_configs(results, profile)
    assert len(picks) == profile.picks and "sft" not in picks and not any(p.endswith("-self") for p in picks)
    ok = table[(table.nll_gain > 0) & (table.entropy_gain >= 0) & (table.objective != "sft")
               & (table.config != "self")]
    want = list(ok.sort_values("nll_gain", ascending=False, kind="stable").index[: profile.picks])
    assert picks[: len(want)] == want


def test_runs_and_points_follow_the_picks(smoke):
    results, _, _ = smoke
    profile = FS.PROFILES["smoke"]
    picks = FS.picked_configs(results, profile)
    runs = FS.run_names(profile, picks)
    assert runs[0] == "sft-s0" and {f"{p}-s0" for p in picks} <= set(runs)
    assert sum(r.startswith("sft-") for r in runs) == len(profile.sft_seeds)
    for run in runs:
        history = pd.read_csv(results / "runs" / run / "training.csv")
        assert list(history["step"]) == list(range(1, profile.steps + 1))
        for point in FS.point_names(profile, run):
            folder = results / "points" / point
            samples = json.loads((folder / "samples.json").read_text())
            assert sorted(map(float, samples)) == sorted(profile.eval_temperatures)
            assert all(len(groups) == 3 * profile.prompts_per_corpus and all(len(g) == profile.samples
                                                                               for g in groups)
                       for groups in samples.values())
            import numpy as np

            tokens = np.load(folder / "tokens.npz")
            assert tokens["in_domain_nll"].size > 0 and tokens["techdocs_nll"].size == tokens["techdocs_top1"].size
            scores = json.loads((folder / "scores.json").read_text())
            assert scores.keys() == samples.keys()
            for s in scores.values():
                assert len(s["sds_per_prompt"]) == 3 * profile.prompts_per_corpus
                assert s["sds"] == pytest.approx(np.mean(s["sds_per_prompt"]), abs=1e-5)
                outcomes = s["model_correct"] + s["human_correct"]
                assert all(0 <= x <= 1 for x in outcomes) and len(s["blind_per_seed"]) == len(s["blind_seeds"]) > 1
                assert np.mean(outcomes) == pytest.approx(s["blind_test"], abs=1e-5)
    assert any(p.endswith("@wise0.5") for p in FS.point_names(profile, "sft-s0"))
    assert not any("wise" in p for p in FS.point_names(profile, f"{picks[0]}-s0"))


def test_a_missing_checkpoint_is_retrained_and_must_reproduce_its_losses(smoke):
    import shutil

    results, _, work = smoke
    study = FS.FrontierStudy("smoke", results, work)
    shutil.rmtree(study.work() / "models" / "sft-s1", ignore_errors=True)
    model, _, seed = study.point_model("sft-s1@2")  # trained again, losses checked against the committed curve
    assert seed == 1 and (study.checkpoint_dir("sft-s1", 2) / "config.json").exists()
    history = results / "runs" / "sft-s1" / "training.csv"
    frame = pd.read_csv(history)
    frame["loss"] *= 1.01
    frame.to_csv(history, index=False)
    shutil.rmtree(study.work() / "models" / "sft-s1")
    with pytest.raises(ValueError, match="does not reproduce its committed losses"):
        study.point_model("sft-s1@4")
    assert not (study.work() / "models" / "sft-s1").exists()


def test_the_report_is_written_from_the_stored_files_byte_for_byte(smoke, tmp_path):
    from dftnb.lab import frontier_report as FR

    results, _, work = smoke
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n\n{FR.README_BEGIN}\nold\n{FR.README_END}\n\nrest\n", encoding="utf-8")
    FS.run("smoke", results, log=lambda line: None, work=work, readme=readme, report_only=True)
    files = sorted(p for p in results.rglob("*") if p.is_file() and p.suffix in (".md", ".csv", ".png"))
    first = {p: p.read_bytes() for p in files} | {readme: readme.read_bytes()}
    verdicts = pd.read_csv(results / "tables" / "verdicts_full.csv")
    assert set(verdicts["verdict"]) <= {"supported", "refuted", "undetermined"}
    assert (verdicts["comparison"] == FR.DIVERSITY).any()
    assert (results / "figures" / "frontiers.png").exists()
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("intro") and text.endswith("rest\n") and "old" not in text and "pieces of the" in text
    FS.run("smoke", results, log=lambda line: None, work=work, readme=readme, report_only=True)
    assert {p: p.read_bytes() for p in files} | {readme: readme.read_bytes()} == first
    readme.write_text("no markers\n", encoding="utf-8")
    with pytest.raises(ValueError, match="markers"):
        FS.run("smoke", results, log=lambda line: None, work=work, readme=readme, report_only=True)


def test_the_committed_report_is_what_the_stored_files_give(tmp_path):
    """``make study`` on a clone with the committed pieces rewrites results/study-2's tables, report and the
    README section byte for byte."""
    import shutil
    import subprocess

    from dftnb.lab import frontier_report as FR
    from dftnb.lab.runner import REPO

    committed = REPO / "results" / "study-2"
    if not (committed / "README.md").exists():
        pytest.skip("no second-edition report committed yet")
    results = tmp_path / "study-2"
    tracked = subprocess.run(["git", "ls-files", "results/study-2"], cwd=REPO, capture_output=True, text=True)
    paths = [REPO / line for line in tracked.stdout.splitlines()] if tracked.returncode == 0 else [
        p for p in committed.rglob("*") if p.is_file()]  # the committed pieces only, not those a running study adds
    for path in paths:
        (results / path.relative_to(committed)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, results / path.relative_to(committed))
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    FR.write_report(FS.FrontierStudy("study", results), readme)
    for path in sorted(paths):
        if path.name == "README.md" or "tables" in path.parts or "figures" in path.parts:
            assert (results / path.relative_to(committed)).read_bytes() == path.read_bytes(), path
    assert readme.read_bytes() == (REPO / "README.md").read_bytes()
