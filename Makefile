# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

# Python keeps compiled modules (*.pyc) even where the environment sets PYTHONDONTWRITEBYTECODE: every run, worker,
# target and analysis is a fresh interpreter, and without them each one compiled pandas, locust and gevent again
# (3 s of CPU per process here, against 1 s). Each module is compiled the first time one is imported: compiling
# every installed module up front (uv's --compile-bytecode, pip's default), mostly scipy's unused ones, made the
# install 27 s longer, where compiling on first import makes the suite's start-up 7 s longer.
unexport PYTHONDONTWRITEBYTECODE

# Reinstall only when the dependency list changes: a second call costs nothing. uv installs the same pinned
# packages as pip in a fraction of the time (3-10 s against 50-100 s here); pip remains the fallback.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv==0.13.9'
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[test]' \
		|| $(BIN)/python -m pip install --quiet --no-compile -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medianest-load demo

# Lint first: it stops `make` at its first finding, before the suite's minutes. mypy (12 s of one core on a fresh
# clone) checks beside the rest and fails `make` at the end of the first pass. One collection first compiles every
# module the tests import, once, beside mypy: four processes starting cold each compiled them again (a fresh
# clone: 25 s and 44 CPU-s to start the first pass; 12 s to collect once, then 11 s). Most of the suite waits on
# real runs: four processes overlap the waiting on two cores; then the timing-sensitive tests, the light ones
# two at a time and those that load both cores alone (tests/conftest.py says which, and which share a process)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy > $(VENV)/mypy.log 2>&1 & types=$$!; \
	$(BIN)/python -m pytest -q --collect-only tests > /dev/null; \
	$(BIN)/python -m pytest -q -n 4 --dist loadgroup --suite-pass parallel tests; tests=$$?; \
	wait $$types; typed=$$?; cat $(VENV)/mypy.log; test $$tests -eq 0 -a $$typed -eq 0
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --suite-pass timing tests
	$(BIN)/python -m pytest -q --suite-pass alone tests

clean:
	rm -rf $(VENV) .pytest_cache
