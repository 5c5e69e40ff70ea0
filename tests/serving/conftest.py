"""Fixtures of the serving tests: canned models and servers on free loopback ports."""

import functools
import os
import shutil
import time
from typing import Optional

import grpc
import numpy as np
import portpicker
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc

from next_category import serving
from next_category.serving import model_server
from next_category.serving.config import flags
from next_category.serving.testdata import make_canned_models

MODEL_NAME = "next_category"
TFLITE_MODEL_NAME = "next_category_tflite"
# Every RPC in the tests carries this deadline.
DEADLINE_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 60.0
# serving/deploy/: the deployment files.
MONITORING_CONFIG = os.path.join(os.path.dirname(serving.__file__), "deploy", "monitoring.config")


@pytest.fixture(scope="session")
def canned(tmp_path_factory) -> make_canned_models.CannedModels:
  return make_canned_models.make_canned_models(str(tmp_path_factory.mktemp("canned")))


@pytest.fixture(scope="session")
def examples():
  return make_canned_models.make_examples(8, seed=3)


@functools.lru_cache(maxsize=None)
def _signatures(saved_model_dir: str):
  return tf.saved_model.load(saved_model_dir).signatures


def reference(
  saved_model_dir: str,
  signature_name: str = "serving_default",
  output_name: str = "probabilities",
  **inputs,
) -> np.ndarray:
  """A signature's output, called in-process on the SavedModel."""
  signature = _signatures(saved_model_dir)[signature_name]
  outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
  return outputs[output_name].numpy()


def model_status(hostport: str, model_name: str = MODEL_NAME):
  """GetModelStatus, or None while the server does not answer."""
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = model_name
  with grpc.insecure_channel(hostport) as channel:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    try:
      return stub.GetModelStatus(request, timeout=DEADLINE_SECONDS)
    except grpc.RpcError:
      return None


def wait_until(predicate, timeout: float = READY_TIMEOUT_SECONDS, interval: float = 0.05):
  """Polls `predicate` until it returns something truthy, and returns that."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(interval)
  raise TimeoutError(f"Condition not met within {timeout} s.")


def version_states(hostport: str, model_name: str = MODEL_NAME):
  """{version: state name} from GetModelStatus ({} while unanswered)."""
  response = model_status(hostport, model_name)
  if response is None:
    return {}
  state = get_model_status_pb2.ModelVersionStatus.State
  return {s.version: state.Name(s.state) for s in response.model_version_status}


def wait_for_server_ready(
  hostport: str, model_name: str = MODEL_NAME, version: Optional[int] = None
) -> None:
  """Waits until `model_name` (or that version) is AVAILABLE, as TF Serving's tests do."""

  def ready():
    states = version_states(hostport, model_name)
    if version is not None:
      return states.get(version) == "AVAILABLE"
    return "AVAILABLE" in states.values()

  wait_until(ready)


def start_server(wait_for=(MODEL_NAME,), **options) -> model_server.ModelServer:
  """Starts an in-process server on free loopback ports and waits until it serves."""
  options.setdefault("model_name", MODEL_NAME)
  server = model_server.ModelServer(
    flags.ServerOptions(
      host="127.0.0.1",
      port=portpicker.pick_unused_port(),
      rest_api_port=portpicker.pick_unused_port(),
      **options,
    )
  )
  server.start()
  for model_name in wait_for:
    wait_for_server_ready(f"127.0.0.1:{server.grpc_port}", model_name)
  return server


def push_version(source: str, base_path: str, version) -> str:
  """Copies a SavedModel in as `version`, atomically as the Pusher does."""
  staging = os.path.join(base_path, f".staging-{version}")
  shutil.copytree(source, staging)
  target = os.path.join(base_path, str(version))
  os.rename(staging, target)
  return target


@pytest.fixture(scope="module")
def server(canned, tmp_path_factory):
  """A server of the canned next_category and next_category_tflite, from a config file."""
  config = tmp_path_factory.mktemp("config") / "models.config"
  config.write_text(f"""
model_config_list {{
  config {{ name: "{MODEL_NAME}" base_path: "{canned.base_path}" model_platform: "tensorflow" }}
  config {{
    name: "{TFLITE_MODEL_NAME}" base_path: "{canned.tflite_base_path}" model_platform: "tensorflow"
  }}
}}
""")
  server = start_server(
    wait_for=(MODEL_NAME, TFLITE_MODEL_NAME),
    model_config_file=str(config),
    monitoring_config_file=MONITORING_CONFIG,
    file_system_poll_wait_seconds=0,
  )
  yield server
  server.stop()


@pytest.fixture
def channel(server):
  with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
    yield channel
