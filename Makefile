# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: help run test test-fast test-e2e soak lint format golden rules image bench bench-large clean
.DEFAULT_GOAL := help

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

## help: list the targets with what they do (each target's `## name: text` comment)
help:
	@awk 'sub(/^## /, "") { if (match($$0, /^[a-z0-9-]+: /)) { printf "%s%-12s %s", nl, \
	    substr($$0, 1, RLENGTH - 2), substr($$0, RLENGTH + 1); nl = "\n" } \
	    else { sub(/^ +/, ""); printf " %s", $$0 } } END { print "" }' $(firstword $(MAKEFILE_LIST))

## run: start the exporter against the built-in simulated CPO API (demo mode)
run: $(VENV)/.installed
	$(BIN)/beenergised-exporter --demo --refresh.interval=30s

## test: the whole suite (unit, golden, end-to-end; its last line names the system tools it
##       skipped for, docs/development.md lists them). Most of its time
## is spent waiting on real processes, so four workers share it; a file stays on one worker.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n 4 --dist loadfile

## test-fast: the unit tier for the edit loop (no real process; a test that starts one must be
## marked e2e, tests/conftest.py enforces it), in well under a minute
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not e2e" -n 2

## test-e2e: the end-to-end tier only: real exporter, simulator, promtool, buildah, ...
test-e2e: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m e2e -n 4 --dist loadfile

## soak: the chaos soak (about 14 minutes): 200 real fleet changes and 200 faults through two
##       replicas, Prometheus with prometheus/alerts.yml and Alertmanager; counts the stations
##       missed, falsely named and named twice (docs/alert-trust.md). A new seed each run,
##       printed; SEED=<seed> replays one
soak: $(VENV)/.installed-test
	$(BIN)/python -m tests.chaos_soak --changes 200 --faults 200 --seconds 780 $(if $(SEED),--seed $(SEED))

## lint: ruff lint and format check, mypy (configured in pyproject.toml)
lint: $(VENV)/.installed-test
	$(BIN)/ruff check exporter tests bench deploy setup.py
	$(BIN)/ruff format --check exporter tests bench deploy setup.py
	$(BIN)/mypy exporter

## format: ruff fix and format, in place
format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix exporter tests bench deploy setup.py
	$(BIN)/ruff format exporter tests bench deploy setup.py

## bench: refresh and /metrics at 1,000 / 10,000 / 100,000 / 1,000,000 stations, and 100 mandants
##        x 10,000 (about 25 minutes) -> bench/results.md
bench: $(VENV)/.installed-test
	$(BIN)/python bench/bench.py --million --many-mandants

## bench-large: 1,000,000 stations and 100 mandants x 10,000 (several minutes) -> bench/results.md
bench-large: $(VENV)/.installed-test
	$(BIN)/python bench/bench.py --sizes= --million --many-mandants

## golden: regenerate tests/golden/ after an intended change of the exposition
golden: $(VENV)/.installed-test
	BEENERGISED_UPDATE_GOLDEN=1 $(BIN)/python -m pytest tests/test_metrics.py

## rules: regenerate deploy/kubernetes/prometheus-operator/prometheusrule.yaml after editing
##        prometheus/alerts.yml
rules:
	$(PYTHON) deploy/prometheusrule.py

## image: build the container image with buildah as tests/test_image.py does, without a registry
##        (as root; a debootstrap stand-in for the base image) -> dist/, for docker/podman load
image:
	$(PYTHON) deploy/image.py

## clean: remove the virtualenv and the caches
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
