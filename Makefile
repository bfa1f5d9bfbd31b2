# The two commands of the README: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test lint bench fuzz setup clean

setup:
	scripts/bootstrap.sh all

demo: setup
	$(VENV)/bin/espgw demo

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff and mypy (settings in pyproject.toml) run before the tests: a type or lint error fails fast
lint: setup
	$(VENV)/bin/ruff check esp ike tunnel tests bench
	$(VENV)/bin/mypy

bench: setup
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	$(PY) -m bench

fuzz: setup
	nice $(PY) -m bench.reliability_fuzz

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
