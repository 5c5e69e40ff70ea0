"""Predict over gRPC, answered as TensorFlow Serving 2.16 answers it.

Upstream: model_servers/tensorflow_model_server_test.py (end to end, through the
binary) and servables/tensorflow/predict_util_test.cc (`RunPredict` on a
session; it serves TensorFlow's cc/saved_model/testdata/half_plus_two, which
has the signatures of saved_model_half_plus_two_2_versions used here).
"""

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from tests.serving.conformance.conftest import RPC_TIMEOUT
from tests.serving.conformance.conftest import model_flags
from tests.serving.conformance.conftest import predict_request
from tests.serving.conformance.conftest import rpc_error
from tests.serving.conformance.conftest import values

HALF_PLUS_TWO = model_flags("default", "saved_model_half_plus_two_cpu")


@pytest.fixture(scope="module")
def half_plus_two(tfs_server):
  return tfs_server(*HALF_PLUS_TWO)


@pytest.fixture(scope="module")
def two_versions(tfs_server):
  return tfs_server(*model_flags("test_model", "saved_model_half_plus_two_2_versions"))


@pytest.mark.parametrize("output_filter", [("y",), ()])
def test_predict_saved_model(half_plus_two, output_filter):
  # tensorflow_model_server_test.py:252-254 -> test_base.py:243-278 (VerifyPredictRequest):
  # x = [2.0] with shape [1] into a signature whose x is [-1, 1]; with and without a filter.
  response = half_plus_two.stub.Predict(
    predict_request(output_filter=output_filter), timeout=RPC_TIMEOUT
  )
  assert list(response.outputs) == ["y"]
  assert response.outputs["y"].dtype == types_pb2.DT_FLOAT
  assert list(response.outputs["y"].float_val) == [3.0]
  assert response.model_spec.name == "default"
  assert response.model_spec.signature_name == "serving_default"
  assert response.model_spec.version.value == 123


def test_predict_one_value_of_shape_one_is_two_and_a_half(half_plus_two):
  # The TF Serving answer (test_base.py:255-278 sends shape [1]): x = 1.0 -> 2.5.
  response = half_plus_two.stub.Predict(predict_request(x=[1.0]), timeout=RPC_TIMEOUT)
  assert values(response.outputs["y"]).tolist() == [2.5]


def test_predict_batch_input(half_plus_two):
  # test_base.py:262-266 (batch_input=True): x of shape [1, 1].
  response = half_plus_two.stub.Predict(predict_request(shape=(1, 1)), timeout=RPC_TIMEOUT)
  assert values(response.outputs["y"]).tolist() == [[3.0]]


def test_predict_scalar_gives_scalar(two_versions):
  # predict_util_test.cc:329-351 (PredictionSuccess): x = 2.0 with no shape ->
  # y = 3 with an empty (but present) tensor_shape.
  response = two_versions.stub.Predict(
    predict_request("test_model", shape=None, output_filter=()), timeout=RPC_TIMEOUT
  )
  y = response.outputs["y"]
  assert y.HasField("tensor_shape") and not y.tensor_shape.dim
  assert list(y.float_val) == [3.0]


@pytest.mark.parametrize(
  "signature_name, input_key, output_key, expected",
  [
    # predict_util_test.cc:353-379: Predict runs a regress signature.
    ("regress_x2_to_y3", "inputs", "outputs", 4.0),
    # predict_util_test.cc:381-407: ... and a classify signature.
    ("classify_x2_to_y3", "inputs", "scores", 4.0),
  ],
)
def test_predict_runs_named_regress_and_classify_signatures(
  two_versions, signature_name, input_key, output_key, expected
):
  request = predict_request(
    "test_model", shape=None, signature_name=signature_name, output_filter=(), input_key=input_key
  )
  response = two_versions.stub.Predict(request, timeout=RPC_TIMEOUT)
  assert list(response.outputs) == [output_key]
  assert list(response.outputs[output_key].float_val) == [expected]
  assert response.model_spec.signature_name == signature_name


def test_predict_stateful_counter_signatures(tfs_server):
  # predict_util_test.cc:409-505 (PredictionWithCustomizedSignatures) on
  # saved_model_counter: get 0, incr 1, reset 0, incr 1 (with a filter), incr_by 3 -> 4;
  # DT_FLOAT_REF outputs come back as DT_FLOAT scalars.
  server = tfs_server(*model_flags("counter", "saved_model_counter"))
  answers = []
  for signature_name, delta, output_filter in (
    ("get_counter", None, ()),
    ("incr_counter", None, ()),
    ("reset_counter", None, ()),
    ("incr_counter", None, ("output",)),
    ("incr_counter_by", 3.0, ()),
  ):
    request = predict_request(
      "counter",
      x=[delta] if delta is not None else [],
      shape=None,
      signature_name=signature_name,
      output_filter=output_filter,
      input_key="delta",
    )
    if delta is None:
      del request.inputs["delta"]
    response = server.stub.Predict(request, timeout=RPC_TIMEOUT)
    output = response.outputs["output"]
    assert output.dtype == types_pb2.DT_FLOAT
    assert output.HasField("tensor_shape") and not output.tensor_shape.dim
    answers.append(list(output.float_val))
  assert answers == [[0.0], [1.0], [0.0], [1.0], [4.0]]


def test_predict_half_plus_three_from_a_model_config_file(tfs_server):
  # tensorflow_model_server_test.py:277-298 (testGoodModelConfig): one server,
  # both models of good_model_config.txt.
  server = tfs_server("--model_config_file={testdata}/good_model_config.txt")
  for model_name, output_filter, expected in (
    ("half_plus_two", ("y",), 3.0),
    ("half_plus_two", (), 3.0),
    ("half_plus_three", ("y",), 4.0),
    ("half_plus_three", (), 4.0),
  ):
    request = predict_request(model_name, output_filter=output_filter)
    response = server.stub.Predict(request, timeout=RPC_TIMEOUT)
    assert list(response.outputs["y"].float_val) == [expected], model_name


def test_predict_tf2_saved_model(tfs_server):
  # saved_model_half_plus_two_tf2_cpu's serving_default (x [1] -> y [1]), as
  # test_base.py's VerifyPredictRequest calls it.
  server = tfs_server(*model_flags("default", "saved_model_half_plus_two_tf2_cpu"))
  response = server.stub.Predict(predict_request(), timeout=RPC_TIMEOUT)
  assert list(response.outputs["y"].float_val) == [3.0]
  # No shape check of the server's own there either: [3, 1] into x [1].
  response = server.stub.Predict(
    predict_request(x=[1.0, 2.0, 5.0], shape=(3, 1)), timeout=RPC_TIMEOUT
  )
  assert values(response.outputs["y"]).tolist() == [[2.5], [3.0], [4.5]]


def _rename_input(request, *names):
  for name in names:
    request.inputs[name].CopyFrom(request.inputs["x"])
  del request.inputs["x"]


@pytest.mark.parametrize(
  "mutate, code, message",
  [
    # predict_util_test.cc:186-205 (MissingOrEmptyModelSpec) and predict_impl.cc.
    (
      lambda r: r.ClearField("model_spec"),
      grpc.StatusCode.INVALID_ARGUMENT,
      "Missing ModelSpec",
    ),
    # core/basic_manager.cc:131-133, core/manager.h:150-161.
    (
      lambda r: r.model_spec.__setattr__("name", "missing"),
      grpc.StatusCode.NOT_FOUND,
      "Servable not found for request: Latest(missing)",
    ),
    (
      lambda r: r.model_spec.version.__setattr__("value", 7),
      grpc.StatusCode.NOT_FOUND,
      "Servable not found for request: Specific(default, 7)",
    ),
    # predict_util.cc:85-92.
    (
      lambda r: r.model_spec.__setattr__("signature_name", "nope"),
      grpc.StatusCode.FAILED_PRECONDITION,
      'Serving signature key "nope" not found.',
    ),
    # predict_util_test.cc:207-218 (EmptyInputList) and predict_util.cc:51-73.
    (
      lambda r: r.ClearField("inputs"),
      grpc.StatusCode.INVALID_ARGUMENT,
      "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. "
      "Missing but required: {x}.",
    ),
    # predict_util_test.cc:220-249 (InputTensorsDontMatchModelSpecInputs).
    (
      lambda r: _rename_input(r, "unknown_key1", "unknown_key2"),
      grpc.StatusCode.INVALID_ARGUMENT,
      "input size does not match signature: 2!=1 len({unknown_key1,unknown_key2}) != "
      "len({x}). Sent extra: {unknown_key1,unknown_key2}. Missing but required: {x}.",
    ),
    # TensorFlow's saved_model::GetInputValues (tensorflow/cc/saved_model/util.cc): one
    # input, the wrong name.
    (
      lambda r: _rename_input(r, "z"),
      grpc.StatusCode.INVALID_ARGUMENT,
      "Signature input alias: x(feed name: x:0) not found in request and no default value "
      "provided. Inputs expected to be in the request {z}, or default input alias set: ",
    ),
    # predict_util_test.cc:251-269 (PredictionInvalidTensor): TensorFlow's own check.
    (
      lambda r: (
        r.inputs["x"].Clear(),
        r.inputs["x"].bool_val.append(True),
        setattr(r.inputs["x"], "dtype", types_pb2.DT_BOOL),
      ),
      grpc.StatusCode.INVALID_ARGUMENT,
      "Expects arg[0] to be float but bool is provided",
    ),
    # predict_util_test.cc:306-327 (InputTensorsHaveWrongType).
    (
      lambda r: (
        r.inputs["x"].Clear(),
        r.inputs["x"].string_val.append(b"any_value"),
        setattr(r.inputs["x"], "dtype", types_pb2.DT_STRING),
        r.inputs["x"].tensor_shape.dim.add(size=1),
      ),
      grpc.StatusCode.INVALID_ARGUMENT,
      "Expects arg[0] to be float but string is provided",
    ),
    # predict_util_test.cc:271-304 (OutputFiltersDontMatchModelSpecOutputs).
    (
      lambda r: r.output_filter.__setitem__(0, "output_filter"),
      grpc.StatusCode.INVALID_ARGUMENT,
      "output tensor alias not found in signature: output_filter Outputs expected to be in "
      "the set {y}.",
    ),
    (
      lambda r: r.output_filter.append("y"),
      grpc.StatusCode.INVALID_ARGUMENT,
      "duplicate output tensor alias: y",
    ),
    # TensorFlow's Tensor::FromProto refuses an unknown-rank shape (util.cc: "tensor
    # parsing error: <alias>"; this server adds why).
    (
      lambda r: setattr(r.inputs["x"].tensor_shape, "unknown_rank", True),
      grpc.StatusCode.INVALID_ARGUMENT,
      "tensor parsing error: x",
    ),
  ],
)
def test_predict_errors(half_plus_two, mutate, code, message):
  request = predict_request()
  mutate(request)
  got_code, details = rpc_error(half_plus_two.stub.Predict, request)
  assert got_code == code
  assert details.startswith(message), details


def test_predict_tensor_proto_is_read_as_tensorflow_reads_it(half_plus_two):
  # Tensor::FromProto (what GetInputValues calls): fewer values than the shape
  # holds repeat the last, more are cut to the shape.
  short = half_plus_two.stub.Predict(predict_request(x=[2.0], shape=(3,)), timeout=RPC_TIMEOUT)
  assert values(short.outputs["y"]).tolist() == [3.0, 3.0, 3.0]
  long = half_plus_two.stub.Predict(
    predict_request(x=[2.0, 4.0, 6.0], shape=(2,)), timeout=RPC_TIMEOUT
  )
  assert values(long.outputs["y"]).tolist() == [3.0, 4.0]


def test_predict_with_batching(tfs_server):
  # tensorflow_model_server_test_base.py:224-226 (--enable_batching
  # --batching_parameters_file=batching_config.txt): same answers, batched; and
  # BatchingSession's own checks (batching/batching_util.h:82-110).
  server = tfs_server(
    *HALF_PLUS_TWO,
    "--enable_batching",
    "--batching_parameters_file={testdata}/batching_config.txt",
  )
  response = server.stub.Predict(predict_request(), timeout=RPC_TIMEOUT)
  assert list(response.outputs["y"].float_val) == [3.0]
  code, details = rpc_error(server.stub.Predict, predict_request(shape=None))
  assert (code, details) == (
    grpc.StatusCode.INVALID_ARGUMENT,
    "Batching Run() input tensors must have at least one dimension",
  )


def test_predict_answers_in_typed_fields(half_plus_two):
  # predict_util.cc:163-190: outputs via Tensor::AsProtoField (float_val, not tensor_content).
  response = half_plus_two.stub.Predict(
    predict_request(x=[1.0, 2.0], shape=(2, 1)), timeout=RPC_TIMEOUT
  )
  y = response.outputs["y"]
  assert not y.tensor_content
  np.testing.assert_array_equal(values(y), [[2.5], [3.0]])
