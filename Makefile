# monitor: `make help` lists the targets. `make demo` and `make test` work on a
# fresh machine: they create .venv (and .venv/servers for the model servers the
# tests drive) and, when run as root, install the Debian packages they need.

.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVERS := $(VENV)/servers
DEB_PACKAGES := prometheus prometheus-alertmanager prometheus-pushgateway postgresql nginx-light wrk
PYTEST_ARGS ?=

.PHONY: help venv servers system-deps test lint format generate docs demo bench bench-drift soak clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,otlp,demo,drift,spark,postgres,gpu,dashboards]'
	@touch $@

venv: $(VENV)/.installed ## Create .venv with the package, its extras and the dev tools

$(SERVERS)/.installed: deploy/servers-requirements.txt | $(BIN)/python
	$(PYTHON) -m venv $(SERVERS)
	$(SERVERS)/bin/pip install -q --upgrade pip
	$(SERVERS)/bin/pip install -q -r deploy/servers-requirements.txt
	@touch $@

servers: $(SERVERS)/.installed ## Create .venv/servers with MLServer and MLflow (real model servers for tests and demo)

system-deps: ## Install Debian packages (Prometheus, Alertmanager, nginx, wrk) when root
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)"; \
	fi

test: venv servers system-deps ## Set up everything, then run the test suite (not the soak)
	$(BIN)/pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

lint: venv ## ruff (lint + format check) and mypy
	$(BIN)/ruff check monitor tests benchmarks
	$(BIN)/ruff format --check monitor tests benchmarks
	$(BIN)/mypy monitor

format: venv ## Format the code with ruff
	$(BIN)/ruff format monitor tests benchmarks
	$(BIN)/ruff check --fix monitor tests benchmarks

generate: venv ## Regenerate alerts/ from deploy/monitor.yaml
	$(BIN)/monitor generate --config deploy/monitor.yaml --out .

docs: venv ## Regenerate docs/reference/ from monitor/conventions.py and monitor/spec.py
	$(BIN)/monitor docs --out docs/reference

demo: venv servers system-deps ## Set up everything, then run the demo
	$(BIN)/monitor demo

bench: venv servers system-deps ## Sidecar benchmark: direct vs nginx vs sidecar (prints a table)
	$(BIN)/python benchmarks/sidecar.py

bench-drift: venv ## Drift benchmark: fast engine vs evidently, 100k and 1M rows (prints a table)
	$(BIN)/python benchmarks/drift.py

soak: venv servers ## 5-minute soak: memory of the sidecar under steady load stays flat
	$(BIN)/pytest -q -m slow tests/test_soak.py $(PYTEST_ARGS)

clean: ## Remove the virtual environments and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache capture out
