"""dftnb.targets against float64 dense / brute-force references, on toy tensors and the tiny random model."""

import copy
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from dftnb import datastore, target_cache
from dftnb import targets as T
from dftnb.lab import data, experiments
from dftnb.lab.models import tiny_model
from dftnb.targets import SparseTarget

V = 49152
TEXTS = [
    "Now, fair Hippolyta, our nuptial hour draws on apace.",
    "To be, or not to be, that is the question.",
    "Hi",  # one token: no next-token target, skipped
    "The quality of mercy is not strained; it droppeth as the gentle rain.",
]
CORPUS = [
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date.",
    "Sometime too hot the eye of heaven shines, and often is his gold complexion dimm'd.",
]


def dense_ref(logits: torch.Tensor, k: int) -> torch.Tensor:
    """float64: exact top-k of softmax, the rest of the mass spread uniformly over the other V - k tokens."""
    p = torch.softmax(logits.double(), -1)
    n = p.shape[-1]
    top, idx = p.topk(k, -1)
    tail = (1 - top.sum(-1, keepdim=True)).clamp_min(T.TAIL_EPS) / (n - k) if k < n else torch.zeros_like(top[..., :1])
    q = tail.expand_as(p).clone()
    return q.scatter(-1, idx, top)


# ---------------------------------------------------------------------------------------------------------------
# SparseTarget
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 7, 50])
def test_from_logits_to_dense_matches_float64_reference(k):
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 50, dtype=torch.float64) * 3
    target = SparseTarget.from_logits(logits, k)
    dense = target.to_dense()
    p = torch.softmax(logits, -1)
    top, idx = p.topk(k, -1)
    assert torch.equal(target.ids, idx)
    torch.testing.assert_close(dense.gather(-1, idx), top, rtol=1e-6, atol=1e-9)  # exact top-k (float32 logprobs)
    torch.testing.assert_close(dense.sum(-1), torch.ones(3, 4, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(dense, dense_ref(logits, k), rtol=1e-5, atol=1e-9)
    if k < 50:  # off-support: uniform, equal to r / (V - k)
        off = torch.ones_like(p, dtype=torch.bool).scatter(-1, idx, False)
        tail = dense[off].reshape(3, 4, 50 - k)
        assert torch.equal(tail, tail[..., :1].expand_as(tail))
        torch.testing.assert_close(tail[..., 0], (1 - top.sum(-1)) / (50 - k), rtol=1e-5, atol=1e-9)
    else:  # k = V: no tail at all
        torch.testing.assert_close(dense, p, rtol=1e-6, atol=1e-9)
        assert torch.isinf(target.tail_logprob()).all()


def test_entropy_matches_dense():
    torch.manual_seed(1)
    logits = torch.randn(5, 40) * 2
    for k in (3, 40):
        target = SparseTarget.from_logits(logits, k)
        q = target.to_dense()
        torch.testing.assert_close(target.entropy(), -(q * q.log()).sum(-1), rtol=1e-9, atol=1e-9)


def test_from_probs_sparse_and_full():
    probs = torch.zeros(2, 30, dtype=torch.float64)
    probs[0, [4, 9]] = torch.tensor([0.75, 0.25], dtype=torch.float64)
    probs[1] = torch.softmax(torch.linspace(-2, 2, 30, dtype=torch.float64), -1)
    target = SparseTarget.from_probs(probs, 5)
    assert target.ids[0, :2].tolist() == [4, 9]
    assert len(set(target.ids[0].tolist())) == 5  # zero-probability slots: distinct ids at the floor
    assert torch.allclose(target.logprobs[0, 2:], torch.full((3,), T.pad_logprob(30, 5)))
    torch.testing.assert_close(target.to_dense()[0], probs[0], rtol=0, atol=1e-7)  # float32 logprobs
    torch.testing.assert_close(target.to_dense()[1], dense_ref(probs[1].log(), 5), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="normalise"):
        SparseTarget.from_probs(probs * 2, 5)
    with pytest.raises(ValueError, match="not logits"):
        SparseTarget.from_probs(-probs, 5)


def test_point_mass_is_one_hot_with_distinct_ids():
    tokens = torch.tensor([[0, 3], [7, 2]])
    target = SparseTarget.point_mass(tokens, 4, 10)
    assert target.ids[..., 0].tolist() == tokens.tolist()
    assert target.ids[0, 0].tolist() == [0, 1, 2, 3] and target.ids[0, 1].tolist() == [3, 0, 1, 2]
    torch.testing.assert_close(target.to_dense(), torch.nn.functional.one_hot(tokens, 10).double(), rtol=0, atol=1e-12)
    assert SparseTarget.point_mass(torch.tensor(5), 1, 10).ids.tolist() == [5]


@pytest.mark.parametrize(
    "ids, logprobs, vocab, match",
    [
        ([[0, 1]], [[-1.0]], 10, "same shape"),
        (torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0), 10, "k >= 1"),
        ([[0, 1, 2]], [[-2.0, -2.0, -2.0]], 2, "exceeds vocab_size"),
        ([[0, 12]], [[-1.0, -2.0]], 10, "different tokenizer"),
        ([[0, -1]], [[-1.0, -2.0]], 10, "different tokenizer"),
        ([[0, 1]], [[float("nan"), -1.0]], 10, "NaN"),
        ([[0, 1]], [[float("inf"), -1.0]], 10, "NaN or \\+Inf"),
        ([[0, 1]], [[0.5, -1.0]], 10, "not logits"),
        ([[0, 1]], [[-0.1, -0.2]], 10, "not normalised"),
        ([[3, 3]], [[-1.0, -2.0]], 10, "unique"),
    ],
)
def test_validation_errors(ids, logprobs, vocab, match):
    with pytest.raises(ValueError, match=match):
        SparseTarget(torch.as_tensor(ids), torch.as_tensor(logprobs), vocab)


def test_from_logits_and_truncation_kl_reject_bad_input():
    with pytest.raises(ValueError, match="NaN or Inf"):
        SparseTarget.from_logits(torch.tensor([[0.0, float("nan")]]), 1)
    with pytest.raises(ValueError, match="temperature"):
        SparseTarget.from_logits(torch.zeros(1, 4), 2, temperature=0)
    with pytest.raises(ValueError, match="k must be"):
        SparseTarget.from_logits(torch.zeros(1, 4), 5)
    with pytest.raises(ValueError, match="k must be"):
        T.truncation_kl(torch.zeros(1, 4), 0)


# ---------------------------------------------------------------------------------------------------------------
# Storage and truncation error
# ---------------------------------------------------------------------------------------------------------------


def test_truncation_kl_matches_dense_kl_and_decreases_with_k():
    torch.manual_seed(2)
    logits = torch.randn(6, 200) * 2.5
    p = torch.softmax(logits.double(), -1)
    values = []
    for k in (1, 5, 20, 100, 200):
        q = dense_ref(logits, k)
        ref = (p * (p.log() - q.log())).sum(-1)
        got = T.truncation_kl(logits, k, chunk=4)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
        values.append(got)
    assert (values[-1] == 0).all() and (values[0] > 0.1).all()
    assert all((a >= b - 1e-12).all() for a, b in zip(values, values[1:]))
    torch.testing.assert_close(T.truncation_kl_curve(logits, [1, 5, 20, 100, 200], chunk=5), torch.stack(values))


def test_storage_bytes_arithmetic():
    assert T.storage_bytes(64, 49152) == 64 * 2 + 64 * 2 + 4 == 260  # ids, logprobs, the tail mass r (float32)
    assert T.storage_bytes(8, 65536) == 36
    assert T.storage_bytes(64, 65537) == 64 * 4 + 64 * 2 + 4  # ids no longer fit uint16
    assert T.dense_storage_bytes(49152) == 98304


def test_storage_at_k64_measured_from_arrow_files(tiny, tmp_path):
    """Bytes per extra token in the saved Arrow files: rows of 32 vs 16 tokens, same row count (the per-file and
    per-row framing cancels), so this is the real on-disk cost of a target token."""
    model, tok = tiny
    short = data.pack_texts(tok, CORPUS * 3, 16, 6)
    long = data.pack_texts(tok, CORPUS * 3, 32, 6)
    sizes, totals = {}, {}
    for name, blocks in (("short", short), ("long", long)):
        ds = T.from_reference_model(model, tok, blocks, k=64, max_length=64)
        ds.select_columns(["target_ids", "target_logprobs", "target_tail_mass"]).save_to_disk(
            str(tmp_path / f"{name}-target"))
        ds.save_to_disk(str(tmp_path / f"{name}-all"))
        sizes[name] = target_cache.arrow_bytes(tmp_path / f"{name}-target")
        totals[name] = target_cache.arrow_bytes(tmp_path / f"{name}-all")
    extra_tokens = 6 * (32 - 16)
    per_token_target = (sizes["long"] - sizes["short"]) / extra_tokens
    per_token_row = (totals["long"] - totals["short"]) / extra_tokens
    assert per_token_target <= 260
    assert per_token_target == T.storage_bytes(64, V)  # fixed-size lists: no per-token offsets
    assert per_token_row == 260 + 2 + 4  # + input_ids (uint16) + labels (int32)


# ---------------------------------------------------------------------------------------------------------------
# Source (a): reference model
# ---------------------------------------------------------------------------------------------------------------


def test_from_reference_model_equals_softmax_of_model_logits(tiny):
    model, tok = tiny
    k = 8
    ds = T.from_reference_model(model, tok, TEXTS, k=k, max_length=12, batch_size=3)
    info = target_cache.target_info(ds)
    assert (info["source"], info["k"], info["vocab_size"], info["skipped"]) == ("reference", k, V, 1)
    kept = [t for t in TEXTS if len(tok(t)["input_ids"]) >= 2]
    assert len(ds) == len(kept)
    for row, text in zip(ds, kept):
        ids = tok(text)["input_ids"][:12]
        assert row["input_ids"] == ids and row["labels"] == ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        top, top_ids = logp.topk(k, -1)
        assert np.array_equal(np.array(row["target_ids"]), top_ids.numpy())
        np.testing.assert_allclose(np.array(row["target_logprobs"], dtype=np.float64), top.numpy(), atol=6e-3)


def test_batch_size_does_not_change_targets(tiny):
    model, tok = tiny
    one = T.from_reference_model(model, tok, TEXTS, k=4, batch_size=1)
    many = T.from_reference_model(model, tok, TEXTS, k=4, batch_size=4)
    assert one["target_ids"] == many["target_ids"]
    np.testing.assert_allclose(np.array(one[0]["target_logprobs"]), np.array(many[0]["target_logprobs"]), atol=4e-3)


def test_prefix_targets_equal_logits_on_prefix_plus_text(tiny):
    model, tok = tiny
    prefix = "Thou art a boil, a plague sore.\nO villain, villain, smiling, damned villain!\n"
    k = 8
    ds = T.from_reference_model(model, tok, TEXTS[:2], k=k, prefix=prefix)
    plain = T.from_reference_model(model, tok, TEXTS[:2], k=k)
    p_ids = tok(prefix)["input_ids"]
    for row, plain_row, text in zip(ds, plain, TEXTS[:2]):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == ids  # the prefix is not part of the row
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p_ids + ids])).logits[0, len(p_ids) :].double(), -1)
        top, top_ids = logp.topk(k, -1)
        assert np.array_equal(np.array(row["target_ids"]), top_ids.numpy())
        np.testing.assert_allclose(np.array(row["target_logprobs"], dtype=np.float64), top.numpy(), atol=6e-3)
        assert row["target_ids"] != plain_row["target_ids"]  # the prefix changes the targets


def test_reference_model_input_errors(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="list of texts"):
        T.from_reference_model(model, tok, "a single string")
    with pytest.raises(ValueError, match="no texts"):
        T.from_reference_model(model, tok, [])
    with pytest.raises(ValueError, match="shorter than 2 tokens"):
        T.from_reference_model(model, tok, ["Hi"])
    with pytest.raises(ValueError, match="prefix"):
        T.from_reference_model(model, tok, TEXTS, prefix="")


def test_pack_texts_cuts_the_joined_tokenisation(tiny):
    _, tok = tiny
    blocks = data.pack_texts(tok, CORPUS, 10)
    joined = []
    for text in CORPUS:
        joined += tok(text, add_special_tokens=False)["input_ids"] + tok("\n\n", add_special_tokens=False)["input_ids"]
    assert all(len(b) == 10 for b in blocks) and len(blocks) == len(joined) // 10
    assert sum(blocks, []) == joined[: 10 * len(blocks)]
    assert len(data.pack_texts(tok, CORPUS, 10, max_blocks=2)) == 2


# ---------------------------------------------------------------------------------------------------------------
# Source (b): sampled completions and the prefix trie
# ---------------------------------------------------------------------------------------------------------------


def test_prefix_trie_counts_hand_checked():
    seqs = [[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3, 6], [7]]
    expected = {
        (): Counter({1: 4, 7: 1}),
        (1,): Counter({2: 3, 5: 1}),
        (1, 2): Counter({3: 2, 4: 1}),
        (1, 2, 3): Counter({6: 1}),
    }
    assert T.prefix_trie_counts(seqs) == expected


def test_counts_to_target_hand_checked():
    ids, lp = T.counts_to_target(Counter({5: 3, 2: 1}), k=4, vocab_size=10)
    assert ids.tolist() == [5, 2, 0, 1]  # two observed tokens, then the smallest unused ids
    np.testing.assert_allclose(lp[:2], [math.log(0.75), math.log(0.25)], rtol=1e-6)
    assert np.allclose(lp[2:], math.log(1e-12 / 6))
    ids, lp = T.counts_to_target(Counter({1: 4, 2: 3, 3: 2, 4: 1}), k=2, vocab_size=10)
    assert ids.tolist() == [1, 2]
    dense = SparseTarget.from_stored(ids, lp, 10).to_dense()
    np.testing.assert_allclose(dense.numpy(), [0.3 / 8, 0.4, 0.3] + [0.3 / 8] * 7, rtol=1e-6)  # 0.3 tail over 8
    assert T.counts_to_target(Counter({7: 1, 3: 1}), k=2, vocab_size=10)[0].tolist() == [3, 7]  # ties by id
    with pytest.raises(ValueError, match="non-empty"):
        T.counts_to_target(Counter(), 2, 10)


@pytest.fixture(scope="module")
def peaked(tiny):
    """The tiny model with a 40x LM head: sampled completions share prefixes and branch (a trie worth testing)."""
    model, tok = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model, tok


def test_from_samples_targets_are_empirical_trie_distributions(peaked):
    model, tok = peaked
    prompts, n, k = ["Once upon", "The king"], 8, 4
    ds = T.from_samples(model, tok, prompts, n=n, max_new_tokens=5, temperature=4.0, k=k, seed=0)
    assert len(ds) == n * len(prompts)
    branched = repeated = 0
    for i, prompt in enumerate(prompts):
        p_ids = tok(prompt)["input_ids"]
        P = len(p_ids)
        rows = ds.select(range(i * n, (i + 1) * n))
        completions = [row["input_ids"][P:] for row in rows]
        for row, comp in zip(rows, completions):
            assert row["input_ids"][:P] == p_ids and row["labels"] == [-100] * P + comp
            target = SparseTarget.from_stored(row["target_ids"], row["target_logprobs"], V).to_dense()
            for j in range(len(comp)):
                # brute force: among this prompt's completions with the same first j tokens, count the next one
                nxt = Counter(c[j] for c in completions if len(c) > j and c[:j] == comp[:j])
                total = sum(nxt.values())
                kept = sorted(nxt.items(), key=lambda kv: (-kv[1], kv[0]))[:k]  # top-k, ties by id
                dropped = 1 - sum(c for _, c in kept) / total
                want = torch.full((V,), max(dropped, 1e-12) / (V - k), dtype=torch.float64)
                for tok_id, c in kept:
                    want[tok_id] = c / total
                torch.testing.assert_close(target[P - 1 + j], want, rtol=2e-3, atol=1e-6)  # fp16 logprobs
                branched += len(nxt) > 1
                repeated += max(nxt.values()) > 1
            # prompt positions and the last position: placeholders with all mass on the next token / EOS
            for t in range(P - 1):
                assert target[t, row["input_ids"][t + 1]] == 1.0
            assert target[-1, tok.eos_token_id] == 1.0
    assert branched and repeated  # the toy actually exercised shared prefixes and branching
    again = T.from_samples(model, tok, prompts, n=n, max_new_tokens=5, temperature=4.0, k=k, seed=0)
    assert again["input_ids"] == ds["input_ids"]  # seeded


def test_from_samples_cuts_after_eos(peaked):
    model, tok = peaked
    model = copy.deepcopy(model)
    model.generation_config.eos_token_id = 1980  # the token this peaked model samples first at temperature 2
    ds = T.from_samples(model, tok, ["Once upon"], n=3, max_new_tokens=6, temperature=2.0, k=4)
    P = len(tok("Once upon")["input_ids"])
    assert [row["input_ids"][P:] for row in ds] == [[1980]] * 3  # stopped right after the first EOS
    assert T._cut_at_eos([5, 6, 2, 2, 2], {2}) == [5, 6, 2] and T._cut_at_eos([5, 6], {2}) == [5, 6]
    with pytest.raises(ValueError, match="empty prompt"):
        T.from_samples(model, tok, [""], n=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature"):
        T.from_samples(model, tok, ["a b"], n=2, max_new_tokens=2, temperature=0)


# ---------------------------------------------------------------------------------------------------------------
# Source (c): kNN-LM
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distance", ["squared_l2", "l2"])
def test_knn_neighbours_match_brute_force_loop(distance):
    torch.manual_seed(3)
    keys = torch.randn(60, 5)
    values = torch.randint(0, 9, (60,))
    store = datastore.KNNDatastore(keys, values)
    queries = torch.cat([torch.randn(4, 5), keys[7:8]])  # the last query is a stored key
    vals, weights = datastore.knn_neighbours(queries, store, k_neighbors=6, temperature=2.0, distance=distance, chunk=2)
    for q, v_got, w_got in zip(queries.double(), vals, weights):
        dists = []
        for key, value in zip(keys.double(), values.tolist()):  # loop over every datastore entry
            d = float(((key - q) ** 2).sum())
            dists.append((d if distance == "squared_l2" else math.sqrt(d), value))
        near = sorted(dists)[:6]
        w = torch.tensor([math.exp(-d / 2.0) for d, _ in near], dtype=torch.float64)
        assert v_got.tolist() == [v for _, v in near]
        torch.testing.assert_close(w_got.double(), w / w.sum(), rtol=1e-5, atol=1e-7)
    assert vals[-1, 0] == values[7] and weights[-1, 0] == weights[-1].max()
    with pytest.raises(ValueError, match="k_neighbors"):
        datastore.knn_neighbours(queries, store, 61, 1.0)
    with pytest.raises(ValueError, match="knn_temperature"):
        datastore.knn_neighbours(queries, store, 2, 0.0)


def test_from_corpus_equals_brute_force_knn_lm(tiny):
    model, tok = tiny
    k, kn, lam, temp = 8, 5, 0.4, 5.0
    query = ["Thou art more lovely than the summer rain.", "Rough winds do shake the darling buds."]
    ds = T.from_corpus(model, tok, CORPUS, query, k_neighbors=kn, lam=lam, knn_temperature=temp, k=k,
                       max_datastore_tokens=40, block_size=16)
    assert target_cache.target_info(ds)["datastore_tokens"] == 40
    # brute force in float64: keys from a float64 copy of the model, one loop over datastore entries per query
    m64 = copy.deepcopy(model).double()
    blocks = data.pack_texts(tok, CORPUS, 16)
    entries = []
    for block in blocks:
        with torch.no_grad():
            hidden = m64(torch.tensor([block]), output_hidden_states=True).hidden_states[-1][0]
        entries += [(hidden[t], block[t + 1]) for t in range(len(block) - 1)]
    entries = entries[:40]
    for row, text in zip(ds, query):
        ids = tok(text)["input_ids"]
        assert row["input_ids"] == ids
        with torch.no_grad():
            out = m64(torch.tensor([ids]), output_hidden_states=True)
        got = SparseTarget.from_stored(row["target_ids"], row["target_logprobs"], V)
        for t in range(len(ids)):
            h = out.hidden_states[-1][0, t]
            near = sorted(((float(((key - h) ** 2).sum()), v) for key, v in entries), key=lambda x: x[0])[:kn]
            w = torch.tensor([math.exp(-d / temp) for d, _ in near], dtype=torch.float64)
            q = (1 - lam) * torch.softmax(out.logits[0, t], -1)
            for (_, v), wi in zip(near, w / w.sum()):
                q[v] += lam * wi
            stored_ids = got.ids[t]
            np.testing.assert_allclose(got.logprobs[t].double().numpy(), q[stored_ids].log().numpy(), atol=6e-3)
            # the stored ids are a top-k of q (up to float32 ties among near-equal reference probabilities)
            assert q[stored_ids].min() >= q.topk(k).values[-1] * (1 - 1e-4)
            assert q[stored_ids].sum() > lam  # the kNN mass is on the support


def test_from_corpus_grid_matches_from_corpus_and_its_temperature(tiny):
    """The grid shares one forward pass and search: at target temperature 1 each configuration is from_corpus's
    target; at tau the stored log-probabilities are those of q^(1/tau) renormalised (float64 reference from the
    tau = 1 row's dense mixture), and a hotter target has more entropy."""
    from dftnb.datastore import build_datastore

    model, tok = tiny
    k, kn, temp = 8, 5, 5.0
    query = ["Thou art more lovely than the summer rain.", "Rough winds do shake the darling buds."]
    store = build_datastore(model, tok, CORPUS, 40, 16)
    grid = T.from_corpus_grid(model, tok, query, store, [(0.4, 1.0), (1.0, 1.0), (0.4, 2.0)], k_neighbors=kn,
                              knn_temperature=temp, k=k)
    assert list(grid) == [(0.4, 1.0), (1.0, 1.0), (0.4, 2.0)]
    assert target_cache.target_info(grid[(0.4, 2.0)])["target_temperature"] == 2.0
    for lam in (0.4, 1.0):
        one = T.from_corpus(model, tok, None, query, k_neighbors=kn, lam=lam, knn_temperature=temp, k=k,
                            datastore=store)
        for a, b in zip(one, grid[(lam, 1.0)]):
            assert a["input_ids"] == b["input_ids"]
            np.testing.assert_allclose(np.exp(a["target_logprobs"]), np.exp(b["target_logprobs"]), atol=1e-6)
    # tau = 2 against the dense mixture recomputed in float64 from the same model and neighbours
    ids = torch.tensor([tok(query[0])["input_ids"]])
    with torch.no_grad():
        logits, hidden = T.forward_with_hidden(model, ids, torch.ones_like(ids), want_hidden=True)
    values, weights = datastore.knn_neighbours(hidden[0], store, kn, temp)
    q = T.knn_lm_mixture(logits[0].double(), values, weights.double(), 0.4).double()
    hot = torch.softmax(q.log() / 2.0, -1)
    row = grid[(0.4, 2.0)][0]
    stored = torch.tensor(row["target_ids"]).long()
    # stored in float16: half an ulp at |log q| in [8, 16) is 0.004
    np.testing.assert_allclose(np.asarray(row["target_logprobs"]), hot.gather(-1, stored).log().numpy(), atol=4e-3)
    assert not np.allclose(np.asarray(row["target_logprobs"]), np.asarray(grid[(0.4, 1.0)][0]["target_logprobs"]),
                           atol=0.05)  # and tau = 2 is not the tau = 1 target
    cold = SparseTarget.from_stored(grid[(0.4, 1.0)][0]["target_ids"], grid[(0.4, 1.0)][0]["target_logprobs"], V)
    warm = SparseTarget.from_stored(row["target_ids"], row["target_logprobs"], V)
    assert (warm.entropy() > cold.entropy()).all()
    with pytest.raises(ValueError, match="distinct"):
        T.from_corpus_grid(model, tok, query, store, [(0.4, 1.0), (0.4, 1.0)])
    with pytest.raises(ValueError, match="lam must be in"):
        T.from_corpus_grid(model, tok, query, store, [(1.5, 1.0)])


def test_datastore_scaling_against_float64_brute_force(tiny):
    model, tok = tiny
    kn, lam, temp, sizes = 4, 0.4, 5.0, (8, 24, 40)
    queries = [tok(t)["input_ids"] for t in TEXTS]
    rows = datastore.datastore_scaling(model, tok, CORPUS, queries, sizes, k_neighbors=kn, knn_temperature=temp,
                                       lam=lam, block_size=16)
    assert list(rows.datastore_keys) == list(sizes) and set(rows["index"]) == {"flat"}
    # nested stores under exact search: the nearest key never gets farther as the store grows
    assert (rows.neighbour_sq_dist.diff().dropna() <= 1e-5).all()
    # float64 brute force over the largest store: one loop over every entry per query position
    m64 = copy.deepcopy(model).double()
    entries = []
    for block in data.pack_texts(tok, CORPUS, 16):
        with torch.no_grad():
            hidden = m64(torch.tensor([block]), output_hidden_states=True).hidden_states[-1][0]
        entries += [(hidden[t], block[t + 1]) for t in range(len(block) - 1)]
    entries = entries[: max(sizes)]
    hits, p_y, nll, kl = [], [], [], []
    for ids in (q for q in queries if len(q) > 1):
        with torch.no_grad():
            out = m64(torch.tensor([ids]), output_hidden_states=True)
        for t in range(len(ids) - 1):
            h, y = out.hidden_states[-1][0, t], ids[t + 1]
            near = sorted(((float(((key - h) ** 2).sum()), v) for key, v in entries), key=lambda x: x[0])[:kn]
            w = torch.softmax(torch.tensor([-d / temp for d, _ in near], dtype=torch.float64), 0)
            p_ref = torch.softmax(out.logits[0, t], -1)
            q = (1 - lam) * p_ref
            for (_, v), wi in zip(near, w):
                q[v] += lam * wi
            pk = sum(float(wi) for (_, v), wi in zip(near, w) if v == y)
            hits.append(pk > 0)
            p_y.append(pk)
            nll.append(-math.log(q[y]))
            kl.append(float((q * (q.log() - p_ref.log())).sum()))
    last = rows.iloc[-1]
    assert last.positions == len(hits) and last.hit_rate == pytest.approx(np.mean(hits))
    assert last.p_knn_y == pytest.approx(np.mean(p_y), abs=1e-4)
    assert last.nll_target == pytest.approx(np.mean(nll), abs=1e-4)
    assert last.kl_target_reference == pytest.approx(np.mean(kl), abs=1e-4)
    # λ = 0: the target is the reference
    ref_only = datastore.datastore_scaling(model, tok, CORPUS, queries, (8,), k_neighbors=kn, lam=0.0, block_size=16)
    assert ref_only.nll_target[0] == pytest.approx(ref_only.nll_reference[0], abs=1e-6)
    assert abs(ref_only.kl_target_reference[0]) < 1e-6
    with pytest.raises(ValueError, match="k_neighbors"):
        datastore.datastore_scaling(model, tok, CORPUS, queries, (2, 8), k_neighbors=kn)


def test_knn_lm_mixture_sums_to_one_and_checks_lam():
    logits = torch.randn(3, 12)
    vals = torch.tensor([[1, 1, 4], [0, 2, 2], [5, 6, 7]])
    w = torch.softmax(torch.randn(3, 3), -1)
    q = datastore.knn_lm_mixture(logits, vals, w, 0.3)
    torch.testing.assert_close(q.sum(-1), torch.ones(3))
    torch.testing.assert_close(q[0, 1], 0.7 * torch.softmax(logits[0], -1)[1] + 0.3 * (w[0, 0] + w[0, 1]))
    with pytest.raises(ValueError, match="lam"):
        datastore.knn_lm_mixture(logits, vals, w, 1.5)


# ---------------------------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------------------------


def test_cache_hit_mismatch_and_foreign_folder(tiny, tmp_path):
    model, tok = tiny
    calls = []

    def builder(k):
        def build():
            calls.append(k)
            return T.from_reference_model(model, tok, TEXTS[:2], k=k)

        return build

    meta4 = target_cache.target_metadata(model, tok, source="reference", corpus="toy", k=4, texts=2)
    path = tmp_path / "toy-targets"
    first = target_cache.build_or_load(path, meta4, builder(4))
    again = target_cache.build_or_load(path, meta4, builder(4))
    assert calls == [4] and again["target_ids"] == first["target_ids"]
    side = json.loads((path / target_cache.SIDECAR).read_text())
    assert side["metadata"]["k"] == 4 and side["metadata"]["tokenizer_hash"] == target_cache.tokenizer_hash(tok)

    meta8 = {**meta4, "k": 8}
    with pytest.raises(target_cache.StaleTargetCacheError, match=r"stale \(k: cached 4 != wanted 8\).*rebuild='auto'"):
        target_cache.build_or_load(path, meta8, builder(8), rebuild="never")
    assert calls == [4]  # refused, nothing rebuilt or lost
    rebuilt = target_cache.build_or_load(path, meta8, builder(8))
    assert calls == [4, 8] and len(rebuilt[0]["target_ids"][0]) == 8

    foreign_tok = {**meta8, "tokenizer_hash": "0" * 64}
    with pytest.raises(target_cache.StaleTargetCacheError, match="tokenizer_hash"):
        target_cache.build_or_load(path, foreign_tok, builder(8), rebuild="never")
    # a key that names another tokenizer than the one the builder used is refused, not saved under the wrong key
    with pytest.raises(ValueError, match="builder recorded another tokenizer than the metadata"):
        target_cache.build_or_load(path, foreign_tok, builder(8))
    assert calls == [4, 8, 8] and target_cache.read_sidecar(path)["metadata"]["tokenizer_hash"] != "0" * 64

    other_model, _ = tiny_model(seed=1, tokenizer=tok)
    assert target_cache.target_metadata(other_model, tok, source="reference", corpus="toy", k=4, texts=2) != meta4

    (tmp_path / "foreign").mkdir()
    with pytest.raises(target_cache.StaleTargetCacheError, match="not written by dftnb"):
        target_cache.build_or_load(tmp_path / "foreign", meta4, builder(4))
    with pytest.raises(target_cache.StaleTargetCacheError, match="no target cache"):
        target_cache.build_or_load(tmp_path / "missing", meta4, builder(4), rebuild="never")
    with pytest.raises(ValueError, match="same k"):
        target_cache.build_or_load(tmp_path / "wrong-k", meta8, builder(4))
    with pytest.raises(ValueError, match="lacks"):
        target_cache.build_or_load(tmp_path / "x", {"k": 4}, builder(4))
    assert not (tmp_path / "wrong-k").exists()


# ---------------------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------------------


def test_collator_pads_rows_and_yields_valid_sparse_target(tiny):
    model, tok = tiny
    ds = T.from_reference_model(model, tok, TEXTS, k=4)
    rows = [ds[0], ds[1]]
    from dftnb.trainer import SparseTargetCollator

    collate = SparseTargetCollator(tok.pad_token_id, pad_to_multiple_of=8)
    batch = collate(rows)
    n0, n1 = len(rows[0]["input_ids"]), len(rows[1]["input_ids"])
    Tmax = batch["input_ids"].shape[1]
    assert Tmax % 8 == 0 and Tmax >= max(n0, n1)
    assert batch["attention_mask"].sum(1).tolist() == [n0, n1]
    assert (batch["labels"][1, n1:] == -100).all() and batch["labels"][1, :n1].tolist() == rows[1]["labels"]
    target = T.batch_sparse_target(batch, V)
    assert target.ids.shape == (2, Tmax, 4) and target.logprobs.dtype == torch.float32
    assert target.ids[0, :n0].tolist() == rows[0]["target_ids"]
    torch.testing.assert_close(target.logprobs[0, :n0], torch.tensor(rows[0]["target_logprobs"]))
    pad = target[1, n1:].to_dense()  # padding rows: any valid distribution (their labels are -100)
    torch.testing.assert_close(pad.sum(-1), torch.ones(Tmax - n1, dtype=torch.float64))
    torch_rows = list(ds.with_format("torch").select([0, 1]))
    assert torch.equal(collate(torch_rows)["target_ids"], batch["target_ids"])


# ---------------------------------------------------------------------------------------------------------------
# Helpers the chapters use
# ---------------------------------------------------------------------------------------------------------------


def test_loss_positions_and_target_entropies():
    assert T.loss_positions([-100, -100, 5, 6]).tolist() == [1, 2]
    torch.manual_seed(4)
    logits = torch.randn(4, 30) * 2
    target = SparseTarget.from_logits(logits, 3)
    row = {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4],
           "target_ids": target.ids.numpy(), "target_logprobs": target.logprobs.numpy()}
    ds = target_cache.rows_to_dataset([row], 3, 30)
    stored = SparseTarget.from_stored(ds[0]["target_ids"], ds[0]["target_logprobs"], 30,
                                      ds[0]["target_tail_mass"]).to_dense()[[1, 2]]
    np.testing.assert_allclose(T.target_entropies(ds), -(stored * stored.log()).sum(-1).numpy(), rtol=1e-9)


def test_reference_logits_match_model_and_samples_accept_token_prompts(peaked):
    model, tok = peaked
    ids = tok(TEXTS[0])["input_ids"][:6]
    (logits,) = T.reference_logits(model, tok, [ids])
    with torch.no_grad():
        torch.testing.assert_close(logits, model(torch.tensor([ids])).logits[0])
    ds = T.from_samples(model, tok, [ids], n=4, max_new_tokens=2, temperature=4.0, k=4)
    assert all(row["input_ids"][:6] == ids for row in ds)


def test_shakespeare_targets_built_once_then_loaded(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(target_cache, "target_cache_path", lambda name: tmp_path / name)
    ds = experiments.shakespeare_targets("smoke", model, tok)
    n_seqs, seq_len = experiments.SHAKESPEARE_TARGET_SIZES["smoke"]
    assert len(ds) == n_seqs and all(len(x) == seq_len for x in ds["input_ids"])
    assert len(ds[0]["target_ids"][0]) == 64
    stamp = (tmp_path / "shakespeare-train-reference-k64-smoke" / target_cache.SIDECAR).stat().st_mtime_ns
    again = experiments.shakespeare_targets("smoke", model, tok, rebuild="never")
    assert again["target_ids"] == ds["target_ids"]
    assert (tmp_path / "shakespeare-train-reference-k64-smoke" / target_cache.SIDECAR).stat().st_mtime_ns == stamp


# ---------------------------------------------------------------------------------------------------------------
# The stored tail mass r
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("V", [4_096, 49_152, 50_000])  # 50,000: V mod 2,048 = 848 entries join the candidates
def test_top_k_through_column_maxima_equals_torch_topk(V):
    from dftnb.sparse_target import top_k

    g = torch.Generator().manual_seed(V)
    z = torch.randn(6, V, generator=g, dtype=torch.float64)
    z[1, :64] += 10  # all of the top-k in the first 64 entries (one per column)
    z[2, ::2048] += 10  # all of the top-k in one column: the k best columns must hold them
    z[3, -40:] += 10  # all of the top-k among the last entries
    z[4] = torch.randint(0, 5, (V,), generator=g).double()  # ties everywhere: only the values are determined
    for k in (1, 7, 64):
        top, ids = top_k(z, k)
        want = z.topk(k, dim=-1)
        torch.testing.assert_close(top, want.values, rtol=0, atol=0)
        torch.testing.assert_close(z.gather(-1, ids), top, rtol=0, atol=0)  # ids point at those values
        assert (ids.sort(-1).values.diff(dim=-1) > 0).all()  # distinct
        exact = torch.tensor([0, 1, 2, 3, 5])  # rows without ties: the same ids as torch.topk
        assert torch.equal(ids[exact], want.indices[exact])


def test_from_logits_at_full_vocab_matches_a_float64_dense_reference():
    """float32 logits at V = 49,152 (the column-maxima top-k, the in-place tail) against log_softmax in float64."""
    g = torch.Generator().manual_seed(7)
    z = torch.randn(3, 5, 49_152, generator=g) * 3
    z[0, 0, :8] += 30  # tail mass ~1e-10
    z[1, 2, 100:] = float("-inf")  # tokens of probability 0 off the support are fine
    for k, temperature in ((64, 1.0), (5, 0.7)):
        target = SparseTarget.from_logits(z, k, temperature)
        logp = torch.log_softmax((z / temperature).double(), -1)  # the same float32 z / T, then float64
        top, ids = logp.topk(k, -1)
        assert torch.equal(target.ids, ids)
        # float32 rounding in units of the largest |z / T| (57 at T = 0.7: an ulp is 3.8e-6): z/T - logsumexp takes a
        # few roundings, whose order depends on the CPU's vector width (AMD and Intel differ by ~3 ulps here)
        atol = 8 * torch.finfo(torch.float32).eps * float((z / temperature).abs().max())
        torch.testing.assert_close(target.logprobs.double(), top, rtol=0, atol=atol)
        tail = logp.scatter(-1, ids, float("-inf")).logsumexp(-1).exp()  # the off-support mass, float64
        # r = exp(log-space tail mass): an absolute error in log space is a relative error of r
        torch.testing.assert_close(target.r.double(), tail, rtol=atol, atol=0)
    for bad in (float("nan"), float("inf")):
        z2 = z.clone()
        z2[2, 3, 40_000] = bad  # off the support and inside it alike
        with pytest.raises(ValueError, match="NaN or Inf"):
            SparseTarget.from_logits(z2, 64)


def test_builders_store_the_exact_tail_mass():
    torch.manual_seed(5)
    logits = torch.randn(3, 200, dtype=torch.float64) * 4
    logits[0, :3] += 40  # a tail of ~1e-15: 1 - sum(top) would be pure rounding
    p = torch.softmax(logits, -1)
    for k in (1, 3, 50):
        exact = p.sort(-1, descending=True).values[:, k:].sum(-1)  # float64 sum of the tail itself
        got = SparseTarget.from_logits(logits.float(), k).r.double()
        torch.testing.assert_close(got, exact, rtol=1e-5, atol=0)
        torch.testing.assert_close(SparseTarget.from_probs(p.float(), k).r.double(), exact, rtol=1e-5, atol=1e-12)
    assert (SparseTarget.from_logits(logits, 200).r == 0).all()
    assert (SparseTarget.point_mass(torch.tensor([3, 4]), 4, 10).r == 0).all()
    assert T.counts_tail_mass(Counter({1: 4, 2: 3, 3: 2, 4: 1}), 2) == pytest.approx(0.3)


def test_rows_without_the_tail_column_get_it_from_float64_sums():
    lp = np.log(np.array([[0.5, 0.3], [0.9, 0.1 - 1e-9]]))
    row = {"input_ids": [1, 2], "labels": [1, 2], "target_ids": [[0, 1], [0, 1]], "target_logprobs": lp}
    ds = target_cache.rows_to_dataset([row], 2, 10)
    np.testing.assert_allclose(ds[0]["target_tail_mass"], [0.2, 1e-9], rtol=1e-4)
    bad = {**row, "target_tail_mass": [0.2]}
    with pytest.raises(ValueError, match="one value per token"):
        target_cache.rows_to_dataset([bad], 2, 10)


@pytest.mark.parametrize(
    "r, match",
    [(torch.tensor([0.2, 0.2]), "one value per position"), (torch.tensor([-0.1]), "in \\[0, 1\\]"),
     (torch.tensor([float("nan")]), "finite"), (torch.tensor([0.6]), "does not belong")],
)
def test_tail_mass_validation(r, match):
    with pytest.raises(ValueError, match=match):
        SparseTarget(torch.tensor([[0, 1]]), torch.log(torch.tensor([[0.5, 0.3]])), 10, r)
    SparseTarget(torch.tensor([[0, 1]]), torch.log(torch.tensor([[0.5, 0.3]])), 10, torch.tensor([0.2]))


# ---------------------------------------------------------------------------------------------------------------
# Sampled targets (Anshumann et al., ACL 2025)
# ---------------------------------------------------------------------------------------------------------------


def test_sampled_from_logits_stores_the_empirical_frequencies_of_the_draws():
    torch.manual_seed(6)
    logits = torch.randn(2, 5, 30) * 2
    n, k = 12, 16
    got = SparseTarget.sampled_from_logits(logits, n, k=k, temperature=0.8, generator=torch.Generator().manual_seed(3))
    # brute force: the same draws (same generator state), counted one position at a time
    draws = torch.multinomial(torch.softmax(logits / 0.8, -1).reshape(-1, 30), n, replacement=True,
                              generator=torch.Generator().manual_seed(3))
    assert got.ids.shape == (2, 5, k) and (got.r == 0).all()
    for pos, (ids, lp) in enumerate(zip(got.ids.reshape(-1, k), got.logprobs.reshape(-1, k))):
        counts = Counter(draws[pos].tolist())
        want = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # count desc, then id
        m = len(want)
        assert ids[:m].tolist() == [t for t, _ in want]
        np.testing.assert_allclose(lp[:m].numpy(), [math.log(c / n) for _, c in want], rtol=1e-6)
        assert torch.allclose(lp[m:], torch.full((k - m,), T.pad_logprob(30, k)))
        assert ids[m:].tolist() == sorted(set(range(30)) - set(counts))[: k - m]  # smallest unused ids
    torch.testing.assert_close(got.to_dense().sum(-1), torch.ones(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="slots"):
        SparseTarget.sampled_from_logits(logits, 20, k=8)
    with pytest.raises(ValueError, match="n \\(tokens drawn"):
        SparseTarget.sampled_from_logits(logits, 0)


def test_from_reference_model_sampled_and_topk(tiny):
    model, tok = tiny
    ds = T.from_reference_model(model, tok, TEXTS, k=8, sampling="sampled", n=6, seed=1)
    again = T.from_reference_model(model, tok, TEXTS, k=8, sampling="sampled", n=6, seed=1)
    assert ds["target_ids"] == again["target_ids"]  # seeded
    info = target_cache.target_info(ds)
    assert (info["sampling"], info["n"]) == ("sampled", 6)
    for row in ds:
        lp = np.array(row["target_logprobs"], dtype=np.float64)
        used = lp > T.pad_logprob(V, 8) + 1
        counts = np.exp(lp[used]) * 6
        np.testing.assert_allclose(counts, np.round(counts), atol=2e-2)  # multiples of 1/n (float16 storage)
        assert (used.sum(-1) <= 6).all() and np.allclose(row["target_tail_mass"], 0)
    topk = T.from_reference_model(model, tok, TEXTS[:1], k=8)
    assert (np.array(topk[0]["target_tail_mass"]) > 0).all()
    with pytest.raises(ValueError, match="sampling must be"):
        T.from_reference_model(model, tok, TEXTS, sampling="nucleus")
    with pytest.raises(ValueError, match="raise k or lower n"):
        T.from_reference_model(model, tok, TEXTS, k=4, sampling="sampled", n=9)


def test_from_corpus_sampled(tiny):
    model, tok = tiny
    ds = T.from_corpus(model, tok, CORPUS, TEXTS[:2], k_neighbors=3, k=8, max_datastore_tokens=30, block_size=16,
                       sampling="sampled", n=8, seed=0)
    assert target_cache.target_info(ds)["sampling"] == "sampled"
    lp = np.array(ds[0]["target_logprobs"], dtype=np.float64)
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, atol=3e-3)


# ---------------------------------------------------------------------------------------------------------------
# Bias and cost at equal storage (dftnb.target_bias)
# ---------------------------------------------------------------------------------------------------------------


def test_gradient_error_table_against_direct_computation():
    from dftnb import target_bias

    g = torch.Generator().manual_seed(0)
    zt, zs = torch.randn(6, 50, generator=g) * 2, torch.randn(6, 50, generator=g)
    table = target_bias.gradient_error(zt, zs, ks=(4, 50), ns=(8,), draws=4, chunk=4)
    assert len(table) == 2 * 3 + 1 and set(table["bytes/token"]) == {T.storage_bytes(4, 50), T.storage_bytes(50, 50),
                                                                       T.storage_bytes(8, 50)}
    # top-4 uniform, by hand: the dense uniform-tail target q, gradient s - q, against s - p
    p, s = torch.softmax(zt.double(), -1), torch.softmax(zs.double(), -1)
    q = SparseTarget.from_logits(zt.double(), 4).to_dense()
    cos = torch.nn.functional.cosine_similarity(s - q, s - p, dim=-1).mean().item()
    rel = ((p - q).norm(dim=-1) / (s - p).norm(dim=-1)).mean().item()
    kl = (q * (q / p).log()).sum(-1).mean().item()
    row = table[(table["target"] == "top-k uniform") & (table["k or n"] == 4)].iloc[0]
    assert row["cosine"] == pytest.approx(cos, rel=1e-9) and row["relative error"] == pytest.approx(rel, rel=1e-9)
    assert row["truncation KL"] == pytest.approx(kl, rel=1e-9)
    assert row["relative error, mean of 4"] == pytest.approx(rel, rel=1e-9)  # deterministic: no variance to average
    bucket = table[(table["target"] == "top-k bucket") & (table["k or n"] == 4)].iloc[0]
    assert bucket["truncation KL"] == pytest.approx(0, abs=1e-12)
    full = table[table["k or n"] == 50]
    assert np.allclose(full["cosine"], 1) and np.allclose(full["relative error"], 0, atol=1e-9)
    sampled = table[table["target"] == "sampled"].iloc[0]
    assert sampled["relative error, mean of 4"] < sampled["relative error"]  # variance averages out


def test_self_target_gradients_table():
    from dftnb import target_bias

    z = torch.randn(8, 60, generator=torch.Generator().manual_seed(1)) * 3
    table = target_bias.self_target_gradients(z, k=6, n=6, draws=16, chunk=3).set_index(["target", "tail",
                                                                                           "divergence"])
    norm = table["mean ‖∇z D‖"]
    for d in ("forward_kl", "reverse_kl"):
        assert norm[("top-6", "bucket", d)] < 1e-12
        assert norm[("top-6", "uniform", d)] > 1e-2
    assert norm[("top-6", "renormalize", "reverse_kl")] < 1e-12 and norm[("top-6", "renormalize", "forward_kl")] > 1e-2
    single, mean = norm[("sampled n=6", "uniform", "forward_kl")], norm[("sampled n=6, mean of 16", "uniform",
                                                                        "forward_kl")]
    assert mean < 0.4 * single  # ~ 1/sqrt(16) of a single draw: unbiased
    with pytest.raises(ValueError, match="closed-form"):
        target_bias.self_target_gradients(z, divergences=("wasserstein_sorted",))


def test_faiss_exact_index_returns_the_brute_force_neighbours():
    gen = torch.Generator().manual_seed(3)
    keys, values = torch.randn(500, 16, generator=gen), torch.randint(0, 50, (500,), generator=gen)
    queries = torch.randn(40, 16, generator=gen)
    brute = datastore.KNNDatastore(keys, values)
    exact = datastore.KNNDatastore(keys, values, datastore.faiss_index(keys, "flat"))
    for distance in ("squared_l2", "l2"):
        v0, w0 = datastore.knn_neighbours(queries, brute, 8, 2.0, distance=distance)
        v1, w1 = datastore.knn_neighbours(queries, exact, 8, 2.0, distance=distance)
        # two code paths (torch vs faiss): the weights agree up to float32 rounding, and neighbours may only trade
        # places where their weights tie to that rounding (none do on these random keys)
        assert torch.allclose(w0, w1, atol=1e-5)
        swapped = v0 != v1
        assert swapped.float().mean() < 0.01 and (w0[swapped] - w1[swapped]).abs().le(1e-5).all()
    assert datastore.faiss_index(keys, "auto").ntotal == 500 and exact.key_bytes() == 64


def test_faiss_ivfpq_index_compresses_keys_and_finds_most_neighbours():
    gen = torch.Generator().manual_seed(4)
    centres = torch.randn(64, 32, generator=gen) * 4
    keys = centres[torch.randint(0, 64, (20_000,), generator=gen)] + torch.randn(20_000, 32, generator=gen)
    values = torch.arange(20_000)
    queries = centres[torch.randint(0, 64, (200,), generator=gen)] + torch.randn(200, 32, generator=gen)
    index = datastore.faiss_index(keys, "ivfpq", nlist=64, m=16, nbits=8, nprobe=16)
    store = datastore.KNNDatastore(None, values, index)
    assert store.key_bytes() == 16  # 16 one-byte codes per key instead of 128 bytes of fp32
    approx, _ = datastore.knn_neighbours(queries, store, 10, 1.0)
    exact, _ = datastore.knn_neighbours(queries, datastore.KNNDatastore(keys, values), 10, 1.0)
    recall = np.mean([len(set(a.tolist()) & set(e.tolist())) / 10 for a, e in zip(approx, exact)])
    assert recall > 0.5
    ivf = datastore.faiss_index(keys, "ivfflat", nlist=64, nprobe=16)  # exact distances, only the probing approximates
    flat, _ = datastore.knn_neighbours(queries, datastore.KNNDatastore(None, values, ivf), 10, 1.0)
    recall_flat = np.mean([len(set(a.tolist()) & set(e.tolist())) / 10 for a, e in zip(flat, exact)])
    assert recall_flat > max(recall, 0.9)
    with pytest.raises(ValueError, match="multiple of m"):
        datastore.faiss_index(keys, "ivfpq", m=5)
    with pytest.raises(ValueError, match="too few"):
        datastore.faiss_index(keys[:100], "ivfpq", nlist=64, m=16)
