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

# The benchmark suite (docs/benchmarks.md): about 12 minutes on 2 cores; results in benchmarks/results/.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# The documentation site (docs/ and the API reference generated from the docstrings, mkdocs.yml):
# `make docs` writes it to site/. The docs extra is installed on its own, from the requirements
# the editable install recorded for it, so the project (and its C++ extension) is not reinstalled.
DOCS_STAMP := $(VENV)/.lstmkit-docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -c 'from importlib.metadata import requires; print("\n".join(r.split(";")[0] for r in requires("lstmkit") or [] if "extra == \"docs\"" in r))' > $(VENV)/docs-requirements.txt
	test -s $(VENV)/docs-requirements.txt
	$(BIN)/pip install -q -r $(VENV)/docs-requirements.txt
	touch $(DOCS_STAMP)

.PHONY: docs
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@echo "site: $(CURDIR)/site/index.html"
