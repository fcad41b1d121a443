# quantstage: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both install into .venv first when it is missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/quantstage demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Benchmarks (bench/): the bench extra adds ONNX Runtime as a peer; torch stays pinned.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run

stack: $(STAMP)  ## local Prefect server + worker + MLflow server + deployments; `deploy/stack.sh stop` stops it
	deploy/stack.sh

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts *.egg-info
