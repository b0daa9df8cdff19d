# KSWiFi Connect — `make run` starts the service, `make test` runs the whole suite.
# Both install what is missing first: Debian packages (as root) and a virtualenv in .venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := .make
APT_PACKAGES := wireguard-go wireguard-tools nftables iproute2 iperf3 chromium zbar-tools procps prometheus
export KSWIFI_DATA_DIR ?= $(CURDIR)/var

.PHONY: schema run run-lan test lint typecheck unit e2e browser bench deps system-deps clean help soak

help:
	@echo "make run   - install what is missing, then start KSWiFi Connect (embedded SQLite)"
	@echo "make test  - install what is missing, then run lint, types, layers and the whole suite"
	@echo "make run-lan - like run, on this machine's LAN address, to try it with a phone"
	@echo "make bench - run the benchmarks in bench/ and rewrite BENCHMARKS.md"

$(STAMP):
	@mkdir -p $(STAMP)

# System packages: only as root (CI and `make run` on a gateway host); otherwise say what is missing.
system-deps: $(STAMP)/system
$(STAMP)/system: | $(STAMP)
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES) python3-venv; do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "==> installing Debian packages:$$missing"; \
	    apt-get -o DPkg::Lock::Timeout=900 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else \
	  echo "==> not root: skipping Debian packages ($(APT_PACKAGES)); gateway and browser tests will be skipped"; \
	fi
	@touch $@

deps: $(BIN)/.installed
$(BIN)/.installed: pyproject.toml | $(STAMP)/system
	@echo "==> preparing $(VENV) (Python packages from pyproject.toml)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

run: deps
	@$(BIN)/kswifi demo

# Try it with your own phone: served on this machine's LAN address, the local gateway
# registered there (run as root for the gateway), a QR code of the app in the terminal.
run-lan: deps
	@$(BIN)/kswifi demo --lan

lint: deps
	@echo "==> ruff"
	@$(BIN)/ruff check src tests bench
	@$(BIN)/ruff format --check src tests bench
	@echo "==> import layers"
	@$(BIN)/lint-imports

typecheck: deps
	@echo "==> mypy --strict src/"
	@$(BIN)/mypy --strict src/

test: lint typecheck
	@echo "==> pytest"
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS)

unit: deps
	@$(BIN)/python -m pytest -q -m "not root and not browser" $(PYTEST_ARGS)

e2e: deps
	@$(BIN)/python -m pytest -q tests/e2e $(PYTEST_ARGS)

browser: deps
	@$(BIN)/python -m pytest -q tests/browser $(PYTEST_ARGS)

# The hardening suite at full length: 20 agent kills, a 60 s partition, 12 control-plane kills,
# 30 s of cut database connections, 40 schemathesis examples per operation, role and mode.
soak: deps
	@KSWIFI_SOAK=1 KSWIFI_FUZZ_EXAMPLES=40 $(BIN)/python -m pytest -q -s tests/hardening $(PYTEST_ARGS)

bench: deps
	@$(BIN)/python -m bench.run_all

# Regenerate the initial migration from the models (pre-release only; seed data lives in 0002).
schema: deps
	@set -e; tmp=$$(mktemp -d); versions=src/kswifi/migrations/versions; \
	  rm -f $$versions/0001_*.py; mv $$versions/0[0-9][0-9][0-9]_*.py $$tmp/ 2>/dev/null || true; \
	  $(BIN)/python -c "from alembic import command; from kswifi.control.migrate import alembic_config; command.revision(alembic_config('sqlite+aiosqlite:///$$tmp/schema.db'), message='initial schema', autogenerate=True, rev_id='0001')"; \
	  mv $$tmp/0[0-9][0-9][0-9]_*.py $$versions/; rm -rf $$tmp
	@$(BIN)/ruff format -q src/kswifi/migrations/versions

clean:
	rm -rf $(VENV) $(STAMP) var .pytest_cache .mypy_cache .ruff_cache
