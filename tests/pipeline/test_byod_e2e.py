"""End to end on another schema: bring your own data with no Python edit.

Generates a small dataset for schemas/examples/departments.pbtxt (other
feature names, 3 memberships, 5 regions, 4 classes, ids up to 2,000,
histories up to 20), runs the real pipeline on it with `--schema_path` alone,
and checks that the model is pushed, converted to int8 TFLite and served by
`python -m next_category.serving.server` over gRPC.
"""

import os
import subprocess
import sys
import time

import grpc
import numpy as np
import portpicker
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from next_category import contract
from next_category.dataset import generate
from next_category.pipeline import configs
from tests.pipeline import pipelines
from tests.testing import model_checks

pytestmark = pytest.mark.e2e

_SCHEMA = os.path.join(configs.PROJECT_ROOT, "schemas", "examples", "departments.pbtxt")
_CONTRACT = contract.load(_SCHEMA)
_DEPARTMENTS = ["books", "garden", "toys", "music"]
_MODEL_NAME = "departments"
_RPC_TIMEOUT_SECONDS = 10
_READY_TIMEOUT_SECONDS = 120


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("byod")
  data_root, output_root = str(root / "data"), str(root / "out")
  # What `make data SCHEMA=...` runs.
  assert (
    generate.main(
      [
        f"--data_root={data_root}",
        "--num_examples=500",
        "--num_shards=2",
        f"--schema_path={_SCHEMA}",
      ]
    )
    == 0
  )
  result = pipelines.run_beam_runner(
    data_root,
    output_root,
    f"--schema_path={_SCHEMA}",
    "--train_steps=40",
    "--eval_steps=2",
    "--accuracy_threshold=0.0",
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  return output_root, pipelines.summary(output_root)


def test_pipeline_validates_trains_evaluates_and_pushes(pipeline_run):
  _, summary = pipeline_run
  assert {c.state for c in summary.components} == {"COMPLETE"}
  assert summary.anomalies == {"train": [], "eval": []}
  assert summary.blessed is True and summary.pushed_path
  slices = {name for name, _ in summary.slice_metrics}
  # The Evaluator slices by the schema's categorical features.
  assert {"membership=premium", "region=central", "membership=guest, region=north"} <= slices


def test_pushed_model_has_the_schemas_features_and_classes(pipeline_run):
  _, summary = pipeline_run
  loaded = tf.saved_model.load(summary.pushed_path)
  raw = loaded.signatures["serving_raw"]
  assert set(raw.structured_input_signature[1]) == {"viewed_products", "membership", "region"}
  examples = tf.constant(model_checks.serialized_examples(3, data_contract=_CONTRACT))
  classified = loaded.signatures["classification"](inputs=examples)
  assert classified["classes"].numpy().tolist() == [[d.encode() for d in _DEPARTMENTS]] * 3
  assert classified["scores"].shape == (3, 4)


def test_int8_tflite_model_has_the_schemas_inputs(pipeline_run):
  output_root, summary = pipeline_run
  (converter,) = [c for c in summary.components if c.node_id == "TFLiteConverter"]
  (artifact,) = converter.outputs["tflite_model"]
  interpreter = tf.lite.Interpreter(model_path=os.path.join(artifact.uri, "model.tflite"))
  runner = interpreter.get_signature_runner("serving_default")
  inputs = {name: list(d["shape"]) for name, d in runner.get_input_details().items()}
  assert inputs == {"viewed_products": [1, 20], "membership": [1], "region": [1]}
  assert list(runner.get_output_details()["probabilities"]["shape"]) == [1, 4]
  assert {d["dtype"] for d in interpreter.get_tensor_details()} <= {
    np.int8,
    np.int32,
    np.int64,
    np.bool_,
    np.float32,  # The dequantized output only (TFLiteConverter checks it).
  }
  with open(os.path.join(artifact.uri, "labels.txt")) as f:
    assert f.read().split() == _DEPARTMENTS
  if artifact.custom_properties["pushed"].int_value:
    version = artifact.custom_properties["pushed_version"].string_value
    assert os.path.exists(
      os.path.join(output_root, "tflite", configs.SERVING_MODEL_NAME, version, "model.tflite")
    )
  else:  # The tiny model may lose more than a point to int8; the reason says so.
    assert "Not shipped" in artifact.custom_properties["reason"].string_value


def _wait_until_available(hostport: str, server: subprocess.Popen) -> None:
  deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = _MODEL_NAME
  available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
  with grpc.insecure_channel(hostport) as channel:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    while time.monotonic() < deadline:
      assert server.poll() is None, "the server exited before serving"
      try:
        status = stub.GetModelStatus(request, timeout=_RPC_TIMEOUT_SECONDS)
        if any(v.state == available for v in status.model_version_status):
          return
      except grpc.RpcError:
        pass
      time.sleep(0.2)
  raise TimeoutError(f"{_MODEL_NAME} was not available on {hostport} in time.")


@pytest.fixture(scope="module")
def served(pipeline_run, tmp_path_factory):
  output_root, _ = pipeline_run
  port = portpicker.pick_unused_port()
  log = open(tmp_path_factory.mktemp("server") / "server.log", "w")  # noqa: SIM115
  server = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "next_category.serving.server",
      f"--port={port}",
      f"--rest_api_port={portpicker.pick_unused_port()}",
      f"--model_name={_MODEL_NAME}",
      f"--model_base_path={os.path.join(output_root, 'serving', configs.SERVING_MODEL_NAME)}",
    ],
    cwd=configs.PROJECT_ROOT,
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  try:
    hostport = f"127.0.0.1:{port}"
    _wait_until_available(hostport, server)
    with grpc.insecure_channel(hostport) as channel:
      yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
  finally:
    server.terminate()
    server.wait(timeout=30)
    log.close()


def test_server_predicts_with_the_pushed_model(pipeline_run, served):
  _, summary = pipeline_run
  examples = model_checks.serialized_examples(5, data_contract=_CONTRACT)
  request = predict_pb2.PredictRequest()
  request.model_spec.name = _MODEL_NAME
  request.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
  response = served.Predict(request, timeout=_RPC_TIMEOUT_SECONDS)
  probabilities = tf.make_ndarray(response.outputs["probabilities"])
  assert probabilities.shape == (5, 4)
  expected = tf.saved_model.load(summary.pushed_path).signatures["serving_default"](
    examples=tf.constant(examples)
  )["probabilities"]
  np.testing.assert_allclose(probabilities, expected.numpy(), atol=1e-5)


def test_server_classifies_with_the_classification_signature(served):
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name = _MODEL_NAME
  # As on TensorFlow Serving: Classify names the classify signature.
  request.model_spec.signature_name = "classification"
  for serialized in model_checks.serialized_examples(2, data_contract=_CONTRACT):
    request.input.example_list.examples.add().ParseFromString(serialized)
  response = served.Classify(request, timeout=_RPC_TIMEOUT_SECONDS)
  assert len(response.result.classifications) == 2
  for classification in response.result.classifications:
    assert [c.label for c in classification.classes] == _DEPARTMENTS
    assert sum(c.score for c in classification.classes) == pytest.approx(1.0, abs=1e-4)
