# The two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extras to install for the tests. CI adds `torch` (about 3 GB of CUDA wheels from PyPI)
# so the torch backend is tested on CPU against ONNX Runtime: `make test EXTRAS=dev,torch`.
EXTRAS ?= dev
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: demo test lint typecheck unit rules bench clean install

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
	$(BIN)/python -m pytest -q

# Alert rules: syntax, then their unit tests. promtool comes with Debian's `prometheus`
# package (`apt-get install prometheus`); .ci/run installs it.
PROMTOOL ?= promtool
rules:
	$(PROMTOOL) check rules deploy/prometheus/streamproc.rules.yml
	$(PROMTOOL) check config deploy/prometheus/prometheus.yml
	$(PROMTOOL) test rules deploy/prometheus/*_test.yml

test: lint typecheck rules unit

demo: $(STAMP)
	$(BIN)/python -m streamproc.demo

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/pip install -q --target benchmarks/out/quix-site quixstreams
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
