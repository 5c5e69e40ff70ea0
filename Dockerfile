# syntax=docker/dockerfile:1
# The image every Kubeflow component and TFJob worker runs in: the pinned
# requirements.lock and this project on Python 3.11 / Debian 12, as `make
# install` builds the local venv.
#
#   docker build -t next-category-pipeline:0.1.0 .
#   docker build --target beam-worker -t next-category-beam-worker:0.1.0 .

FROM python:3.11-slim-bookworm AS runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /pipeline

# Dependencies first, so code changes rebuild only the layers below. crcmod
# and pyfarmhash ship as sources only: the compiler is removed again in the
# same layer. tfx 1.16.0 declares Requires-Python <3.11 but runs on 3.11.
COPY requirements.lock .
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && pip install pip==24.2 setuptools==84.2.1 wheel==0.48.0 \
 && pip install --no-deps --ignore-requires-python -r requirements.lock \
 && apt-get purge -y --auto-remove build-essential \
 && rm -rf /var/lib/apt/lists/*

# The project (see .dockerignore); schemas/ stays at /pipeline/schemas for
# ImportSchemaGen (kubeflow_runner.IMAGE_SCHEMA_PATH).
COPY . .
RUN pip install --no-deps --no-build-isolation . && pip check

# Beam SDK harness for the components' Beam pipelines on Flink, Spark or
# Dataflow (--sdk_container_image / --environment_config): the same Python
# dependencies behind Beam's boot entrypoint, whose version must match the
# lock's apache-beam.
FROM runtime AS beam-worker
COPY --from=apache/beam_python3.11_sdk:2.59.0 /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]

# Default target: the entry point every step of the compiled package names as
# its command (pipeline/kubeflow/entrypoint.py, wrapping TFX's
# kubeflow_v2_run_executor so open-source KFP 2.x and Vertex AI both run it).
FROM runtime AS pipeline
ENTRYPOINT ["python", "-m", "next_category.pipeline.kubeflow.entrypoint"]
