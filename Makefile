# servekit — the commands in README.md. Everything installs into .venv/ at the repo root.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
REGISTRY ?= models
PYTEST_ARGS ?=
BENCH_ARGS ?=
# tritonclient and kserve need protobuf < 7: the tests run them from their own venv.
CLIENTS_VENV := .venv-clients

.PHONY: help install clients system-deps up test test-fast lint format bench protos clean

help:
	@echo "make up       install, train the default models if $(REGISTRY)/ is empty, serve"
	@echo "make test     install what the tests need, lint, run the whole suite"
	@echo "make test-fast  unit and component tests only (no server processes), for inner loops"
	@echo "make install  install only (into .venv/)"
	@echo "make bench    side-by-side benchmarks (not part of make test)"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(BIN)/servekit: uv.lock pyproject.toml $(UV)
	$(UV) sync --frozen --all-groups
	@touch $@

install: $(BIN)/servekit

# The Open Inference Protocol clients (tritonclient, kserve) the tests call the
# gateway with, pinned in tests/clients/requirements.txt, on .venv's interpreter.
$(CLIENTS_VENV)/.installed: tests/clients/requirements.txt $(BIN)/servekit $(UV)
	$(UV) venv --quiet --allow-existing --python $(BIN)/python $(CLIENTS_VENV)
	$(UV) pip sync --quiet --python $(CLIENTS_VENV)/bin/python tests/clients/requirements.txt
	@touch $@

clients: $(CLIENTS_VENV)/.installed

# Debian packages the tests use: docker-compose validates the compose file offline.
system-deps:
	@if ! command -v docker-compose >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; \
	  else echo "note: docker-compose not installed; compose validation tests will be skipped"; fi; \
	fi

up: install
	@if [ -z "$$(find $(REGISTRY) -mindepth 2 -maxdepth 2 -type d -name '[0-9]*' 2>/dev/null | head -1)" ]; then \
	  echo "no models in $(REGISTRY)/: training the defaults"; \
	  $(BIN)/servekit train tabular --registry $(REGISTRY) && \
	  $(BIN)/servekit train digits --registry $(REGISTRY); \
	fi
	$(BIN)/servekit serve --registry $(REGISTRY)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install clients system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The inner-loop tier: unit and component tests, no server processes; make test runs everything.
FAST_TESTS := $(wildcard services/*/tests/unit services/*/tests/component)
test-fast: install
	$(BIN)/pytest -m "not integration" $(FAST_TESTS) $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf .venv $(CLIENTS_VENV) .tools .mypy_cache .ruff_cache .pytest_cache
