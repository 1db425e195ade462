"""Distribution Fine-Tuning with the Hugging Face ``Trainer`` (docs/design.md: divergences, bad inputs).

``DFTTrainer`` swaps the one-hot cross-entropy of supervised fine-tuning for a divergence between the student's
next-token distribution ``p = softmax(z / τ)`` and a target ``q`` (a :class:`~dftnb.targets.SparseTarget` stored with
the dataset), optionally mixed with cross-entropy::

    L = λ · CE(p, y) + (1 − λ) · D(p, q)        (λ = ``DFTConfig.ce_weight``)

Everything else (optimiser, schedule, gradient accumulation, checkpoint/resume, DDP through ``torchrun`` or
``accelerate launch``) is the stock ``transformers.Trainer``. The loss never materialises ``(B·T, V)`` logits: the
model body returns hidden states and :func:`dftnb.objective.dft_loss` applies the LM head chunk by chunk.

Dataset rows (one per sequence) hold ``input_ids`` (T), ``labels`` (T, -100 = no loss) and, for divergences that
need a target, ``target_ids`` / ``target_logprobs`` (T × k). Row ``t`` of the target is the distribution of token
``t + 1`` given tokens ``≤ t``, aligned with the logits at position ``t`` (the shift HF uses for ``labels``).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from .losses import BASELINES, LOSSES, loss_options
from .methods import divergences
from .objective import dft_loss
from .sparse_target import check_tail
from .targets import IGNORE_INDEX, SparseTarget, batch_sparse_target

# Config fields of HF models whose logits are transformed after the LM head (Gemma 2/3 soft-capping, Cohere and
# Granite scaling); a value of None (or 1 for the scales) means no transformation.
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")
# Method names used by the notebooks and the CLI -> the loss of dftnb.losses they train with (one of LOSSES): the
# trainer's view of the one method registry, dftnb.methods.METHOD_REGISTRY.
METHODS = divergences()


@dataclass
class DFTConfig:
    """What ``DFTTrainer.compute_loss`` optimises: ``λ · CE + (1 − λ) · divergence(p_τ, q)``.

    Attributes:
        divergence: one of :data:`dftnb.losses.LOSSES` (``"ce"`` is SFT, ``"gem"`` is GEM; these need no target).
        temperature: τ in ``p = softmax(z / τ)`` inside the divergence.
        ce_weight: λ ∈ [0, 1], the weight of the one-hot cross-entropy on the labels.
        chunk_size: tokens per chunk when the LM head is applied inside the loss (memory knob, not maths).
        divergence_kwargs: extra keyword arguments of the divergence (``beta`` for JSD, ``alpha`` for skew KL, ...).
        tail: how the divergence reads the target's tail mass, one of :data:`dftnb.sparse_target.TAIL_MODES`
            (``"uniform"``, the default, ``"bucket"`` or ``"renormalize"``; docs/design.md, targets); passed to
            :func:`dftnb.objective.dft_loss`, ignored by the baselines.
        target_vocab_size: ``V`` the targets were built with; checked against the student's LM head.
        log_stats: log ``divergence``, ``ce`` and the student's mean ``entropy`` next to ``loss``.
    """

    divergence: str = "reverse_kl"
    temperature: float = 1.0
    ce_weight: float = 0.0
    chunk_size: int = 256
    divergence_kwargs: dict = field(default_factory=dict)
    target_vocab_size: int | None = None
    log_stats: bool = True
    tail: str = "uniform"

    def __post_init__(self):
        if self.divergence in METHODS:
            self.divergence = METHODS[self.divergence]
        if self.divergence not in LOSSES:
            raise ValueError(
                f"unknown divergence {self.divergence!r}; choose one of {LOSSES} or a method name {tuple(METHODS)}."
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0 (inf makes every distribution uniform), got "
                             f"{self.temperature}.")
        if not 0.0 <= self.ce_weight <= 1.0:
            raise ValueError(f"ce_weight (λ in λ·CE + (1−λ)·D) must be in [0, 1], got {self.ce_weight}.")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}.")
        check_tail(self.tail)
        self.divergence_kwargs = dict(self.divergence_kwargs or {})
        options = loss_options(self.divergence)
        unknown = sorted(set(self.divergence_kwargs) - set(options))
        if unknown:
            raise ValueError(f"{self.divergence} does not take {unknown}; its divergence_kwargs are {options or 'none'}.")

    @property
    def needs_target(self) -> bool:
        """Whether the objective reads ``target_ids``/``target_logprobs`` (false for CE, label smoothing, GEM)."""
        return self.divergence not in BASELINES and self.ce_weight < 1.0

    def loss(self, hidden, target, lm_head_weight, labels, embeddings=None, num_items_in_batch=None, ce_weight=None):
        """:func:`dftnb.objective.dft_loss` of this objective on already shifted ``hidden`` states and ``labels``.

        ``embeddings`` is the input embedding table (Sinkhorn's ground cost, unless ``divergence_kwargs`` sets one);
        ``ce_weight`` overrides λ (the trainer logs the divergence alone with ``ce_weight=0``).
        """
        extra = dict(self.divergence_kwargs)
        if self.divergence == "sinkhorn" and "embeddings" not in extra:
            extra["embeddings"] = None if embeddings is None else embeddings.detach()
        return dft_loss(
            hidden,
            target,
            self.divergence,
            lm_head_weight=lm_head_weight,
            labels=labels,
            temperature=self.temperature,
            ce_weight=self.ce_weight if ce_weight is None else ce_weight,
            num_items_in_batch=num_items_in_batch,
            chunk_size=self.chunk_size,
            tail=self.tail,
            **extra,
        )

    def target(self, batch: dict, vocab_size: int) -> SparseTarget | None:
        """The ``SparseTarget`` of a collated ``batch`` at the predicted positions (``[:, :-1]``), or ``None``."""
        if not self.needs_target:
            return None
        if "target_ids" not in batch:
            raise ValueError(
                f"divergence {self.divergence!r} needs target_ids/target_logprobs in the dataset; build them with "
                "dftnb.targets, or train with divergence='ce' (SFT) or 'gem', which need no target."
            )
        keys = [key for key in ("target_ids", "target_logprobs", "target_tail_mass") if key in batch]
        return batch_sparse_target({key: batch[key][:, :-1] for key in keys}, vocab_size)


class SparseTargetCollator:
    """Pad a list of dataset rows into a training batch (right padding).

    Returns ``input_ids``, ``attention_mask`` and ``labels`` as ``(B, T)`` int64 tensors (labels ``-100`` at padding;
    rows without ``labels`` use their ``input_ids``) and, when the rows carry targets, ``target_ids`` ``(B, T, k)``
    int64 and ``target_logprobs`` ``(B, T, k)`` float32. Padding positions get the uniform distribution over the ids
    ``0..k-1`` (a valid distribution; those positions are masked by their ``-100`` label anyway).
    """

    def __init__(self, pad_token_id: int, k: int | None = None, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: set tokenizer.pad_token = tokenizer.eos_token before collating.")
        self.pad_token_id = int(pad_token_id)
        self.k = k
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch.")
        lengths = [len(f["input_ids"]) for f in features]
        if min(lengths) == 0:
            raise ValueError("a row has no input_ids; drop empty sequences from the dataset before training.")
        length = max(lengths)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_size = len(features)
        input_ids = torch.full((batch_size, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
        for i, (row, n) in enumerate(zip(features, lengths)):
            input_ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            mask = row.get("attention_mask")
            attention_mask[i, :n] = 1 if mask is None else torch.as_tensor(mask, dtype=torch.long)
            row_labels = row.get("labels", row["input_ids"])
            if len(row_labels) != n:
                raise ValueError(f"row {i}: {len(row_labels)} labels for {n} input_ids; they must have the same length.")
            labels[i, :n] = torch.as_tensor(row_labels, dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

        has_target = ["target_ids" in f and f["target_ids"] is not None for f in features]
        if any(has_target) and not all(has_target):
            raise ValueError("some rows have target_ids and some do not; build targets for every row of the dataset.")
        if all(has_target):
            batch.update(self._pad_targets(features, lengths, length))
        return batch

    def _pad_targets(self, features: list[dict], lengths: list[int], length: int) -> dict[str, torch.Tensor]:
        k = self.k if self.k is not None else len(features[0]["target_ids"][0])
        pad_ids = torch.arange(k, dtype=torch.long)
        pad_logprobs = torch.full((k,), -math.log(k), dtype=torch.float32)
        target_ids = pad_ids.repeat(len(features), length, 1)
        target_logprobs = pad_logprobs.repeat(len(features), length, 1)
        # the exact tail mass r when the rows store it (padding is a full uniform distribution over k ids: r = 0)
        has_tail = features[0].get("target_tail_mass") is not None
        tail_mass = torch.zeros(len(features), length, dtype=torch.float32)
        for i, (row, n) in enumerate(zip(features, lengths)):
            ids = torch.as_tensor(row["target_ids"], dtype=torch.long)
            logprobs = torch.as_tensor(row["target_logprobs"], dtype=torch.float32)
            if ids.shape != (n, k) or logprobs.shape != (n, k):
                raise ValueError(
                    f"row {i}: target_ids {tuple(ids.shape)} / target_logprobs {tuple(logprobs.shape)} but the row has "
                    f"{n} tokens and the batch uses k={k}; targets need one row of k entries per input token "
                    "(rebuild the targets for this dataset, with the same k for every row)."
                )
            target_ids[i, :n] = ids
            target_logprobs[i, :n] = logprobs
            if has_tail:
                tail_mass[i, :n] = torch.as_tensor(row["target_tail_mass"], dtype=torch.float32).reshape(n)
        out = {"target_ids": target_ids, "target_logprobs": target_logprobs}
        if has_tail:
            out["target_tail_mass"] = tail_mass
        return out


def final_hidden_states(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, object]:
    """Run ``model`` (possibly DDP-wrapped) and return the decoder's final hidden states ``(B, T, H)`` and its output.

    Works for any HF causal LM whose ``get_decoder()`` returns the body (``LlamaModel``, ``MistralModel``, ...): a
    forward hook on the body captures ``last_hidden_state`` (after the final norm, i.e. the LM head's input) while the
    call still goes through the outer (DDP) module, so gradient synchronisation and ``no_sync`` under gradient
    accumulation keep working. ``logits_to_keep=1`` makes the model compute logits for the last position only, so the
    ``(B, T, V)`` logits are never materialised; those last-position logits serve as a consistency check.
    """
    unwrapped = model.module if hasattr(model, "module") else model
    decoder = unwrapped.get_decoder() if hasattr(unwrapped, "get_decoder") else None
    if decoder is None or decoder is unwrapped:
        raise ValueError(
            f"{type(unwrapped).__name__} has no separate decoder body (get_decoder()); DFTTrainer needs a causal LM "
            "with a body + LM head (AutoModelForCausalLM)."
        )
    captured = {}

    def capture(module, args, output):
        captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    # inputs_embeds (the denoiser's noisy simplex inputs, dftnb.denoise_training) replace the token ids when given
    fed = {"inputs_embeds": inputs["inputs_embeds"]} if "inputs_embeds" in inputs else {"input_ids": inputs["input_ids"]}
    kwargs = {**fed, "attention_mask": inputs.get("attention_mask"), "use_cache": False}
    if "logits_to_keep" in inspect.signature(unwrapped.forward).parameters:
        kwargs["logits_to_keep"] = 1
    handle = decoder.register_forward_hook(capture)
    try:
        outputs = model(**kwargs)
    finally:
        handle.remove()
    if "hidden" not in captured:
        raise RuntimeError(f"the decoder body of {type(unwrapped).__name__} did not run; cannot read hidden states.")
    return captured["hidden"], outputs


@torch.no_grad()
def student_stats(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over unmasked positions of the cross-entropy ``−log p(y)`` and the entropy ``H(p) = −Σ p log p``.

    ``p = softmax(h Wᵀ)`` at temperature 1 (the distribution the model samples from), computed in float32 chunks of
    ``chunk_size`` tokens without gradients. ``hidden`` ``(..., H)`` and ``labels`` ``(...)`` are already shifted.
    Returns ``(ce_sum, entropy_sum, count)`` as float64 scalars.
    """
    mask = labels != IGNORE_INDEX
    h = hidden[mask]
    y = labels[mask]
    ce = torch.zeros((), dtype=torch.float64, device=hidden.device)
    ent = torch.zeros((), dtype=torch.float64, device=hidden.device)
    for start in range(0, h.shape[0], chunk_size):
        logits = torch.nn.functional.linear(h[start : start + chunk_size], lm_head_weight).float()
        logp = torch.log_softmax(logits, dim=-1)
        ce -= logp.gather(-1, y[start : start + chunk_size, None]).double().sum()
        ent -= (logp.exp() * logp).sum(-1).double().sum()
    return ce, ent, torch.tensor(float(h.shape[0]), dtype=torch.float64, device=hidden.device)


class DFTTrainer(Trainer):
    """``transformers.Trainer`` whose loss is ``λ · CE + (1 − λ) · D(p_τ ‖ q)`` from :func:`dftnb.objective.dft_loss`.

    Usage::

        trainer = DFTTrainer(model=model, args=TrainingArguments(...), train_dataset=ds,
                             data_collator=SparseTargetCollator(tokenizer.pad_token_id),
                             dft_config=DFTConfig(divergence="reverse_kl"))
        trainer.train()                       # or trainer.train(resume_from_checkpoint=True)

    The loss is a sum over the predicted positions of the whole accumulated (and, under DDP, global) batch divided by
    their count ``num_items_in_batch``, so gradient accumulation and data parallelism reproduce the big-batch
    gradient. ``log_history`` gets ``divergence``, ``ce`` and ``entropy`` (token means since the last log) next to
    ``loss``. ``remove_unused_columns`` is switched off because the target columns are not model inputs.
    """

    def __init__(self, *args, dft_config: DFTConfig | None = None, **kwargs):
        training_args = kwargs.get("args")
        if training_args is not None and training_args.remove_unused_columns:
            training_args.remove_unused_columns = False
        super().__init__(*args, **kwargs)
        self.dft_config = dft_config or DFTConfig()
        head = self.model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(self.model).__name__} has no output embeddings (LM head); use a causal LM.")
        if getattr(head, "bias", None) is not None:
            raise ValueError(
                "the LM head has a bias, which the chunked DFT loss (hidden @ Wᵀ) does not apply; use a model whose "
                "LM head is a bias-free linear layer."
            )
        config = getattr(self.model, "config", None)
        post = [key for key in LOGIT_POSTPROCESSING if getattr(config, key, None) not in (None, 1, 1.0)]
        if post:
            raise ValueError(
                f"the model's config sets {post}: its logits are post-processed after the LM head, which the chunked "
                "DFT loss (hidden @ Wᵀ) does not reproduce. Use a model whose logits are the plain LM-head output."
            )
        student_vocab = head.weight.shape[0]
        target_vocab = self.dft_config.target_vocab_size
        if target_vocab is not None and target_vocab != student_vocab:
            raise ValueError(
                f"the targets were built for a vocabulary of {target_vocab} tokens but the student's LM head has "
                f"{student_vocab} outputs: rebuild the targets with the student's tokenizer and model family."
            )
        self._head_checked = False
        self._stat_sums = None

    # -- batch bookkeeping ---------------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect the micro-batches of one optimiser step and count their predicted positions (``labels[:, 1:]``).

        The count is summed over processes when ``average_tokens_across_devices`` (the default), so every rank
        divides its token-sum by the same global number.
        """
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batch_samples:
            return batch_samples, None
        count = sum((b["labels"][:, 1:] != IGNORE_INDEX).sum() for b in batch_samples)
        count = torch.as_tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return batch_samples, count

    # -- the loss ------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``λ · CE + (1 − λ) · D`` over positions ``t`` with ``labels[t + 1] != -100`` (hidden ``[:, :-1]``).

        Normalised by ``num_items_in_batch`` when the Trainer passes it (sum over the accumulated batch / count),
        otherwise a mean over this batch's predicted positions.
        """
        cfg = self.dft_config
        hidden, outputs = final_hidden_states(model, inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        weight = unwrapped.get_output_embeddings().weight
        self._check_finite(hidden, outputs)
        if not self._head_checked:
            self._check_head(hidden, weight, outputs)
        labels = inputs["labels"][:, 1:]
        shifted = hidden[:, :-1]
        target = cfg.target(inputs, weight.shape[0])
        embeddings = unwrapped.get_input_embeddings().weight
        loss = cfg.loss(shifted, target, weight, labels, embeddings, num_items_in_batch)
        if not torch.isfinite(loss):
            raise RuntimeError(self._nan_message("the DFT loss"))
        # training_step divides by the accumulation steps only when the loss is a per-batch mean.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if model.training and cfg.log_stats:
            self._accumulate_stats(loss, shifted, target, weight, labels, num_items_in_batch, embeddings)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # DDP averages gradients over ranks; each rank's loss is (its token-sum) / (global count).
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _check_finite(self, hidden: torch.Tensor, outputs) -> None:
        logits = getattr(outputs, "logits", None)
        if not torch.isfinite(hidden).all() or (logits is not None and not torch.isfinite(logits).all()):
            raise RuntimeError(self._nan_message("the student's hidden states / logits"))

    def _nan_message(self, what: str) -> str:
        return (
            f"{what} contain NaN or Inf at step {self.state.global_step}. Lower the learning rate, keep "
            "max_grad_norm > 0, train in float32 or bf16 rather than fp16, check the targets; then resume with "
            f"trainer.train(resume_from_checkpoint=True) from the last checkpoint in {self.args.output_dir}."
        )

    @torch.no_grad()
    def _check_head(self, hidden: torch.Tensor, weight: torch.Tensor, outputs) -> None:
        """Once: the model's own last-position logits must equal ``hidden @ Wᵀ`` (no soft-capping or scaling)."""
        logits = getattr(outputs, "logits", None)
        if logits is None:
            raise ValueError("the model returned no logits; DFTTrainer needs an HF causal LM output.")
        mine = torch.nn.functional.linear(hidden[:, -1], weight).float()
        theirs = logits[:, -1].float()
        tol = 1e-2 * (1.0 + theirs.abs().max())
        if (mine - theirs).abs().max() > tol:
            raise ValueError(
                f"{type(self.accelerator.unwrap_model(self.model)).__name__} post-processes its logits (soft-capping, "
                "scaling or a bias): the chunked DFT loss applies only hidden @ Wᵀ and would train a different "
                "distribution. Use a model whose logits are the plain LM-head output."
            )
        self._head_checked = True

    @torch.no_grad()
    def _accumulate_stats(self, loss, hidden, target, weight, labels, num_items_in_batch, embeddings) -> None:
        cfg = self.dft_config
        ce_sum, ent_sum, count = student_stats(hidden, weight, labels, cfg.chunk_size)
        if cfg.ce_weight == 0.0:
            divergence_mean = loss.detach().double()
            if num_items_in_batch is not None:
                divergence_mean = divergence_mean * torch.as_tensor(num_items_in_batch).double() / count.clamp_min(1)
        elif target is None and cfg.divergence not in BASELINES:
            # λ = 1: pure CE, the divergence term is not part of the objective (and no target was read)
            divergence_mean = torch.tensor(float("nan"), dtype=torch.float64, device=hidden.device)
        else:
            divergence_mean = cfg.loss(hidden, target, weight, labels, embeddings, ce_weight=0.0).double()
        sums = torch.stack([divergence_mean * count, ce_sum, ent_sum, count])
        self._stat_sums = sums if self._stat_sums is None else self._stat_sums + sums

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the token means of ``divergence``, ``ce`` and ``entropy`` since the last log to a training log."""
        if "loss" in logs and self._stat_sums is not None:
            sums = self._stat_sums
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            div, ce, ent, count = sums.tolist()
            if count > 0:
                if math.isfinite(div):
                    logs["divergence"] = div / count
                logs["ce"] = ce / count
                logs["entropy"] = ent / count
            self._stat_sums = None
        super().log(logs, start_time)


@torch.no_grad()
def evaluate_objective(
    model: torch.nn.Module, dataset, dft_config: DFTConfig, pad_token_id: int, batch_size: int = 8
) -> float:
    """Token mean of the training objective ``λ · CE + (1 − λ) · D(p_τ, q)`` of ``model`` over ``dataset``, no update.

    Same shift and masking as :meth:`DFTTrainer.compute_loss` (predicted positions ``labels[:, 1:] != -100``).
    """
    collate = SparseTargetCollator(pad_token_id)
    weight = model.get_output_embeddings().weight
    device = weight.device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = {key: value.to(device) for key, value in collate(rows).items()}
            hidden, _ = final_hidden_states(model, batch)
            labels = batch["labels"][:, 1:]
            n = int((labels != IGNORE_INDEX).sum())
            if n == 0:
                continue
            target = dft_config.target(batch, weight.shape[0])
            loss = dft_config.loss(hidden[:, :-1], target, weight, labels, model.get_input_embeddings().weight)
            total += float(loss) * n
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the dataset has no predicted position (every label is -100); nothing to evaluate.")
    return total / count


class StepTimer(TrainerCallback):
    """Record the wall-clock seconds since the start of training at each optimiser step (``seconds`` in the history)."""

    def __init__(self):
        self.start = None
        self.seconds = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds[state.global_step] = time.perf_counter() - self.start


def history_frame(log_history: list[dict], method: str | None = None, timer: StepTimer | None = None) -> pd.DataFrame:
    """One row per logged training step: ``step, loss, divergence, ce, entropy, learning_rate, grad_norm, ...``."""
    rows = [dict(r) for r in log_history if "loss" in r and "train_runtime" not in r]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if timer is not None:
        df["seconds"] = df["step"].map(timer.seconds)
    if method is not None:
        df.insert(0, "method", method)
    return df


def recorded_vocab_size(dataset) -> int | None:
    """The ``vocab_size`` a :mod:`dftnb.targets` builder recorded in a dataset with target columns, else ``None``.

    Raises when the dataset has ``target_ids`` but no builder record (the student's vocabulary could not be checked).
    """
    if "target_ids" not in dataset.column_names:
        return None
    from .target_cache import target_info

    return int(target_info(dataset)["vocab_size"])


def build_trainer(model, tokenizer, dataset, dft_config: DFTConfig, args: TrainingArguments, *,
                  trainer_class: type[DFTTrainer] | None = None, data_collator=None, **kwargs) -> DFTTrainer:
    """``DFTTrainer`` on ``dataset`` with the sparse-target collator; fills ``dft_config.target_vocab_size`` from the
    dataset's builder record so a student with another vocabulary is refused before the first step, and compares
    the record's tokenizer hash with ``tokenizer`` so one with another tokenizer of the same size is refused too
    (:func:`dftnb.target_cache.check_target_tokenizer`; a dataset without the hash gets a warning).

    ``trainer_class`` (a ``DFTTrainer`` subclass) and ``data_collator`` replace the defaults; the denoiser's
    training (:mod:`dftnb.denoise_training`) passes its own."""
    if dft_config.target_vocab_size is None and dft_config.needs_target:
        dft_config.target_vocab_size = recorded_vocab_size(dataset)
    if dft_config.needs_target and "target_ids" in dataset.column_names:
        from .target_cache import check_target_tokenizer

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        check_target_tokenizer(dataset, tokenizer, None if head is None else head.weight.shape[0])
    return (trainer_class or DFTTrainer)(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=data_collator or SparseTargetCollator(tokenizer.pad_token_id),
        dft_config=dft_config,
        processing_class=tokenizer,
        **kwargs,
    )


def default_training_args(output_dir: str | Path, **overrides) -> TrainingArguments:
    """Reproducible ``TrainingArguments`` for the notebooks: log every step, no reports; the Trainer's progress bar
    only when a person is watching (:func:`dftnb.lab.runner.interactive`)."""
    from .modeling import interactive

    args = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        learning_rate=5e-5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=20,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=not interactive(),
        seed=0,
        data_seed=0,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    args.update(overrides)
    return TrainingArguments(**args)


def method_config(method: str, dft_config: DFTConfig | None = None) -> DFTConfig:
    """``dft_config`` (default ``DFTConfig()``) with its divergence set from ``method``, a key of :data:`METHODS`
    or a divergence name; a new object, ``dft_config`` is not changed."""
    return DFTConfig(**{**asdict(dft_config or DFTConfig()), "divergence": METHODS.get(method, method)})


def method_trainer(
    model: torch.nn.Module,
    tokenizer,
    dataset,
    method: str,
    output_dir: str | Path,
    *,
    dft_config: DFTConfig | None = None,
    callbacks: list | None = None,
    verbose: bool = False,
    build=build_trainer,
    **training_args,
) -> tuple[DFTTrainer, StepTimer]:
    """The trainer of ``method`` on ``dataset``, not yet trained, and the :class:`StepTimer` among its callbacks.

    The objective is :func:`method_config` of ``method`` and ``dft_config``; the arguments are
    :func:`default_training_args` of ``output_dir`` with ``training_args`` (``TrainingArguments`` fields); the
    callbacks are the timer, then ``callbacks``. Unless ``verbose`` the Trainer's ``PrinterCallback`` is removed
    (the history frame carries the same numbers). ``build`` is :func:`build_trainer` or a function with its
    signature (:func:`dftnb.denoise_training.build_denoiser_trainer` with its denoiser bound).
    """
    args = default_training_args(output_dir, **training_args)
    timer = StepTimer()
    trainer = build(model, tokenizer, dataset, method_config(method, dft_config), args,
                    callbacks=[timer, *(callbacks or [])])
    if not verbose:
        trainer.remove_callback(PrinterCallback)
    return trainer, timer


def train_method(
    model: torch.nn.Module,
    tokenizer,
    dataset,
    method: str,
    output_dir: str | Path,
    *,
    save_dir: str | Path | None = None,
    resume_from_checkpoint: str | bool | None = None,
    **trainer_args,
) -> tuple[torch.nn.Module, pd.DataFrame]:
    """Fine-tune ``model`` on ``dataset`` with ``method`` and return ``(model, history)``.

    ``method`` is a key of :data:`METHODS` (``"sft"``, ``"gem"``, ``"dft_reverse_kl"``, ...) or a divergence name;
    ``dft_config`` overrides the rest of the objective (its ``divergence`` is set from ``method``). Extra keyword
    arguments are ``TrainingArguments`` fields (``max_steps``, ``per_device_train_batch_size``, ``learning_rate``,
    ``bf16``, ...). ``save_dir`` receives the fine-tuned model and tokenizer (``save_pretrained``).
    ``history`` has one row per logged step with ``loss``, ``divergence``, ``ce``, ``entropy`` and ``seconds``.
    Every other argument (``dft_config``, ``callbacks``, ``verbose``, ``build``, ``TrainingArguments`` fields) goes
    to :func:`method_trainer` (the denoiser's training passes its own ``build``); ``resume_from_checkpoint`` to
    ``Trainer.train``.
    """
    trainer, timer = method_trainer(model, tokenizer, dataset, method, output_dir, **trainer_args)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    model.eval()
    if save_dir is not None:
        trainer.save_model(str(save_dir))  # weights, config and the tokenizer (processing_class)
    return model, history_frame(trainer.state.log_history, method, timer)
