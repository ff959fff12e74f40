# The two commands of README: `make demo` and `make test`. Each builds .venv by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# checkov pins its own dependencies: the infrastructure linters live in a venv of their own.
INFRA_VENV := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.installed

.PHONY: test demo demo-up demo-down lint typecheck pytest macro-test bench clean system-packages
# Debian packages the connector runs with (HAProxy, its front); as root, or through sudo.
SYSTEM_PACKAGES := haproxy
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): requirements.txt function/requirements.txt connector/requirements.txt pyproject.toml
	@echo "Setting up $(VENV) (first run downloads the Python packages) ..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

$(INFRA_STAMP): requirements-infra.txt
	@echo "Setting up $(INFRA_VENV) for the infrastructure checks ..."
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(INFRA_VENV)/bin/python -m pip install --quiet -r requirements-infra.txt
	@touch $(INFRA_STAMP)

test: $(STAMP) $(INFRA_STAMP) lint typecheck macro-test pytest

system-packages:
	@command -v haproxy >/dev/null || { \
	  echo "Installing $(SYSTEM_PACKAGES) from Debian's packages (the connector's front) ..."; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); }

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

macro-test: system-packages
	cd macro && node --test

pytest: $(STAMP) $(INFRA_STAMP) system-packages
	INFRA_BIN=$(CURDIR)/$(INFRA_VENV)/bin $(VENV)/bin/pytest

demo: $(STAMP) system-packages
	$(PY) -m demo

demo-up: $(STAMP) system-packages
	$(PY) -m demo up

demo-down: $(STAMP)
	$(PY) -m demo down

clean:
	rm -rf $(VENV) $(INFRA_VENV) .demo .pytest_cache .mypy_cache .ruff_cache
