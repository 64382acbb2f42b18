# Two commands do everything on a fresh machine: `make demo` and `make test` (each creates .venv if missing).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench

# constraints.txt: the exact versions CI tests (pyproject.toml has the compatible ranges).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch  # the CPU wheel; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q -c constraints.txt -e ".[test,export,prune,data]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(BIN)/pocketdiff demo

# The export tests run in their own process: in one process with the rest of the suite, a clean CI run crashed
# (segfault) inside them; alone they pass.
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --ignore=tests/export
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/export

bench: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/unet_step.py
