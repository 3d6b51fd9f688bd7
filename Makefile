# The two commands of the README. Everything else is a helper target.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip prints a warning per package for this machine's local indexes; hide those lines only.
QUIET := 2>&1 | { grep -v "WARNING: Location" || true; }
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: train test bench lint typecheck pytest setup test-fast cluster-up cluster-down

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q --upgrade pip $(QUIET)
	$(PIP) install -q $(TORCH_PINS) $(QUIET)
	$(PIP) install -q -e '.[all]' $(TORCH_PINS) $(QUIET)
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PY) scripts/train.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check lit_tricks scripts tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest -q --timeout=300 $(PYTEST_ARGS)

test: lint typecheck pytest

# The inner loop: no SLURM cluster, no database server.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q --timeout=300 -m "not slurm and not db" $(PYTEST_ARGS)

# A local 2-node SLURM cluster (installs slurm-wlm and munge with apt when missing); see docs/cluster.md.
cluster-up:
	scripts/cluster/up.sh

cluster-down:
	scripts/cluster/down.sh

bench: $(STAMP)
	$(PY) benchmarks/run_all.py
