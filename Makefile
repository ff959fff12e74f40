# The two commands of README: `make demo` and `make test` (and `make demo-pair`, the redundant
# pair's run). Each builds .venv by itself.
# `make test-fast`: the tests that start no process and load no face engine (under a minute).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# checkov pins its own dependencies: the infrastructure linters live in a venv of their own.
INFRA_VENV := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.installed

.PHONY: test test-fast demo demo-pair demo-up demo-down lint typecheck pytest macro-test bench clean system-packages config-reference
# Debian packages the stack and its tests run with, each named as the command it installs:
# HAProxy (the connector's front) and Chromium (the console's browser test drives it through
# Playwright, which never downloads a browser of its own); as root, or through sudo.
SYSTEM_PACKAGES := haproxy chromium
# PostgreSQL's server: the store's tests, the redundant pair and bench/redundancy.py start a
# throwaway one (devkit/postgres.py). Debian puts initdb in /usr/lib/postgresql/VERSION/bin, off
# PATH: the package counts as present when some version's initdb is there.
POSTGRESQL_INITDB := /usr/lib/postgresql/*/bin/initdb
# Playwright (requirements.txt) drives that chromium; none of its installers may fetch a browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# `pip install -e .` gives what ships (connector, faceid_core); development also imports the
# function's faceverify from function/, as Cloud Functions does: a .pth file adds that folder.
# pip names each package as it downloads and installs it: the first run (about 90 s) is never silent.
PIP_SHOWN := --progress-bar on --no-color --disable-pip-version-check

$(STAMP): requirements.txt function/requirements.txt connector/requirements.txt pyproject.toml
	@echo "[1/3] Creating $(VENV) ..."
	$(PYTHON) -m venv $(VENV)
	@echo "[2/3] Installing the Python packages of requirements.txt (first run: about 90 s) ..."
	$(PY) -m pip install $(PIP_SHOWN) --upgrade pip
	$(PY) -m pip install $(PIP_SHOWN) -r requirements.txt
	@echo "[3/3] Installing the project itself (editable) ..."
	$(PY) -m pip install --quiet --no-deps -e .
	echo "$(CURDIR)/function" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/faceid-function.pth"
	@touch $(STAMP)
	@echo "$(VENV) is ready."

$(INFRA_STAMP): requirements-infra.txt
	@echo "Setting up $(INFRA_VENV) for the infrastructure checks (first run: about 30 s) ..."
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install $(PIP_SHOWN) --upgrade pip
	$(INFRA_VENV)/bin/python -m pip install $(PIP_SHOWN) -r requirements-infra.txt
	@touch $(INFRA_STAMP)

test: $(STAMP) $(INFRA_STAMP) lint typecheck macro-test pytest

# The `slow` tests start real processes or load the face engine (tests/support/slow_guard.py
# fails one that does without the marker); the rest run in memory, threads and local sockets.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow"

system-packages:
	@missing="$$(for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null || echo $$p; done)"; \
	compgen -G '$(POSTGRESQL_INITDB)' >/dev/null || missing="$$missing postgresql"; \
	[ -z "$$missing" ] || { \
	  echo "[1/2] Reading Debian's package lists ..."; \
	  $(SUDO) apt-get update && \
	  echo "[2/2] Installing" $$missing "from Debian's packages (first run: a few minutes) ..." && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

macro-test: system-packages
	cd macro && node --test

pytest: $(STAMP) $(INFRA_STAMP) system-packages
	INFRA_BIN=$(CURDIR)/$(INFRA_VENV)/bin $(VENV)/bin/pytest

# README's two configuration tables, printed from their declarations (devkit/config_reference.py).
config-reference: $(STAMP)
	$(PY) -m devkit.config_reference

demo: $(STAMP) system-packages
	$(PY) -m demo

# The same with two connectors on one throwaway PostgreSQL (installed by system-packages).
demo-pair: $(STAMP) system-packages
	$(PY) -m demo pair

demo-up: $(STAMP) system-packages
	$(PY) -m demo up

demo-down: $(STAMP)
	$(PY) -m demo down

clean:
	rm -rf $(VENV) $(INFRA_VENV) .demo .pytest_cache .mypy_cache .ruff_cache
