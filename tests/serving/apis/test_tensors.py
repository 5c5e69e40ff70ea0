"""TensorProto conversions as TensorFlow makes them, and TensorFlow errors as statuses."""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2

from next_category.serving import status
from next_category.serving.apis import tensors


@pytest.mark.parametrize(
  "value",
  [
    np.array([[1.5, -2.0], [3.25, 4.0]], np.float32),
    np.array([1, 2, 3], np.int64),
    np.array([[7]], np.int32),
    np.array([True, False]),
    np.array([b"a", b"\xff\x00"], object),
    np.array([0.5, 2.0], np.float16),
    np.zeros([0, 3], np.float32),
  ],
)
def test_tensor_proto_round_trip_matches_tensorflow(value):
  proto = tensor_pb2.TensorProto()
  tensors.fill_tensor_proto(value, proto)
  np.testing.assert_array_equal(tf.make_ndarray(proto), value)
  np.testing.assert_array_equal(tensors.to_ndarray(proto, "x"), value)
  packed = tf.make_tensor_proto(value)
  np.testing.assert_array_equal(tensors.to_ndarray(packed, "x"), tf.make_ndarray(packed))


def _float_proto(values, size):
  proto = tf.compat.v1.make_tensor_proto(0.0, shape=[size])
  proto.ClearField("float_val")
  proto.ClearField("tensor_content")
  proto.float_val.extend(values)
  return proto


def test_short_value_lists_fill_like_tensorflow():
  proto = _float_proto([1.0, 2.0], 4)
  np.testing.assert_array_equal(tf.make_ndarray(proto), [1.0, 2.0, 2.0, 2.0])
  np.testing.assert_array_equal(tensors.to_ndarray(proto, "x"), [1.0, 2.0, 2.0, 2.0])
  proto.ClearField("float_val")
  np.testing.assert_array_equal(tensors.to_ndarray(proto, "x"), [0.0] * 4)


def test_short_string_lists_fill_like_tensorflow():
  proto = tf.make_tensor_proto([b"a", b"b"], dtype=tf.string)
  proto.tensor_shape.dim[0].size = 4
  np.testing.assert_array_equal(tensors.to_ndarray(proto, "x"), [b"a", b"b", b"b", b"b"])
  np.testing.assert_array_equal(tensors.to_ndarray(proto, "x"), tf.make_ndarray(proto))


def test_extra_values_are_ignored_like_tensorflow():
  # Tensor::FromProto reads the values the shape holds (tf.io.parse_tensor is FromProto).
  for proto in (_float_proto([1.0, 2.0, 3.0], 2), tf.make_tensor_proto([b"a", b"b", b"c"])):
    proto.tensor_shape.dim[0].size = 2
    expected = tf.io.parse_tensor(proto.SerializeToString(), tf.as_dtype(proto.dtype)).numpy()
    np.testing.assert_array_equal(tensors.to_ndarray(proto, "x"), expected)
    assert len(expected) == 2


@pytest.mark.parametrize(
  "mutate, message",
  [
    (lambda p: p.tensor_shape.__setattr__("unknown_rank", True), "unknown rank"),
    (lambda p: p.__setattr__("dtype", types_pb2.DT_COMPLEX64), "unsupported dtype"),
    (lambda p: p.tensor_shape.dim[0].__setattr__("size", 2**40), "more than"),
    (
      lambda p: p.__setattr__("tensor_content", b"\x00" * 12),
      "the values do not fit shape [2] of float",
    ),
  ],
)
def test_malformed_protos(mutate, message):
  proto = _float_proto([1.0, 2.0], 2)
  mutate(proto)
  with pytest.raises(status.ServingError) as raised:
    tensors.to_ndarray(proto, "x")
  assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
  assert raised.value.message.startswith("tensor parsing error: x")
  assert message in raised.value.message


def test_tf_errors_keep_code_and_cause():
  try:
    spec = {"a": tf.io.FixedLenFeature([], tf.int64)}
    tf.io.parse_example(tf.constant([b"not a tf.Example"]), spec)
  except tf.errors.OpError as e:
    error = status.from_tf_error(e)
  assert error.code == grpc.StatusCode.INVALID_ARGUMENT
  assert error.message.startswith("Could not parse example input")
  assert error.http_status == 400
