# Bootstraps .venv with pinned versions (constraints.txt), then runs the demo or the tests.
# test-accel compiles for TPU and NVIDIA GPUs on this host; each compiler extra lives in its own
# virtualenv (.venv-tpu, .venv-cuda), so .venv and `make test` stay as they are.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
XLA_FAKE_DEVICES := --xla_force_host_platform_device_count=8

.PHONY: demo test test-slow test-accel check bench experiments clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

# .venv-tpu/.accel: cpt-jax[tpu] (libtpu); .venv-cuda/.accel: cpt-jax[cuda12] (XLA's CUDA compiler).
.venv-%/bin/python:
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/pip install -q --upgrade pip

.venv-tpu/.accel .venv-cuda/.accel: .venv-%/.accel: pyproject.toml constraints.txt | .venv-%/bin/python
	.venv-$*/bin/pip install -q -c constraints.txt -e '.[$(if $(filter tpu,$*),tpu,cuda12)]' pytest
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/cpt-jax demo

# The CPU suite in two parts: `test` (the fast tests, under 20 minutes on 2 cores) and
# `test-slow` (end-to-end runs marked slow: real model, buckets, several processes). Both run in
# TEST_WORKERS pytest-xdist workers, one test file per worker at a time (module fixtures are built
# once): XLA compiles on one thread, so a second worker keeps the second core busy.
TEST_WORKERS ?= 2
PYTEST := XLA_FLAGS=$(XLA_FAKE_DEVICES) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

test: $(VENV)/.test
	$(PYTEST) -m "not slow" tests

test-slow: $(VENV)/.test
	$(PYTEST) -m slow tests

# Compile-only: the train step for TPU v5e/v5p/v6e slices and 8 H100s (tests/accel), one
# compiler per process.
test-accel: .venv-tpu/.accel .venv-cuda/.accel
	.venv-tpu/bin/python -m pytest -q --durations=15 tests/accel
	.venv-cuda/bin/python -m pytest -q --durations=15 tests/accel

# Everything CI runs: the CPU suite (fast, then slow), then the compile-only accelerator suite.
check: test test-slow test-accel

bench: $(VENV)/.test
	$(BIN)/python benchmarks/run_all.py

experiments: $(VENV)/.runtime
	$(BIN)/python experiments/run_experiments.py

clean:
	rm -rf $(VENV) .venv-tpu .venv-cuda
