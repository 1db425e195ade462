"""The second edition's per-point scores: diversity (SDS) and fidelity (the blind test) of every sample set.

For each frontier point and sampling temperature, the 27 prompts x 8 samples are cut to ``score_length`` tokens of
the model's tokenizer and scored, and every per-item outcome is kept so the comparisons can resample prompts:

* the SDS per prompt (:func:`dftnb.measure.metrics.style_diversity_score`; the point's SDS is their mean);
* the blind test (:func:`dftnb.measure.metrics.classifier_two_sample_test`, MiniLM features, a cross-validated
  logistic regression against 216 held-out human passages of the same length, 72 per corpus like the prompts):
  for each model text and each human passage, the share of ``BLIND_SEEDS`` fold assignments under which it was
  classified right (50% = indistinguishable; averaging over fold seeds puts the classifier's own fitting noise in
  the outcomes instead of one arbitrary split).

Written to ``points/<point>/scores.json``; the human passages and their features are the same for every point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HUMAN_SEED = 0  # which held-out passages form the human side (fixed for the whole edition)
BLIND_SEEDS = (0, 1, 2, 3, 4)  # the classifier's fold assignments, averaged


class PointScorer:
    """Scores sample sets against one human reference at one length (embedder and human features loaded once)."""

    def __init__(self, tokenizer, length: int, texts_per_corpus: int):
        from .benchmark import held_out_passages
        from .models import load_embedder

        self.tokenizer, self.length = tokenizer, length
        self.embedder = load_embedder()
        self.human = [t for corpus in held_out_passages(length, per_corpus=texts_per_corpus, seed=HUMAN_SEED,
                                                        tokenizer=tokenizer) for t in corpus]
        self.human_features = self.features(self.human, cut=False)

    def features(self, texts, cut: bool = True) -> np.ndarray:
        from ..measure.metrics import truncate_text

        if cut:
            texts = [truncate_text(t, self.length, self.tokenizer) for t in texts]
        return self.embedder.encode(list(texts)).numpy()

    def score(self, groups) -> dict:
        """``groups[prompt][sample]`` -> per-prompt SDS and components, per-text blind-test outcomes averaged over
        the fold seeds (model texts in prompt-major order, human passages in reference order), and their means."""
        from ..measure.metrics import classifier_two_sample_test, style_diversity_score

        sds = style_diversity_score(groups, self.embedder, length=self.length, n_boot=1, tokenizer=self.tokenizer)
        flat = [t for g in groups for t in g]
        features = self.features(flat)
        model_hits, model_n = np.zeros(len(flat)), np.zeros(len(flat))
        human_hits, human_n = np.zeros(len(self.human)), np.zeros(len(self.human))
        accuracies = []
        for seed in BLIND_SEEDS:
            blind = classifier_two_sample_test(features, self.human_features, seed=seed)
            n = blind.per_side
            model_hits[blind.p_index] += blind.correct[:n]
            model_n[blind.p_index] += 1
            human_hits[blind.q_index] += blind.correct[n:]
            human_n[blind.q_index] += 1
            accuracies.append(blind.accuracy)
        # -1: never classified (more texts on one side than the other)
        model_correct = np.where(model_n > 0, model_hits / np.maximum(model_n, 1), -1.0)
        human_correct = np.where(human_n > 0, human_hits / np.maximum(human_n, 1), -1.0)
        return {"L": sds.L, "sds": sds.score, "sds_per_prompt": [round(p["sds"], 6) for p in sds.per_prompt],
                "components": {"d": sds.distinct, "s": sds.self_bleu_diversity, "c": sds.compression,
                               "v": sds.vendi},
                "blind_test": float(np.mean(accuracies)), "blind_seeds": list(BLIND_SEEDS),
                "blind_per_seed": [round(a, 6) for a in accuracies], "samples_per_prompt": len(groups[0]),
                "model_correct": [round(x, 6) for x in model_correct], "human_correct": [round(x, 6) for x in human_correct]}


def score_point(folder: Path, scorer: PointScorer) -> dict:
    """``{temperature: scores}`` of the samples stored in ``folder/samples.json``."""
    import json

    samples = json.loads((folder / "samples.json").read_text(encoding="utf-8"))
    return {t: scorer.score(groups) for t, groups in samples.items()}
