"""The second edition's comparisons (:mod:`dftnb.lab.frontier_report`) on hand-built unit scores whose answers are
known: a family shifted above SFT's frontier by 5 SDS points reads +5, retention is read on SFT's curve at the same
in-domain learning, points outside SFT's range are left out, and the point names parse."""

import numpy as np
import pytest

from dftnb.lab import frontier_report as FR

CONFIGS = [("base", "0"), ("sft", "25"), ("sft", "50"), ("sft", "100"), ("wise", "0.5"), ("dft", "25"),
           ("dft", "50")]
# per configuration: blind-test accuracy (%) and SDS at T = 1 and 1.3; SFT's points have SDS = blind accuracy, so
# its frontier F(x) is the largest SFT blind accuracy <= x; the DFT points sit 5 SDS points above that
BLIND = {"base": (60, 80), "sft25": (64, 84), "sft50": (70, 88), "sft100": (76, 92), "wise0.5": (62, 82),
         "dft25": (64, 84), "dft50": (70, 99)}
SDS = {**{k: v for k, v in BLIND.items() if not k.startswith("dft")}, "dft25": (69, 89), "dft50": (75, 97)}
LEARNING = {"base": 4.5, "sft25": 4.2, "sft50": 4.0, "sft100": 3.9, "wise0.5": 4.3, "dft25": 4.1, "dft50": 3.5}
TOP1 = {"base": 0.50, "sft25": 0.48, "sft50": 0.46, "sft100": 0.45, "wise0.5": 0.495, "dft25": 0.48, "dft50": 0.40}


def _units(prompts=4, human=4, blocks=3):
    keys = [f + p if f != "base" else "base" for f, p in CONFIGS]
    sds = np.stack([[np.full(prompts, SDS[k][t]) for t in range(2)] for k in keys]).astype(float)
    # blind accuracy (model + human) / 2 = BLIND: both sides at the same rate
    blind = np.stack([[np.full(prompts, BLIND[k][t] / 100) for t in range(2)] for k in keys])
    human = np.stack([[np.full(human, BLIND[k][t] / 100) for t in range(2)] for k in keys])
    return FR.Units(CONFIGS, ["1", "1.3"], sds, blind, human,
                    {"in_domain nll": np.stack([np.full(blocks, LEARNING[k]) for k in keys]),
                     "techdocs top1": np.stack([np.full(blocks, TOP1[k]) for k in keys]),
                     "techdocs nll": np.stack([np.full(blocks, 2.0 + LEARNING[k] / 10) for k in keys])})


def test_parse_point():
    assert FR.parse_point("base") == ("base", None, "0")
    assert FR.parse_point("sft-s1@50") == ("sft", 1, "50")
    assert FR.parse_point("sft-s0@wise0.5") == ("wise", 0, "0.5")
    assert FR.parse_point("rkl+ce-knn-lam0.5-tau1.3-s1@25") == ("rkl+ce-knn-lam0.5-tau1.3", 1, "25")
    with pytest.raises(ValueError, match="only SFT"):
        FR.parse_point("rkl-prefix-s0@wise0.5")


def test_known_answers():
    units = _units()
    ref = FR.reference_configs(units)
    assert [units.configs[i][0] for i in ref] == ["base", "sft", "sft", "sft", "wise"]
    rows = FR.comparison_rows(units, "dft", ref, FR.Draws(units, None))
    # dft25 has sft25's fidelity with +5 SDS at both temperatures, dft50 sft50's at T = 1; at T = 1.3 its blind
    # accuracy (99) is beyond every SFT point, whose best SDS there is sft100's 92: 97 - 92 = +5 too
    gap, n = rows["diversity at matched fidelity (SDS points)"]
    assert n == 4 and gap == pytest.approx(5.0)
    # T = 1.3: dft25 has SDS 89, reached by SFT only at blind 92 (sft100): 8 points more human-like than SFT;
    # dft50's 97 is beyond every SFT point: left out (count 1)
    value, n = rows["fidelity at matched diversity, T = 1.3 (blind-test points)"]
    assert n == 1 and value == pytest.approx(8.0)
    # retention on SFT's training curve (base 4.5, 4.2, 4.0, 3.9): dft25 at learning 4.1 -> interpolated top-1 47%,
    # dft has 48%: +1 point; dft50 at 3.5 learned more than any SFT point: left out
    diff, n = rows["retention at matched learning vs SFT: techdocs top-1 (points)"]
    assert n == 1 and diff == pytest.approx(1.0)
    # against WiSE-FT's curve (base 4.5, wise 4.3): 4.1 is outside it
    assert rows["retention at matched learning vs WiSE-FT: techdocs top-1 (points)"][1] == 0
    # likelihood: techdocs NLL = 2 + learning / 10 on every curve: matched exactly, difference 0
    assert rows["likelihood at matched learning vs SFT: techdocs NLL (nats, + = DFT lower)"][0] == pytest.approx(0.0)


def test_a_family_below_the_frontier_reads_negative_and_intervals_cover_it():
    units = _units()
    units.sds[5:] -= 10.0  # both DFT configurations 10 SDS points lower than above: 5 below the frontier
    d = FR.comparisons(units, "dft", FR.reference_configs(units), n_boot=200)
    gap = d["diversity at matched fidelity (SDS points)"]
    assert gap.mean == pytest.approx(-5.0) and gap.ci_low <= -5.0 <= gap.ci_high


def test_claims_read_the_article():
    assert FR.claim_of("retention at matched learning vs SFT: dialogue top-1 (points)") == (1.0, False)
    assert FR.claim_of("diversity at matched fidelity (SDS points)") == (0.0, True)
