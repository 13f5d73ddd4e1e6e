# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint format golden bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

## run: start the exporter against the built-in simulated CPO API (demo mode)
run: $(VENV)/.installed
	$(BIN)/beenergised-exporter --demo --refresh-interval=30s

## test: the whole suite (unit, golden, end-to-end; promtool where installed). Most of its time
## is spent waiting on real processes, so four workers share it; a file stays on one worker.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n 4 --dist loadfile

## lint: ruff lint and format check, mypy (configured in pyproject.toml)
lint: $(VENV)/.installed-test
	$(BIN)/ruff check exporter tests bench
	$(BIN)/ruff format --check exporter tests bench
	$(BIN)/mypy exporter

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix exporter tests bench
	$(BIN)/ruff format exporter tests bench

## bench: refresh and /metrics at 1,000 / 10,000 / 100,000 stations -> bench/results.md
bench: $(VENV)/.installed-test
	$(BIN)/python bench/bench.py

## golden: regenerate tests/golden/ after an intended change of the exposition
golden: $(VENV)/.installed-test
	BEENERGISED_UPDATE_GOLDEN=1 $(BIN)/python -m pytest tests/test_metrics.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
