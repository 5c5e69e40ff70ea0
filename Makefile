# Thin wrappers over `python -m ...` entry points; each also runs on its own.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# TFX 1.16 runs on TensorFlow 2.16 only with Keras 2 (tf-keras).
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONWARNINGS := ignore::FutureWarning,ignore::DeprecationWarning

DATA_ROOT ?= data/default
OUTPUT_ROOT ?= artifacts
RUNNER ?= beam
PRESET ?= small
NUM_WORKERS ?= 1
TRAIN_STEPS ?=
SPAN ?= 1
DRIFT ?=
NUM_EXAMPLES ?= 50000
PYTEST_ARGS ?=

RUN_FLAGS := --data_root=$(DATA_ROOT) --output_root=$(OUTPUT_ROOT) --preset=$(PRESET) \
	$(if $(TRAIN_STEPS),--train_steps=$(TRAIN_STEPS)) --num_workers=$(NUM_WORKERS)

.PHONY: install lock data run test test-fast lint format bench-train clean

install: $(STAMP)

# Idempotent: the stamp is newer than the lock file once the venv matches it.
$(STAMP): requirements.lock setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==24.2 setuptools==84.2.1 wheel==0.48.0
	# tfx 1.16.0 declares Requires-Python <3.11, but runs on 3.11 (README).
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# Re-resolves requirements.in into requirements.lock (needs the package index).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet pip==24.2 setuptools==84.2.1 wheel==0.48.0
	.venv-lock/bin/pip install --quiet --ignore-requires-python -r requirements.in
	{ echo "# Every package with its exact version, resolved from requirements.in by"; \
	  echo "# \`make lock\` on Python 3.11 / Debian 12 (glibc 2.36). Do not edit by hand."; \
	  .venv-lock/bin/pip freeze --exclude-editable; } > requirements.lock
	rm -rf .venv-lock

# Writes span SPAN of the default dataset (refuses to overwrite an existing span).
data: install
	$(PY) -m dataset.generate --data_root=$(DATA_ROOT) --span=$(SPAN) \
		--num_examples=$(NUM_EXAMPLES) $(if $(DRIFT),--drift=$(DRIFT))

# Generates the default dataset only when DATA_ROOT holds no span yet, so a
# user's own DATA_ROOT is never touched.
run: install
	@if ! ls -d $(DATA_ROOT)/span-*/ >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory data SPAN=1; fi
	$(PY) -m pipeline.$(RUNNER)_runner $(RUN_FLAGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not e2e" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .

bench-train: install
	$(PY) -m bench.train_input --preset=$(PRESET)

clean:
	rm -rf $(OUTPUT_ROOT) .pytest_cache
