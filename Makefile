# blobdl's Makefile documents itself: `make` (or `make help`) lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install registry demo test lint unit bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: $(STAMP) ## create the venv in .venv and install blobdl with its test tools

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

registry: ## Debian's docker-registry for the pull tests (apt-get, only when missing)
	@command -v docker-registry >/dev/null || { apt-get update && apt-get install -y docker-registry; }

demo: install ## serve a generated 1 GiB blob on loopback, download it with the progress bar, verify it
	$(PY) -m benchmarks.demo

test: install registry lint unit ## lint, type-check and run the whole test suite

lint: install ## ruff and mypy (strict) over the package
	$(PY) -m ruff check blobdl tests benchmarks
	$(PY) -m ruff format --check blobdl tests benchmarks
	$(PY) -m mypy

unit: install registry ## the pytest suite only
	$(PY) -m pytest -q

bench: install ## sweep part counts against a simulated CDN (see benchmarks/README)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(PY) -m benchmarks $(BENCH_ARGS)

clean: ## remove the venv, caches and demo data
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis demo-data *.egg-info
