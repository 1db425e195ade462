"""dftnb: Distribution Fine-Tuning (DFT) of language models.

DFT trains a causal LM's next-token *distribution* ``p`` toward a target distribution ``q`` (reverse KL, forward KL,
JSD, Wasserstein, ...) instead of the one-hot cross-entropy of supervised fine-tuning. Not to be confused with
"Dynamic Fine-Tuning" (arXiv 2508.05629), which reweights the SFT loss.

The public API, importable from the package itself::

    import dftnb
    targets = dftnb.from_reference_model(reference, tokenizer, texts, k=64)      # a datasets.Dataset
    trainer = dftnb.build_trainer(student, tokenizer, targets, dftnb.DFTConfig("reverse_kl", tail="bucket"), args)
    trainer.train()

* target format and builders: :class:`SparseTarget`, :func:`from_reference_model`, :func:`from_samples`,
  :func:`from_corpus` (and :func:`from_corpus_grid`: several kNN weights and target temperatures in one pass),
  :func:`build_datastore`, the on-disk cache :func:`build_or_load` / :func:`target_metadata`, and
  :func:`target_statistics`: how far a target set sits from the model it will train (KL, entropies);
* divergences (one function each, formula and paper in the docstring) and the chunked objective :func:`dft_loss`;
* training: :class:`DFTConfig`, :class:`DFTTrainer` (a ``transformers.Trainer``), :func:`build_trainer`,
  :class:`SparseTargetCollator`, and the registry of methods :data:`METHOD_REGISTRY` (name -> :class:`Method`: the
  divergence it trains with, its table label, whether it reads a target); :func:`interpolate_weights` (WiSE-FT),
  the cheapest way to fine-tune less;
* inference: the ``LogitsProcessor`` samplers ``generate()`` lacks, :func:`sampler_kwargs`, and the block denoiser
  :func:`denoise_generate`.

Names are imported on first use, so ``import dftnb`` stays cheap (no torch or transformers until they are needed).
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "sparse_target": ["SparseTarget", "TAIL_MODES"],
    "targets": ["from_reference_model", "from_samples", "from_corpus", "from_corpus_grid"],
    "target_statistics": ["target_statistics"],
    "weight_interpolation": ["interpolate_weights"],
    "datastore": ["build_datastore", "KNNDatastore"],
    "target_cache": ["build_or_load", "target_metadata"],
    "losses": ["forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd", "wasserstein_sorted", "sinkhorn", "ce",
               "label_smoothing", "gem", "LOSSES"],
    "objective": ["dft_loss"],
    "methods": ["Method", "METHOD_REGISTRY"],
    "trainer": ["DFTConfig", "DFTTrainer", "SparseTargetCollator", "build_trainer", "METHODS"],
    "sampling": ["DynamicTemperatureLogitsProcessor", "EDTLogitsProcessor", "TopNSigmaLogitsProcessor",
                 "MirostatV2LogitsProcessor", "TargetEntropyLogitsProcessor", "sampler_kwargs"],
    "denoise": ["denoise_generate"],
}
_WHERE = {name: module for module, names in _API.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'dftnb' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
