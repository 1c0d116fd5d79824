# marginkit — every target bootstraps its own virtual environment.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU wheel of torch 2.13.0 is pinned here (pyproject keeps a range).
TORCH_PIN := torch==2.13.0

.PHONY: install train test test-fast lint format benchmark clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[dev]" $(TORCH_PIN)
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
	$(BIN)/python benchmarks/retrieval.py

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
