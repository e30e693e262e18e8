# The two commands: `make run` and `make test`. Each builds .venv with Python 3.13 first.
# `make clean` removes .venv, the test clients' installs and build leftovers (never .valet, your keys, secrets and audit log).
SHELL := /bin/bash
VENV := .venv
# Python 3.13: from PATH if it really is 3.13, else from pyenv's versions. PYTHON=/path/to/python3.13 to choose.
PYTHON ?= $(shell for p in python3.13 $$(pyenv root 2>/dev/null)/versions/3.13*/bin/python3.13 $$HOME/.pyenv/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13 /usr/bin/python3.13; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
STAMP := $(VENV)/.installed
IS_313 := import sys; sys.exit(sys.version_info[:2] != (3, 13))

# A .venv made by another Python (an older PYTHON=..., a system python3) is rebuilt, never used:
# mitmproxy 12 and mcp 2 resolve only on 3.13 (on 3.12 pip silently picks mcp 1.x).
ifneq ($(wildcard $(STAMP)),)
ifneq ($(shell $(VENV)/bin/python -c '$(IS_313)' >/dev/null 2>&1 && echo ok),ok)
$(info .venv was not built with Python 3.13: rebuilding it)
$(shell rm -f $(STAMP))
endif
endif

.PHONY: run test bench clean venv check-python mutate clients

venv: $(STAMP)

# Runs on every make: a PYTHON that is not 3.13 is an error even when .venv is already built.
check-python:
	@if [ -z "$(PYTHON)" ]; then \
	  [ -f $(STAMP) ] && exit 0; \
	  echo "error: Python 3.13 not found (looked on PATH and in pyenv). Install it (e.g. pyenv install 3.13), or pass PYTHON=/path/to/python3.13" >&2; exit 2; \
	fi; \
	if ! "$(PYTHON)" -c '$(IS_313)' >/dev/null 2>&1; then \
	  found=$$("$(PYTHON)" -c 'import sys; print("Python", sys.version.split()[0])' 2>/dev/null || echo "not a working Python"); \
	  echo "error: PYTHON=$(PYTHON) is $$found; Valet needs Python 3.13 (pass PYTHON=/path/to/python3.13)" >&2; exit 2; \
	fi

$(STAMP): pyproject.toml | check-python
	@if [ -d $(VENV) ] && ! $(VENV)/bin/python -c '$(IS_313)' >/dev/null 2>&1; then echo "removing $(VENV): not Python 3.13"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP) | check-python
	$(VENV)/bin/python run_proxy.py $(ARGS)

# Parallel with pytest-xdist: TEST_JOBS workers, each test file on one worker (its module fixtures start
# once), the slowest files first (tests/conftest.py, tests/durations.json).
# Serially: make test TEST_JOBS=0 (docs/development.md, "Tests").
TEST_JOBS ?= 3
test: $(STAMP) clients | check-python
	$(VENV)/bin/python -m pytest -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Third-party MCP clients the suite drives through Valet (tests/test_clients*.py, docs/clients.md).
# Each Python client gets a venv of its own from a frozen requirements file (Python SDK 1.x and the
# clients that pin `mcp` cannot share Valet's venv); the Node ones come from package-lock.json.
# Stamp files make a second run instant; changing a requirements file or the lock rebuilds that one.
CLIENT_DIR := tests/clients
CLIENT_STAMPS := $(patsubst %/requirements.txt,%/.venv/.installed,$(wildcard $(CLIENT_DIR)/*/requirements.txt))
CLIENT_PYTHON = $(or $(PYTHON),$(abspath $(VENV)/bin/python))

clients: $(CLIENT_STAMPS) $(CLIENT_DIR)/node_modules/.installed

$(CLIENT_DIR)/%/.venv/.installed: $(CLIENT_DIR)/%/requirements.txt | check-python
	rm -rf $(CLIENT_DIR)/$*/.venv
	$(CLIENT_PYTHON) -m venv $(CLIENT_DIR)/$*/.venv
	$(CLIENT_DIR)/$*/.venv/bin/python -m pip install --quiet --disable-pip-version-check -r $<
	@touch $@

# Without npm (a local machine without Node) the Node client tests skip; CI installs Node first.
$(CLIENT_DIR)/node_modules/.installed: $(CLIENT_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  (cd $(CLIENT_DIR) && npm ci --no-audit --no-fund --loglevel=error) && touch $@; \
	else echo "npm not found: the Node client tests (TypeScript SDK, mcp-remote, Inspector) will be skipped"; fi

bench: $(STAMP) | check-python
	$(VENV)/bin/python bench/bench.py $(ARGS)

# Mutation testing of the security core against the unit tests (slow: not part of `make test` or CI).
# [tool.mutmut] in pyproject.toml says what is mutated and which tests run; docs/development.md explains.
# A batch job: always at the lowest CPU priority, MUTATE_JOBS workers (default 2; 1 on a shared machine).
mutate: $(STAMP) | check-python
	$(VENV)/bin/python -m pip install --quiet -e '.[test,mutate]'
	rm -rf mutants
	nice -n 19 $(VENV)/bin/mutmut run --max-children $${MUTATE_JOBS:-2} $(ARGS); status=$$?; \
	$(VENV)/bin/python -m tests.mutation_report; exit $$status

clean:
	rm -rf mutants $(VENV) .pytest_cache build *.egg-info $(CLIENT_DIR)/*/.venv $(CLIENT_DIR)/node_modules
