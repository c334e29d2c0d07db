# Two commands on a fresh machine: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run test lint typecheck pytest bench clean venv

# requirements-bench.txt = dev tools + the peer package the benchmark compares against (small).
$(STAMP): requirements.txt requirements-run.txt requirements-dev.txt requirements-bench.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $(STAMP)

venv: $(STAMP)

# `make run` installs only what running needs (the runtime and the embedded Redis), not the dev tools.
$(RUN_STAMP): requirements.txt requirements-run.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-run.txt
	touch $(RUN_STAMP)

# Several bots: make run BOTS_FILE=config/bots.example.toml (make exports command-line variables).
run: $(RUN_STAMP)
	$(BIN)/python -m tools.devserver

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# Loopback only, bounded (about 9 minutes on 2 cores). Installs wrk when it can (root + apt).
# Part of it: make bench BENCH_ARGS="--set sizes= --set mixed=2000" (see python -m bench.run --help).
bench: $(STAMP)
	command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq wrk) || echo "wrk not installed: using the Python load generator"; }
	$(BIN)/python -m bench.run --json bench/results.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
