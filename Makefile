# Bootstraps .venv with pinned versions (constraints.txt), then runs the demo or the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
XLA_FAKE_DEVICES := --xla_force_host_platform_device_count=8

.PHONY: demo test bench experiments clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/cpt-jax demo

test: $(VENV)/.test
	XLA_FLAGS=$(XLA_FAKE_DEVICES) $(BIN)/python -m pytest -q tests

bench: $(VENV)/.test
	$(BIN)/python benchmarks/run_all.py

experiments: $(VENV)/.runtime
	$(BIN)/python experiments/run_experiments.py

clean:
	rm -rf $(VENV)
