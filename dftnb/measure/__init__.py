"""Measurement: pure functions of texts and model outputs (diversity, perplexity, fidelity), the accuracy
harnesses (HumanEval through the sandbox, MMLU), the sandbox for generated code, and the statistics that turn
per-item scores into paired intervals and verdicts. Imports the method (``dftnb``), never the lab."""
