# Quick start: `make demo` (a simulation on bundled data, CPU, ~1 minute) and `make test`.
# Each creates .venv and installs what it needs (torch 2.13.0 CPU first, then the project).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pollen-installed

.PHONY: demo test lint e2e clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pollen simulate --task digits --clients 50 --partition dirichlet:0.5 \
		--strategy fedavg --rounds 30 --seed 0 --out runs/demo

lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two workers (pytest-xdist), one per core of the CI machine; tests/conftest.py splits torch's
# threads between them and keeps their runs apart. --dist loadfile keeps a module's tests on one
# worker, so a module-scoped fixture (a finished run they all read) is made once, not per worker
# (xdist_group marks are not honoured with pytest 9.2). `make test DURATIONS=30`: more slow tests.
DURATIONS ?= 5
test: lint
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=$(DURATIONS)

e2e: $(STAMP)
	$(BIN)/pytest -q -m e2e -s

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis *.egg-info
