"""The REST API's Predict, status and metadata, answered as TensorFlow Serving 2.16 answers them.

Upstream: model_servers/tensorflow_model_server_test.py, README.md,
g3doc/api_rest.md, model_servers/http_rest_api_handler_test.cc (on
TensorFlow's half_plus_two, served as saved_model_half_plus_two_2_versions) and
http_rest_api_handler.cc. JSON bodies are compared parsed, as upstream compares
them (`CompareJson`, and `json.loads` in the Python test).
"""

import pytest

from tests.serving.conformance.conftest import model_flags


@pytest.fixture(scope="module")
def half_plus_two(tfs_server):
  return tfs_server(*model_flags("default", "saved_model_half_plus_two_cpu"))


@pytest.fixture(scope="module")
def two_versions(handler_test_server):
  return handler_test_server


def test_predict_rest(half_plus_two):
  # tensorflow_model_server_test.py:478-497 (testPredictREST).
  assert half_plus_two.rest(
    "POST", "/v1/models/default:predict", '{"instances": [2.0, 3.0, 4.0]}'
  ) == (200, {"predictions": [3.0, 3.5, 4.0]})


def test_predict_columnar_rest(half_plus_two):
  # tensorflow_model_server_test.py:499-518 (testPredictColumnarREST).
  assert half_plus_two.rest(
    "POST", "/v1/models/default:predict", '{"inputs": [2.0, 3.0, 4.0]}'
  ) == (200, {"outputs": [3.0, 3.5, 4.0]})


def test_readme_example(half_plus_two):
  # README.md:48-51 (and g3doc/docker.md): x of shape [3] into x [-1, 1].
  assert half_plus_two.rest(
    "POST", "/v1/models/default:predict", '{"instances": [1.0, 2.0, 5.0]}'
  ) == (200, {"predictions": [2.5, 3.0, 4.5]})


def test_api_rest_md_half_plus_three(tfs_server):
  # g3doc/api_rest.md:470-473.
  server = tfs_server(*model_flags("saved_model_half_plus_three", "saved_model_half_plus_three"))
  assert server.rest(
    "POST", "/v1/models/saved_model_half_plus_three:predict", '{"instances": [1.0,2.0,5.0]}'
  ) == (200, {"predictions": [3.5, 4.0, 5.5]})


def test_api_rest_md_unknown_model(half_plus_two):
  # g3doc/api_rest.md:491-497.
  assert half_plus_two.rest("POST", "/v1/models/half:predict", '{"instances": [1.0,5.0]}') == (
    404,
    {"error": "Servable not found for request: Latest(half)"},
  )


@pytest.mark.parametrize(
  "path, body, expected",
  [
    # http_rest_api_handler_test.cc:329-339: latest version, rows of two.
    ("", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}', {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
    # 341-349: a specific version.
    ("/versions/123", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
    # 351-360: a version label.
    ("/labels/Version_Label", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
    # 362-370: an explicit signature_name.
    (
      "/versions/123",
      '{"signature_name": "serving_default", "instances": [3.0, 4.0]}',
      {"predictions": [3.5, 4.0]},
    ),
    # 372-381: ... and columnar inputs.
    (
      "/versions/123",
      '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}',
      {"outputs": [3.5, 4.0]},
    ),
  ],
)
def test_handler_predict(two_versions, path, body, expected):
  assert two_versions.rest(
    "POST", f"/v1/models/saved_model_half_plus_two_2_versions{path}:predict", body
  ) == (200, expected)


@pytest.mark.parametrize(
  "path, body, status, message",
  [
    # http_rest_api_handler_test.cc:259-281 (PredictModelNameVersionErrors).
    ("/v1/models/foo:predict", '{ "instances": [1] }', 404, "Servable not found"),
    ("/v1/models/foo/versions/50:predict", '{ "instances": [1] }', 404, "Servable not found"),
    # 283-330 (PredictRequestErrors).
    ("{model}:predict", "", 400, "JSON Parse error: The document is empty"),
    ("{model}:predict", "instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
    ("{model}:predict", '{ "instances": ["x", "y"] }', 400, "not of expected type: float"),
    (
      "{model}/labels/nope:predict",
      '{ "instances": ["x", "y"] }',
      400,
      "Unrecognized servable version label",
    ),
    (
      "{model}:predict",
      '{ "signature_name": 100 }',
      400,
      "'signature_name' key must be a string value.",
    ),
    # http_rest_api_handler.cc:245-247 (GetInfoMap): unlike gRPC, INVALID_ARGUMENT.
    (
      "{model}:predict",
      '{"signature_name": "nope", "instances": [1.0]}',
      400,
      'Serving signature name: "nope" not found in signature def',
    ),
  ],
)
def test_handler_predict_errors(two_versions, path, body, status, message):
  path = path.format(model="/v1/models/saved_model_half_plus_two_2_versions")
  got_status, got_body = two_versions.rest("POST", path, body)
  assert got_status == status
  assert message in got_body["error"], got_body


def test_get_status_rest(half_plus_two):
  # tensorflow_model_server_test.py:520-547 (testGetStatusREST).
  assert half_plus_two.rest("GET", "/v1/models/default") == (
    200,
    {
      "model_version_status": [
        {
          "version": "123",
          "state": "AVAILABLE",
          "status": {"error_code": "OK", "error_message": ""},
        }
      ]
    },
  )


def test_get_model_metadata_rest(half_plus_two):
  # tensorflow_model_server_test.py:549-579 (testGetModelMetadataREST against
  # testdata/half_plus_two_model_metadata.json): model_spec and the signature map.
  status, body = half_plus_two.rest("GET", "/v1/models/default/metadata")
  assert status == 200
  assert body["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
  signatures = body["metadata"]["signature_def"]["signature_def"]
  assert sorted(signatures) == [
    "classify_x_to_y",
    "regress_x2_to_y3",
    "regress_x_to_y",
    "regress_x_to_y2",
    "serving_default",
  ]
  assert signatures["serving_default"] == {
    "inputs": {
      "x": {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
          "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
          "unknown_rank": False,
        },
        "name": "x:0",
      }
    },
    "outputs": {
      "y": {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
          "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
          "unknown_rank": False,
        },
        "name": "y:0",
      }
    },
    "method_name": "tensorflow/serving/predict",
    "defaults": {},
  }
