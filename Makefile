# The commands the README tells people to run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: system-deps test-fresh up test lint typecheck unit integration e2e browser chaos bench bench-ingest bench-queue bench-saturation bench-long-calls bench-retention bench-object-storage bench-scale bench-big-batch bench-message-batch bench-prefix bench-adaptive bench-same-engine bench-eta monitoring-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[local,dev]"
	touch $(STAMP)

## The system programs the tests start (Chromium, Prometheus, Alertmanager, pgbouncer), each
## checked on its own and installed with apt-get when missing.
system-deps:
	bash scripts/system-deps.sh

## Start everything (embedded PostgreSQL, local model, scheduler, workers, API).
up: $(STAMP)
	$(BIN)/inferbatch up

## Lint, type-check and run the whole test suite.
test: system-deps $(STAMP) lint typecheck
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m unit

integration: system-deps $(STAMP)
	$(BIN)/pytest -m integration

e2e: system-deps $(STAMP)
	$(BIN)/pytest -m e2e

browser: system-deps $(STAMP)
	$(BIN)/pytest -m browser

chaos: system-deps $(STAMP)
	$(BIN)/pytest -m chaos

## A fresh clone of HEAD in a temporary folder, no virtualenv, runs `make test` to green.
test-fresh:
	bash scripts/fresh-clone-test.sh

## Benchmarks: each prints ratios against a reference measured in the same run.
bench: bench-ingest bench-queue bench-saturation bench-long-calls bench-retention bench-object-storage bench-scale bench-big-batch bench-message-batch bench-prefix bench-adaptive bench-same-engine bench-eta

bench-ingest: $(STAMP)
	$(BIN)/python -m bench.ingest

bench-queue: $(STAMP)
	$(BIN)/python -m bench.queue

bench-saturation: $(STAMP)
	$(BIN)/python -m bench.saturation

bench-long-calls: $(STAMP)
	$(BIN)/python -m bench.long_calls

bench-retention: $(STAMP)
	$(BIN)/python -m bench.retention

bench-object-storage: $(STAMP)
	$(BIN)/python -m bench.object_storage

bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale

bench-big-batch: $(STAMP)
	$(BIN)/python -m bench.big_batch

bench-message-batch: $(STAMP)
	$(BIN)/python -m bench.message_batch

bench-prefix: $(STAMP)
	$(BIN)/python -m bench.prefix_dispatch --engine sim
	$(BIN)/python -m bench.prefix_dispatch --engine local

bench-adaptive: $(STAMP)
	$(BIN)/python -m bench.adaptive_concurrency

bench-same-engine: $(STAMP)
	$(BIN)/python -m bench.same_engine

bench-eta: $(STAMP)
	$(BIN)/python -m bench.eta

## Alert rules and their unit tests, the Alertmanager config (needs promtool and amtool).
monitoring-check: system-deps
	promtool check rules deploy/prometheus/rules/inferbatch.rules.yml
	promtool test rules deploy/prometheus/tests/*.yml
	promtool check config deploy/prometheus/prometheus.yml
	amtool check-config deploy/alertmanager/alertmanager.yml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
