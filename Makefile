# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

# Reinstall only when the dependency list changes: a second call costs nothing.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medianest-load demo

# Lint and type checks first: each stops `make` at its first finding, before the suite's minutes. Most of the
# suite waits on real runs: four processes overlap the waiting on two cores (tests/conftest.py keeps the tests
# that share a module's runs in one process)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 4 --dist loadgroup tests

clean:
	rm -rf $(VENV) .pytest_cache
