"""The first edition re-read: per-corpus perplexity against the equal-weight average, the seed floor and Holm each
changing a verdict (on a hand-made study folder), and the committed study's reverse-KL perplexity per corpus."""

import numpy as np
import pandas as pd
import pytest

from dftnb.lab import study_review as SR
from dftnb.lab.study_runs import RESULTS
from dftnb.measure.stats import paired_block_bootstrap
from dftnb.measure.stats import verdict as read_interval

SIZES = {"shakespeare": 64 * 200, "dialogue": 64 * 20, "techdocs": 64 * 20, "wiki": 64 * 100, "news": 64 * 100}


def _blocky(rng, n, mean, spread):
    """Per-token differences whose 64-token block means are ``mean ± spread`` (half each), with zero-mean noise
    inside every block: the point estimate is exactly ``mean`` and the block bootstrap's spread is known."""
    k = n // 64
    signs = np.where(np.arange(k) % 2 == 0, spread, -spread)
    rng.shuffle(signs)
    inner = rng.normal(0, 0.3, size=(k, 64))
    inner -= inner.mean(axis=1, keepdims=True)
    return (mean + signs[:, None] + inner).ravel()


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    """SFT s0, SFT s1 (differs from s0 on techdocs only: its seed floor) and reverse-KL DFT s0: worse on the big
    in-domain corpus, better on every small one, so the equal-weight average and the token-pooled change differ in
    sign; techdocs' gain is smaller than the seed floor; wiki's and news' intervals just exclude 0."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("study")
    base = {c: rng.uniform(1, 5, n) for c, n in SIZES.items()}
    diff = {"shakespeare": _blocky(rng, SIZES["shakespeare"], 0.15, 0.2),
            "dialogue": _blocky(rng, SIZES["dialogue"], -0.3, 0.2),
            "techdocs": _blocky(rng, SIZES["techdocs"], -0.03, 0.01),
            "wiki": _blocky(rng, SIZES["wiki"], -0.021, 0.1),
            "news": _blocky(rng, SIZES["news"], -0.021, 0.1)}
    runs = {"sft-s0": base, "sft-s1": {c: v + (0.05 if c == "techdocs" else 0.0) for c, v in base.items()},
            "dft_reverse_kl-s0": {c: v + diff[c] for c, v in base.items()}}
    for name, arrays in runs.items():
        (root / "runs" / name).mkdir(parents=True)
        np.savez(root / "runs" / name / "token_nll.npz", **arrays)
    return root, diff


def test_per_corpus_and_pooled_signs_are_reported_where_the_equal_weight_average_says_the_opposite(hand_made):
    root, diff = hand_made
    equal = paired_block_bootstrap(diff)  # the first edition's reading: every corpus weighs the same
    pooled_mean = np.concatenate(list(diff.values())).mean()
    assert equal.mean < 0 < pooled_mean  # the fixture does what it says
    table = SR.perplexity_by_corpus_table(root)
    rows = table[table.kind == "method"].set_index("corpus")
    assert list(rows.index) == [*SIZES, SR.POOLED] and set(rows.reference) == {"SFT s0"}
    assert rows.loc["shakespeare", "change"] > 0 and rows.loc[SR.POOLED, "change"] > 0
    assert (rows.loc[["dialogue", "techdocs", "wiki", "news"], "change"] < 0).all()
    assert rows.loc[SR.POOLED, "change"] == pytest.approx(100 * np.expm1(pooled_mean), rel=1e-6)
    assert rows.loc[SR.POOLED, "tokens"] == sum(SIZES.values())
    assert rows.loc["shakespeare", "verdict"] == "refuted" and rows.loc[SR.POOLED, "verdict"] == "refuted"
    assert rows.loc["dialogue", "verdict"] == "supported"
    assert set(table[table.kind == "seed floor"].model) == {"SFT s1"}


def test_the_seed_floor_and_holm_each_turn_a_decided_verdict_undetermined(hand_made):
    root, _ = hand_made
    rows = SR.perplexity_by_corpus_table(root).query("kind == 'method'").set_index("corpus")
    # techdocs: its interval clears 0 alone, not once widened by SFT s1 − SFT s0 there (5%)
    tech = rows.loc["techdocs"]
    assert tech.first_reading == "supported" and tech.holm_p < 0.05 and tech.floor > -tech.ci_high
    assert tech.verdict == "undetermined"
    # wiki and news: no floor (the SFT seeds agree there), intervals just below 0, Holm over 6 tests lifts p
    for corpus in ("wiki", "news"):
        r = rows.loc[corpus]
        assert r.floor == 0 and r.ci_high < 0 and r.p_value < 0.05 <= r.holm_p
        assert r.first_reading == "supported" and r.verdict == "undetermined"
    assert ((rows.holm_p >= 0) & (rows.holm_p <= 1)).all()
    assert read_interval(-rows.loc["dialogue", "ci_high"], -rows.loc["dialogue", "ci_low"]) == "supported"


def test_the_overturned_table_compares_the_first_edition_with_the_pooled_reading(hand_made):
    root, _ = hand_made
    tables = root / "tables"
    tables.mkdir(exist_ok=True)
    claim = SR.FIRST_EDITION["perplexity"][0]
    pd.DataFrame([{"model": "DFT (reverse KL) s0", "criterion": claim, "difference": -1.0, "ci_low": -2.0,
                   "ci_high": -0.1, "verdict": "supported", "note": ""}]).to_csv(tables / "verdict.csv", index=False)
    pd.DataFrame([{"method": "DFT (reverse KL)", "criterion": claim, "seeds": 1, "differences": "-1.00",
                   "verdict": "supported"}]).to_csv(tables / "verdict_by_method.csv", index=False)
    review = SR.overturned(root)
    assert list(review.columns) == ["criterion", "first edition", "re-reading", "status"]
    row = review.iloc[0]
    assert row.status == "overturned" and row["first edition"].startswith("supported")
    assert "pooled over all tokens" in row["re-reading"] and "refuted" in row["re-reading"]
    assert set(review.status) <= set(SR.STATUSES)


def test_wilson_size_reads_back_the_number_of_texts():
    from dftnb.measure.stats import wilson_interval

    lo, hi = wilson_interval(96, 186)
    assert SR.wilson_size(100 * 96 / 186, round(100 * lo, 3), round(100 * hi, 3)) == 186


@pytest.mark.skipif(not (RESULTS / "runs" / "dft_reverse_kl-s0" / "token_nll.npz").exists(),
                    reason="the committed study is not in this checkout")
def test_the_committed_reverse_kl_run_raises_in_domain_and_pooled_perplexity():
    table = SR.perplexity_by_corpus_table(RESULTS)
    rows = table[(table.model == "DFT (reverse KL) s0") & (table.reference == "SFT s0")].set_index("corpus")
    assert rows.loc["shakespeare", "change"] > 5 and rows.loc[SR.POOLED, "change"] > 0
    assert rows.loc["shakespeare", "tokens"] > 10 * rows.loc[["dialogue", "techdocs"], "tokens"].sum()
