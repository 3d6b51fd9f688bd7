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

.PHONY: train test bench lint typecheck pytest setup docs gpu-check test-db dashboard test-fast test-resume cluster-up cluster-down

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

# pytest in two passes (test tiers: docs/guide/install.md): every test that may share the cores on $(JOBS) xdist
# workers, then the `serial` ones (DDP, the SLURM cluster, the database, several processes at once) one at a time.
# Exit status 5 (nothing selected) of one pass is fine when the other ran tests.
JOBS ?= 2
PYTEST := $(VENV)/bin/pytest -q --timeout=300
pytest: $(STAMP)
	$(PYTEST) -n $(JOBS) -m "not serial" $(PYTEST_ARGS); a=$$?; \
	$(PYTEST) -m serial $(PYTEST_ARGS); b=$$?; \
	if [ $$a = 5 ] && [ $$b = 5 ]; then exit 5; fi; \
	for rc in $$a $$b; do if [ $$rc != 0 ] && [ $$rc != 5 ]; then exit $$rc; fi; done

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

test: lint typecheck docs pytest

# The inner loop: no test that starts a process, a process group, a cluster or a database (marker slow).
test-fast: $(STAMP)
	$(PYTEST) -n $(JOBS) -m "not slow" $(PYTEST_ARGS)

# The whole resume-equivalence grid (tests/resume: every recipe x interruption point x kill -9/SIGTERM, 180 cells);
# `make test` runs 40 of them. LIT_TRICKS_RESUME_SEED=<n> draws other positions.
test-resume: $(STAMP)
	LIT_TRICKS_RESUME_GRID=full $(VENV)/bin/pytest -q --timeout=600 -p no:cacheprovider tests/resume $(PYTEST_ARGS)

# A local 2-node SLURM cluster with accounting (installs slurm-wlm, slurmdbd, munge, MariaDB with apt when missing);
# CLUSTER_PORT_BASE (ports base..base+4) and CLUSTER_DIR (default .cluster) give a checkout its own; see docs/cluster.md.
cluster-up:
	scripts/cluster/up.sh

cluster-down:
	scripts/cluster/down.sh

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# CUDA-only paths of the callbacks (AMP scaler, EMA offload, vmap ensemble, CUDA RNG resume, FSDP); skips without CUDA.
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py

# Database tests (marker db): a private PostgreSQL server per test; installs Debian's postgresql when missing.
test-db: $(STAMP)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql)
	$(VENV)/bin/pytest -q -m db $(PYTEST_ARGS)

# Optuna's dashboard on a study storage (default: the train task's); prints the URL. pip install optuna-dashboard.
STORAGE ?= sqlite:///logs/train/optuna.db
dashboard:
	@test -x $(VENV)/bin/optuna-dashboard || { echo "make dashboard: pip install optuna-dashboard"; exit 2; }
	@echo "optuna-dashboard: http://127.0.0.1:8080  ($(STORAGE))"
	$(VENV)/bin/optuna-dashboard $(STORAGE) --host 127.0.0.1 --port 8080
