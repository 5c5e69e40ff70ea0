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
# The data contract (README: Bring your own data).
SCHEMA ?= schemas/schema.pbtxt
OUTPUT_ROOT ?= artifacts
RUNNER ?= beam
PRESET ?= small
NUM_WORKERS ?= 1
# Training budget: TRAIN_EPOCHS passes over the train split (default 2, with early
# stopping and a cap for large data: docs/model.md); TRAIN_STEPS, if set, overrides it.
TRAIN_EPOCHS ?=
TRAIN_STEPS ?=
SPAN ?= 1
DRIFT ?=
NUM_EXAMPLES ?= 50000
PYTEST_ARGS ?=
TEST_PROCESSES ?= 2
SERVING_PORT ?= 8500
# The label feature, which `make query` leaves out of the examples it sends.
LABEL_FEATURE ?= label
REST_PORT ?= 8501
# Anomaly kinds the validation gate accepts (KIND or feature:KIND, comma-separated).
TOLERATE_ANOMALIES ?=
# Ingest this span instead of the latest (SPAN is the span `make data` writes).
RUN_SPAN ?=
# Logged serving requests for `make skew-report`.
SERVING_DATA ?=
# Where `make keygen` writes the model signing key pair.
KEY_DIR ?= keys
# A private key from `make keygen`: every pushed version (SavedModel and TFLite) is signed with it.
MODEL_SIGNING_KEY ?=
# Kubeflow: the pipeline image, where components keep their data, the KFP API.
IMAGE ?= next-category-pipeline:0.1.0
KFP_STORAGE_ROOT ?=
KFP_HOST ?=
EXPERIMENT ?= next-category
RUN_NAME ?=
BEAM_ARGS ?=
# TUNE=1 puts TFX's Tuner before the Trainer, trying TUNE_TRIALS hyperparameter sets
# (default pipeline/configs.py's TUNE_TRIALS).
TUNE ?=
TUNE_TRIALS ?=
# VERBOSE=1 shows every log line on the terminal instead of OUTPUT_ROOT/logs/<run>.log.
VERBOSE ?=
# `make report`: the run to rebuild the report of (default: the latest).
RUN ?=
TENSORBOARD_PORT ?= 6006
BENCH_RUNS ?= 3
# `make bench-scale`: example counts to run (comma-separated), e.g. SCALE_SIZES=50000 for a quick run.
SCALE_SIZES ?= 50000,1000000,5000000
# `make bench-quality`: which corpora (comma-separated; default all) and at most how many
# documents of each (default all).
CORPORA ?=
MAX_EXAMPLES ?=
# `make bench-bayes`: score these examples instead of generating NUM_EXAMPLES.
BAYES_DATA_ROOT ?=
# `make kubeflow-schedule`: a 5-field cron (KFP's seconds field is added).
CRON ?=
SCHEDULE_NAME ?=
# `make vertex-schedule`: the Google Cloud project and Vertex AI region (default: $GOOGLE_CLOUD_PROJECT,
# $GOOGLE_CLOUD_REGION), and another endpoint than REGION-aiplatform.googleapis.com.
VERTEX_PROJECT ?=
VERTEX_REGION ?=
VERTEX_API_ENDPOINT ?=

TUNE_FLAGS := $(if $(filter-out 0,$(TUNE)),--tune) $(if $(TUNE_TRIALS),--tune_trials=$(TUNE_TRIALS))
RUN_FLAGS := --data_root=$(DATA_ROOT) --output_root=$(OUTPUT_ROOT) --schema_path=$(SCHEMA) \
	--preset=$(PRESET) \
	$(if $(TRAIN_STEPS),--train_steps=$(TRAIN_STEPS)) $(if $(TRAIN_EPOCHS),--train_epochs=$(TRAIN_EPOCHS)) \
	--num_workers=$(NUM_WORKERS) $(if $(TOLERATE_ANOMALIES),--tolerate_anomalies=$(TOLERATE_ANOMALIES)) \
	$(if $(RUN_SPAN),--span=$(RUN_SPAN)) $(if $(filter-out 0,$(VERBOSE)),--verbose) \
	$(if $(MODEL_SIGNING_KEY),--model_signing_key=$(MODEL_SIGNING_KEY)) $(TUNE_FLAGS)

.PHONY: install lock data run test test-fast lint format bench-train clean image kubeflow \
	kubeflow-submit kubeflow-schedule vertex-schedule skew-report keygen \
	serve query bench-serving bench-rest-server bench-tensors bench-tflite bench-multi-worker report tensorboard \
	bench-run bench-verification bench-scale bench-bayes

install: $(STAMP)

# Idempotent: the stamp is newer than the lock file once the venv matches it.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==24.2 setuptools==84.2.1 wheel==0.48.0
	# tfx 1.16.0 declares Requires-Python <3.11, but runs on 3.11 (README).
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# Re-resolves requirements.in and requirements-dev.in into requirements.lock (needs the package index).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet pip==24.2 setuptools==84.2.1 wheel==0.48.0
	.venv-lock/bin/pip install --quiet --ignore-requires-python -r requirements.in -r requirements-dev.in
	{ echo "# Every package with its exact version, resolved from requirements.in by"; \
	  echo "# \`make lock\` on Python 3.11 / Debian 12 (glibc 2.36). Do not edit by hand."; \
	  .venv-lock/bin/pip freeze --exclude-editable; } > requirements.lock
	rm -rf .venv-lock

# Writes span SPAN of the synthetic dataset, with SCHEMA's features (refuses to
# overwrite an existing span).
data: install
	$(PY) -m next_category.dataset.generate --data_root=$(DATA_ROOT) --span=$(SPAN) --schema_path=$(SCHEMA) \
		--num_examples=$(NUM_EXAMPLES) $(if $(DRIFT),--drift=$(DRIFT))

# Generates the default dataset only when DATA_ROOT holds no span yet, so a
# user's own DATA_ROOT is never touched.
run: install
	@if ! ls -d $(DATA_ROOT)/span-*/ >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory data SPAN=1; fi
	$(PY) -m next_category.pipeline.run.$(RUNNER)_runner $(RUN_FLAGS)

# Rebuilds OUTPUT_ROOT/reports/<run>/index.html of run RUN (default: the latest) from ML Metadata.
report: install
	$(PY) -m next_category.pipeline.reports.html_report --output_root=$(OUTPUT_ROOT) $(if $(RUN),--run=$(RUN))

# Serves the Trainer's TensorBoard logs of every run, named by run id.
tensorboard: install
	$(PY) -m next_category.pipeline.reports.tensorboard_logs --output_root=$(OUTPUT_ROOT) --port=$(TENSORBOARD_PORT)

# `make run` BENCH_RUNS times from a cold ML Metadata store: median per component.
bench-run: install
	$(PY) -m bench.run_bench --data_root=$(DATA_ROOT) --runs=$(BENCH_RUNS)

# The default pipeline on each of SCALE_SIZES generated examples: per component seconds and
# peak RSS of the process tree, accuracy (bench/results/scale.json).
bench-scale: install
	$(PY) -m bench.scale_bench --sizes=$(SCALE_SIZES) $(BEAM_ARGS)

# Two passes: the unit tier on one process (its servers' deadline and memory
# tests want the cores to themselves), then the end-to-end tier, whose tests
# each run a pipeline or a server on about one core, on TEST_PROCESSES processes
# (pytest-xdist), a test file per process. Exit status 5 (no test selected,
# e.g. PYTEST_ARGS naming a file of one tier only) is not a failure.
test: install
	$(PY) -m pytest -q -m "not e2e and not bench" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PY) -m pytest -q -m "e2e and not bench" -n $(TEST_PROCESSES) --dist loadfile \
		$(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: install
	$(PY) -m pytest -q -m "not e2e" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .

bench-train: install
	$(PY) -m bench.train_input --preset=$(PRESET)

bench-multi-worker: install
	$(PY) -m bench.multi_worker --preset=$(PRESET)

# BENCH_SERVING_ARGS, e.g. "--baseline_tree=../wt-base --repeats=5": before/after in one run.
bench-serving: install
	$(PY) -m bench.serving_bench --preset=$(PRESET) $(BENCH_SERVING_ARGS)

# The REST API's HTTP server alone: aiohttp (today's) against bare aiohttp.web and,
# with BENCH_REST_ARGS="--baseline_tree=../wt-base", that tree's (tornado or hand-written).
bench-rest-server: install
	$(PY) -m bench.rest_server_bench $(BENCH_REST_ARGS)

# The generator's Bayes-optimal accuracy (the best possible) on NUM_EXAMPLES of seed 42,
# or on the examples under BAYES_DATA_ROOT (docs/model.md).
bench-bayes: install
	$(PY) -m bench.bayes --num_examples=$(NUM_EXAMPLES) --schema_path=$(SCHEMA) \
		$(if $(BAYES_DATA_ROOT),--data_root=$(BAYES_DATA_ROOT))

bench-tensors: install
	$(PY) -m bench.tensors_bench

bench-tflite: install
	$(PY) -m bench.tflite_bench --preset=$(PRESET)

# The pushed model against a majority class and TF-IDF logistic regression on real
# text corpora from npm and PyPI packages, each through its own schema (docs/quality.md).
.PHONY: bench-quality
bench-quality: install
	$(PY) -m bench.quality_bench $(if $(CORPORA),--corpora=$(CORPORA)) \
		$(if $(MAX_EXAMPLES),--max_examples=$(MAX_EXAMPLES))

# Serves the pushed models over TensorFlow Serving's gRPC and REST APIs.
serve: install
	$(PY) -m next_category.serving.server --port=$(SERVING_PORT) --rest_api_port=$(REST_PORT) \
		--model_name=next_category --model_base_path=$(abspath $(OUTPUT_ROOT))/serving/next_category \
		--enable_batching --batching_parameters_file=serving/deploy/batching_parameters.txt \
		--monitoring_config_file=serving/deploy/monitoring.config

# Classifies a few dataset examples on the running server (the model's
# `classification` signature), leaving out LABEL_FEATURE: the feature your
# schema keeps out of the SERVING environment.
query: install
	$(PY) -m next_category.serving.client --server=localhost:$(SERVING_PORT) \
		--examples=$(firstword $(wildcard $(DATA_ROOT)/span-*/data-*.tfrecord.gz)) --num_examples=5 \
		--exclude_features=$(LABEL_FEATURE)

# Compares logged serving requests with the latest run's training statistics.
skew-report: install
	$(PY) -m next_category.pipeline.reports.skew_report --serving_data='$(SERVING_DATA)' --output_root=$(OUTPUT_ROOT)

# Writes an ECDSA P-256 key pair (PEM) for signing pushed models in the OpenSSF model
# signing format (docs/serving-production.md "Signed models").
keygen: install
	$(PY) -m next_category.components.version_signing keygen --key_dir=$(KEY_DIR)

# Builds the image every Kubeflow component runs in (needs a container engine).
image:
	docker build -t $(IMAGE) .

# Compiles the same pipeline for Kubeflow: OUTPUT_ROOT/kubeflow/pipeline.json (the
# PipelineJob Vertex AI runs) and pipeline_spec.yaml (what the KFP UI and kfp.Client take).
# SCHEMA, a file in this checkout, is read by the components from the image's copy.
kubeflow: install
	$(PY) -m next_category.pipeline.kubeflow.kubeflow_runner --output_root=$(OUTPUT_ROOT) --image=$(IMAGE) \
		--schema_path=$(SCHEMA) --preset=$(PRESET) --num_workers=$(NUM_WORKERS) \
		$(if $(KFP_STORAGE_ROOT),--storage_root=$(KFP_STORAGE_ROOT)) \
		$(if $(TRAIN_STEPS),--train_steps=$(TRAIN_STEPS)) \
		$(if $(MODEL_SIGNING_KEY),--model_signing_key=$(MODEL_SIGNING_KEY)) $(TUNE_FLAGS) $(BEAM_ARGS)

# Submits the compiled pipeline to the KFP v2 API at KFP_HOST.
kubeflow-submit: install
	$(PY) -m next_category.pipeline.kubeflow.submit --host=$(KFP_HOST) --output_root=$(OUTPUT_ROOT) \
		--experiment_name=$(EXPERIMENT) $(if $(RUN_NAME),--run_name=$(RUN_NAME)) \
		$(if $(TRAIN_STEPS),--train_steps=$(TRAIN_STEPS))

# Creates a recurring run of the compiled pipeline at KFP_HOST, e.g.
# `make kubeflow-schedule CRON='0 3 * * *' KFP_HOST=http://localhost:8080`
# (list, pause, resume, delete: python -m next_category.pipeline.kubeflow.schedule --help).
kubeflow-schedule: install
	$(PY) -m next_category.pipeline.kubeflow.schedule create --host=$(KFP_HOST) --cron='$(CRON)' \
		--output_root=$(OUTPUT_ROOT) --experiment_name=$(EXPERIMENT) \
		$(if $(SCHEDULE_NAME),--name=$(SCHEDULE_NAME)) $(if $(TRAIN_STEPS),--train_steps=$(TRAIN_STEPS))

# Creates a Vertex AI schedule of the compiled pipeline.json, e.g. `make vertex-schedule
# CRON='0 3 * * *' VERTEX_PROJECT=my-project VERTEX_REGION=us-central1` (cron in UTC unless
# prefixed 'TZ=Europe/Berlin '; list, pause, resume, delete: python -m next_category.pipeline.kubeflow.vertex_schedule --help).
vertex-schedule: install
	$(PY) -m next_category.pipeline.kubeflow.vertex_schedule create --cron='$(CRON)' --output_root=$(OUTPUT_ROOT) \
		$(if $(VERTEX_PROJECT),--project=$(VERTEX_PROJECT)) $(if $(VERTEX_REGION),--region=$(VERTEX_REGION)) \
		$(if $(VERTEX_API_ENDPOINT),--api_endpoint=$(VERTEX_API_ENDPOINT)) \
		$(if $(SCHEDULE_NAME),--name=$(SCHEDULE_NAME)) $(if $(TRAIN_STEPS),--train_steps=$(TRAIN_STEPS))

clean:
	rm -rf $(OUTPUT_ROOT) .pytest_cache
