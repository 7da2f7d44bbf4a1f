# daelab: every target does its own set-up on a fresh machine (idempotent).
#   make reproduce   the whole study into runs/study (the main job)
#   make test        the test suite
#   make docs        the documentation site into site/
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DAELAB := $(VENV)/bin/daelab
DATA_DIR ?= /usr/share/datasets/fashion-mnist
TORCH ?= torch==2.13.0

.PHONY: setup data browser postgres foreign test reproduce quick train benchmark benchmark-study lint docs clean

setup: $(VENV)/.installed data

# torch first (the CPU build on local disk), then the project with its dev extras.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

data:
	@bash scripts/ensure-system-packages.sh data

browser:
	@bash scripts/ensure-system-packages.sh browser

# the PostgreSQL server the sweep's many-workers test starts in a temporary directory
postgres:
	@bash scripts/ensure-system-packages.sh postgres

# the cross compiler and emulator the aarch64 kernel test builds and runs with
foreign:
	@bash scripts/ensure-system-packages.sh foreign

test: setup browser postgres foreign
	$(PY) -m pytest -q

reproduce: setup
	$(DAELAB) reproduce --run-dir runs/study

quick: setup
	$(DAELAB) reproduce --quick --run-dir runs/quick

train: setup
	$(DAELAB) train

benchmark: setup
	$(PY) benchmarks/bench_train.py $(BENCH_ARGS)

# the whole study beside the plain loop measured just before and after it (~10 minutes)
benchmark-study: setup
	$(PY) benchmarks/bench_study.py

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

# the documentation site into site/ (mkdocs + mkdocs-material + mkdocstrings; --strict: a broken
# link or a docstring that does not parse fails the build)
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[dev,docs]"
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache build site src/*.egg-info
