# The README's two commands: `make demo` and `make test`. Both create .venv if missing,
# install the project (CPU torch, pinned), and are safe to re-run.
VENV ?= .venv
PYTHON ?= python3.11
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_ENV := CLINAIOPS_ENVIRONMENT=demo CLINAIOPS_COOKIE_SECURE=false

.PHONY: install chromium pango demo test test-postgres lint clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) chromium pango

# Headless Chromium for the portal's browser tests (Debian's package, driven by Playwright;
# Playwright's own browser download is not used). Installed only when absent.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO apt-get install -y -qq chromium; }

# Pango (and fonts) for WeasyPrint's PDF reports, from Debian. Installed only when absent.
pango:
	@ldconfig -p | grep -q 'libpangoft2-1.0.so.0' && ldconfig -p | grep -q 'libharfbuzz-subset.so.0' || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO apt-get install -y -qq libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core; }

demo: install
	$(DEMO_ENV) $(VENV)/bin/clinaiops demo

test: install
	$(PY) -m pytest

# Database tests again on PostgreSQL, in a fresh database (see docs/postgresql.md).
test-postgres: install
	bash .ci/postgres-tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) var .hypothesis
