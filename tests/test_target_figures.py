"""Chapters 00–01: target figures, the sentences built from a run's numbers and the cached datastore sweep."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
import torch

from dftnb.lab import plots
from dftnb.lab import target_figures as TF
from dftnb.targets import SparseTarget


def test_self_target_sentence_says_whether_the_answer_is_kept():
    out = TF.self_target_sentence(" hour", 213, 4.9e-6, 4.9e-6, 64, 49088)
    assert "outside its top 64" in out and "except* the answer" in out and "49,088" in out
    inside = TF.self_target_sentence(" hour", 3, 0.1, 1e-6, 64, 49088)
    assert "inside its top 64" in inside and "except" not in inside


def test_one_hot_vs_soft_figure_gives_the_soft_panel_its_own_log_axis():
    fig = TF.one_hot_vs_soft_figure(["'a'", "'b'", "'c'"], [0, 0, 1.0], [0.6, 0.3, 1e-5], [False, False, True])
    one_hot, soft = fig.axes[:2]
    assert one_hot.get_xscale() == "linear" and soft.get_xscale() == "log"
    assert soft.get_xlim()[0] < 1e-5  # the smallest bar is visible
    plots.close(fig)


def test_one_position_frame_always_shows_the_label_and_the_figure_wraps():
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0, -1.0, -2.0]])
    targets = {"reference": SparseTarget.from_logits(logits, k=2),
               "label": SparseTarget.point_mass(torch.tensor([5]), 2, 6)}
    frame = TF.one_position_frame(targets, label_id=5, decode=lambda ids: f"t{ids[0]}", top=2)
    ref = frame[frame.source == "reference"]
    assert ref["token"].tolist() == ["'t0'", "'t1'", "'t5'"] and ref["label"].tolist() == [False, False, True]
    assert ref["q"].iloc[-1] == pytest.approx(float(targets["reference"].to_dense()[0, 5]))
    label = frame[frame.source == "label"]
    assert len(label) == 1 and label["q"].iloc[0] == pytest.approx(1.0)  # padding slots are not drawn
    fig = TF.one_position_figure(frame, "context", ncols=2)
    assert len(fig.axes) == 4 and sum(ax.axison for ax in fig.axes) == 2  # 2 panels + the legend panel, wrapped
    plots.close(fig)


def _scaling(nll_target, sizes=(1000, 4000, 16000, 64000)):
    return pd.DataFrame({"datastore_keys": sizes, "hit_rate": [0.28, 0.32, 0.37, 0.42],
                         "nll_target": nll_target, "nll_reference": [4.40] * len(sizes),
                         "kl_target_reference": [0.87, 0.71, 0.64, 0.58]})


def test_datastore_scaling_sentence_finds_the_crossover_and_places_the_training_store():
    text = TF.datastore_scaling_sentence(_scaling([4.56, 4.50, 4.42, 4.38]), training_store=8000)
    assert "only from 64,000 keys on; at 16,000 keys and below it is worse" in text
    assert "Chapter 02 trains on a store of 8,000 keys: on the worse side" in text
    never = TF.datastore_scaling_sentence(_scaling([4.56, 4.50, 4.42, 4.41]))
    assert "No store of this sweep" in never and "Chapter 02" not in never
    fig = TF.datastore_scaling_figure(_scaling([4.56, 4.50, 4.42, 4.38]))
    assert "reference alone" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    plots.close(fig)


def test_cached_datastore_scaling_computes_once_per_key(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    calls = []

    def fake(model, tokenizer, corpus, queries, sizes, **params):
        calls.append(params)
        return _scaling([4.5] * len(sizes), sizes=tuple(sizes))

    import dftnb.datastore

    monkeypatch.setattr(dftnb.datastore, "datastore_scaling", fake)
    args = (model, tokenizer, ["some text"], [[1, 2, 3]], (1000, 4000, 16000, 64000))
    first = TF.cached_datastore_scaling(*args, cache_root=tmp_path, k_neighbors=8)
    again = TF.cached_datastore_scaling(*args, cache_root=tmp_path, k_neighbors=8)
    assert len(calls) == 1 and again.equals(first)
    TF.cached_datastore_scaling(*args, cache_root=tmp_path, k_neighbors=16)  # another parameter, another key
    TF.cached_datastore_scaling(model, tokenizer, ["some text"], [[1, 2, 4]], (1000, 4000, 16000, 64000), cache_root=tmp_path,
                                k_neighbors=8)  # other queries
    assert len(calls) == 3


def test_bias_figure_ticks_the_measured_sizes_and_keeps_one_legend_outside():
    bias = pd.DataFrame({"target": ["top-k bucket", "sampled"] * 2, "bytes/token": [36, 36, 260, 260],
                         "cosine": [0.95, 0.4, 0.99, 0.7], "relative error": [0.2, 2.6, 0.05, 1.2]})
    fig = TF.bias_figure(bias)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["36", "260"]
    assert fig.axes[0].get_legend() is None and fig.axes[1].get_legend() is not None
    assert fig.axes[1].get_yscale() == "log"
    plots.close(fig)
