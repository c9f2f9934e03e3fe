# transformer_nb: every target creates the virtual environment in .venv when it is missing and
# reuses it afterwards (it is re-synced only when pyproject.toml changes).
#   make demo   set up, then the local end-to-end run (tokenizer -> data -> model -> samples)
#   make test   set up, then every test: notebooks clean, in sync and fresh, pytest
#   make nbs    run the notebooks (slow cells too) and store their outputs; NB=nbs/X.ipynb for one, SLOW=0 to skip slow cells
#   make docs   set up, then build the documentation site into docs/ (no Quarto needed)
#   make docs-check   build the site, check its HTML, screenshot it with headless Chromium if present
#   make gpu-check    on a CUDA machine, with $(PYTHON) as it is: CUDA tests, bf16 MFU, compiled decode
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= runs/local-smoke
# the torch build installed first: a CPU wheel where one is on disk, and never an unpinned
# (multi-GB CUDA) download; pyproject.toml only declares a range that this satisfies.
TORCH  ?= torch==2.13.0

.PHONY: venv seed-cache demo test test-nbs test-py sync docs docs-check docs-quarto nbs clean gpu-check
.DEFAULT_GOAL := help

help:
	@sed -n '2,8p' Makefile | sed 's/^# *//'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "transformer_nb needs Python 3.11 or newer (found %s)" % sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,hf]"
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/orchestrate --profile local --run-dir $(RUN)

# notebooks clean and exported (no diff), the notebooks' own tests, then pytest (last: CI reads
# its summary line)
test: venv sync test-nbs test-py

sync: venv
	$(BIN)/python tools/check_sync.py
	$(BIN)/ruff check transformer_nb

# tests read Tiny Shakespeare from the corpus cache: filled from ../shared/data where that exists (CI),
# else downloaded from its canonical address at first use; either way checked against its SHA-256
seed-cache: venv
	$(BIN)/python tools/seed_cache.py

# the notebooks run top to bottom in Jupyter kernels (slow cells skipped), each stored output compared with what its
# cell prints now: a stale or missing output fails (tools/nbrun.py; `make nbs` stores fresh ones)
test-nbs: venv seed-cache
	$(BIN)/python tools/nbrun.py --check --jobs 2

# pytest on every core (at most 4 workers: each test may start torch processes of its own)
test-py: venv seed-cache
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4

docs: venv
	$(BIN)/python tools/build_docs.py --out docs

# the site built, then checked: tests/test_docs.py on its HTML (math and search offline, outputs
# apart from code, no temp paths or warnings, classes, 404 page, alt text), then screenshots and
# in-browser checks with headless Chromium where it is installed (skipped with a message where not)
docs-check: docs
	TNB_DOCS_SITE=docs $(BIN)/python -m pytest -q tests/test_docs.py
	$(BIN)/python tools/docs_check.py --site docs --out _proc/screenshots

# the Quarto site (where Quarto is installed)
docs-quarto: venv
	$(BIN)/nbdev-docs

# run notebooks in Jupyter kernels, slow cells too, and store their outputs (shown in the docs, checked by make test):
# after changing what a cell prints, or the code a slow cell calls; one at a time, so that the timings they store
# were not taken beside another notebook. SLOW=0: slow cells are not run and keep their outputs (for a change that
# no slow cell depends on)
nbs: venv seed-cache
	$(BIN)/python tools/nbrun.py --write $(if $(filter 0,$(SLOW)),--keep-slow) $(NB)
	$(BIN)/nbdev-clean

clean:
	rm -rf _proc docs .pytest_cache

# the CUDA path, where a GPU exists, run by tools/gpu_check.py with $(PYTHON) itself (no .venv, no network): each
# test of tests/test_cuda.py (bf16/fp16 steps, fused AdamW, SDPA, compile, NCCL DDP/FSDP with 2 GPUs, CUDA<->CPU
# checkpoints) passed/failed/skipped, bf16 MFU at the m3_medium and GPT-2 124M shapes against the datasheet peak,
# and compiled-decode tokens/s, in one summary (and tnb-gpu-check.json). Exit status 0: all ran, none failed;
# 1: a failure; 3: no CUDA GPU visible (nothing run). On a GPU machine whose CUDA torch is already installed:
#   python3 -m pip install --no-deps -e .        # this project only: the machine's own torch stays
#   python3 tools/gpu_check.py --help            # or: make gpu-check PYTHON=python3
# A runtime dependency that machine lacks (gpu_check names it) is carried as a wheel, downloaded where pip reaches
# the index: pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d wheels
# NAME==VERSION; there: python3 -m pip install --no-index --no-deps wheels/*.whl
gpu-check:
	$(PYTHON) tools/gpu_check.py --out tnb-gpu-check.json
