# Two commands for a new user: `make demo` (a first sweep) and `make test`.
# Each creates .venv and installs on first use. torch==2.13.0 goes in first: an open
# `torch` requirement would otherwise pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Slow end-to-end tests run in CI (CI=true) or with `make test-all`.
ifeq ($(CI),true)
PYTEST_MARK :=
else
PYTEST_MARK := -m "not slow"
endif

.PHONY: install demo test test-all bench bench-gate bench-baseline lint report clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m fedbench -m compressor=quant,topk,powersgd

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_MARK) $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) multirun outputs .pytest_cache .benchmarks
