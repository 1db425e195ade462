"""The second edition's comparisons (:mod:`dftnb.lab.frontier_report`) on hand-built unit scores whose answers are
known: the Pareto front and the ε-indicator, a family above SFT's front by a known margin, the reference limited to
SFT points that learned as much, retention read on SFT's and WiSE-FT's curves at the same in-domain learning, seeds
resampled within families, and the point names."""

import numpy as np
import pytest

from dftnb.lab import frontier_report as FR

CONFIGS = [("base", "0"), ("sft", "25"), ("sft", "50"), ("sft", "100"), ("wise", "0.5"), ("dft", "25"),
           ("dft", "50")]
KEYS = ["base", "sft25", "sft50", "sft100", "wise0.5", "dft25", "dft50"]
# blind-test accuracy (%) at T = 1 and 1.3; SFT's points have SDS = blind accuracy (its front is the line y = x)
BLIND = {"base": (60, 80), "sft25": (64, 84), "sft50": (70, 88), "sft100": (76, 92), "wise0.5": (62, 82),
         "dft25": (74, 80), "dft50": (78, 86)}
SDS = {**{k: v for k, v in BLIND.items() if not k.startswith("dft")}, "dft25": (79, 85), "dft50": (83, 91)}
LEARNING = {"base": 4.5, "sft25": 4.2, "sft50": 4.0, "sft100": 3.9, "wise0.5": 4.3, "dft25": 4.1, "dft50": 4.0}
TOP1 = {"base": 0.50, "sft25": 0.48, "sft50": 0.46, "sft100": 0.45, "wise0.5": 0.495, "dft25": 0.48, "dft50": 0.40}


def _units(sds=SDS, prompts=4, human=4, blocks=3, seeds=(0,)):
    def rows(value):  # [seed, ...]: the same value for every seed
        return np.stack([value] * len(seeds))

    return FR.Units(
        CONFIGS, ["1", "1.3"], [list(seeds)] * len(CONFIGS),
        [rows(np.stack([np.full(prompts, sds[k][t], dtype=float) for t in range(2)])) for k in KEYS],
        [rows(np.stack([np.full(prompts, BLIND[k][t] / 100) for t in range(2)])) for k in KEYS],
        [rows(np.stack([np.full(human, BLIND[k][t] / 100) for t in range(2)])) for k in KEYS],
        {"in_domain nll": [rows(np.full(blocks, LEARNING[k])) for k in KEYS],
         "techdocs top1": [rows(np.full(blocks, TOP1[k])) for k in KEYS],
         "techdocs nll": [rows(np.full(blocks, 2.0 + LEARNING[k] / 10)) for k in KEYS]})


def test_parse_point():
    assert FR.parse_point("base") == ("base", 0, "0") and FR.parse_point("base-s2") == ("base", 2, "0")
    assert FR.parse_point("sft-s1@50") == ("sft", 1, "50")
    assert FR.parse_point("sft-s0@wise0.5") == ("wise", 0, "0.5")
    assert FR.parse_point("rkl+ce-knn-lam0.5-tau1.3-s1@25") == ("rkl+ce-knn-lam0.5-tau1.3", 1, "25")
    for name in ("base", "base-s1", "sft-s1@50", "sft-s0@wise0.5", "fkl-prefix-s1@25"):
        assert FR.point_label(*FR.parse_point(name)) == name
    with pytest.raises(ValueError, match="only SFT"):
        FR.parse_point("rkl-prefix-s0@wise0.5")


def test_pareto_front_and_the_epsilon_indicator():
    x, y = np.array([60.0, 70, 65, 80]), np.array([60.0, 70, 62, 75])  # (65, 62) is beaten by nothing: on the front
    fx, fy = FR.pareto_front(np.r_[x, 72.0], np.r_[y, 69.0])  # (72, 69) is beaten by (70, 70): off the front
    assert not np.any((np.isclose(fx, 72)) & np.isclose(fy, 69))
    assert fx[0] == 60 and fx[-1] == 80 and np.all(np.diff(fx) >= 0) and np.all(np.diff(fy) >= 0)
    # on the straight segment between (60, 60) and (65, 62): the midpoint is on the front, gap ~0
    assert FR.beyond_front(62.5, 61.0, fx, fy) == pytest.approx(0.0, abs=0.15)
    # beaten on both axes by (70, 70) by 2 points: -2; beyond (80, 75) by 3 on both axes: +3
    assert FR.beyond_front(72.0, 68.0, fx, fy) == pytest.approx(-2.0)
    assert FR.beyond_front(77.0, 78.0, fx, fy) == pytest.approx(3.0)


def test_known_answers():
    units = _units()
    ref = FR.reference_configs(units)
    assert [units.configs[i][0] for i in ref] == ["base", "sft", "sft", "sft", "wise"]
    rows = FR.comparison_rows(units, "dft", ref, FR.Draws(units, None))
    # both DFT configurations learned to 4.1 / 4.0: their reference is sft50 and sft100 (4.0, 3.9), a front on the
    # line y = x from 70 to 92. Every DFT point sits 5 SDS points above that line, within its range: it would have
    # to lose 2.5 points on both axes to meet it (the ε-indicator)
    gap, n = rows[FR.DIVERSITY]
    assert n == 4 and gap == pytest.approx(2.5, abs=0.3)
    assert rows[FR.TOLERANCE][1] == 2 and rows[FR.TOLERANCE][0] == pytest.approx(2.5, abs=0.3)
    # retention on SFT's training curve (base 4.5, 4.2, 4.0, 3.9): dft25 at 4.1 -> interpolated 47%, it has 48%: +1;
    # dft50 at 4.0 -> 46%, it has 40%: -6; mean -2.5 over 2
    diff, n = rows["retention at matched learning vs SFT: techdocs top-1 (points)"]
    assert n == 2 and diff == pytest.approx((1.0 - 6.0) / 2)
    # WiSE-FT's curve: base 4.5, wise0.5 4.3 and the last SFT checkpoint (alpha = 1) 3.9
    diff, n = rows["retention at matched learning vs WiSE-FT: techdocs top-1 (points)"]
    want = ((48 - np.interp(4.1, [3.9, 4.3], [45, 49.5])) + (40 - np.interp(4.0, [3.9, 4.3], [45, 49.5]))) / 2
    assert n == 2 and diff == pytest.approx(want)
    # likelihood: techdocs NLL = 2 + learning / 10 on every curve: matched exactly, difference 0
    assert rows["likelihood at matched learning vs SFT: techdocs NLL (nats, + = DFT lower)"][0] == pytest.approx(0.0)


def test_the_reference_is_what_learned_as_much():
    # a base model far better on both axes would beat every DFT point, but it learned nothing: not in the reference
    sds = {**SDS, "base": (99, 99)}
    blind = dict(BLIND)
    units = _units(sds)
    for t in range(2):
        units.model_blind[0][:, t] = 0.5
        units.human_blind[0][:, t] = 0.5
    rows = FR.comparison_rows(units, "dft", FR.reference_configs(units), FR.Draws(units, None))
    assert rows[FR.DIVERSITY][0] == pytest.approx(2.5, abs=0.3) and blind == BLIND


def test_a_family_below_the_front_reads_negative():
    units = _units({**SDS, "dft25": (69, 75), "dft50": (73, 81)})  # 5 SDS points below y = x: -2.5
    d = FR.comparisons(units, "dft", FR.reference_configs(units), n_boot=200)
    gap = d[FR.DIVERSITY]
    assert gap.mean == pytest.approx(-2.5, abs=0.3) and gap.ci_low <= gap.mean <= gap.ci_high


def test_seeds_are_resampled_within_families():
    units = _units(seeds=(0, 1))
    for i in units.index("dft"):  # seed 1 of every DFT configuration 10 SDS points higher than seed 0
        units.sds[i][1] += 10.0
    point = FR.Draws(units, None).sds()
    assert point[units.index("dft")[0], 0] == pytest.approx(79 + 5)  # the mean of the two seeds
    rng = np.random.default_rng(0)
    values = {float(FR.Draws(units, rng).sds()[units.index("dft")[0], 0]) for _ in range(50)}
    assert values == {79.0, 84.0, 89.0}  # both seeds 0, one of each, both seeds 1
    assert {float(FR.Draws(units, rng).sds()[units.index("sft")[0], 0]) for _ in range(20)} == {64.0}


def test_claims_read_the_article():
    assert FR.claim_of("retention at matched learning vs SFT: dialogue top-1 (points)") == (1.0, False)
    assert FR.claim_of(FR.DIVERSITY) == (0.0, True)
