"""dftnb.lab.benchmark: chapter 06's rows, calibration checks, paired differences and verdict on hand-made models."""

from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from dftnb.lab import benchmark
from dftnb.measure import metrics
from dftnb.measure.stats import minimum_detectable_difference

DIM = 64


class HashedWords:
    """A fixed-dimension bag of words (each word hashed to one of DIM axes): texts from disjoint vocabularies are
    nearly orthogonal, and every call embeds into the same space."""

    def encode(self, texts):
        out = torch.zeros(len(texts), DIM)
        for r, t in enumerate(texts):
            for w in t.split():
                out[r, zlib.crc32(w.encode()) % DIM] += 1
        return out


def _texts(rng, vocab, k, words=8, distinct=True):
    if not distinct:
        one = " ".join(rng.choice(vocab, size=words))
        return [one] * k
    return [" ".join(rng.choice(vocab, size=words)) for _ in range(k)]


def _ppl():
    return pd.DataFrame({"temperature": [1.0, 1.0], "corpus": ["shakespeare", "macro"], "perplexity": [9.0, 7.0]})


def _mmlu(correct):
    preds = [{"id": f"q{i}", "correct": bool(c)} for i, c in enumerate(correct)]
    return SimpleNamespace(accuracy=float(np.mean(correct)), n_questions=len(correct), predictions=preds)


@pytest.fixture(scope="module")
def bench():
    rng = np.random.default_rng(0)
    human_vocab = [f"h{i}" for i in range(200)]
    other_vocab = [f"o{i}" for i in range(200)]
    human = [_texts(rng, human_vocab, 24) for _ in range(3)]  # 3 corpora x 24 passages: 12 per half
    prompts = 6
    sft = {1.0: [_texts(rng, other_vocab, 4, distinct=False) for _ in range(prompts)]}
    dft = {1.0: [_texts(rng, human_vocab, 4) for _ in range(prompts)]}
    nll = {"shakespeare": rng.exponential(size=512)}
    evs = [
        benchmark.ModelEvaluation("SFT", sft, _ppl(), None, _mmlu([1] * 30 + [0] * 70), "", nll),
        benchmark.ModelEvaluation("DFT (x)", dft, _ppl(), None, _mmlu([1] * 28 + [0] * 72), "",
                                  {"shakespeare": nll["shakespeare"] - 0.1}),
    ]
    out = benchmark.benchmark(evs, HashedWords(), L=8, human=human, human_groups=dft[1.0], n_boot=250,
                              mauve_pairs=True)
    out.dft_groups = dft[1.0]
    out.inputs = (evs, human, dft[1.0])
    return out


def test_no_paired_mauve_below_its_size_unless_asked(bench):
    """24 texts per side: MAUVE cannot decide, so by default it gets no paired row (each bootstrap round would rerun
    k-means for nothing); the table keeps it as a descriptive column."""
    evs, human, groups = bench.inputs
    out = benchmark.benchmark(evs, HashedWords(), L=8, human=human, human_groups=groups, n_boot=250)
    assert "MAUVE" not in set(out.paired.metric) and {"SDS", "MMLU"} <= set(out.paired.metric)
    assert out.table["mauve"].notna().all()
    assert "MAUVE" in set(bench.paired.metric)  # asked for: the same inputs give the row


def test_benchmark_rows_and_columns(bench):
    t = bench.table.set_index("model")
    assert list(t.index) == ["SFT", "DFT (x)", "human text"]
    assert t.loc["SFT", "mmlu"] == pytest.approx(30.0) and t.loc["SFT", "mmlu_n"] == 100
    assert t.loc["SFT", "mmlu_mdd"] == pytest.approx(100 * minimum_detectable_difference(0.3, 100))
    assert math.isnan(t.loc["SFT", "humaneval"]) and t.loc["SFT", "humaneval_n"] == 0
    # repeated samples: no diversity beyond one sample; the DFT model samples human-like, distinct text
    assert t.loc["SFT", "sds"] < 40 < t.loc["DFT (x)", "sds"]
    assert t.loc["DFT (x)", "mauve"] > 0.95 > 0.85 > t.loc["SFT", "mauve"]
    assert t.loc["SFT", "blind_test"] > 90 > t.loc["DFT (x)", "blind_test"]
    direct = metrics.style_diversity_score(bench.dft_groups, HashedWords(), length=8, n_boot=250)
    assert t.loc["DFT (x)", "sds"] == pytest.approx(direct.score)
    assert list(bench.calibration.row) == ["human text (other half)", "human text, words shuffled"]


def test_paired_differences_against_sft(bench):
    p = bench.paired.set_index("metric")
    assert set(p.model) == {"DFT (x)"}
    assert p.loc["SDS", "ci_low"] > 0 and p.loc["SDS", "n"] == 6
    table = bench.table.set_index("model").mauve
    assert p.loc["MAUVE", "difference"] == pytest.approx(table["DFT (x)"] - table["SFT"]) and p.loc["MAUVE", "ci_low"] > 0
    # 28 vs 30 correct of the same 100 questions, nested: 2 discordant items, both favour SFT
    assert p.loc["MMLU", "difference"] == pytest.approx(-2.0) and p.loc["MMLU", "p_value"] == pytest.approx(0.5)
    # every token 0.1 nats cheaper: perplexity exp(-0.1) - 1 = -9.5%, an exact interval
    ppl = "perplexity (shakespeare)"  # the training corpus's held-out text only, never a mean over corpora
    assert p.loc[ppl, "difference"] == pytest.approx(100 * math.expm1(-0.1))
    assert p.loc[ppl, "ci_low"] == pytest.approx(p.loc[ppl, "ci_high"])
    assert bench.table.set_index("model").loc["SFT", "perplexity"] == 9.0  # not the macro row's 7.0
    assert "HumanEval" not in p.index
    # the blind test's accuracy drop (SFT's repeated text is easy to tell from human text, the DFT model's is not)
    assert p.loc["blind test", "ci_low"] > 0 and p.loc["blind test", "unit"] == "points"


def test_display_and_save(bench, tmp_path):
    shown = benchmark.display_table(bench.table)
    assert shown.loc[0, "MMLU % (n; MDD)"].startswith("30.0 (100; ±")
    assert shown.loc[2, "MMLU % (n; MDD)"] == "n/a" and shown.loc[2, "perplexity"] == "n/a"
    paths = benchmark.save_tables(bench, tmp_path, "Table.")
    assert set(paths) == {"benchmark_table", "calibration", "paired", "frontier"}
    paired_md = (tmp_path / "tables" / "06_paired.md").read_text()
    assert paired_md.count("DFT (x)") == 5 and "100 questions" in paired_md and "6 prompts" in paired_md
    assert len(pd.read_csv(paths["benchmark_table"])) == 3


def _calibration(sds, cis, blind, mauve):
    rows = [{"row": f"base, T = {t:g}", "temperature": t, "sds": s, "sds_ci_low": lo, "sds_ci_high": hi,
             "mauve": m, "blind_test": b[0], "blind_low": b[1], "blind_high": b[2]}
            for t, s, (lo, hi), b, m in zip(benchmark.CALIBRATION_TEMPERATURES + (2.0,), sds, cis, blind, mauve)]
    rows.append({"row": "human text (other half)", "temperature": float("nan"), "mauve": 0.98,
                 "blind_test": 48.0, "blind_low": 41.0, "blind_high": 55.0})
    return pd.DataFrame(rows)


def test_calibration_checks_pass_and_fail():
    sds = [5, 45, 68, 80, 86, 86]
    cis = [(4, 6), (41, 51), (64, 71), (77, 82), (84, 87), (85, 87)]
    blind = [(96, 92, 98), (88, 83, 92), (86, 80, 90), (72, 65, 78), (93, 89, 96), (99, 96, 100)]
    mauve = [0.05, 0.24, 0.41, 0.48, 0.29, 0.01]
    assert benchmark.calibration_checks(_calibration(sds, cis, blind, mauve)) == {
        "sds_ordered": True, "human_halves_alike": True, "hot_sampling_unlike": True}
    overlapping = cis[:3] + [(77, 85)] + cis[4:]  # T = 1.0 and 1.3 intervals touch
    assert not benchmark.calibration_checks(_calibration(sds, overlapping, blind, mauve))["sds_ordered"]
    cooler = blind[:5] + [(70, 63, 77)]  # T = 2 no easier to tell apart than T = 1
    assert not benchmark.calibration_checks(_calibration(sds, cis, cooler, mauve))["hot_sampling_unlike"]
    df = _calibration(sds, cis, blind, mauve)
    df.loc[df.row == "human text (other half)", ["blind_low", "blind_high"]] = [60.0, 70.0]
    assert not benchmark.calibration_checks(df)["human_halves_alike"]


def _paired(rows, mdd=float("nan")):
    return pd.DataFrame([{"model": m, "metric": k, "difference": d, "ci_low": lo, "ci_high": hi,
                          "mdd": mdd if k in ("MMLU", "HumanEval") else float("nan")} for m, k, d, lo, hi in rows])


def test_claim_verdict_reads_each_criterion_from_the_paired_interval():
    good = [("DFT (a)", "SDS", 30, 25, 35), ("DFT (a)", "MMLU", -0.2, -0.8, 0.4),
            ("DFT (a)", "perplexity (shakespeare)", -3, -5, -1), ("DFT (a)", "MAUVE", 0.1, 0.05, 0.15)]
    text, table = benchmark.claim_verdict(_paired(good))
    assert text.startswith("Verdict") and "SUPPORTED" in text.splitlines()[0]
    assert set(table.verdict) == {"supported"} and "MAUVE" not in set(table.metric)  # MAUVE: descriptive only
    wide = [("DFT (a)", "SDS", 30, -10, 50), ("DFT (a)", "MMLU", -0.2, -3, 2)]
    text, table = benchmark.claim_verdict(_paired(wide))
    assert "UNDETERMINED" in text.splitlines()[0] and set(table.verdict) == {"undetermined"}
    worse = [("DFT (a)", "SDS", 30, 25, 35), ("DFT (a)", "perplexity (shakespeare)", 4, 2, 6),
             ("GEM", "SDS", -50, -60, -40)]  # only DFT rows are read
    text, table = benchmark.claim_verdict(_paired(worse))
    assert "REFUTED" in text.splitlines()[0] and list(table.model.unique()) == ["DFT (a)"]
    assert table.set_index("criterion").filter(like="perplexity", axis=0).verdict.item() == "refuted"
    floor = [("DFT (a)", "HumanEval", 0.0, 0.0, 0.0)]  # every model at 0/10: a zero-width interval, no power
    text, table = benchmark.claim_verdict(_paired(floor, mdd=38.0))
    assert table.verdict.item() == "undetermined" and "no power" in text
    assert benchmark.claim_verdict(_paired(floor, mdd=0.5))[1].verdict.item() == "supported"
    with pytest.raises(ValueError, match="DFT"):
        benchmark.claim_verdict(_paired([("GEM", "SDS", 1, 0, 2)]))


def test_held_out_passages_are_disjoint_equal_length_and_balanced():
    passages = benchmark.held_out_passages(length=20, per_corpus=None, cap=30, seed=1)
    assert len(passages) == 3 and {len(c) for c in passages} == {30}
    flat = [t for c in passages for t in c]
    assert len(set(flat)) == len(flat) and {len(t.split()) for t in flat} == {20}
    with pytest.raises(ValueError, match="per_corpus=None"):
        benchmark.held_out_passages(length=200, per_corpus=500)


def test_trained_model_dirs_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook 02"):
        benchmark.trained_model_dirs(tmp_path)
    for run in ("sft", "gem"):
        (tmp_path / "models" / run).mkdir(parents=True)
        (tmp_path / "models" / run / "config.json").write_text("{}")
    dirs = benchmark.trained_model_dirs(tmp_path, {"base": None, "SFT": "sft", "GEM": "gem"})
    assert dirs["base"] is None and dirs["GEM"] == tmp_path / "models" / "gem"


def test_each_text_is_embedded_once():
    class Counting(HashedWords):
        def __init__(self):
            self.seen = []

        def encode(self, texts):
            self.seen += list(texts)
            return super().encode(texts)

    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(100)]
    human = [_texts(rng, vocab, 8) for _ in range(3)]
    groups = [_texts(rng, vocab, 4) for _ in range(4)]
    ev = benchmark.ModelEvaluation("SFT", {1.0: groups}, _ppl(), None, None)
    embedder = Counting()
    benchmark.benchmark([ev], embedder, L=8, human=human, n_boot=100)
    assert len(embedder.seen) == len(set(embedder.seen))  # SDS and the fidelity columns share the embeddings


def test_the_seed_floor_and_holm_turn_verdicts_undetermined():
    rows = [("DFT (a)", "SDS", 3, 1, 5), ("DFT (b)", "SDS", 3, 1, 5)]
    assert set(benchmark.claim_verdict(_paired(rows))[1].verdict) == {"supported"}
    # two SFT seeds already differ by 2 points: an interval from 1 to 5 no longer clears it
    floor = _paired(rows + [(benchmark.FLOOR_LABEL, "SDS", -2, -4, 0)])
    _, table = benchmark.claim_verdict(floor)
    assert set(table.verdict) == {"undetermined"} and (table.floor == 2).all() and "seed floor" in table.note[0]
    # bootstrap standard error 1.45: p = 2 Phi(-3 / 1.45) ~ 0.04 each, significant alone, not after Holm over two rows
    rng = np.random.default_rng(0)
    draws = {("DFT (a)", "SDS"): rng.normal(3, 1.45, 4000), ("DFT (b)", "SDS"): rng.normal(3, 1.45, 4000)}
    _, table = benchmark.claim_verdict(_paired(rows), draws=draws)
    assert (table.p < 0.1).all() and (table.p_adjusted > table.p).all()
    assert set(table.verdict) == {"undetermined"}
    draws[("DFT (a)", "SDS")] = rng.normal(3, 0.5, 4000)  # p ~ 2e-9: survives Holm
    _, table = benchmark.claim_verdict(_paired(rows), draws=draws)
    # Holm steps down: once (a) is rejected at 0.05 / 2, (b) is tested at 0.05 alone and passes too
    assert table.set_index("model").verdict.to_dict() == {"DFT (a)": "supported", "DFT (b)": "supported"}


def test_retention_rows_are_paired_per_corpus_and_pooled_over_tokens():
    from dftnb.measure.retention import TokenScores

    rng = np.random.default_rng(0)
    n = 640
    base_nll = rng.exponential(size=n)
    hits = rng.random(n) < 0.5
    worse_hits = hits & (rng.random(n) < 0.8)  # loses a fifth of its hits: about -10 points
    sol = pd.DataFrame({"task_id": ["a", "b", "c"], "tokens": [10, 20, 70], "nll_sum": [10.0, 20.0, 70.0],
                        "top1_hits": [5, 10, 35]})
    sol_worse = sol.assign(nll_sum=[10.0, 20.0, 140.0], top1_hits=[5, 10, 7])
    ref = benchmark.ModelEvaluation("SFT", {}, _ppl(), None, None, retention={"techdocs": TokenScores(base_nll, hits)},
                                    solutions=sol)
    ev = benchmark.ModelEvaluation("DFT (x)", {}, _ppl(), None, None,
                                   retention={"techdocs": TokenScores(base_nll + 0.1, worse_hits)},
                                   solutions=sol_worse)
    (c, nll, top1, tokens, _), (s, s_nll, s_top1, problems, _) = benchmark.paired_retention_draws(ev, ref, 500, 0)
    assert c == "techdocs" and tokens == n and nll.mean == pytest.approx(0.1) and nll.ci_low == pytest.approx(0.1)
    assert top1.mean == pytest.approx(worse_hits.mean() - hits.mean()) and top1.ci_high < 0
    # pooled over tokens: nll (10+20+140)/100 - 1 = 0.7 nats/token; the per-problem mean would give 1/3
    assert problems == 3 and s_nll.mean == pytest.approx(0.7) and s_top1.mean == pytest.approx((22 - 50) / 100)
    short = benchmark.ModelEvaluation("DFT (y)", {}, _ppl(), None, None,
                                      retention={"techdocs": TokenScores(base_nll[:320], hits[:320])})
    with pytest.raises(ValueError, match="same retention_tokens"):
        benchmark.paired_retention_draws(short, ref, 200, 0)


def test_effective_temperature_reads_the_base_curve_until_it_stops_rising():
    sds = [5, 45, 68, 80, 86, 85]
    cal = _calibration(sds, [(s - 1, s + 1) for s in sds], [(90, 85, 95)] * 6, [0.5] * 6)
    assert benchmark.base_curve(cal) == ([0.0, 0.3, 0.7, 1.0, 1.3], [5.0, 45.0, 68.0, 80.0, 86.0])
    rows = [{"sds": 74.0, "sds_ci_low": 68.0, "sds_ci_high": 80.0}, {"sds": 90.0, "sds_ci_low": 88, "sds_ci_high": 92}]
    benchmark._effective_temperatures(rows, cal)
    assert rows[0]["t_eff"] == pytest.approx(0.85) and rows[0]["t_eff_low"] == pytest.approx(0.7)
    assert rows[1]["t_eff_position"] == "above" and math.isnan(rows[1]["t_eff"])


def test_measure_checks_pass_and_fail():
    from dftnb.measure.retention import TokenScores

    cal = pd.DataFrame([{"row": "human text, words shuffled", "blind_low": 60.0, "blind_n": 216}])
    table = pd.DataFrame([{"model": "base", "blind_n": 216, "humaneval_unusable": 5.0},
                          {"model": "human text", "blind_n": 216, "humaneval_unusable": float("nan")}])
    rng = np.random.default_rng(0)
    intact, mixed = rng.random(1024) < 0.5, rng.random(1024) < 0.2
    base = benchmark.ModelEvaluation("base", {}, _ppl(), None, None,
                                     retention={"techdocs": TokenScores(np.ones(1024), intact)},
                                     retention_shuffled={"techdocs": TokenScores(np.ones(1024), mixed)})
    checks = benchmark.measure_checks(table, cal, base, n_boot=300)
    assert checks == {"blind_test_sized": True, "mauve_sized": False, "retention_sees_shuffling": True,
                      "humaneval_extracts": True}
    small = table.assign(blind_n=96, humaneval_unusable=[40.0, float("nan")])
    base.retention_shuffled = {"techdocs": TokenScores(np.ones(1024), intact)}
    checks = benchmark.measure_checks(small, cal, base, n_boot=300)
    assert not any(checks.values())
