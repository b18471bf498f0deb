# ehr-bridge: `make run` starts the bridge on embedded defaults; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench bench-quick docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ehr-bridge serve

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check bridge adapters tests bench
	$(BIN)/ruff format --check bridge adapters tests bench
	$(BIN)/mypy

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Every contender on the same mix, medians of 3 runs; writes bench/results/latest.json (under 15 minutes).
# --install puts the Medplum baseline into bench/medplum/node_modules with npm ci when node is present.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench --install

# The same, shorter phases (under 2 minutes); writes bench/results/quick.json.
bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench --quick --install

# docs/events.md and docs/schemas/events/*.json from mappings/catalogue.yaml (a test keeps them in sync).
docs: $(STAMP)
	$(BIN)/python -m bridge.catalogue --write

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
