# `make demo`: create .venv on first use, install, run the default audit (configs/default.yaml).
# `make test`: create .venv on first use, install with test extras, run the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Pin torch first: a bare `torch` requirement would pull a multi-GB CUDA build here.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,plots,dp,hf,parquet,scan]' torch==2.13.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/exposure-audit audit

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/pip install -q ruff
	$(BIN)/ruff check exposure_audit tests benchmarks --select F,E9
	$(BIN)/ruff format --check exposure_audit tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
