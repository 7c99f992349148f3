# Two commands set everything up on a fresh machine with Python 3.11 and make:
#   make study   install from the lock file, run studies/quick.yaml, write the HTML report
#   make test    install from the lock file, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser study test test-fast lint bench lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

study: install
	$(BIN)/collapselab run studies/quick.yaml

test: install browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

# For development: everything but the tests marked slow (real servers, processes, signals,
# whole-study simulations); CI runs `make test`, all of them.
test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

# Headless Chromium for the report's browser test, from the system's packages where we may
# install them (root with apt-get); elsewhere that one test is skipped with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	echo "Chromium is not installed: the report's browser test will be skipped"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Ratios measured side by side; every number also lands in benchmarks/results/*.json.
bench: install
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_study.py
	$(BIN)/python benchmarks/bench_scale.py
	$(BIN)/python benchmarks/bench_report.py

# Re-resolve the pins from pyproject.toml into requirements.lock (needs the network).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q setuptools wheel -e '.[dev]'
	(echo "# Pinned by 'make lock' (pip freeze of a fresh install of pyproject.toml's dependencies, Python 3.11)."; \
	 .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v "^pip==") > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .collapselab reports/*/ collapselab.duckdb
