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
	$(PY) -m pip install --quiet -e '.[ml,stack,review,dev]'
	@touch $@

demo: install
	$(AUTOLABEL) demo

# The browser test drives Debian's chromium (browsers cannot be downloaded by Playwright here).
$(VENV)/.browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium chromium-driver) \
		|| (sudo apt-get update && sudo apt-get install -y chromium chromium-driver)
	@touch $@

# The review queue's tests start a throwaway PostgreSQL server (Debian's postgresql package:
# initdb and postgres under /usr/lib/postgresql/<N>/bin); without it they fail, not skip.
$(VENV)/.postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
		|| (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql) \
		|| (sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)
	@touch $@

# The quality alerts' rule tests run Prometheus' own promtool (Debian's prometheus package);
# without it they fail, not skip (tests/test_quality_alerts.py).
$(VENV)/.promtool:
	command -v promtool >/dev/null \
		|| (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus) \
		|| (sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)
	@touch $@

test: install $(VENV)/.browser $(VENV)/.postgres $(VENV)/.promtool
	$(PY) -m pytest -m "not faults" tests

test-faults: install
	$(PY) -m pytest -m faults tests

lint: install
	$(VENV)/bin/ruff check .

clean:
	-$(AUTOLABEL) stack down
	rm -rf .autolabel model_repository/*/ .pytest_cache
