# Two commands matter: `make demo` (fresh machine -> demo end to end) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test tools lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "Python 3.11 ($(PY)) is required"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,export,bench]'
	@touch $(STAMP)

## setup: virtual environment with the runtime, the export extra and the test tools
setup: $(STAMP)

## demo: set everything up, start a local broker if none is configured, run the demo
demo: $(STAMP)
	$(BIN)/sentistream demo

## test: the whole suite (unit, export gates, real-broker integration); CI runs exactly this
test: $(STAMP) tools
	$(BIN)/ruff check .
	$(BIN)/pytest

## tools: the checkers deploy/ is validated with (promtool, kubeconform, schemas; deploy/tools.sh)
tools:
	bash deploy/tools.sh .tools

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/sentistream bench

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache
