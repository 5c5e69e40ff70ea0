"""The REST API against a real server: TF Serving's URLs, JSON and HTTP codes."""

import base64
import http.client
import json

import numpy as np
import pytest

from next_category.serving.apis import json_tensor
from next_category.serving.testdata import make_canned_models as canned_models
from tests.serving import conftest
from tests.serving.conftest import DEADLINE_SECONDS
from tests.serving.conftest import MODEL_NAME


def _request(server, method, path, body=None):
  """`(HTTP status, parsed JSON or text)` of one request."""
  connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=DEADLINE_SECONDS)
  try:
    payload = body if isinstance(body, (bytes, type(None))) else json.dumps(body)
    connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    text = response.read().decode()
    if response.getheader("Content-Type", "").startswith("application/json"):
      return response.status, json.loads(text)
    return response.status, text
  finally:
    connection.close()


def _b64(data: bytes):
  return {"b64": base64.b64encode(data).decode()}


def test_predict_row_format_matches_the_saved_model_exactly(server, canned, examples):
  status, body = _request(
    server, "POST", f"/v1/models/{MODEL_NAME}:predict", {"instances": [_b64(e) for e in examples]}
  )
  assert status == 200
  np.testing.assert_array_equal(
    np.array(body["predictions"], np.float32),
    conftest.reference(canned.version_1, examples=examples),
  )


def test_predict_named_instances_and_versions_url(server, canned, examples):
  status, body = _request(
    server,
    "POST",
    f"/v1/models/{MODEL_NAME}/versions/1:predict",
    {
      "signature_name": "serving_default",
      "instances": [{"examples": _b64(e)} for e in examples[:2]],
    },
  )
  assert status == 200
  np.testing.assert_array_equal(
    np.array(body["predictions"], np.float32),
    conftest.reference(canned.version_1, examples=examples[:2]),
  )


def test_predict_columnar_raw_signature(server, canned):
  history = [[5, 17, 3, 0], [42, 0, 0, 0]]
  segments, tiers = ["new", "returning"], ["tier2", "tier9"]
  status, body = _request(
    server,
    "POST",
    f"/v1/models/{MODEL_NAME}:predict",
    {
      "signature_name": canned_models.RAW_SIGNATURE_NAME,
      "inputs": {"item_history": history, "user_segment": segments, "city_tier": tiers},
    },
  )
  assert status == 200
  expected = conftest.reference(
    canned.version_1,
    canned_models.RAW_SIGNATURE_NAME,
    item_history=np.array(history, np.int64),
    user_segment=np.array([s.encode() for s in segments], object),
    city_tier=np.array([t.encode() for t in tiers], object),
  )
  np.testing.assert_array_equal(np.array(body["outputs"], np.float32), expected)


def test_predict_row_format_with_several_inputs(server, canned):
  instances = [
    {"item_history": [7, 8, 9], "user_segment": "new", "city_tier": "tier1"},
    {"item_history": [1, 0, 0], "user_segment": "returning", "city_tier": "tier3"},
  ]
  status, body = _request(
    server,
    "POST",
    f"/v1/models/{MODEL_NAME}:predict",
    {"signature_name": canned_models.RAW_SIGNATURE_NAME, "instances": instances},
  )
  assert status == 200
  expected = conftest.reference(
    canned.version_1,
    canned_models.RAW_SIGNATURE_NAME,
    item_history=np.array([i["item_history"] for i in instances], np.int64),
    user_segment=np.array([i["user_segment"].encode() for i in instances], object),
    city_tier=np.array([i["city_tier"].encode() for i in instances], object),
  )
  np.testing.assert_array_equal(np.array(body["predictions"], np.float32), expected)


def test_classify_runs_the_classification_signature(server, canned):
  example = {"item_history": [12, 7, 7, 3], "user_segment": "returning", "city_tier": "tier2"}
  status, body = _request(
    server,
    "POST",
    f"/v1/models/{MODEL_NAME}:classify",
    {"signature_name": "classification", "examples": [example]},
  )
  assert status == 200
  expected = conftest.reference(
    canned.version_1, "classification", "scores", inputs=[_serialized(example)]
  )[0]
  [row] = body["results"]
  assert [label for label, _ in row] == list(canned_models.CLASS_NAMES)
  np.testing.assert_array_equal(np.array([score for _, score in row], np.float32), expected)


def test_classify_with_context_and_b64_feature(server, canned):
  context = {"user_segment": "new", "city_tier": {"b64": base64.b64encode(b"tier3").decode()}}
  examples = [{"item_history": [5, 6]}, {"item_history": [9]}]
  status, body = _request(
    server,
    "POST",
    f"/v1/models/{MODEL_NAME}:classify",
    {"signature_name": "classification", "context": context, "examples": examples},
  )
  assert status == 200
  full = [
    _serialized({"item_history": e["item_history"], "user_segment": "new", "city_tier": "tier3"})
    for e in examples
  ]
  expected = conftest.reference(canned.version_1, "classification", "scores", inputs=full)
  np.testing.assert_array_equal(
    np.array([[score for _, score in row] for row in body["results"]], np.float32), expected
  )


def test_regress_runs_the_regression_signature(server, canned):
  examples = [
    {"item_history": [1, 2, 3], "user_segment": "new", "city_tier": "tier1"},
    {"item_history": [44], "user_segment": "returning", "city_tier": "tier4"},
  ]
  status, body = _request(
    server,
    "POST",
    f"/v1/models/{MODEL_NAME}/versions/1:regress",
    {"signature_name": "regression", "examples": examples},
  )
  assert status == 200
  expected = conftest.reference(
    canned.version_1, "regression", "outputs", inputs=[_serialized(e) for e in examples]
  )
  np.testing.assert_array_equal(np.array(body["results"], np.float32), expected)


def _serialized(features) -> bytes:
  return json_tensor.example_from_json(features).SerializeToString()


def test_model_status_json(server):
  status, body = _request(server, "GET", f"/v1/models/{MODEL_NAME}")
  assert status == 200
  assert body == {
    "model_version_status": [
      {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
  }
  assert _request(server, "GET", f"/v1/models/{MODEL_NAME}/versions/1")[0] == 200


def test_metadata_json(server):
  status, body = _request(server, "GET", f"/v1/models/{MODEL_NAME}/metadata")
  assert status == 200
  assert body["model_spec"] == {"name": MODEL_NAME, "signature_name": "", "version": "1"}
  signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
  assert signature["inputs"]["examples"]["dtype"] == "DT_STRING"
  assert signature["outputs"]["probabilities"]["tensor_shape"]["dim"][1]["size"] == "10"


@pytest.mark.parametrize(
  "method, path, body, code, message",
  [
    ("GET", "/v1/models/unknown", None, 404, "Could not find any versions of model unknown"),
    (
      "POST",
      "/v1/models/unknown:predict",
      {"instances": [1]},
      404,
      "Servable not found for request: Latest(unknown)",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}/versions/3:predict",
      {"instances": [1]},
      404,
      "Servable not found for request: Specific(next_category, 3)",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}/labels/stable:predict",
      {"instances": [1]},
      400,
      "Unrecognized servable version label: stable",
    ),
    ("POST", f"/v1/models/{MODEL_NAME}:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", f"/v1/models/{MODEL_NAME}:predict", {"instances": []}, 400, "'instances' is empty"),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:predict",
      {"instances": [1]},
      400,
      "JSON Value: 1 Type: Number is not of expected type: string",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:predict",
      {"instances": [{"b64": "%%%"}]},
      400,
      "Unable to base64 decode",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:predict",
      {"instances": ["not a tf.Example"]},
      400,
      "Could not parse example input",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:predict",
      {"inputs": [1], "instances": [1]},
      400,
      "Only one of 'instances' or 'inputs' may be specified.",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:predict",
      {"signature_name": 3, "instances": [1]},
      400,
      "'signature_name' key must be a string value.",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:predict",
      {
        "signature_name": canned_models.RAW_SIGNATURE_NAME,
        "inputs": {"item_history": [[1, 2], [3]], "user_segment": ["new"], "city_tier": ["a"]},
      },
      400,
      "ragged",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:predict",
      {
        "signature_name": canned_models.RAW_SIGNATURE_NAME,
        "inputs": {"item_history": [[1.5]], "user_segment": ["new"], "city_tier": ["a"]},
      },
      400,
      "JSON Value: 1.5 Type: Number is not of expected type: int64",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:classify",
      {"examples": [{"item_history": [1], "user_segment": "new", "city_tier": "tier1"}]},
      400,
      "No classification inputs found in SignatureDef: ",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:regress",
      {"signature_name": "classification", "examples": [{"item_history": [1]}]},
      400,
      "Expected one output Tensor.",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:classify",
      {"signature_name": "classification", "examples": []},
      400,
      "'examples' value is an empty array",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:classify",
      {"signature_name": "classification", "examples": [{"item_history": [1, "a"]}]},
      400,
      "Unexpected element type in feature: item_history expecting type: int64",
    ),
    (
      "POST",
      f"/v1/models/{MODEL_NAME}:classify",
      {"signature_name": "nope", "examples": [{"item_history": [1]}]},
      400,
      "No signature was found with the name: nope",
    ),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("POST", "/v1/models/x:explode", {}, 400, "Malformed request"),
    ("GET", "/v2/anything", None, 404, "No handler"),
  ],
)
def test_errors_are_json_with_tf_serving_http_codes(server, method, path, body, code, message):
  status, response = _request(server, method, path, body)
  assert status == code
  assert message in response["error"]


def test_prometheus_metrics(server, examples):
  _request(server, "POST", f"/v1/models/{MODEL_NAME}:predict", {"instances": [_b64(examples[0])]})
  _request(server, "POST", "/v1/models/unknown:predict", {"instances": [1]})
  status, text = _request(server, "GET", "/monitoring/prometheus/metrics")
  assert status == 200
  # TensorFlow Serving's names and labels (tests/serving/conformance/test_metrics.py
  # pins the format).
  assert ':tensorflow:serving:request_count{model_name="next_category",status="OK"} ' in text
  # A model the server does not know is counted under one label, never its own.
  assert ':tensorflow:serving:request_count{model_name="<unknown>",status="NOT_FOUND"} ' in text
  assert 'model_name="unknown"' not in text
  assert (
    ':tensorflow:serving:request_latency_bucket{model_name="next_category",API="predict",'
    'entrypoint="REST",le="+Inf"}'
  ) in text
  assert (
    ':tensorflow:serving:model_version_loaded{model_name="next_category",model_version="1"} 1'
    in text.splitlines()
  )
