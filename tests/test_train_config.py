"""The training CLI's YAML config parsed into typed dataclasses (dftnb.lab.train_config)."""

import math
import re
from pathlib import Path

import pytest
import yaml

from dftnb.denoise_training import DenoiserConfig
from dftnb.lab.train_config import DataConfig, TargetsConfig, TrainConfig, load_config
from dftnb.trainer import METHODS, DFTConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke_tiny.yaml"
DENOISER = Path(__file__).resolve().parents[1] / "configs" / "denoiser_dft.yaml"


def _same(parsed, written) -> bool:
    if isinstance(written, float):
        return math.isclose(parsed, written)
    return parsed == written


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_parses_into_the_dataclasses(path):
    written = yaml.safe_load(path.read_text())
    config = load_config(path)
    assert isinstance(config, TrainConfig) and isinstance(config.data, DataConfig)
    assert isinstance(config.objective, DFTConfig)
    assert config.objective.divergence == METHODS.get(written["method"], written["method"])
    for key, value in written.items():  # every value the file writes reaches its typed field
        if key not in ("data", "denoiser"):
            assert _same(getattr(config, key), value), key
    for key, value in written["data"].items():
        if key != "targets":
            assert _same(getattr(config.data, key), value), f"data.{key}"
    for key, value in (written.get("dft") or {}).items():
        assert _same(getattr(config.objective, key), value), f"dft.{key}"
    targets = written["data"].get("targets")
    assert (config.data.targets is None) == (targets is None)
    if targets is not None:
        assert isinstance(config.data.targets, TargetsConfig)
        assert all(_same(getattr(config.data.targets, k), v) for k, v in targets.items())
    if "denoiser" in written:
        assert isinstance(config.denoiser, DenoiserConfig)
        assert all(_same(getattr(config.denoiser, k), v) for k, v in written["denoiser"].items())
    assert config["data"]["block_size"] == config.data.block_size  # read by key too, as the YAML mapping


def test_defaults_fill_the_keys_a_file_leaves_out():
    config = load_config(SMOKE)  # writes neither dtype, split, save_final nor the targets' temperature
    assert (config.dtype, config.data.split, config.save_final, config.seed) == ("float32", "train", True, 0)
    assert config.data.targets.temperature == 1.0 and config.data.targets.rebuild == "auto"
    assert config.resume_from_checkpoint is None and config.denoiser is None


def test_overrides_set_typed_fields():
    config = load_config(SMOKE, ["training.max_steps=7", "dft.temperature=2", "save_final=false",
                                 "training.report_to=[tensorboard]", "data.max_blocks=null", "data.split=validation",
                                 "data.targets.temperature=0.5", "resume_from_checkpoint=true"])
    assert config.training["max_steps"] == 7 and type(config.training["max_steps"]) is int
    assert config.objective.temperature == 2.0 and type(config.objective.temperature) is float  # int -> float
    assert config.data.targets.temperature == 0.5
    assert config.save_final is False and config.resume_from_checkpoint is True
    assert config.training["report_to"] == ["tensorboard"]
    assert config.data.max_blocks is None and config.data.split == "validation"
    denoiser = load_config(DENOISER, ["denoiser.K=4", "denoiser.max_prefix=null"]).denoiser
    assert denoiser.K == 4.0 and type(denoiser.K) is float and denoiser.max_prefix is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.blocksize=3", r"unknown key\(s\) \['blocksize'\] in data; allowed: \[.*'block_size'.*\]"),
        ("denoiser={K: 5.0, blocks: 8}", r"unknown key\(s\) \['blocks'\] in denoiser; allowed: \[.*'block_size'"),
        ("dft.divergence=jsd", r"unknown key\(s\) \['divergence'\] in dft; allowed: \[.*'temperature'"),
        ("data.targets.k=2.5", r"data.targets.k must be an integer, got 2.5 \(float\)"),
        ("data.block_size=true", r"data.block_size must be an integer, got True \(bool\)"),
        ("dtype=float64", r"dtype must be one of \['bfloat16', 'float16', 'float32'\], got 'float64'"),
        ("data.corpus=null", r"data needs exactly one of 'dataset' .* or 'corpus'"),
        ("data=3", r"data must be a mapping, got 3 \(int\)"),
        ("data.targets=[k]", r"data.targets must be a mapping or null, got \[.k.\] \(list\)"),
        ("dft=[1]", r"dft must be a mapping, got \[1\]"),
        ("training.report_to=3", r"training.report_to must be null or a string or a list, got 3"),
        ("denoiser.K='5'", r"denoiser.K must be a number, got '5' \(str\); it is quoted.*remove the quotes"),
    ],
)
def test_unknown_keys_and_wrong_types_are_named(override, message):
    path = DENOISER if override.startswith("denoiser.") else SMOKE
    with pytest.raises(ValueError, match=message):
        load_config(path, [override])


def test_a_missing_required_key_is_named(tmp_path):
    written = yaml.safe_load(SMOKE.read_text())
    del written["method"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(written))
    with pytest.raises(ValueError, match=re.escape("config needs a 'method' key")):
        load_config(path)

