"""The checks every chapter 06 measure must pass before it ranks methods: the calibration rows (known orderings
of the base model's temperatures and of human text) and the sizes and known cases of the fidelity, retention and
HumanEval measures. A check that fails keeps its measure out of the verdict's reading."""

from __future__ import annotations

from ..measure.metrics import BLIND_TEST_MIN_PER_SIDE, MAUVE_MIN_PER_SIDE
from ..measure.stats import paired_block_bootstrap

GREEDY = 0.0  # the temperature label of greedy decoding in every table
CALIBRATION_TEMPERATURES = (GREEDY, 0.3, 0.7, 1.0, 1.3)  # must come out strictly ordered by SDS, CIs disjoint
FIDELITY_CHECK_TEMPERATURE = 2.0  # must come out clearly less human-like than T = 1


def calibration_checks(calibration) -> dict[str, bool]:
    """What the calibration rows must show before the metrics rank anything:

    * ``sds_ordered``: SDS strictly increases from greedy through T = 0.3, 0.7, 1.0, 1.3, with each 95% CI disjoint
      from the next;
    * ``human_halves_alike``: the blind test cannot tell the two halves of the human set apart (its CI contains
      50%) and their MAUVE is above every model row's;
    * ``hot_sampling_unlike``: at T = 2 the samples are less human-like than at T = 1 on both fidelity columns, the
      blind-test CIs disjoint.
    """
    rows = calibration.set_index("row", drop=False)
    temps = calibration.dropna(subset=["temperature"]).set_index("temperature")
    ladder = [temps.loc[t] for t in CALIBRATION_TEMPERATURES if t in temps.index]
    ordered = len(ladder) == len(CALIBRATION_TEMPERATURES) and all(
        lo["sds"] < hi["sds"] and lo["sds_ci_high"] < hi["sds_ci_low"] for lo, hi in zip(ladder, ladder[1:])
    )
    half = rows.loc["human text (other half)"]
    halves = bool(half["blind_low"] <= 50 <= half["blind_high"] and half["mauve"] > temps["mauve"].max())
    hot = FIDELITY_CHECK_TEMPERATURE in temps.index and 1.0 in temps.index
    if hot:
        t1, t2 = temps.loc[1.0], temps.loc[FIDELITY_CHECK_TEMPERATURE]
        hot = bool(t2["mauve"] < t1["mauve"] and t2["blind_low"] > t1["blind_high"])
    return {"sds_ordered": bool(ordered), "human_halves_alike": halves, "hot_sampling_unlike": bool(hot)}


def measure_checks(table, calibration, base, n_boot: int = 1000, seed: int = 0) -> dict:
    """The checks of the measures beside the SDS ladder; each can fail, and a measure that fails stays out of the
    verdict's reading (the chapter says so):

    * ``blind_test_sized``: every model row's blind test reads at least :data:`BLIND_TEST_MIN_PER_SIDE` texts per
      side, and at that size tells word-shuffled human text from human text (the shuffled row's CI above 50%);
    * ``mauve_sized``: MAUVE had at least :data:`MAUVE_MIN_PER_SIDE` texts per side (otherwise it is descriptive);
    * ``retention_sees_shuffling``: on every retention corpus the base model's top-1 accuracy on the same text with
      its words shuffled lies below the intact text's, block-bootstrap intervals disjoint;
    * ``humaneval_extracts``: fewer than 10% of the base model's HumanEval completions are empty or unparsable.
    """
    rows = calibration.set_index("row")
    models = table[table.model != "human text"]
    shuffled = rows.loc["human text, words shuffled"] if "human text, words shuffled" in rows.index else None
    sized = bool(len(models) and (models["blind_n"] >= BLIND_TEST_MIN_PER_SIDE).all())
    checks = {
        "blind_test_sized": bool(sized and shuffled is not None and shuffled["blind_low"] > 50
                                 and shuffled["blind_n"] >= BLIND_TEST_MIN_PER_SIDE),
        "mauve_sized": bool(len(models) and (models["blind_n"] >= MAUVE_MIN_PER_SIDE).all()),
    }
    if base is not None and base.retention and base.retention_shuffled:
        ok = True
        for corpus, intact in base.retention.items():
            mixed = base.retention_shuffled[corpus]
            kw = dict(block=64, n_boot=n_boot, seed=seed)
            hi = paired_block_bootstrap({corpus: mixed.top1.astype(float)}, **kw)
            lo = paired_block_bootstrap({corpus: intact.top1.astype(float)}, **kw)
            ok = ok and hi.ci_high < lo.ci_low
        checks["retention_sees_shuffling"] = bool(ok)
    if "humaneval_unusable" in models and base is not None:
        unusable = models.set_index("model").loc[base.name, "humaneval_unusable"]
        checks["humaneval_extracts"] = bool(unusable == unusable and unusable < 10)
    return checks
