"""Fine-tuning a causal LM into the SSD-LM-style block denoiser of :mod:`dftnb.denoise` (docs/design.md, denoiser).

SSD-LM (Han et al. 2023, "SSD-LM: Semi-autoregressive Simplex-based Diffusion Language Model for Text Generation and
Modular Control", ACL) works at ``K = 5`` because its model is trained on noisy simplex inputs; an off-the-shelf
causal LM never saw ``softmax(x_t) · E``. This module trains one with the package's trainer and chunked loss.

A training row is a clean token sequence ``s_0 .. s_{n-1}``. :class:`DenoiserCollator` draws a block start ``P`` in
``[min_prefix, n - B]`` and a noise level ``u ~ U(0, 1)`` per row, ``ᾱ = ᾱ(u)`` of the schedule (continuous, so the
steps of a sampler with any ``S`` are covered), and cuts the row after the block. :class:`DenoiserTrainer` feeds

* positions ``t < P``: the clean prefix ``E[s_t]``, as the sampler's KV cache holds it;
* block positions ``t = P .. P+B-1``: ``softmax(x_t) · E`` with
  ``x_t = sqrt(ᾱ) · K (2 · onehot(s_t) - 1) + σ · sqrt(1 - ᾱ) · K · ε`` (:func:`dftnb.denoise.noisy_simplex`, the
  function the sampler re-noises with),

and reads the loss at the hidden states ``P-1 .. P+B-2``, which predict ``s_P .. s_{P+B-1}``: block position ``i``
from input position ``i - 1`` (position 0 from the clean prefix), exactly as :func:`dftnb.denoise.denoise_generate`
reads its predictions. Two objectives, both through :class:`dftnb.trainer.DFTConfig`:

* **CE**: ``-log p(s_{P+i} | s_{<P}, x_t)`` (``divergence="ce"``): the denoiser learns the clean token;
* **DFT**: ``D(p ‖ q_{P+i})`` with ``q_{P+i}`` the reference model's distribution given the *clean* prefix
  ``s_{<P+i}``, the :class:`~dftnb.sparse_target.SparseTarget` stored with the row
  (:func:`dftnb.targets.from_reference_model`): the denoiser learns to output a distribution, not a token.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .denoise import SCHEDULES, alpha_bar, noisy_simplex, simplex_embeds
from .targets import IGNORE_INDEX
from .trainer import DFTConfig, DFTTrainer, SparseTargetCollator, build_trainer, train_method

PER_TOKEN_COLUMNS = ("input_ids", "attention_mask", "labels", "target_ids", "target_logprobs", "target_tail_mass")


@dataclass
class DenoiserConfig:
    """How the block of a training row is noised (the sampler's ``block_size``, ``K``, ``schedule``, ``σ``).

    Attributes:
        block_size: ``B``, the block positions fed as noisy simplex inputs (use the sampler's ``block_size``).
        K: scale of the ``±K`` simplex representation (SSD-LM: 5).
        schedule: ``"cosine"`` or ``"linear"`` ``ᾱ(u)``, ``u ~ U(0, 1)`` per row.
        noise_scale: ``σ``, multiplies the Gaussian term (1 is SSD-LM's forward process).
        min_prefix: clean tokens before the block (at least 1: block position 0 is predicted from the prefix).
        max_prefix: at most this many clean tokens before the block (``None``: up to the row's end; a cap shortens
            the rows, so a step costs less).
        zero_noise_fraction: share of rows noised with ``σ = 0`` (``x_t = sqrt(ᾱ) · x0``, the sampler's zero-noise
            path, whose soft inputs the invariant reads); the others get ``σ = noise_scale``.
        prefix_loss: also train the clean prefix positions (the plain next-token objective) besides the block.
        train_embeddings: also train the input embedding matrix (and a tied LM head); off by default, see
            :func:`freeze_embeddings`.
        seed: seeds the collator's draws of block starts and noise levels.
    """

    block_size: int = 8
    K: float = 5.0
    schedule: str = "cosine"
    noise_scale: float = 1.0
    min_prefix: int = 4
    max_prefix: int | None = None
    zero_noise_fraction: float = 0.0
    prefix_loss: bool = False
    train_embeddings: bool = False
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.block_size, int) and self.block_size >= 1):
            raise ValueError(f"denoiser block_size must be an int >= 1, got {self.block_size!r}.")
        if not self.K > 0:
            raise ValueError(f"denoiser K must be > 0, got {self.K}; SSD-LM trains and samples at K = 5.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"denoiser schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if not self.noise_scale >= 0:
            raise ValueError(f"denoiser noise_scale must be >= 0, got {self.noise_scale}; 1 is SSD-LM's.")
        if not (isinstance(self.min_prefix, int) and self.min_prefix >= 1):
            raise ValueError(f"denoiser min_prefix must be an int >= 1 (block position 0 is read from the prefix), "
                             f"got {self.min_prefix!r}.")
        if self.max_prefix is not None and not (isinstance(self.max_prefix, int) and self.max_prefix >= self.min_prefix):
            raise ValueError(f"denoiser max_prefix must be None or an int >= min_prefix = {self.min_prefix}, got "
                             f"{self.max_prefix!r}.")
        if not 0.0 <= self.zero_noise_fraction <= 1.0:
            raise ValueError(f"denoiser zero_noise_fraction must be in [0, 1], got {self.zero_noise_fraction}.")


def block_inputs_embeds(
    model, input_ids: torch.Tensor, block_start: torch.Tensor, alpha_bars: torch.Tensor, config: DenoiserConfig,
    noise_scales: torch.Tensor | None = None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(rows, T, d)`` input embeddings: the model's own embedding of ``input_ids``, with the ``B`` positions from
    ``block_start[r]`` of row ``r`` replaced by ``softmax(x_t) · E``, ``x_t`` = :func:`dftnb.denoise.noisy_simplex`
    of the clean block tokens at ``ᾱ = alpha_bars[r]`` and ``σ = noise_scales[r]`` (default ``config.noise_scale``;
    one Gaussian ``ε`` per position and vocabulary entry)."""
    layer = model.get_input_embeddings()
    weight = layer.weight
    rows, length = input_ids.shape
    positions = block_start.long().view(-1, 1) + torch.arange(config.block_size, device=input_ids.device)
    if rows and int(positions.max()) >= length:
        raise ValueError(f"a block ends at position {int(positions.max())} but the rows have {length} tokens; "
                         "batches for the denoiser come from DenoiserCollator, which keeps every block in its row.")
    tokens = input_ids.gather(1, positions)
    vocab = weight.shape[0]
    if noise_scales is None:
        noise_scales = torch.full((rows,), float(config.noise_scale), device=input_ids.device)
    noise = None
    if bool((noise_scales > 0).any()):  # σ_r · ε: noisy_simplex at σ = 1 with the row's scale folded into ε
        noise = torch.randn(rows, config.block_size, vocab, generator=generator, device=weight.device)
        noise = noise * noise_scales.to(noise).view(-1, 1, 1)
    x = noisy_simplex(tokens, vocab, config.K, alpha_bars.view(-1, 1, 1), 1.0 if noise is not None else 0.0, noise)
    # E is read without gradient here: every row of E carries softmax mass in the mixture, so Adam would move all
    # 49k rows by about the learning rate each step in one shared direction and drag the mean embedding that a
    # K = 5 input is mostly made of (0.69 of its mass at V = 49,152); E still trains through the prefix and LM head.
    soft = simplex_embeds(x, weight.detach())
    embeds = layer(input_ids)
    return embeds.scatter(1, positions.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]), soft.to(embeds.dtype))


class DenoiserCollator(SparseTargetCollator):
    """Cut each row after a randomly placed block and mark the block: adds ``block_start``, ``alpha_bar`` and
    ``noise_scale`` (each ``(rows,)``) to :class:`~dftnb.trainer.SparseTargetCollator`'s batch.

    Labels before the block are ``-100`` unless ``prefix_loss``; the row's own ``-100`` labels are kept.
    """

    def __init__(self, pad_token_id: int, denoiser: DenoiserConfig, k: int | None = None):
        super().__init__(pad_token_id, k)
        self.denoiser = denoiser
        self.rng = np.random.default_rng(denoiser.seed)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        cfg = self.denoiser
        cut, starts = [], []
        for i, row in enumerate(features):
            n = len(row["input_ids"])
            if n < cfg.min_prefix + cfg.block_size:
                raise ValueError(
                    f"row {i} has {n} tokens but the denoiser needs min_prefix + block_size = "
                    f"{cfg.min_prefix} + {cfg.block_size}: use longer rows (data.block_size) or lower "
                    "denoiser.block_size / denoiser.min_prefix."
                )
            last = n - cfg.block_size if cfg.max_prefix is None else min(n - cfg.block_size, cfg.max_prefix)
            start = int(self.rng.integers(cfg.min_prefix, last + 1))
            end = start + cfg.block_size
            new = {key: (value[:end] if key in PER_TOKEN_COLUMNS and value is not None else value)
                   for key, value in row.items()}
            labels = np.array(row.get("labels", row["input_ids"]), dtype=np.int64)[:end]
            if not cfg.prefix_loss:
                labels[:start] = IGNORE_INDEX
            new["labels"] = labels
            cut.append(new)
            starts.append(start)
        batch = super().__call__(cut)
        u = self.rng.random(len(features))
        zero = self.rng.random(len(features)) < cfg.zero_noise_fraction
        batch["block_start"] = torch.tensor(starts, dtype=torch.long)
        batch["alpha_bar"] = torch.tensor([alpha_bar(x, 1.0, cfg.schedule) for x in u], dtype=torch.float32)
        batch["noise_scale"] = torch.tensor(np.where(zero, 0.0, cfg.noise_scale), dtype=torch.float32)
        return batch


class DenoiserTrainer(DFTTrainer):
    """:class:`~dftnb.trainer.DFTTrainer` on noisy simplex block inputs (see the module docstring): the batch's block
    positions are fed as ``softmax(x_t) · E``, the prefix as token embeddings, and the loss is the trainer's own
    (CE or a DFT divergence against the stored targets) at the positions that predict the block's tokens."""

    def __init__(self, *args, denoiser: DenoiserConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.denoiser = denoiser or DenoiserConfig()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "block_start" not in inputs or "alpha_bar" not in inputs:
            raise ValueError("the batch has no block_start/alpha_bar: train the denoiser with DenoiserCollator "
                             "(build_denoiser_trainer sets it up).")
        unwrapped = self.accelerator.unwrap_model(model)
        embeds = block_inputs_embeds(unwrapped, inputs["input_ids"], inputs["block_start"], inputs["alpha_bar"],
                                     self.denoiser, inputs.get("noise_scale"))
        return super().compute_loss(model, {**inputs, "inputs_embeds": embeds}, return_outputs, num_items_in_batch)


def freeze_embeddings(model, denoiser: DenoiserConfig) -> None:
    """Unless ``denoiser.train_embeddings``, take the input embedding matrix ``E`` (and a tied LM head) out of training.

    A ``K = 5`` input is mostly the mean embedding ``Ē`` (``softmax(±K)`` leaves 0.69 of its mass spread over the
    other 49,151 tokens), and every row of ``E`` gets gradient through a softmax (the LM head's, the mixture's): Adam
    then moves all rows by about the learning rate per step in one shared direction, ``Ē`` with them, and the inputs
    the denoiser must read drift away under it. With ``E`` fixed the layers learn to read a fixed ``Ē``.
    """
    if not denoiser.train_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)


def build_denoiser_trainer(model, tokenizer, dataset, dft_config: DFTConfig, args, denoiser: DenoiserConfig,
                           **kwargs) -> DenoiserTrainer:
    """:func:`dftnb.trainer.build_trainer` with :class:`DenoiserTrainer` and :class:`DenoiserCollator`."""
    return build_trainer(model, tokenizer, dataset, dft_config, args, trainer_class=DenoiserTrainer,
                         data_collator=DenoiserCollator(tokenizer.pad_token_id, denoiser), denoiser=denoiser, **kwargs)


def train_denoiser(
    model: torch.nn.Module,
    tokenizer,
    dataset,
    method: str,
    output_dir: str | Path,
    *,
    denoiser: DenoiserConfig | None = None,
    save_dir: str | Path | None = None,
    **train_args,
):
    """Fine-tune ``model`` as a block denoiser with ``method`` (``"sft"``: CE on the clean block tokens;
    ``"dft_forward_kl"``, ``"dft_reverse_kl"``, ...: the divergence to the stored targets) and return
    ``(model, history)`` like :func:`dftnb.trainer.train_method`; ``save_dir`` also receives ``denoiser.json``.
    The one training wrapper :func:`dftnb.trainer.train_method` runs it, with :func:`build_denoiser_trainer` as its
    builder; every other argument (``dft_config``, ``callbacks``, ``verbose``, ``resume_from_checkpoint``,
    ``TrainingArguments`` fields) is passed to it."""
    denoiser = denoiser or DenoiserConfig()
    freeze_embeddings(model, denoiser)
    model, history = train_method(model, tokenizer, dataset, method, output_dir, save_dir=save_dir,
                                  build=partial(build_denoiser_trainer, denoiser=denoiser), **train_args)
    if save_dir is not None:
        (Path(save_dir) / "denoiser.json").write_text(json.dumps(asdict(denoiser), indent=1))
    return model, history
