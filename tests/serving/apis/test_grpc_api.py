"""The gRPC APIs against a real server: exact values, metadata, status and every error."""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import regression_pb2

from next_category.serving import status
from next_category.serving.apis import classify_regress
from next_category.serving.apis import inference
from next_category.serving.testdata import make_canned_models as canned_models
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
  assert got.shape == (len(examples), len(canned_models.CLASS_NAMES))
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
    signature_name=canned_models.RAW_SIGNATURE_NAME,
    version=1,
  )

  response = stub.Predict(request, timeout=DEADLINE_SECONDS)

  np.testing.assert_array_equal(
    tf.make_ndarray(response.outputs["probabilities"]),
    conftest.reference(
      canned.version_1,
      canned_models.RAW_SIGNATURE_NAME,
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
    signature_name=canned_models.RAW_SIGNATURE_NAME,
  )
  response = stub.Predict(request, timeout=DEADLINE_SECONDS)
  np.testing.assert_array_equal(
    tf.make_ndarray(response.outputs["probabilities"]),
    conftest.reference(
      canned.version_1,
      canned_models.RAW_SIGNATURE_NAME,
      item_history=history,
      user_segment=np.array([b"new"], object),
      city_tier=np.array([b"tier1"], object),
    ),
  )


def _classification_request(examples, signature_name="classification", model_name=MODEL_NAME):
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  for serialized in examples:
    request.input.example_list.examples.add().ParseFromString(serialized)
  return request


def test_classify_returns_the_classification_signatures_classes_and_scores(stub, canned, examples):
  response = stub.Classify(_classification_request(examples[:3]), timeout=DEADLINE_SECONDS)

  expected = conftest.reference(canned.version_1, "classification", "scores", inputs=examples[:3])
  labels = conftest.reference(canned.version_1, "classification", "classes", inputs=examples[:3])
  assert len(response.result.classifications) == 3
  for row, row_labels, classifications in zip(
    expected, labels, response.result.classifications, strict=True
  ):
    assert [c.label.encode() for c in classifications.classes] == row_labels.tolist()
    np.testing.assert_array_equal(
      np.array([c.score for c in classifications.classes], np.float32), row
    )
  assert response.model_spec.version.value == 1
  assert response.model_spec.signature_name == "classification"


def test_classify_merges_context_into_each_example(stub, canned, examples):
  full = tf.train.Example.FromString(examples[0])
  context = tf.train.Example()
  example = tf.train.Example()
  for key, feature in full.features.feature.items():
    target = context if key == "city_tier" else example
    target.features.feature[key].CopyFrom(feature)
  request = _classification_request([])
  request.input.example_list_with_context.context.CopyFrom(context)
  request.input.example_list_with_context.examples.add().CopyFrom(example)

  response = stub.Classify(request, timeout=DEADLINE_SECONDS)

  scores = [c.score for c in response.result.classifications[0].classes]
  np.testing.assert_array_equal(
    np.array(scores, np.float32),
    conftest.reference(canned.version_1, "classification", "scores", inputs=examples[:1])[0],
  )


def test_classify_refuses_a_predict_signature_as_tf_serving_does(stub, server, examples):
  # An empty name is serving_default, a Predict signature here: TF Serving's
  # classifier (method name check off by default) finds no `inputs` input.
  request = _classification_request(examples[:1], signature_name="")
  signature_defs = server.manager.servable(request.model_spec).signature_defs
  # Clients see TF Serving's text on one line, bounded (status.client_message).
  assert _error(stub.Classify, request) == (
    grpc.StatusCode.INVALID_ARGUMENT,
    status.client_message(
      "No classification inputs found in SignatureDef: "
      + text_format.MessageToString(signature_defs["serving_default"])
    ),
  )
  # The TFLite model has only its own Predict signature, three inputs.
  request = _classification_request(examples[:1], "", TFLITE_MODEL_NAME)
  assert _error(stub.Classify, request) == (
    grpc.StatusCode.INVALID_ARGUMENT,
    "Expected one input Tensor.",
  )
  request = _classification_request(examples[:1], "serving_raw")
  assert _error(stub.Classify, request)[1] == "Expected one input Tensor."
  request = _classification_request(examples[:1], "regression")
  assert _error(stub.Classify, request)[1].startswith(
    'Expected classification signature outputs to contain at least one of "classes" or '
    '"scores". Signature was: '
  )


def test_method_name_check_refuses_any_other_method(server, examples):
  service = inference.InferenceService(server.manager, signature_method_name_check=True)
  with pytest.raises(status.ServingError) as raised:
    service.classify(_classification_request(examples[:1], signature_name=""))
  assert raised.value.message == (
    "Expected classification signature method_name to be tensorflow/serving/classify. "
    "Was: tensorflow/serving/predict"
  )
  request = regression_pb2.RegressionRequest()
  request.model_spec.name = MODEL_NAME
  request.model_spec.signature_name = "classification"
  with pytest.raises(status.ServingError) as raised:
    service.regress(request)
  assert raised.value.message.endswith("Was: tensorflow/serving/classify")
  # The classification signature passes the check.
  response = service.classify(_classification_request(examples[:1])).result(DEADLINE_SECONDS)
  assert len(response.result.classifications[0].classes) == len(canned_models.CLASS_NAMES)


def test_regress_returns_the_regression_signatures_outputs(stub, canned, examples):
  request = regression_pb2.RegressionRequest()
  request.model_spec.name = MODEL_NAME
  request.model_spec.signature_name = "regression"
  for serialized in examples[:4]:
    request.input.example_list.examples.add().ParseFromString(serialized)

  response = stub.Regress(request, timeout=DEADLINE_SECONDS)

  np.testing.assert_array_equal(
    np.array([r.value for r in response.result.regressions], np.float32),
    conftest.reference(canned.version_1, "regression", "outputs", inputs=examples[:4]),
  )
  request.model_spec.signature_name = ""
  assert _error(stub.Regress, request)[1].startswith("No regression inputs found in SignatureDef: ")


@pytest.mark.parametrize(
  "outputs, message",
  [
    (
      {"scores": np.zeros([2], np.float32)},
      "Expected Tensor shape: [batch_size num_classes] but got [2]",
    ),
    (
      {"scores": np.zeros([2, 3], np.float64)},
      "Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE",
    ),
    (
      {"classes": np.zeros([2, 3], np.float32)},
      "Expected classes Tensor of DT_STRING. Got: DT_FLOAT",
    ),
    ({"scores": np.zeros([3, 3], np.float32)}, "Expected scores output batch size of 2. Got: 3"),
    (
      {"classes": np.full([2, 2], b"a", object), "scores": np.zeros([2, 3], np.float32)},
      "Tensors class and score should match in dim_size(1). Got 2 vs. 3",
    ),
  ],
)
def test_classification_result_errors(outputs, message):
  with pytest.raises(status.ServingError) as raised:
    classify_regress.classification_result(  # pylint: disable=protected-access
      outputs, 2, classification_pb2.ClassificationResult()
    )
  assert raised.value.message == message


def test_classification_result_with_one_output():
  result = classification_pb2.ClassificationResult()
  classify_regress.classification_result(  # pylint: disable=protected-access
    {"scores": np.array([[0.25, 0.75]], np.float32)}, 1, result
  )
  assert [(c.label, c.score) for c in result.classifications[0].classes] == [
    ("", 0.25),
    ("", 0.75),
  ]
  result = classification_pb2.ClassificationResult()
  classify_regress.classification_result(  # pylint: disable=protected-access
    {"classes": np.array([[b"x", b"y"]], object)}, 1, result
  )
  assert [(c.label, c.score) for c in result.classifications[0].classes] == [
    ("x", 0.0),
    ("y", 0.0),
  ]


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
    len(canned_models.CLASS_NAMES),
  ]
  raw = signatures.signature_def[canned_models.RAW_SIGNATURE_NAME]
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


def test_tflite_model_serves_its_own_signature(stub, canned):
  # The TFLite file holds version 1's network, on encoded inputs.
  history = np.array([[5, 17, 3] + [0] * 47, [42] + [0] * 49], np.int64)
  segments = np.array([b"new", b"returning"], object)
  tiers = np.array([b"tier2", b"tier4"], object)
  # Keyed as TF Serving keys a converted model's tensors (tflite_session.cc).
  encoded = {
    f"serving_default_{name}": tensor.numpy()
    for name, tensor in canned_models.encode_raw(history, segments, tiers).items()
  }
  expected = conftest.reference(
    canned.version_1,
    canned_models.RAW_SIGNATURE_NAME,
    item_history=history,
    user_segment=segments,
    city_tier=tiers,
  )

  response = stub.Predict(
    _predict_request(encoded, model_name=TFLITE_MODEL_NAME), timeout=DEADLINE_SECONDS
  )

  # TFLite kernels differ from TensorFlow's in the last bits.
  np.testing.assert_allclose(
    tf.make_ndarray(response.outputs["StatefulPartitionedCall"]), expected, atol=1e-6
  )
  assert response.model_spec.name == TFLITE_MODEL_NAME


def test_tflite_model_takes_only_its_own_inputs(stub, examples):
  request = _predict_request({"examples": _examples_proto(examples)}, model_name=TFLITE_MODEL_NAME)
  assert _error(stub.Predict, request) == (
    grpc.StatusCode.INVALID_ARGUMENT,
    "input size does not match signature: 1!=3 len({examples}) != "
    "len({serving_default_city_tier,serving_default_item_history,serving_default_user_segment})"
    ". Sent extra: {examples}. Missing but required: "
    "{serving_default_city_tier,serving_default_item_history,serving_default_user_segment}.",
  )


def test_tflite_metadata_takes_any_batch(stub):
  # The pipeline converts for batch 1; the server runs a batch row by row.
  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  request.model_spec.name = TFLITE_MODEL_NAME
  signatures = get_model_metadata_pb2.SignatureDefMap()
  stub.GetModelMetadata(request, timeout=DEADLINE_SECONDS).metadata["signature_def"].Unpack(
    signatures
  )
  signature = signatures.signature_def["serving_default"]
  assert signature.method_name == "tensorflow/serving/predict"
  inputs = signature.inputs
  assert sorted(inputs) == [
    "serving_default_city_tier",
    "serving_default_item_history",
    "serving_default_user_segment",
  ]
  assert inputs["serving_default_item_history"].name == "serving_default_item_history:0"
  assert [d.size for d in inputs["serving_default_item_history"].tensor_shape.dim] == [
    -1,
    canned_models.MAX_HISTORY_LENGTH,
  ]
  assert inputs["serving_default_user_segment"].dtype == types_pb2.DT_INT64
  assert list(signature.outputs) == ["StatefulPartitionedCall"]


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
    # TensorFlow's GetInputValues (tensorflow/cc/saved_model/util.cc).
    (
      {"serialized": [b"x"]},
      "Signature input alias: examples(feed name: serving_default_examples:0) not found in "
      "request and no default value provided. Inputs expected to be in the request "
      "{serialized}, or default input alias set: ",
    ),
    ({"examples": [b"x"], "extra": [1]}, "input size does not match signature: 2!=1"),
    # The session's own check of a feed's dtype (DirectSession::Run).
    ({"examples": np.array([1, 2], np.int64)}, "Expects arg[0] to be string but int64 is provided"),
    # No shape check of the server's own: ParseExample's.
    (
      {"examples": [[b"a"], [b"b"]]},
      "Expected serialized to be a scalar or vector, got shape: [2,1]",
    ),
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


def test_predict_empty_batch_answers_empty_outputs(stub):
  # As TensorFlow Serving: the session runs zero examples.
  request = _predict_request({"examples": tf.make_tensor_proto(np.zeros([0], object), tf.string)})
  response = stub.Predict(request, timeout=DEADLINE_SECONDS)
  assert tf.make_ndarray(response.outputs["probabilities"]).shape == (0, 10)


def test_predict_inputs_with_different_batch_sizes_go_to_tensorflow(stub):
  # Unbatched, TensorFlow Serving checks no batch size of its own: the model's ops answer.
  request = _predict_request(
    {
      "item_history": np.array([[1, 2]], np.int64),
      "user_segment": _examples_proto([b"new", b"new"]),
      "city_tier": _examples_proto([b"tier1"]),
    },
    signature_name=canned_models.RAW_SIGNATURE_NAME,
  )
  # The canned model's ops broadcast the one-row inputs: TensorFlow runs it.
  response = stub.Predict(request, timeout=DEADLINE_SECONDS)
  assert tf.make_ndarray(response.outputs["probabilities"]).shape == (2, 10)


def test_predict_tensor_with_extra_values_reads_the_first(stub):
  proto = tf.make_tensor_proto([b"a", b"b"], dtype=tf.string)
  proto.tensor_shape.dim[0].size = 1  # Two values for one element: FromProto reads one.
  code, details = _error(stub.Predict, _predict_request({"examples": proto}))
  assert code == grpc.StatusCode.INVALID_ARGUMENT
  assert details.startswith("Could not parse example input, value: 'a'")


def test_predict_unparsable_tensor(stub):
  proto = tf.make_tensor_proto([b"a"], dtype=tf.string)
  proto.tensor_shape.unknown_rank = True
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
  request = _classification_request([])
  assert _error(stub.Classify, request) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
  assert _error(stub.Classify, classification_pb2.ClassificationRequest()) == (
    grpc.StatusCode.INVALID_ARGUMENT,
    "Missing ModelSpec",
  )
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


def test_multi_inference_without_tasks_names_no_model(stub):
  request = inference_pb2.MultiInferenceRequest()
  assert _error(stub.MultiInference, request)[0] == grpc.StatusCode.INVALID_ARGUMENT


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
