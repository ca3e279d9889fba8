# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lstmkit-installed

.PHONY: demo test lint typecheck clean

# setup.py compiles the C++ extension lstmkit._C (the fused backend) against the torch installed
# first, hence --no-build-isolation and setuptools/wheel in the venv before it; editing a file in
# csrc/ rebuilds it.
$(STAMP): pyproject.toml setup.py $(wildcard src/lstmkit/backends/csrc/*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 'setuptools>=68' wheel
	$(BIN)/pip install -q --no-build-isolation -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lstmkit demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache

# The benchmark suite (docs/benchmarks.md): about 6 minutes on 2 cores; results in benchmarks/results/.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run
