# marginkit — every target bootstraps its own virtual environment.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU wheel of torch 2.13.0 is pinned here (pyproject keeps a range). Every install runs
# under a constraint file holding the pin, so no dependency can pull another torch.
# Where the CPU wheel comes from, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (empty: pip's configured indexes).
TORCH_PIN   := torch==2.13.0
TORCH_INDEX ?=
CONSTRAINTS := $(VENV)/constraints.txt
PIP         := $(BIN)/python -m pip install -q -c $(CONSTRAINTS)

.PHONY: install train test test-fast lint format benchmark clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	echo "$(TORCH_PIN)" > $(CONSTRAINTS)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_PIN)
	$(PIP) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

benchmark: $(STAMP)
	$(BIN)/python benchmarks/margin_ce.py
	$(BIN)/python benchmarks/heads.py
	$(BIN)/python benchmarks/pair_losses.py
	$(BIN)/python benchmarks/linear_margin.py
	$(BIN)/python benchmarks/model_parallel.py
	$(BIN)/python benchmarks/retrieval.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
