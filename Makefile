# The two commands of README: `make demo` and `make test`. Each builds .venv by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo demo-up demo-down lint typecheck pytest macro-test bench clean

$(STAMP): requirements.txt function/requirements.txt connector/requirements.txt pyproject.toml
	@echo "Setting up $(VENV) (first run downloads the Python packages) ..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

test: $(STAMP) lint typecheck macro-test pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

macro-test:
	cd macro && node --test

pytest: $(STAMP)
	$(VENV)/bin/pytest

demo: $(STAMP)
	$(PY) -m demo

demo-up: $(STAMP)
	$(PY) -m demo up

demo-down: $(STAMP)
	$(PY) -m demo down

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
