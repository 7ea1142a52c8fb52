# blobdl's Makefile documents itself: `make` (or `make help`) lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
# `make pythons`: every supported Python found gets its own venv (.venv-3.12, ...) and a
# smoke run; the default interpreter runs the whole suite in `make suite`. The smoke set is
# what leans on the interpreter most: forks from threads, ssl's internals (TLS in a proxy's
# TLS, EOFs), asyncio (the cluster's budget). The whole suite passed on 3.13.0 once (3,181).
SUPPORTED := 3.11 3.12 3.13
SMOKE ?= tests/integration/test_threads.py tests/integration/test_workers.py tests/unit/test_plan.py \
	tests/unit/test_gather.py tests/integration/test_hostile_library.py \
	tests/integration/test_real_proxy.py tests/integration/test_tls_body.py tests/unit/test_cluster_budget.py
# What `make install` puts in a venv: the suite's Python gets Dask too; the other Pythons'
# venvs only what their smoke set imports (no Dask: ~8 CPU-s less each, beside the suite).
EXTRAS ?= test,dask
PYENV_ROOT ?= $(HOME)/.pyenv
# 3.12+ deprecates forking a threaded process; os.fork swallows that warning under -W error,
# so tests/conftest.py records it and fails the test. Any other DeprecationWarning is an error.
WERROR = $$($(1) -c 'import sys; print("-W error::DeprecationWarning" * (sys.version_info >= (3, 12)))')

.PHONY: help install system demo test lint suite unit pythons bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: $(STAMP) ## create the venv in .venv and install blobdl with its test tools and Dask

# Debian and Ubuntu ship python3 without ensurepip (python3.X-venv): `python3 -m venv` fails on a
# fresh machine, so that package is installed first, only when it is missing.
$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  pkg=python$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$pkg; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The real servers and tools the tests need (apt-get, only what is missing): Debian's
# docker-registry for `pull`, nginx for the benchmark harness, gcc for the no-fallocate launcher,
# tinyproxy for downloads through a proxy as users run one.
SYSTEM_TOOLS := docker-registry:docker-registry nginx:nginx gcc:gcc tinyproxy:tinyproxy
system: ## install the real servers and tools the tests use (apt-get, only when missing)
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; fi

demo: install ## serve a generated 1 GiB blob on loopback, download it with the progress bar, verify it
	$(PY) -m benchmarks.demo

# The other Pythons' venvs and smoke runs go on beside the suite (their log is printed after
# it): built one after the other they added ~3.5 minutes of mostly waiting to `make test`.
# What failed in the suite is said again last, after that log: a CI page often shows a tail.
test: install system lint ## lint, type-check, the whole suite, and a smoke run on other Pythons
	@log=$$(mktemp); suitelog=$$(mktemp); $(MAKE) --no-print-directory pythons > $$log 2>&1 & other=$$!; \
	{ $(MAKE) --no-print-directory suite; echo $$? > $$suitelog.rc; } 2>&1 | tee $$suitelog; \
	suite=$$(cat $$suitelog.rc); \
	wait $$other; pythons=$$?; echo "===== make pythons (run beside the suite) ====="; \
	cat $$log; sed -n '/^===== what failed/,$$p' $$suitelog; rm -f $$log $$suitelog $$suitelog.rc; \
	echo "make test: suite exit $$suite, pythons exit $$pythons"; \
	[ $$suite -eq 0 ] && [ $$pythons -eq 0 ]

lint: install ## ruff and mypy (strict) over the package
	$(PY) -m ruff check blobdl tests benchmarks faultserver
	$(PY) -m ruff format --check blobdl tests benchmarks faultserver
	$(PY) -m mypy

# The suite runs as SHARDS pytest sessions side by side (tests/shards.py: most tests wait on
# servers and processes, so one session leaves the cores idle); SHARDS=1 runs one session.
# 4 on this 2-core machine: the 3,417 tests took 501 s as three sessions, 438 s as four
# (the cores 83% busy) and 419 s as six (95% busy), alone on an idle machine; in CI the other
# Pythons' smoke runs go on beside them, so four leave them room.
SHARDS ?= 4
# Each session names its slowest tests (--durations), so a CI log says where its time goes.
suite: install system ## the pytest suite only (unit and integration), in SHARDS sessions at once
	$(PY) $(call WERROR,$(PY)) -m tests.shards $(SHARDS) -q -p no:cacheprovider --durations=8 \
	  $(call WERROR,$(PY))

unit: install ## the unit tests of the pure modules only (seconds; no server, no processes)
	$(PY) -m pytest -q tests/unit

# Each smoke run byte-compiles the project for its Python first (as tests/shards.py does for
# the suite's): under PYTHONDONTWRITEBYTECODE every interpreter a test starts compiled it again.
pythons: install ## the smoke tests on every other Python 3.11-3.13 present
	@default=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	for v in $(SUPPORTED); do \
	  [ "$$v" = "$$default" ] && continue; \
	  exe=$$(ls -d $(PYENV_ROOT)/versions/$$v.*/bin/python$$v 2>/dev/null | sort -V | tail -n 1); \
	  [ -n "$$exe" ] || exe=$$(command -v python$$v); \
	  if [ -z "$$exe" ] || ! "$$exe" -V >/dev/null 2>&1; then echo "python$$v: not found, skipped"; continue; fi; \
	  $(MAKE) --no-print-directory install PYTHON=$$exe VENV=.venv-$$v EXTRAS=test || exit 1; \
	  echo "python$$v: $(SMOKE)"; \
	  .venv-$$v/bin/python -m compileall -q blobdl faultserver tests >/dev/null || exit 1; \
	  .venv-$$v/bin/python $(call WERROR,$$exe) -m pytest -q -p no:cacheprovider \
	    $(call WERROR,$$exe) $(SMOKE) || exit 1; \
	done

# What `make bench` compares against. Each install is tried once when missing; a failure is
# said ("skipped: X not installed") and the harness runs without that tool.
BENCH_APT := nginx:nginx aria2c:aria2 axel:axel curl:curl

bench: install ## blobdl vs curl/aria2c/axel/hf_transfer on nginx and the fault server (benchmarks/README)
	@for pair in $(BENCH_APT); do \
	  cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  command -v $$cmd >/dev/null && continue; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkg; } >/dev/null 2>&1 \
	    || echo "skipped: $$cmd not installed (apt-get install $$pkg failed)"; \
	done
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dask,bench]' \
	  || echo "skipped: hf_transfer/matplotlib not installed (pip install -e '.[bench]' failed)"
	$(PY) -m benchmarks $(BENCH_ARGS)

clean: ## remove the venv, caches and demo data
	rm -rf $(VENV) .venv-3.* .pytest_cache .mypy_cache .ruff_cache .hypothesis demo-data *.egg-info
