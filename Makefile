# The two commands: `make run` and `make test`. Each builds .venv with Python 3.13 first.
SHELL := /bin/bash
VENV := .venv
# Python 3.13: from PATH if it really is 3.13, else from pyenv's versions.
PYTHON ?= $(shell for p in python3.13 $$(pyenv root 2>/dev/null)/versions/3.13*/bin/python3.13 $$HOME/.pyenv/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13 /usr/bin/python3.13; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
STAMP := $(VENV)/.installed

.PHONY: run test bench clean venv mutate

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.13 not found (looked on PATH and in pyenv); install it, or pass PYTHON=/path/to/python3.13" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python run_proxy.py $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python bench/bench.py $(ARGS)

# Mutation testing of the security core against the unit tests (slow: not part of `make test` or CI).
# [tool.mutmut] in pyproject.toml says what is mutated and which tests run; docs/development.md explains.
mutate: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[test,mutate]'
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children $${MUTATE_JOBS:-2} $(ARGS); status=$$?; \
	$(VENV)/bin/python -m tests.mutation_report; exit $$status

clean:
	rm -rf mutants $(VENV) .pytest_cache build *.egg-info
