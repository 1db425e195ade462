"""Style fidelity measures (MAUVE, classifier two-sample test) must discriminate before they rank methods:
two random halves of one human set look alike, word-shuffled text and another corpus do not."""

import numpy as np
import pytest

from dftnb.lab.data import corpus_texts
from dftnb.measure.metrics import classifier_two_sample_test, mauve_score, shuffle_words, wilson_interval


@pytest.fixture(scope="module")
def features():
    from dftnb.lab.models import load_embedder

    rng = np.random.default_rng(1)
    speeches = [t for t in corpus_texts("shakespeare", "train") if len(t.split()) >= 30]
    speeches = [" ".join(speeches[i].split()[:30]) for i in rng.permutation(len(speeches))[:300]]
    docs = [" ".join(t.split()[:30]) for t in corpus_texts("techdocs", "train") if len(t.split()) >= 30][:150]
    embedder = load_embedder()
    encode = lambda texts: embedder.encode(texts).numpy()  # noqa: E731
    return {"half_a": encode(speeches[:150]), "half_b": encode(speeches[150:]),
            "shuffled": encode(shuffle_words(speeches[150:], seed=0)), "techdocs": encode(docs)}


def test_mauve_separates_halves_shuffled_and_another_style(features):
    halves = mauve_score(features["half_a"], features["half_b"])
    shuffled = mauve_score(features["half_a"], features["shuffled"])
    other = mauve_score(features["half_a"], features["techdocs"])
    assert halves > 0.9
    # MiniLM mean-pools its token vectors, so word order moves MAUVE only a little (0.98 -> 0.93 on these texts);
    # the classifier test below separates shuffled text far more clearly
    assert shuffled < halves - 0.02
    assert other < 0.1


def test_classifier_two_sample_test_is_at_chance_on_halves_and_high_otherwise(features):
    halves = classifier_two_sample_test(features["half_a"], features["half_b"])
    shuffled = classifier_two_sample_test(features["half_a"], features["shuffled"])
    other = classifier_two_sample_test(features["half_a"], features["techdocs"])
    assert halves.ci_low < 0.5 < halves.ci_high and halves.n == 300
    assert shuffled.ci_low > 0.6
    assert other.accuracy > 0.95


def test_wilson_interval_matches_known_values():
    # Wilson (1927); e.g. 81 of 263: [0.2553, 0.3662] (Newcombe 1998, table I method 3 style check)
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=5e-4) and hi == pytest.approx(0.3662, abs=5e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_fidelity_inputs_are_checked():
    with pytest.raises(ValueError, match="finite"):
        mauve_score(np.ones((1, 4)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="folds"):
        classifier_two_sample_test(np.random.rand(3, 4), np.random.rand(3, 4))


def test_two_sample_test_says_which_texts_it_classified():
    rng = np.random.default_rng(0)
    p, q = rng.normal(0, 1, (40, 3)), rng.normal(6, 1, (25, 3))  # unequal sizes: p is subsampled to 25
    planted = np.arange(0, 40, 4)
    p[planted] = rng.normal(6, 1, (len(planted), 3))  # these p texts look like q's: the classifier gets them wrong
    test = classifier_two_sample_test(p, q, seed=1)
    n = test.per_side
    assert n == 25 and len(set(test.p_index)) == n and sorted(test.q_index) == list(range(25))
    wrong = set(test.p_index[~test.correct[:n]])
    kept = set(test.p_index) & set(planted)
    assert kept and wrong == kept  # exactly the planted texts that were classified, located by p_index
    assert test.correct[n:].mean() > 0.9
