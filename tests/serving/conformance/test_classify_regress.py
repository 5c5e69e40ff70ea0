"""Classify and Regress, over gRPC and REST, answered as TensorFlow Serving 2.16 answers them.

Upstream: model_servers/tensorflow_model_server_test.py, model_servers/
http_rest_api_handler_test.cc (on TensorFlow's cc/saved_model/testdata/
half_plus_two served as saved_model_half_plus_two_2_versions, whose signatures
the rebuilt 2_versions model has), g3doc/api_rest.md, and the messages of
servables/tensorflow/classifier.cc, regressor.cc and util.cc.
"""

import json

import grpc
import pytest
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import regression_pb2

from tests.serving.conformance.conftest import HALF_PLUS_TWO_MODELS
from tests.serving.conformance.conftest import RPC_TIMEOUT
from tests.serving.conformance.conftest import add_example
from tests.serving.conformance.conftest import model_flags
from tests.serving.conformance.conftest import rpc_error


def _request(kind, signature_name, x=2.0, model_name="default"):
  request = (
    classification_pb2.ClassificationRequest()
    if kind == "classify"
    else regression_pb2.RegressionRequest()
  )
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if x is not None:
    add_example(request.input, x=x)
  return request


@pytest.fixture(scope="module")
def server(half_plus_two_tf1_tf2):
  return half_plus_two_tf1_tf2


def test_classify(server):
  # tensorflow_model_server_test.py:137-171 (_TestClassify, testClassify,
  # testClassifyTf2: the TF2 signature's method is predict, accepted with the
  # method-name check off, the default).
  result = server.stub.Classify(_request("classify", "classify_x_to_y"), timeout=RPC_TIMEOUT)
  [classifications] = result.result.classifications
  [only_class] = classifications.classes
  assert only_class.score == 3.0
  assert only_class.label == ""
  assert result.model_spec.name == "default"
  assert result.model_spec.signature_name == "classify_x_to_y"
  assert result.model_spec.version.value == 123


def test_regress(server):
  # tensorflow_model_server_test.py:173-205 (_TestRegress, testRegress, testRegressTf2).
  result = server.stub.Regress(_request("regress", "regress_x_to_y"), timeout=RPC_TIMEOUT)
  assert [r.value for r in result.result.regressions] == [3.0]
  assert result.model_spec.signature_name == "regress_x_to_y"
  assert result.model_spec.version.value == 123


def test_classify_rest(server):
  # tensorflow_model_server_test.py:438-456 (testClassifyREST).
  status, body = server.rest(
    "POST",
    "/v1/models/default:classify",
    json.dumps({"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}),
  )
  assert (status, body) == (200, {"results": [[["", 3.0]]]})


def test_regress_rest(server):
  # tensorflow_model_server_test.py:458-476 (testRegressREST).
  status, body = server.rest(
    "POST",
    "/v1/models/default:regress",
    json.dumps({"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}),
  )
  assert (status, body) == (200, {"results": [3.0]})


def test_regress_and_classify_rest_with_versions_and_labels(handler_test_server):
  server = handler_test_server
  model = "/v1/models/saved_model_half_plus_two_2_versions"
  regress = json.dumps({"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]})
  # http_rest_api_handler_test.cc:371-403 (Regress): latest, /versions/123, /labels/Version_Label.
  for path in ("", "/versions/123", "/labels/Version_Label"):
    assert server.rest("POST", f"{model}{path}:regress", regress) == (200, {"results": [42.0]})
  # http_rest_api_handler_test.cc:405-429 (Classify).
  classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}
  assert server.rest("POST", f"{model}:classify", json.dumps(classify)) == (
    200,
    {"results": [[["", 12.0]]]},
  )
  classify["examples"] = [{"x": 10.0}]
  assert server.rest("POST", f"{model}/labels/Version_Label:classify", json.dumps(classify)) == (
    200,
    {"results": [[["", 7.0]]]},
  )


def test_half_plus_three_regress_rest(tfs_server):
  # g3doc/api_rest.md:479-483: a TF1 model whose regress input is declared
  # DT_FLOAT but is the serialized-example placeholder (ParseExample, legacy_init_op).
  server = tfs_server(*model_flags("saved_model_half_plus_three", "saved_model_half_plus_three"))
  status, body = server.rest(
    "POST",
    "/v1/models/saved_model_half_plus_three:regress",
    json.dumps(
      {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}
    ),
  )
  assert (status, body) == (200, {"results": [3.5, 4.0]})


@pytest.mark.parametrize(
  "call, request_args, code, message",
  [
    # classifier.cc:151-161, regressor.cc:146-156.
    (
      "Classify",
      ("classify", "nope"),
      grpc.StatusCode.INVALID_ARGUMENT,
      "No signature was found with the name: nope",
    ),
    (
      "Regress",
      ("regress", "nope"),
      grpc.StatusCode.INVALID_ARGUMENT,
      "No signature was found with the name: nope",
    ),
    # classifier.cc:194-199: serving_default (a predict signature) has no `inputs`.
    (
      "Classify",
      ("classify", ""),
      grpc.StatusCode.INVALID_ARGUMENT,
      "No classification inputs found in SignatureDef: ",
    ),
    # regressor.cc:183-194.
    (
      "Regress",
      ("regress", "classify_x_to_y"),
      grpc.StatusCode.INVALID_ARGUMENT,
      "No regression outputs found in SignatureDef: ",
    ),
    # util.cc:163-166 (InputToSerializedExampleTensor).
    (
      "Classify",
      ("classify", "classify_x_to_y", None),
      grpc.StatusCode.INVALID_ARGUMENT,
      "Input is empty.",
    ),
  ],
)
def test_classify_regress_errors(tfs_server, call, request_args, code, message):
  server = tfs_server(*model_flags("default", HALF_PLUS_TWO_MODELS["tf1"]))
  got = rpc_error(getattr(server.stub, call), _request(*request_args))
  assert got[0] == code
  assert got[1].startswith(message), got[1]


def test_method_name_check_refuses_tf2_predict_signatures(tfs_server):
  # tensorflow_model_server_test.py:169-171 notes the TF2 signatures' method is
  # predict; with --enable_signature_method_name_check classifier.cc:162-167 refuses it.
  server = tfs_server(
    *model_flags("default", HALF_PLUS_TWO_MODELS["tf2"]), "--enable_signature_method_name_check"
  )
  assert rpc_error(server.stub.Classify, _request("classify", "classify_x_to_y")) == (
    grpc.StatusCode.INVALID_ARGUMENT,
    "Expected classification signature method_name to be tensorflow/serving/classify. "
    "Was: tensorflow/serving/predict",
  )
