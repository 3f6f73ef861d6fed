# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
AUTOLABEL := $(VENV)/bin/autolabel
export PATH := $(abspath $(VENV))/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install demo test test-faults lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[ml,stack,dev]'
	@touch $@

demo: install
	$(AUTOLABEL) demo

test: install
	$(PY) -m pytest -m "not faults" tests

test-faults: install
	$(PY) -m pytest -m faults tests

lint: install
	$(VENV)/bin/ruff check .

clean:
	-$(AUTOLABEL) stack down
	rm -rf .autolabel model_repository/*/ .pytest_cache
