"""The one registry of methods (:mod:`dftnb.methods`): every entry trains through the one wrapper
(:func:`dftnb.trainer.train_method`) on the tiny model, and every other list of methods is a view that agrees with it."""

import math

import pytest

from dftnb.losses import BASELINES, LOSSES
from dftnb.methods import METHOD_REGISTRY, Method, divergences, labels, method

TEXTS = ["To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer",
         "Now is the winter of our discontent made glorious summer by this sun of York;"]


@pytest.fixture(scope="module")
def rows(tiny):
    """The two texts with the tiny model's own top-4 targets and their builder record."""
    from dftnb.targets import from_reference_model

    model, tokenizer = tiny
    return from_reference_model(model, tokenizer, TEXTS, k=4, max_length=16)


def _capturing_build(built: list):
    from dftnb.trainer import build_trainer

    def build(*args, **kwargs):
        built.append(build_trainer(*args, **kwargs))
        return built[-1]

    return build


@pytest.mark.parametrize("name", list(METHOD_REGISTRY))
def test_every_method_trains_one_step_through_the_one_wrapper(name, rows, tiny, tmp_path):
    """One optimiser step of each method: the trainer gets the registry's divergence, reads a target exactly when
    the registry says so (the others train on rows without target columns), and the weights move."""
    from dftnb.lab.models import tiny_model
    from dftnb.trainer import train_method

    m = METHOD_REGISTRY[name]
    model, tokenizer = tiny_model(seed=0)
    data = rows if m.reads_target else rows.remove_columns([c for c in rows.column_names if c.startswith("target_")])
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    built = []
    _, history = train_method(model, tokenizer, data, name, tmp_path, build=_capturing_build(built), max_steps=1,
                              per_device_train_batch_size=2, learning_rate=1e-3)
    (trainer,) = built
    assert trainer.dft_config.divergence == m.divergence
    assert trainer.dft_config.needs_target == m.reads_target
    assert trainer.state.global_step == 1
    assert list(history["method"]) == [name] and math.isfinite(history["loss"].iloc[0])
    assert math.isfinite(history["ce"].iloc[0]) and history["entropy"].iloc[0] > 0
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert max(float((a - b).abs().max()) for a, b in zip(after, before)) > 0


@pytest.mark.parametrize("name", [n for n, m in METHOD_REGISTRY.items() if m.reads_target])
def test_a_method_that_reads_a_target_refuses_rows_without_one(name, rows, tiny, tmp_path):
    from dftnb.trainer import train_method

    model, tokenizer = tiny
    bare = rows.remove_columns([c for c in rows.column_names if c.startswith("target_")])
    with pytest.raises(ValueError, match="needs target_ids"):
        train_method(model, tokenizer, bare, name, tmp_path, max_steps=1, per_device_train_batch_size=2)


def test_the_registry_is_consistent_with_the_losses_and_the_objective():
    from dftnb.trainer import DFTConfig

    assert set(METHOD_REGISTRY) == {"sft", "gem", "dft_reverse_kl", "dft_forward_kl", "dft_jsd", "dft_tvd",
                                    "dft_sorted_w1", "dft_sinkhorn"}
    for name, m in METHOD_REGISTRY.items():
        assert isinstance(m, Method) and m.name == name and method(name) is m
        assert m.divergence in LOSSES
        assert m.reads_target == (m.divergence not in BASELINES) == DFTConfig(divergence=name).needs_target
        assert m.reads_target == name.startswith("dft_")
    assert len({m.label for m in METHOD_REGISTRY.values()}) == len(METHOD_REGISTRY)  # a label names one method
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method("nope")


# -- the views ----------------------------------------------------------------------------------------------------
def view_mismatches(registry: dict[str, Method], trainer_methods: dict, study_methods: dict, self_target: tuple,
                    benchmark_runs: dict, denoiser_labels: dict, denoiser_display: dict) -> list[str]:
    """Every way the other lists of methods disagree with ``registry`` (empty when they agree).

    ``self_target`` is the study's control ``(name, registry method, label)``; ``denoiser_display`` the labels the
    denoiser curve prints instead of the registry's."""
    problems = []
    if trainer_methods != {n: m.divergence for n, m in registry.items()} or list(trainer_methods) != list(registry):
        problems.append(f"trainer.METHODS {trainer_methods} is not the registry's name -> divergence")
    control, base, control_label = self_target
    if base not in registry:
        problems.append(f"the study's control {control!r} trains {base!r}, not a registry method")
    for name, (label, target_rows) in study_methods.items():
        if name == control:
            if (label, target_rows) != (control_label, "self"):
                problems.append(f"study control {name!r}: {(label, target_rows)}")
        elif name not in registry:
            problems.append(f"study method {name!r} is not in the registry")
        elif (label, target_rows) != (registry[name].label, "knn"):
            problems.append(f"study method {name!r}: {(label, target_rows)}, registry label {registry[name].label!r}")
    for label, run in benchmark_runs.items():
        if run is None:
            continue
        if run not in registry:
            problems.append(f"benchmark run {run!r} is not in the registry")
        elif registry[run].label != label:
            problems.append(f"benchmark labels {run!r} {label!r}, the registry {registry[run].label!r}")
    if set(denoiser_labels) != set(registry):
        problems.append(f"denoiser labels {sorted(denoiser_labels)} != registry {sorted(registry)}")
    for name, label in denoiser_labels.items():
        if name in registry and label != denoiser_display.get(name, registry[name].label):
            problems.append(f"denoiser labels {name!r} {label!r}")
    return problems


def _views():
    from dftnb.lab import benchmark, denoiser_curve
    from dftnb.lab import study_runs as R
    from dftnb.trainer import METHODS

    return dict(registry=METHOD_REGISTRY, trainer_methods=METHODS, study_methods=R.METHODS,
                self_target=(R.SELF_TARGET, R.SELF_TARGET_METHOD, R.SELF_TARGET_LABEL),
                benchmark_runs=benchmark.BENCHMARK_RUNS, denoiser_labels=denoiser_curve.LABELS,
                denoiser_display=denoiser_curve.DISPLAY)


def test_every_list_of_methods_is_a_view_of_the_registry():
    from dftnb.lab import study_runs as R
    from dftnb.lab.plots import method_key

    views = _views()
    assert view_mismatches(**views) == []
    assert divergences() == views["trainer_methods"] and labels() == {n: m.label for n, m in METHOD_REGISTRY.items()}
    # the study's tables, the benchmark's rows and the figures' colours read the same labels back
    assert R.trainer_method("self_target") == "dft_reverse_kl" and R.trainer_method("gem") == "gem"
    with pytest.raises(ValueError, match="unknown study method"):
        R.trainer_method("dft_jsd")  # in the registry, not trained by the study
    for name, m in METHOD_REGISTRY.items():
        assert method_key(m.label) == name, m.label
    assert views["denoiser_labels"]["sft"] == "CE"  # the committed results/denoiser tables print it


@pytest.mark.parametrize("where", ["trainer_methods", "study_methods", "benchmark_runs", "denoiser_labels",
                                   "registry"])
def test_an_entry_added_in_one_place_only_is_found(where):
    views = _views()
    extra = {"trainer_methods": ("dft_skew_kl", "skew_kl"), "study_methods": ("dft_jsd_extra", ("DFT (JSD)", "knn")),
             "benchmark_runs": ("DFT (skew KL)", "dft_skew_kl"), "denoiser_labels": ("dft_skew_kl", "DFT (skew KL)"),
             "registry": ("dft_skew_kl", Method("dft_skew_kl", "skew_kl", "DFT (skew KL)", True))}[where]
    views[where] = {**views[where], extra[0]: extra[1]}
    assert view_mismatches(**views) != []


def test_a_relabelled_view_is_found():
    views = _views()
    views["study_methods"] = {**views["study_methods"], "sft": ("CE", "knn")}
    assert any("study method 'sft'" in p for p in view_mismatches(**views))


def test_the_one_wrapper_passes_the_objective_through_unchanged():
    """``method_config`` (what ``train_method`` trains) keeps the rest of ``dft_config`` (temperature, tail, λ) and only sets the divergence."""
    from dftnb.trainer import DFTConfig, method_config

    config = DFTConfig(divergence="jsd", temperature=2.0, ce_weight=0.25, tail="bucket")
    made = method_config("dft_forward_kl", config)
    assert (made.divergence, made.temperature, made.ce_weight, made.tail) == ("forward_kl", 2.0, 0.25, "bucket")
    assert config.divergence == "jsd"  # the caller's config is not changed
    assert method_config("reverse_kl").divergence == "reverse_kl"  # a divergence name is accepted as is
