# make run    set up everything and run the pipeline in the foreground (Ctrl-C stops it all)
# make test   set up everything, run the whole test suite, leave nothing running
# make chaos  fault injection under load on the real stack, ends with a one-line verdict
# make bench  every benchmark, ours beside Kafka Streams and Quix: bench/results/report.md
# make up | status | down   the same stack, detached; make rotate-secrets: new secrets, restarted
SHELL := /bin/bash
VENV := .venv
PY311 := $(shell command -v python3.11 || command -v python3)
export STACK_APPS := $(CURDIR)/services.conf

.PHONY: run test up status down venv dev lock lint unit clean chaos bench tools rotate-secrets

# $(call on_stack,COMMAND): bring the stack up unless it is, run COMMAND, then take down
# only what this call started; the exit status is COMMAND's. COMMAND sees STACK_DOWN_AFTER=1
# when the stack is taken down after it (a test that restarts it need not restore it then).
on_stack = started=0; stack/stack.sh status >/dev/null 2>&1 || started=1; \
	stack/stack.sh up || { [ $$started = 1 ] && stack/stack.sh down; exit 1; }; \
	STACK_DOWN_AFTER=$$started $(1); rc=$$?; [ $$started = 1 ] && stack/stack.sh down; exit $$rc

$(VENV)/.installed: requirements.lock pyproject.toml
	@$(PY311) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
	  || { echo "Python 3.11 is required (found: $(PY311))" >&2; exit 1; }
	@test -x $(VENV)/bin/python || $(PY311) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements.lock
	$(VENV)/bin/python -m pip install -q --no-deps -e .
	@touch $@

# What the tests and linters add (pytest, hypothesis, schemathesis, ruff, mypy, pandas, uv).
$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.lock
	$(VENV)/bin/python -m pip install -q -r requirements-dev.lock
	@touch $@

venv: $(VENV)/.installed

dev: $(VENV)/.installed-dev

# Regenerate both locks from pyproject.toml's pins (uv resolves; commit what it writes).
lock: dev
	$(VENV)/bin/uv pip compile pyproject.toml --python-version 3.11 --no-header \
	  --annotation-style line -q -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --no-header \
	  --annotation-style line -q -o requirements-dev.lock

up: venv
	stack/stack.sh up

status:
	@stack/stack.sh status

down:
	stack/stack.sh down

# Every generated secret anew (docs/operations.md): the running stack restarts on the new ones.
rotate-secrets: venv
	stack/stack.sh rotate

run: venv
	stack/stack.sh run

# The linters first (a red lint fails in seconds, not after the suite), then brings the stack
# up if it is not, runs every test, and takes down what it started.
test: lint
	@$(call on_stack,$(VENV)/bin/pytest)

# Command-line tools the load generators need (Debian packages).
tools:
	@command -v wrk >/dev/null || { echo "installing wrk (apt)"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q wrk >/dev/null; }

# Kills, stops and restarts every part while reviews and edits stream in, then an independent
# ledger proves the results exact. CHAOS_ARGS="--duration 300 --kills 5 --rate 45 --seed N"
chaos: venv
	@$(call on_stack,set -a; . .stack/env; set +a; $(VENV)/bin/python -m chaos.run $(CHAOS_ARGS))

# Every benchmark on the real stack (see bench/run_all.py); BENCH_ARGS="--runs 3 --only fraud".
bench: venv tools
	@$(call on_stack,set -a; . .stack/env; set +a; $(VENV)/bin/python bench/run_all.py $(BENCH_ARGS))

unit: dev
	$(VENV)/bin/pytest tests/unit

lint: dev
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy
	@$(VENV)/bin/mypy bench/peers/quix/app.py

clean: down
	rm -rf .stack
