"""The gRPC APIs against a real server: exact values, metadata, status and every error."""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import regression_pb2

from components.trainer import constants
from components.trainer import features
from tests.serving import conftest
from tests.serving.conftest import DEADLINE_SECONDS
from tests.serving.conftest import MODEL_NAME
from tests.serving.conftest import TFLITE_MODEL_NAME


def _predict_request(inputs, model_name=MODEL_NAME, signature_name="", version=None, label=None):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if version is not None:
    request.model_spec.version.value = version
  if label is not None:
    request.model_spec.version_label = label
  for name, value in inputs.items():
    request.inputs[name].CopyFrom(
      value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
    )
  return request


def _examples_proto(examples):
  return tf.make_tensor_proto(examples, dtype=tf.string)


@pytest.fixture
def stub(channel):
  return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _error(call, request):
  with pytest.raises(grpc.RpcError) as raised:
    call(request, timeout=DEADLINE_SECONDS)
  return raised.value.code(), raised.value.details()


def test_predict_matches_the_saved_model_exactly(stub, canned, examples):
  response = stub.Predict(
    _predict_request({"examples": _examples_proto(examples)}), timeout=DEADLINE_SECONDS
  )

  got = tf.make_ndarray(response.outputs["probabilities"])
  np.testing.assert_array_equal(got, conftest.reference(canned.version_1, examples=examples))
  assert got.shape == (len(examples), constants.NUM_CATEGORIES)
  assert response.model_spec.name == MODEL_NAME
  assert response.model_spec.version.value == 1
  assert response.model_spec.signature_name == "serving_default"
  # Written as TF Serving writes outputs: the typed field, which clients read.
  assert len(response.outputs["probabilities"].float_val) == got.size


def test_predict_raw_signature_matches_exactly(stub, canned):
  history = np.array([[5, 17, 3, 0], [42, 0, 0, 0]], np.int64)
  segments = np.array([b"new", b"returning"], object)
  tiers = np.array([b"tier2", b"unknown-tier"], object)
  request = _predict_request(
    {
      "item_history": history,
      "user_segment": tf.make_tensor_proto(segments, dtype=tf.string),
      "city_tier": tf.make_tensor_proto(tiers, dtype=tf.string),
    },
    signature_name=constants.RAW_SIGNATURE_NAME,
    version=1,
  )

  response = stub.Predict(request, timeout=DEADLINE_SECONDS)

  np.testing.assert_array_equal(
    tf.make_ndarray(response.outputs["probabilities"]),
    conftest.reference(
      canned.version_1,
      constants.RAW_SIGNATURE_NAME,
      item_history=history,
      user_segment=segments,
      city_tier=tiers,
    ),
  )


def test_predict_accepts_tensor_content(stub, canned):
  history = np.array([[5, 17, 3]], np.int64)
  proto = tf.make_tensor_proto(history)
  assert proto.tensor_content  # The packed form, not int64_val.
  request = _predict_request(
    {
      "item_history": proto,
      "user_segment": _examples_proto([b"new"]),
      "city_tier": _examples_proto([b"tier1"]),
    },
    signature_name=constants.RAW_SIGNATURE_NAME,
  )
  response = stub.Predict(request, timeout=DEADLINE_SECONDS)
  np.testing.assert_array_equal(
    tf.make_ndarray(response.outputs["probabilities"]),
    conftest.reference(
      canned.version_1,
      constants.RAW_SIGNATURE_NAME,
      item_history=history,
      user_segment=np.array([b"new"], object),
      city_tier=np.array([b"tier1"], object),
    ),
  )


def test_classify_maps_probabilities_to_category_names(stub, canned, examples):
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name = MODEL_NAME
  for serialized in examples[:3]:
    request.input.example_list.examples.add().ParseFromString(serialized)

  response = stub.Classify(request, timeout=DEADLINE_SECONDS)

  expected = conftest.reference(canned.version_1, examples=examples[:3])
  assert len(response.result.classifications) == 3
  for row, classifications in zip(expected, response.result.classifications, strict=True):
    assert [c.label for c in classifications.classes] == list(constants.CATEGORY_NAMES)
    np.testing.assert_array_equal(
      np.array([c.score for c in classifications.classes], np.float32), row
    )
  assert response.model_spec.version.value == 1


def test_classify_merges_context_into_each_example(stub, canned, examples):
  full = tf.train.Example.FromString(examples[0])
  context = tf.train.Example()
  example = tf.train.Example()
  for key, feature in full.features.feature.items():
    target = context if key == constants.CITY_TIER_KEY else example
    target.features.feature[key].CopyFrom(feature)
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name = MODEL_NAME
  request.input.example_list_with_context.context.CopyFrom(context)
  request.input.example_list_with_context.examples.add().CopyFrom(example)

  response = stub.Classify(request, timeout=DEADLINE_SECONDS)

  scores = [c.score for c in response.result.classifications[0].classes]
  np.testing.assert_allclose(
    scores, conftest.reference(canned.version_1, examples=examples[:1])[0], atol=1e-7
  )


def test_get_model_metadata_returns_the_signature_defs(stub):
  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  request.model_spec.name = MODEL_NAME

  response = stub.GetModelMetadata(request, timeout=DEADLINE_SECONDS)

  signatures = get_model_metadata_pb2.SignatureDefMap()
  assert response.metadata["signature_def"].Unpack(signatures)
  default = signatures.signature_def["serving_default"]
  assert default.inputs["examples"].dtype == types_pb2.DT_STRING
  assert [d.size for d in default.inputs["examples"].tensor_shape.dim] == [-1]
  assert [d.size for d in default.outputs["probabilities"].tensor_shape.dim] == [
    -1,
    constants.NUM_CATEGORIES,
  ]
  raw = signatures.signature_def[constants.RAW_SIGNATURE_NAME]
  assert sorted(raw.inputs) == ["city_tier", "item_history", "user_segment"]
  assert response.model_spec.version.value == 1


def test_get_model_status_reports_available_versions(channel):
  stub = model_service_pb2_grpc.ModelServiceStub(channel)
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = MODEL_NAME

  response = stub.GetModelStatus(request, timeout=DEADLINE_SECONDS)

  [status] = response.model_version_status
  assert status.version == 1
  assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
  assert status.status.error_code == 0


def test_tflite_model_serves_its_own_inputs_and_examples(stub, canned, examples):
  # The TFLite file holds version 1's weights.
  encoded = {
    k: v.numpy()
    for k, v in features.parse_and_encode(tf.constant(examples), with_label=False).items()
  }
  expected = conftest.reference(canned.version_1, examples=examples)

  native = stub.Predict(
    _predict_request(encoded, model_name=TFLITE_MODEL_NAME), timeout=DEADLINE_SECONDS
  )
  from_examples = stub.Predict(
    _predict_request({"examples": _examples_proto(examples)}, model_name=TFLITE_MODEL_NAME),
    timeout=DEADLINE_SECONDS,
  )

  # TFLite kernels differ from TensorFlow's in the last bits.
  np.testing.assert_allclose(tf.make_ndarray(native.outputs["probabilities"]), expected, atol=1e-5)
  np.testing.assert_array_equal(
    tf.make_ndarray(from_examples.outputs["probabilities"]),
    tf.make_ndarray(native.outputs["probabilities"]),
  )
  assert native.model_spec.name == TFLITE_MODEL_NAME


def test_tflite_metadata_takes_any_batch(stub):
  # The pipeline converts for batch 1; the server runs a batch row by row.
  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  request.model_spec.name = TFLITE_MODEL_NAME
  signatures = get_model_metadata_pb2.SignatureDefMap()
  stub.GetModelMetadata(request, timeout=DEADLINE_SECONDS).metadata["signature_def"].Unpack(
    signatures
  )
  inputs = signatures.signature_def["serving_default"].inputs
  assert [d.size for d in inputs["item_history"].tensor_shape.dim] == [
    -1,
    constants.MAX_HISTORY_LENGTH,
  ]
  assert inputs["user_segment"].dtype == types_pb2.DT_INT64


@pytest.mark.parametrize(
  "model_spec, code, message",
  [
    (
      {"name": "unknown_model"},
      grpc.StatusCode.NOT_FOUND,
      "Servable not found for request: Latest(unknown_model)",
    ),
    (
      {"name": MODEL_NAME, "version": 7},
      grpc.StatusCode.NOT_FOUND,
      "Servable not found for request: Specific(next_category, 7)",
    ),
    (
      {"name": MODEL_NAME, "label": "canary"},
      grpc.StatusCode.INVALID_ARGUMENT,
      "Unrecognized servable version label: canary",
    ),
    (
      {"name": MODEL_NAME, "signature_name": "nope"},
      grpc.StatusCode.FAILED_PRECONDITION,
      'Serving signature key "nope" not found.',
    ),
  ],
)
def test_predict_unknown_model_version_label_or_signature(
  stub, examples, model_spec, code, message
):
  request = _predict_request(
    {"examples": _examples_proto(examples)},
    model_name=model_spec["name"],
    signature_name=model_spec.get("signature_name", ""),
    version=model_spec.get("version"),
    label=model_spec.get("label"),
  )
  assert _error(stub.Predict, request) == (code, message)


@pytest.mark.parametrize(
  "inputs, message",
  [
    ({"serialized": [b"x"]}, "input tensor alias not found in signature: serialized"),
    ({"examples": [b"x"], "extra": [1]}, "input size does not match signature: 2!=1"),
    (
      {"examples": np.array([1, 2], np.int64)},
      "Expects arg[examples] of signature serving_default to be string but int64 is provided",
    ),
    (
      {"examples": [[b"a"], [b"b"]]},
      "input examples of signature serving_default must have shape [-1]",
    ),
    ({"examples": np.zeros([0], object)}, "input examples has an empty batch"),
    ({"examples": [b"not a tf.Example"]}, "Could not parse example input"),
  ],
)
def test_predict_invalid_inputs(stub, inputs, message):
  request = _predict_request(
    {
      name: tf.make_tensor_proto(value, dtype=tf.string)
      if np.asarray(value).dtype.kind in "OS"
      else tf.make_tensor_proto(value)
      for name, value in inputs.items()
    }
  )
  code, details = _error(stub.Predict, request)
  assert code == grpc.StatusCode.INVALID_ARGUMENT
  assert message in details


def test_predict_inputs_with_different_batch_sizes(stub):
  request = _predict_request(
    {
      "item_history": np.array([[1, 2]], np.int64),
      "user_segment": _examples_proto([b"new", b"new"]),
      "city_tier": _examples_proto([b"tier1"]),
    },
    signature_name=constants.RAW_SIGNATURE_NAME,
  )
  code, details = _error(stub.Predict, request)
  assert code == grpc.StatusCode.INVALID_ARGUMENT
  assert "inputs must have the same batch size" in details


def test_predict_malformed_tensor(stub):
  proto = tf.make_tensor_proto([b"a", b"b"], dtype=tf.string)
  proto.tensor_shape.dim[0].size = 1  # Two values for one element.
  code, details = _error(stub.Predict, _predict_request({"examples": proto}))
  assert code == grpc.StatusCode.INVALID_ARGUMENT
  assert details.startswith("tensor parsing error: examples")


def test_predict_output_filter(stub, examples):
  request = _predict_request({"examples": _examples_proto(examples[:1])})
  request.output_filter.append("probabilities")
  assert list(stub.Predict(request, timeout=DEADLINE_SECONDS).outputs) == ["probabilities"]
  request.output_filter[0] = "logits"
  code, details = _error(stub.Predict, request)
  assert code == grpc.StatusCode.INVALID_ARGUMENT
  assert details.startswith("output tensor alias not found in signature: logits")


def test_bad_example_in_one_request_fails_only_that_request(stub, canned, examples):
  bad = _predict_request({"examples": _examples_proto([examples[0], b"\xff\x00junk"])})
  assert _error(stub.Predict, bad)[0] == grpc.StatusCode.INVALID_ARGUMENT
  good = stub.Predict(
    _predict_request({"examples": _examples_proto(examples[:2])}), timeout=DEADLINE_SECONDS
  )
  np.testing.assert_array_equal(
    tf.make_ndarray(good.outputs["probabilities"]),
    conftest.reference(canned.version_1, examples=examples[:2]),
  )


def test_classify_and_metadata_errors(stub):
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name = MODEL_NAME
  assert _error(stub.Classify, request) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
  request = get_model_metadata_pb2.GetModelMetadataRequest()
  request.model_spec.name = MODEL_NAME
  assert _error(stub.GetModelMetadata, request)[0] == grpc.StatusCode.INVALID_ARGUMENT
  request.metadata_field.append("graph")
  assert _error(stub.GetModelMetadata, request) == (
    grpc.StatusCode.INVALID_ARGUMENT,
    "Metadata field graph is not supported",
  )


def test_get_model_status_errors(channel):
  stub = model_service_pb2_grpc.ModelServiceStub(channel)
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = "unknown_model"
  assert _error(stub.GetModelStatus, request) == (
    grpc.StatusCode.NOT_FOUND,
    "Could not find any versions of model unknown_model",
  )
  request.model_spec.name = MODEL_NAME
  request.model_spec.version.value = 9
  assert _error(stub.GetModelStatus, request) == (
    grpc.StatusCode.NOT_FOUND,
    "Could not find version 9 of model next_category",
  )


def test_unimplemented_apis(stub):
  request = regression_pb2.RegressionRequest()
  request.model_spec.name = MODEL_NAME
  assert _error(stub.Regress, request)[0] == grpc.StatusCode.UNIMPLEMENTED


def test_server_keeps_serving_after_errors(stub, examples, server):
  for request in (
    predict_pb2.PredictRequest(),
    _predict_request({"examples": [b"x"]}, model_name=""),
  ):
    assert _error(stub.Predict, request)[0] == grpc.StatusCode.INVALID_ARGUMENT
  response = stub.Predict(
    _predict_request({"examples": _examples_proto(examples[:1])}), timeout=DEADLINE_SECONDS
  )
  assert response.model_spec.version.value == 1
