# `make demo`: the whole job on the built-in toy dataset. `make test`: the test suite.
# Both create .venv and install requirements on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint demo mutation clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# the unit tests only (no subprocesses): what to run while editing
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/shellcheck tools/train.sbatch tools/gpu_check.sh .ci/run

demo: $(STAMP)
	$(PY) demo.py

# mutation testing of the method's core (not in CI; about 6 minutes on 2 cores): the score per file
mutation: $(STAMP)
	$(PY) -m pip install --quiet mutmut==3.8.1
	rm -rf mutants
	$(PY) tools/mutation.py run
	$(PY) tools/mutation.py score

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis mutants
