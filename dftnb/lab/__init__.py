"""The lab: this repository's own plumbing and orchestration around the method. Loading the embedded model and
the corpora, figures and tables, the chapter runner, what the chapters and the study run (sweeps, evaluation
loops, tables, verdicts, reports) and the YAML command line (``python -m dftnb.lab.train``). Nothing in
``dftnb`` or ``dftnb.measure`` imports it."""
