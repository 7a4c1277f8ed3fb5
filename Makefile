# Two commands matter: `make demo` (fresh machine -> demo end to end) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

# What each target installs into the one virtual environment. The worker runtime needs no torch;
# PyPI's torch is the large CUDA build (about 5 GB installed), so only the targets that run the
# export step (its tests, the transformers peer of the benchmark) pull the export extra.
SPEC_runtime := .
SPEC_test := .[test,export,openvino]
SPEC_bench := .[bench,export]

# uv installs from PyPI like pip, but keeps every wheel it unpacks in ~/.cache/uv and hardlinks
# the files into the venv: the export extra is downloaded once per machine, and each clone's
# venv costs no extra disk for it. The system certificate store carries any proxy's CA.
export UV_SYSTEM_CERTS ?= 1
UV := $(BIN)/uv pip install --python $(BIN)/python --quiet

.PHONY: setup demo test tools lint bench clean

$(BIN)/python:
	@command -v $(PY) >/dev/null || { echo "Python 3.11 ($(PY)) is required"; exit 1; }
	$(PY) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check uv

$(VENV)/.installed-%: pyproject.toml | $(BIN)/uv
	$(UV) -e '$(SPEC_$*)'
	@touch $@

## setup: virtual environment with the runtime (what `make demo` and a worker need; no torch)
setup: $(VENV)/.installed-runtime

## demo: set everything up, start a local broker if none is configured, run the demo
demo: $(VENV)/.installed-runtime
	$(BIN)/sentistream demo

## test: the whole suite (unit, export gates, real-broker integration); CI runs exactly this
test: $(VENV)/.installed-test tools
	$(BIN)/ruff check .
	$(BIN)/pytest

## tools: the checkers deploy/ is validated with (promtool, kubeconform, schemas; deploy/tools.sh)
tools:
	bash deploy/tools.sh .tools

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

bench: $(VENV)/.installed-bench
	$(BIN)/sentistream bench

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache
