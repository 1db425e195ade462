"""dftnb: Distribution Fine-Tuning (DFT) of language models, as a notebook-first research repository.

DFT trains a causal LM's next-token *distribution* toward a target distribution (reverse KL, forward KL, JSD,
Wasserstein, ...) instead of one-hot cross-entropy. Not to be confused with "Dynamic Fine-Tuning" (arXiv 2508.05629).
"""

__version__ = "0.1.0"
