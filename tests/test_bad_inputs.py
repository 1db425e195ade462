"""Bad inputs that used to fail silently or with a raw library error (docs/design.md, "Bad inputs").

Samplers with NaN/Inf parameters or a row of scores with nothing left to sample; a truncated, bit-flipped or
foreign target cache; a model fingerprint that moved with a runtime flag; an interrupted checkpoint save; a finished
output directory; and CLI configs with wrong types. Each test names the bad input and the error it must now give.
"""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from dftnb import sampling as S
from dftnb import target_cache
from dftnb import targets as T
from dftnb.lab.models import tiny_model

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke_tiny.yaml"
NAN, INF = float("nan"), float("inf")
TEXTS = ["Now, fair Hippolyta, our nuptial hour draws on apace.", "To be, or not to be, that is the question."]


# -- samplers --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: S.DynamicTemperatureLogitsProcessor(0.5, NAN), "max_temperature"),
        (lambda: S.DynamicTemperatureLogitsProcessor(0.5, INF), "max_temperature"),
        (lambda: S.DynamicTemperatureLogitsProcessor(INF, INF), "min_temperature"),
        (lambda: S.DynamicTemperatureLogitsProcessor("hot", 1.0), "min_temperature"),
        (lambda: S.EDTLogitsProcessor(temperature0=INF), "temperature0"),
        (lambda: S.TopNSigmaLogitsProcessor(n=INF), "n"),
        (lambda: S.MirostatV2LogitsProcessor(tau=INF), "tau"),
        (lambda: S.MirostatV2LogitsProcessor(eta=INF), "eta"),
        (lambda: S.MirostatV2LogitsProcessor(tau=True), "tau"),
        (lambda: S.TargetEntropyLogitsProcessor(INF), "target_entropy"),
        (lambda: S.TargetEntropyLogitsProcessor(1.0, max_temperature=INF), "max_temperature"),
        (lambda: S.TargetEntropyLogitsProcessor(1.0, tolerance=INF), "tolerance"),
        (lambda: S.TargetEntropyLogitsProcessor(1.0, max_iter=0), "max_iter"),
        (lambda: S.TargetEntropyLogitsProcessor(1.0, max_iter=-3), "max_iter"),
        (lambda: S.TargetEntropyLogitsProcessor(1.0, max_iter=2.5), "max_iter"),
        (lambda: S.sampler_kwargs("temperature", temperature=INF), "temperature"),
        (lambda: S.sampler_kwargs("temperature", temperature="0.7"), "temperature"),
        (lambda: S.sampler_kwargs("top_p", top_p=0.9, temperature=INF), "temperature"),
        (lambda: S.sampler_kwargs("min_p", min_p=0.1, temperature=INF), "temperature"),
        (lambda: S.sampler_kwargs("top_nsigma", n=1.0, temperature=INF), "temperature"),
        (lambda: S.sampler_kwargs("dynatemp", min_temperature=0.5, max_temperature=NAN), "max_temperature"),
        (lambda: S.sampler_kwargs("mirostat", tau=5.0, eta=NAN), "eta"),
    ],
)
def test_sampler_parameters_reject_nan_inf_and_non_numbers(make, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        make()


PROCESSORS = [
    lambda: S.DynamicTemperatureLogitsProcessor(0.5, 1.5),
    lambda: S.EDTLogitsProcessor(),
    lambda: S.TopNSigmaLogitsProcessor(1.0),
    lambda: S.MirostatV2LogitsProcessor(),
    lambda: S.TargetEntropyLogitsProcessor(0.5),
]


@pytest.mark.parametrize("make", PROCESSORS)
def test_row_with_no_finite_score_is_named(make):
    scores = torch.tensor([[0.0, 1.0, -INF, 2.0], [-INF, -INF, -INF, -INF], [1.0, 1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"row 1 .*no finite score.*model's logits or an earlier processor"):
        make()(torch.zeros((3, 2), dtype=torch.long), scores)
    # rows with some tokens filtered still go through
    out = make()(torch.zeros((2, 2), dtype=torch.long), scores[[0, 2]])
    assert torch.isfinite(out.max(-1).values).all()


# -- target cache ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A target cache built once (k=4, two texts); tests work on copies of it."""
    model, tok = tiny_model(seed=0)
    meta = target_cache.target_metadata(model, tok, source="reference", corpus="toy", k=4, texts=2)
    path = tmp_path_factory.mktemp("cache") / "toy"
    target_cache.build_or_load(path, meta, lambda: T.from_reference_model(model, tok, TEXTS, k=4))
    return model, tok, meta, path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _arrow(path: Path) -> Path:
    (arrow,) = sorted(path.glob("*.arrow"))
    return arrow


def _counting_builder(model, tok, calls):
    def build():
        calls.append(1)
        return T.from_reference_model(model, tok, TEXTS, k=4)

    return build


def test_truncated_arrow_file_is_named_and_rebuilt(tiny_cache, tmp_path):
    model, tok, meta, original = tiny_cache
    path = _copy(original, tmp_path / "toy")
    arrow = _arrow(path)
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    calls = []
    with pytest.raises(target_cache.StaleTargetCacheError, match=rf"{arrow.name}.*corrupt.*rebuild='auto'"):
        target_cache.build_or_load(path, meta, _counting_builder(model, tok, calls), rebuild="never")
    assert calls == [] and arrow.stat().st_size < _arrow(original).stat().st_size  # refused, nothing touched
    with pytest.raises(target_cache.StaleTargetCacheError, match=rf"{arrow.name}.*corrupt"):
        target_cache.load_target_dataset(path)  # the CLI's data.dataset path
    with pytest.warns(UserWarning, match=rf"rebuilding the target cache.*{arrow.name}"):
        rebuilt = target_cache.build_or_load(path, meta, _counting_builder(model, tok, calls))
    assert calls == [1]
    assert rebuilt["target_logprobs"] == target_cache.build_or_load(original, meta, None)["target_logprobs"]


def test_truncated_arrow_without_checksum_gives_a_clear_error(tiny_cache, tmp_path):
    # a dataset saved by hand (no sidecar): no checksum to compare, but the read error names the file and the fix
    path = tmp_path / "plain"
    target_cache.build_or_load(tiny_cache[3], tiny_cache[2], None).save_to_disk(str(path))
    arrow = _arrow(path)
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    message = rf"cannot read the saved dataset {re.escape(str(path))} .*truncated or corrupt.*save it again"
    with pytest.raises(target_cache.CorruptTargetCacheError, match=message):
        target_cache.load_target_dataset(path)


def test_flipped_bytes_are_caught_by_the_checksum(tiny_cache, tmp_path):
    model, tok, meta, original = tiny_cache
    side = json.loads((original / target_cache.SIDECAR).read_text())
    arrow = _arrow(original)
    assert side["files"][arrow.name] == target_cache.file_sha256(arrow)  # recorded when saved
    path = _copy(original, tmp_path / "toy")
    data = bytearray(_arrow(path).read_bytes())
    data[-40] ^= 0x55  # inside the float16 log-probabilities: Arrow itself loads this without complaint
    _arrow(path).write_bytes(bytes(data))
    calls = []
    with pytest.raises(target_cache.StaleTargetCacheError, match=rf"{arrow.name}.*sha256.*rebuild='auto'"):
        target_cache.build_or_load(path, meta, _counting_builder(model, tok, calls), rebuild="never")
    with pytest.warns(UserWarning, match=rf"rebuilding the target cache.*{arrow.name}"):
        rebuilt = target_cache.build_or_load(path, meta, _counting_builder(model, tok, calls))
    assert calls == [1]
    assert rebuilt["target_logprobs"] == target_cache.build_or_load(original, meta, None)["target_logprobs"]


def test_unreadable_or_checksumless_sidecar(tiny_cache, tmp_path):
    model, tok, meta, original = tiny_cache
    broken = _copy(original, tmp_path / "broken")
    (broken / target_cache.SIDECAR).write_text('{"metadata": {"k": 4')  # an interrupted write
    old = _copy(original, tmp_path / "old")
    side = json.loads((old / target_cache.SIDECAR).read_text())
    del side["files"]  # as written before checksums were recorded
    (old / target_cache.SIDECAR).write_text(json.dumps(side))
    calls = []
    with pytest.raises(target_cache.StaleTargetCacheError, match=rf"{target_cache.SIDECAR}.*not valid JSON"):
        target_cache.build_or_load(broken, meta, _counting_builder(model, tok, calls), rebuild="never")
    with pytest.raises(target_cache.StaleTargetCacheError, match="no checksum.*rebuild='auto'"):
        target_cache.build_or_load(old, meta, _counting_builder(model, tok, calls), rebuild="never")
    assert calls == []
    with pytest.warns(UserWarning, match="rebuilding the target cache.*not valid JSON"):
        target_cache.build_or_load(broken, meta, _counting_builder(model, tok, calls))
    with pytest.warns(UserWarning, match="rebuilding the target cache.*no checksum"):
        target_cache.build_or_load(old, meta, _counting_builder(model, tok, calls))
    assert calls == [1, 1] and "files" in json.loads((old / target_cache.SIDECAR).read_text())


def test_model_fingerprint_ignores_use_cache_but_not_weights():
    model, _ = tiny_model(seed=0)
    before = target_cache.model_fingerprint(model)
    model.config.use_cache = not model.config.use_cache  # what Trainer does under gradient checkpointing
    model.config.output_hidden_states = True
    assert target_cache.model_fingerprint(model) == before
    with torch.no_grad():
        model.model.norm.weight[0] += 1e-3
    assert target_cache.model_fingerprint(model) != before


def _same_size_other_tokenizer(tok):
    """The tokenizer with two token ids swapped: same vocabulary size, different token -> id map."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    a, b = tok.convert_ids_to_tokens([1000, 1001])
    vocab[a], vocab[b] = vocab[b], vocab[a]
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), pad_token=tok.pad_token,
                                    eos_token=tok.eos_token)
    assert len(other) == len(tok) and target_cache.tokenizer_hash(other) != target_cache.tokenizer_hash(tok)
    return other


def test_build_trainer_refuses_targets_of_another_tokenizer(tiny_cache, tmp_path):
    from dftnb.trainer import DFTConfig, build_trainer, default_training_args

    model, tok, meta, original = tiny_cache
    dataset = target_cache.build_or_load(original, meta, None)
    assert target_cache.target_info(dataset)["tokenizer_hash"] == target_cache.tokenizer_hash(tok)
    args = default_training_args(tmp_path / "run", max_steps=1)
    other = _same_size_other_tokenizer(tok)
    with pytest.raises(ValueError, match="another tokenizer of the same vocabulary size.*rebuild the targets"):
        build_trainer(model, other, dataset, DFTConfig(), args)
    build_trainer(model, tok, dataset, DFTConfig(), args)  # the tokenizer it was built with is accepted
    direct = T.from_reference_model(model, tok, TEXTS, k=4)  # built without the cache: the builder records the hash
    with pytest.raises(ValueError, match="another tokenizer of the same vocabulary size"):
        build_trainer(model, other, direct, DFTConfig(), args)
    with pytest.warns(UserWarning, match="records no tokenizer hash"):  # rows assembled by hand: no record
        build_trainer(model, other, _without_tokenizer_hash(direct), DFTConfig(), args)


def _without_tokenizer_hash(dataset):
    info = target_cache.target_info(dataset)
    del info["tokenizer_hash"]
    dataset.info.description = json.dumps({"dftnb_target": info})
    return dataset


# -- the training CLI ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The exact command of the report: two --set flags, 3 steps into a fresh output_dir."""
    from dftnb.lab.train import main

    out = tmp_path_factory.mktemp("cli") / "run"
    main(["--config", str(SMOKE), "--set", "training.max_steps=3", "--set", f"training.output_dir={out}"])
    return out


def _steps(output_dir: Path) -> list[int]:
    history = json.loads((output_dir / "log_history.json").read_text())
    return [r["step"] for r in history if "loss" in r and "train_runtime" not in r]


def test_repeated_set_flags_all_apply(finished_run):
    assert _steps(finished_run) == [1, 2, 3]  # max_steps=3 from the first --set, output_dir from the second
    assert (finished_run / "final" / "model.safetensors").exists()


def test_finished_output_dir_is_refused_without_overwrite(finished_run, tmp_path):
    from dftnb.lab.train import main

    out = _copy(finished_run, tmp_path / "run")
    stamp = (out / "log_history.json").stat().st_mtime_ns
    command = ["--config", str(SMOKE), "--set", "training.max_steps=2", "--set", f"training.output_dir={out}"]
    with pytest.raises(FileExistsError, match=r"already holds a run \(checkpoint-2.*--overwrite.*--resume"):
        main(command)
    assert (out / "log_history.json").stat().st_mtime_ns == stamp  # nothing written
    with pytest.raises(ValueError, match="--resume continues the run.*--overwrite deletes it"):
        main([*command, "--overwrite", "--resume"])
    main([*command, "--overwrite"])
    assert _steps(out) == [1, 2] and not (out / "checkpoint-3").exists()  # the old run's later checkpoint is gone


def _break_checkpoints(out: Path) -> str:
    """Two interrupted saves after the last complete checkpoint: checkpoint-7 lost its trainer_state.json,
    checkpoint-9 has a truncated model file. Returns the name of the last complete one."""
    last = max((p for p in out.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
    shutil.copytree(last, out / "checkpoint-7")
    (out / "checkpoint-7" / "trainer_state.json").unlink()
    shutil.copytree(last, out / "checkpoint-9")
    weights = out / "checkpoint-9" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    return last.name


def test_resume_skips_incomplete_checkpoints(finished_run, tmp_path, capsys):
    from dftnb.lab.train import main

    out = _copy(finished_run, tmp_path / "run")
    last = _break_checkpoints(out)
    main(["--config", str(SMOKE), "--set", "training.max_steps=5", "--set", f"training.output_dir={out}",
          "--resume"])
    err = capsys.readouterr().err
    assert "skipped checkpoint-9: model.safetensors is truncated" in err
    assert "skipped checkpoint-7: it has no trainer_state.json" in err
    assert f"resuming from {last}" in err
    assert _steps(out) == [1, 2, 3, 4, 5]


def test_resume_errors_name_the_checkpoint(finished_run, tmp_path):
    from dftnb.lab.train import resolve_resume

    out = _copy(finished_run, tmp_path / "run")
    last = _break_checkpoints(out)
    with pytest.raises(ValueError, match=rf"checkpoint-9 is incomplete.*model.safetensors is truncated.*{last}"):
        resolve_resume(str(out / "checkpoint-9"), out)
    with pytest.raises(FileNotFoundError, match="no checkpoint-\\* folder.*without --resume"):
        resolve_resume(True, tmp_path / "empty")
    for complete in set(out.glob("checkpoint-*")) - {out / "checkpoint-7", out / "checkpoint-9"}:
        shutil.rmtree(complete)
    with pytest.raises(ValueError, match="none of the 2 checkpoints.*is complete.*--overwrite"):
        resolve_resume(True, out)


def test_cli_says_when_the_tokenizer_cannot_be_checked(tiny_cache, tmp_path, capsys):
    from dftnb.lab.train import main

    model, tok, _, _ = tiny_cache
    _without_tokenizer_hash(T.from_reference_model(model, tok, TEXTS, k=4)).save_to_disk(str(tmp_path / "data"))
    main(["--config", str(SMOKE), "--set", "data={dataset: " + str(tmp_path / "data") + "}", "--set",
          "training.max_steps=1", "--set", f"training.output_dir={tmp_path / 'run'}", "--set", "save_final=false"])
    assert "records no tokenizer hash" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.max_steps=five", r"training.max_steps must be an integer, got 'five'"),
        ("training.learning_rate=1e-3", r"training.learning_rate must be a number, got '1e-3'.*1.0e-3"),
        ("training.output_dir=5", r"training.output_dir must be a string"),
        ("training.use_cpu=maybe", r"training.use_cpu must be true or false"),
        ("data.targets.k=sixteen", r"data.targets.k must be an integer, got 'sixteen'"),
        ("data.targets.k=0", r"data.targets.k must be >= 1"),
        ('save_final="no"', r"save_final must be true or false, got 'no'"),
        ("seed=abc", r"seed must be an integer"),
        ("data.split=tran", r"data.split must be one of \['test', 'train', 'validation'\], got 'tran'"),
        ("data.corpus=shakespear", r"data.corpus must be one of"),
        ("data.max_blocks=0", r"data.max_blocks must be >= 1 \(or null for all blocks\), got 0"),
        ("data.block_size=big", r"data.block_size must be an integer"),
        ("data.block_size=1", r"data.block_size must be >= 2"),
        ("data.targets.rebuild=sometimes", r"data.targets.rebuild must be one of"),
        ("data.targets.temperature=hot", r"data.targets.temperature must be a number"),
        ("dft.temperature=hot", r"dft.temperature must be a number, got 'hot'"),
        ("dft.chunk_size=1.5", r"dft.chunk_size must be an integer, got 1.5"),
        ("dft.log_stats=maybe", r"dft.log_stats must be true or false"),
        ("dtype=[1]", r"dtype must be one of"),
        ("model=3", r"model must be a string"),
        ("resume_from_checkpoint=3", r"resume_from_checkpoint must be true, false, null or a checkpoint folder"),
    ],
)
def test_config_types_are_checked_with_the_key_named(override, message):
    from dftnb.lab.train import load_config

    with pytest.raises(ValueError, match=message):
        load_config(SMOKE, [override])


def test_set_into_a_non_mapping_is_refused():
    from dftnb.lab.train import load_config

    with pytest.raises(ValueError, match=r"--set training.max_steps=3: training is 3, not a mapping"):
        load_config(SMOKE, ["training=3", "training.max_steps=3"])


def test_set_flags_accumulate_in_the_parser():
    from dftnb.lab.train import parse_args

    args = parse_args(["--config", "c.yaml", "--set", "a=1", "--set", "b=2", "c=3"])
    assert args.set == ["a=1", "b=2", "c=3"] and not args.overwrite
    assert parse_args(["--config", "c.yaml"]).set == []


def test_config_values_are_not_coerced():
    from dftnb.lab.train import load_config

    config = load_config(SMOKE, ["training.max_steps=3", "data.max_blocks=null"])
    assert config["training"]["max_steps"] == 3 and config["data"]["max_blocks"] is None
    assert math.isclose(config["training"]["learning_rate"], 1e-3)


# -- the notebook runner: another profile's (or a hand-made) chapter in --out ----------------------------------------
def _executed_copy(folder: Path, name: str, profile: str | None) -> Path:
    """A chapter as the runner leaves it: papermill records the runner's parameters in the metadata (or, with
    ``profile=None``, a notebook saved by hand, without that record)."""
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    if profile is not None:
        nb["metadata"]["papermill"] = {"parameters": {"profile": profile, "out_dir": str(folder)}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(nb, indent=1))
    return path


@pytest.fixture
def executed(monkeypatch):
    """papermill.execute_notebook replaced by a recorder: the runner's checks run, no kernel starts."""
    import papermill

    from dftnb.lab import runner

    calls = []
    monkeypatch.setenv(runner.HEADLESS_ENV, "1")
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, dst, **kw: calls.append(Path(dst).name))
    return calls


def test_runner_refuses_to_overwrite_another_profiles_run(tmp_path, executed):
    from dftnb.lab import runner

    out = tmp_path / "outputs"
    earlier = _executed_copy(out, "00_tour.ipynb", "default")  # what `make run` left there
    before = earlier.read_bytes()
    message = (rf"{re.escape(str(earlier))} holds an executed run of profile 'default'.*profile 'smoke'.*"
               r"another folder \(--out .*outputs-smoke\) or pass --overwrite")
    with pytest.raises(SystemExit, match=message):
        runner.main(["--profile", "smoke", "--only", "00", "--out", str(out)])
    with pytest.raises(SystemExit, match="holds an executed run of profile 'default'"):  # any chapter of it counts
        runner.main(["--profile", "smoke", "--only", "01", "--out", str(out)])
    assert executed == [] and earlier.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["00_tour.ipynb"]  # no timings, figures or tables either
    runner.main(["--profile", "smoke", "--only", "00", "--out", str(out), "--overwrite"])
    assert executed == ["00_tour.ipynb"]


def test_runner_refuses_to_overwrite_a_notebook_it_did_not_write(tmp_path, executed):
    from dftnb.lab import runner

    out = tmp_path / "build"
    mine = _executed_copy(out, "00_tour.ipynb", None)
    before = mine.read_bytes()
    with pytest.raises(SystemExit, match=r"00_tour.ipynb is not a chapter executed by the runner.*--overwrite"):
        runner.main(["--profile", "smoke", "--only", "00", "--out", str(out)])
    assert executed == [] and mine.read_bytes() == before
    runner.main(["--profile", "smoke", "--only", "01", "--out", str(out)])  # another chapter: nothing overwritten
    assert executed == ["01_target_construction.ipynb"]


def test_runner_reruns_a_profile_into_its_own_folder(tmp_path, executed):
    """`make run` / `make smoke` on a fresh clone (no folder, an empty one) and again into their own folder."""
    from dftnb.lab import runner

    runner.main(["--profile", "default", "--only", "00", "--out", str(tmp_path / "fresh")])
    (tmp_path / "empty").mkdir()
    runner.main(["--profile", "default", "--only", "00", "--out", str(tmp_path / "empty")])
    _executed_copy(tmp_path / "build", "00_tour.ipynb", "smoke")
    _executed_copy(tmp_path / "build", "01_target_construction.ipynb", "smoke")
    runner.main(["--profile", "smoke", "--only", "00", "01", "--out", str(tmp_path / "build")])
    assert executed == ["00_tour.ipynb", "00_tour.ipynb", "00_tour.ipynb", "01_target_construction.ipynb"]
    assert "--overwrite" in (ROOT / "Makefile").read_text().split("\nsmoke:")[1].split("\n\n")[0]  # build/: scratch


# -- config values that trained silently wrong or failed in the first step --------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["training.max_steps=0"], r"training.max_steps must be >= 1.*remove max_steps \(or --set training.max_steps=null"),
        (["training.max_steps=-5"], r"training.max_steps must be >= 1"),
        (["training.max_steps=null", "training.num_train_epochs=0"], r"training.num_train_epochs must be > 0"),
        (["training.per_device_train_batch_size=0"], r"training.per_device_train_batch_size must be >= 1, got 0"),
        (["training.gradient_accumulation_steps=0"], r"training.gradient_accumulation_steps must be >= 1, got 0"),
        (["training.learning_rate=-1"], r"training.learning_rate must be a finite number > 0 \(e.g. 1.0e-4\), got -1"),
        (["training.learning_rate=.nan"], r"training.learning_rate must be a finite number, got nan"),
        (["training.max_grad_norm=.nan"], r"training.max_grad_norm must be a finite number, got nan"),
        (["training.max_step=3"], r"unknown key 'max_step' in training.*did you mean 'max_steps'"),
        (["data.targets.temperature=.inf"], r"data.targets.temperature must be a finite number > 0.*got inf"),
        (["dft.temperature=.inf"], r"dft section: temperature must be a finite number > 0.*got inf"),
    ],
)
def test_config_values_are_checked_before_any_work(overrides, message):
    from dftnb.lab.train import load_config

    with pytest.raises(ValueError, match=message):
        load_config(SMOKE, overrides)


def test_max_steps_null_trains_by_epochs():
    from dftnb.lab.train import load_config, training_arguments

    config = load_config(SMOKE, ["training.max_steps=null", "training.num_train_epochs=2"])
    args = training_arguments(config["training"])
    assert args.max_steps == -1 and args.num_train_epochs == 2


def test_dft_config_refuses_an_infinite_temperature():
    from dftnb.trainer import DFTConfig

    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        DFTConfig(temperature=INF)


# -- YAML syntax errors name the file (or the --set item), the line and the fix -------------------------------------
def test_malformed_yaml_names_the_file_and_line(tmp_path):
    from dftnb.lab.train import load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nmethod: sft\ndata:\n  corpus: [shakespeare\ntraining: {output_dir: x}\n")
    with pytest.raises(ValueError, match=rf"config {re.escape(str(bad))} is not valid YAML: .*line 4, column 11 "
                                         r"'  corpus: \[shakespeare'.*fix the YAML there"):
        load_config(bad)
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("model: tiny\nmethod: sft\ndata:\n\tcorpus: shakespeare\n")
    with pytest.raises(ValueError, match=rf"config {re.escape(str(tabs))} is not valid YAML: .*at line 4, column 1.*"
                                         "indent with spaces: YAML does not allow tabs"):
        load_config(tabs)


def test_malformed_set_value_names_the_item():
    from dftnb.lab.train import load_config

    with pytest.raises(ValueError, match=r"--set training.max_steps=\[1: the value is not valid YAML: .*column 3"):
        load_config(SMOKE, ["training.max_steps=[1"])


# -- the CLI: checked against the loaded model before targets are built; output_dir a file ---------------------------
@pytest.fixture
def no_targets(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("targets were built before the config was checked against the model")

    monkeypatch.setattr(T, "from_reference_model", refuse)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.block_size=100000", r"data.block_size 100000 exceeds the model's context length "
                                   r"\(max_position_embeddings = 2048\); lower data.block_size to at most 2048"),
        ("data.targets.k=100000", r"data.targets.k 100000 exceeds the model's vocabulary size \(49152\)"),
    ],
)
def test_cli_checks_the_config_against_the_model_first(tmp_path, no_targets, override, message):
    from dftnb.lab.train import main

    with pytest.raises(ValueError, match=message):
        main(["--config", str(SMOKE), "--set", override, f"training.output_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_overwrite_keeps_the_earlier_run_when_the_config_does_not_fit_the_model(finished_run, tmp_path, no_targets):
    from dftnb.lab.train import main

    out = _copy(finished_run, tmp_path / "run")
    before = sorted(p.name for p in out.iterdir())
    for bad in ("data.block_size=100000", "data={dataset: " + str(tmp_path) + "}"):
        with pytest.raises((ValueError, FileNotFoundError), match="exceeds the model's context|not a dftnb target"):
            main(["--config", str(SMOKE), "--set", bad, f"training.output_dir={out}", "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == before  # --overwrite deleted nothing


def test_output_dir_that_is_a_file(tmp_path):
    from dftnb.lab.train import main

    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    for out in (file, file / "run"):
        with pytest.raises(NotADirectoryError, match=rf"training.output_dir {re.escape(str(out))} (is a file|is inside "
                                                     r".*which is a file), not a folder: choose a folder"):
            main(["--config", str(SMOKE), "--set", f"training.output_dir={out}", "training.max_steps=1"])
    assert file.read_text() == "keep me"


def test_folder_that_is_not_a_dataset(tmp_path):
    from dftnb.lab.train import main

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a dataset")
    message = rf"{re.escape(str(folder))} is not a dftnb target cache or a saved dataset: it has no dftnb_target.json"
    with pytest.raises(FileNotFoundError, match=message + ".*point it at the folder"):
        target_cache.load_target_dataset(folder)
    with pytest.raises(FileNotFoundError, match=message):  # the CLI's data.dataset
        main(["--config", str(SMOKE), "--set", "data={dataset: " + str(folder) + "}",
              f"training.output_dir={tmp_path / 'run'}"])
    with pytest.raises(NotADirectoryError, match="readme.txt is a file, not a saved dataset"):
        target_cache.load_target_dataset(folder / "readme.txt")


# -- library calls -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [INF, NAN, 0.0, -1.0])
def test_reference_targets_refuse_a_non_finite_temperature(tiny, temperature):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0 .*uniform"):
        T.from_reference_model(model, tok, TEXTS, k=4, temperature=temperature)


def test_reference_targets_refuse_texts_longer_than_the_context(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"2100 tokens, more than the model's context length "
                                         r"\(max_position_embeddings = 2048\); pass max_length <= 2048"):
        T.from_reference_model(model, tok, [[5] * 2100], k=4, max_length=4096)


@pytest.mark.parametrize("temperature", [NAN, INF, -1.0, "0.7"])
def test_generate_refuses_a_bad_temperature(tiny, temperature):
    from dftnb.lab.models import generate

    model, tok = tiny
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0 .*do_sample=False"):
        generate(model, tok, ["Hello"], max_new_tokens=2, do_sample=True, temperature=temperature)


@pytest.mark.parametrize("limit", [-1, 0, 1.5])
def test_humaneval_limit_must_be_positive(limit):
    from dftnb.measure.evals import humaneval

    problems = [{"task_id": f"t/{i}", "prompt": "def f():\n", "test": "", "entry_point": "f"} for i in range(3)]
    with pytest.raises(ValueError, match=r"limit must be None \(every problem\) or an integer >= 1"):
        humaneval(None, None, problems=problems, limit=limit)


def test_malformed_mmlu_jsonl_names_file_and_line(tmp_path):
    from dftnb.measure.evals import load_mmlu

    good = json.dumps({"question": "2 + 2?", "answer_a": "3", "answer_b": "4", "answer_c": "5", "answer_d": "6",
                       "correct_answer": "B", "topic": "arithmetic"})
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{{oops\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: not valid JSON .*fix or remove that line"):
        load_mmlu(str(path))
    path.write_text(f"{good}\n[1, 2]\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: a JSON list, not an object"):
        load_mmlu(str(path))


@pytest.mark.parametrize("temperature", [INF, NAN])
def test_knn_temperature_must_be_finite(temperature):
    from dftnb.datastore import KNNDatastore, knn_neighbours

    store = KNNDatastore(torch.randn(6, 3), torch.arange(6))
    with pytest.raises(ValueError, match="knn_temperature must be a finite number > 0"):
        knn_neighbours(torch.randn(2, 3), store, 2, temperature)
