"""MultiInference over gRPC, answered as TensorFlow Serving 2.16 answers it.

Upstream: model_servers/tensorflow_model_server_test.py:207-250 (end to end)
and servables/tensorflow/multi_inference_test.cc (the runner; its TF2 case
serves saved_model_half_plus_two_tf2_cpu), with the messages of
multi_inference.cc.
"""

import concurrent.futures
import os
import shutil

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import prediction_log_pb2

from next_category.serving import status
from next_category.serving.apis import inference
from next_category.serving.models import loader
from next_category.serving.models import warmup
from tests.serving.conformance.conftest import HALF_PLUS_TWO_MODELS
from tests.serving.conformance.conftest import RPC_TIMEOUT
from tests.serving.conformance.conftest import add_example
from tests.serving.conformance.conftest import rpc_error

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
PREDICT = "tensorflow/serving/predict"


def _request(*tasks, x=2.0):
  """tensorflow_model_server_test.py:211-225; multi_inference_test.cc:135-143 PopulateTask."""
  request = inference_pb2.MultiInferenceRequest()
  for signature_name, method_name, *model_name in tasks:
    task = request.tasks.add(method_name=method_name)
    task.model_spec.name = model_name[0] if model_name else "default"
    task.model_spec.signature_name = signature_name
  if x is not None:
    add_example(request.input, x=x)
  return request


@pytest.fixture(scope="module")
def server(half_plus_two_tf1_tf2):
  return half_plus_two_tf1_tf2


def test_multi_inference(server):
  # tensorflow_model_server_test.py:207-250 (testMultiInference, testMultiInferenceTf2).
  request = _request(("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY))
  response = server.stub.MultiInference(request, timeout=RPC_TIMEOUT)
  assert len(response.results) == 2
  regression, classification = response.results
  assert [r.value for r in regression.regression_result.regressions] == [3.0]
  [classifications] = classification.classification_result.classifications
  assert [(c.label, c.score) for c in classifications.classes] == [("", 3.0)]
  for result, task in zip(response.results, request.tasks, strict=True):
    assert result.model_spec.name == "default"
    assert result.model_spec.signature_name == task.model_spec.signature_name
    assert result.model_spec.version.value == 123


def test_multiple_regress_signatures(server):
  # multi_inference_test.cc:320-356 (MultipleValidRegressSignaturesTest):
  # y = 0.5x + 2, y2 = 0.5x + 3.
  request = _request(("regress_x_to_y", REGRESS), ("regress_x_to_y2", REGRESS))
  response = server.stub.MultiInference(request, timeout=RPC_TIMEOUT)
  assert [
    [r.value for r in result.regression_result.regressions] for result in response.results
  ] == [[3.0], [4.0]]


@pytest.mark.parametrize(
  "request_args, code, message",
  [
    # multi_inference_test.cc:155-177 (MissingInputTest).
    (([("regress_x_to_y", REGRESS)], None), grpc.StatusCode.INVALID_ARGUMENT, "Input is empty."),
    # multi_inference_test.cc:179-201 (UndefinedSignatureTest); multi_inference.cc:66-70.
    (
      ([("ThisSignatureDoesNotExist", REGRESS)], 2.0),
      grpc.StatusCode.INVALID_ARGUMENT,
      "Requested signature not found in model graph: ThisSignatureDoesNotExist",
    ),
    # multi_inference_test.cc:203-237 (InconsistentModelSpecsInRequestTest).
    (
      ([("regress_x_to_y", REGRESS), ("regress_x_to_y", REGRESS, "ModelDoesNotExist")], 2.0),
      grpc.StatusCode.INVALID_ARGUMENT,
      "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
    ),
    # multi_inference_test.cc:239-260 (EvaluateDuplicateSignaturesTest).
    (
      ([("regress_x_to_y", REGRESS), ("regress_x_to_y", REGRESS)], 2.0),
      grpc.StatusCode.INVALID_ARGUMENT,
      "Duplicate evaluation of signature: regress_x_to_y",
    ),
    # multi_inference_test.cc:262-283 (UsupportedSignatureTypeTest): UNIMPLEMENTED.
    (
      ([("serving_default", PREDICT)], 2.0),
      grpc.StatusCode.UNIMPLEMENTED,
      "Unsupported signature method_name: tensorflow/serving/predict",
    ),
    # multi_inference.cc:42-45.
    (
      ([("regress_x_to_y", REGRESS), ("regress_x_to_y2", REGRESS, "")], 2.0),
      grpc.StatusCode.INVALID_ARGUMENT,
      "Found ModelSpec with an empty model name.",
    ),
    # multi_inference_helper.cc:28-55: the first task's model is looked up first.
    (
      ([("regress_x_to_y", REGRESS, "missing")], 2.0),
      grpc.StatusCode.NOT_FOUND,
      "Servable not found for request: Latest(missing)",
    ),
  ],
)
def test_multi_inference_errors(server, request_args, code, message):
  tasks, x = request_args
  assert rpc_error(server.stub.MultiInference, _request(*tasks, x=x)) == (code, message)


def test_multi_inference_warmup_records_are_replayed(tfs_testdata, tmp_path):
  # servables/tensorflow/saved_model_warmup_util.cc: MultiInference logs are
  # warmup records too; a bad one fails the load.
  service = inference.InferenceService(manager=None)  # Warmup names the servable.
  for tasks, ok in ((("regress_x_to_y", REGRESS),), True), ((("nope", REGRESS),), False):
    export_dir = tmp_path / f"{ok}" / "00000123"
    shutil.copytree(tfs_testdata / HALF_PLUS_TWO_MODELS["tf1"] / "00000123", export_dir)
    log = prediction_log_pb2.PredictionLog()
    log.multi_inference_log.request.CopyFrom(_request(*tasks))
    os.makedirs(export_dir / "assets.extra")
    with tf.io.TFRecordWriter(warmup.warmup_file(str(export_dir))) as writer:
      writer.write(log.SerializeToString())
    servable = loader.load_servable("default", 123, str(export_dir))
    servable.attach(concurrent.futures.ThreadPoolExecutor(1))
    if ok:
      warmup.replay_warmup_requests(servable, service)
    else:
      with pytest.raises(status.ServingError, match="Requested signature not found"):
        warmup.replay_warmup_requests(servable, service)
