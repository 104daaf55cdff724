# Every target installs what it needs into .venv first (once; a second call reuses it).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-fast test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m cguide.pipeline experiment=mnist5k_quick

# pytest's exit code 5 (no test selected) is not a failure
PYTEST = $(BIN)/python -m pytest -q
OK_IF_NONE = rc=$$?; test $$rc -eq 0 || test $$rc -eq 5

# what CI runs (.ci/run): every test. The architecture contracts (.importlinter: layers, no cycles, a
# plain-torch core), the fast tests, then the slow ones
test: test-fast
	$(PYTEST) -m slow; $(OK_IF_NONE)

# the contracts and the fast tests (a few minutes): the check to run while developing. They run in
# TEST_WORKERS processes (pytest-xdist), one torch thread each: both cores of a 2-core machine busy
TEST_WORKERS ?= 2
test-fast: $(STAMP)
	$(BIN)/lint-imports
	$(PYTEST) -n $(TEST_WORKERS) -m "not slow"; $(OK_IF_NONE)

# the slow tests alone (real training runs, killed and resumed runs, 300 fuzz draws, DDP)
test-slow: $(STAMP)
	$(PYTEST) -m slow; $(OK_IF_NONE)

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) outputs/*
