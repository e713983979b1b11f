# The two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extras to install for the tests. CI adds `torch` (about 3 GB of CUDA wheels from PyPI)
# so the torch backend is tested on CPU against ONNX Runtime: `make test EXTRAS=dev,torch`.
EXTRAS ?= dev
STAMP := $(VENV)/.installed-$(EXTRAS)

# Coverage of streamproc by the suite; `make unit` fails below this floor (the measured
# figure less about two points, README.md "Testing"). Raise it as tests are added.
COV_FLOOR ?= 83

.PHONY: demo demo-transactions test test-explore lint typecheck unit rules bench clean install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check streamproc tests benchmarks deploy
	$(BIN)/ruff format --check streamproc tests benchmarks deploy

typecheck: $(STAMP)
	$(BIN)/mypy streamproc

unit: $(STAMP)
	$(BIN)/python -m pytest -q --cov=streamproc --cov-report=term --cov-fail-under=$(COV_FLOOR)

# The property tests with random seeds and more examples (HYPOTHESIS_PROFILE=explore,
# tests/conftest.py): for hunting bugs, not for gating a merge.
test-explore: $(STAMP)
	HYPOTHESIS_PROFILE=explore $(BIN)/python -m pytest -q -m "not kafka" -p no:cacheprovider \
		tests/backends tests/batching tests/codecs tests/drift tests/models tests/rollout \
		tests/telemetry tests/test_synth.py

# Alert rules: syntax, then their unit tests. promtool comes with Debian's `prometheus`
# package (`apt-get install prometheus`); .ci/run installs it.
PROMTOOL ?= promtool
rules:
	$(PROMTOOL) check rules deploy/prometheus/streamproc.rules.yml
	$(PROMTOOL) check config deploy/prometheus/prometheus.yml
	$(PROMTOOL) test rules deploy/prometheus/*_test.yml

test: lint typecheck rules unit

# Raw payments, windowed features per account computed by the processor (fraud 2.0.0);
# `make demo-transactions`: the pre-aggregated Transaction events of fraud 1.x.
demo: $(STAMP)
	$(BIN)/python -m streamproc.demo --payments

demo-transactions: $(STAMP)
	$(BIN)/python -m streamproc.demo

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/pip install -q --target benchmarks/out/quix-site quixstreams
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
