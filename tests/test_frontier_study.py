"""The second edition's targets piece (:mod:`dftnb.lab.frontier_study`) on the smoke profile: every configuration is
built, measured and cached, the statistics order the known cases, and a finished piece is not run again."""

import json

import pandas as pd
import pytest

from dftnb.lab import frontier_study as FS
from dftnb.target_statistics import COLUMNS


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    results = tmp_path_factory.mktemp("frontier")
    logs = []
    FS.run("smoke", results, log=logs.append)
    return results, logs


def test_targets_piece_writes_every_configuration(smoke):
    results, logs = smoke
    table = pd.read_csv(results / "targets.csv", index_col="config")
    profile = FS.PROFILES["smoke"]
    assert list(table.index) == FS.target_configs(profile)
    assert len(table.index) == len(profile.lams) * len(profile.target_temperatures) + 2
    assert set(COLUMNS) <= set(table.columns)
    prov = json.loads((results / "targets.json").read_text())
    assert prov["profile"] == "smoke" and prov["configs"] == list(table.index)
    assert any("targets targets done" in line for line in logs)


def test_statistics_order_the_known_cases(smoke):
    results, _ = smoke
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
    results, _ = smoke
    before = (results / "targets.csv").read_bytes()
    logs = []
    FS.run("smoke", results, log=logs.append)
    assert logs == [] and (results / "targets.csv").read_bytes() == before


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="profile must be one of"):
        FS.FrontierStudy("huge")
