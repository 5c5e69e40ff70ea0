"""JSON tensor values, as TensorFlow Serving's REST API reads and writes them."""

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from next_category.serving import status
from next_category.serving.apis import json_tensor


def test_json_values():
  np.testing.assert_array_equal(
    json_tensor.json_to_ndarray([[1, 2], [3, 4]], types_pb2.DT_INT64, "x"),
    np.array([[1, 2], [3, 4]], np.int64),
  )
  assert json_tensor.json_to_ndarray([1, 2.5], types_pb2.DT_FLOAT, "x").dtype == np.float32
  strings = json_tensor.json_to_ndarray([["a", {"b64": "/wA="}]], types_pb2.DT_STRING, "x")
  assert strings.shape == (1, 2) and strings.tolist() == [[b"a", b"\xff\x00"]]
  assert json_tensor.json_to_ndarray("abc", types_pb2.DT_STRING, "x").tolist() == b"abc"


@pytest.mark.parametrize(
  "value, dtype, message",
  [
    (["a"], types_pb2.DT_FLOAT, 'JSON Value: "a" Type: String is not of expected type: float'),
    ([1.5], types_pb2.DT_INT64, "JSON Value: 1.5 Type: Number is not of expected type: int64"),
    ([True], types_pb2.DT_INT32, "Type: Bool is not of expected type: int32"),
    ([1], types_pb2.DT_STRING, "JSON Value: 1 Type: Number is not of expected type: string"),
    ([[1], [1, 2]], types_pb2.DT_INT64, "ragged"),
    ([2**40], types_pb2.DT_INT32, "out of range"),
    ([{"b64": "***"}], types_pb2.DT_STRING, "Unable to base64 decode"),
    ([{"c": "x"}], types_pb2.DT_STRING, "b64"),
  ],
)
def test_json_type_errors(value, dtype, message):
  with pytest.raises(status.ServingError) as raised:
    json_tensor.json_to_ndarray(value, dtype, "x")
  assert message in raised.value.message


def test_json_outputs():
  assert json_tensor.ndarray_to_json(np.array([[0.5]], np.float32), "p") == [[0.5]]
  strings = np.array([b"ok", b"\xff"], object)
  assert json_tensor.ndarray_to_json(strings, "s") == ["ok", {"b64": "/w=="}]
  assert json_tensor.ndarray_to_json(strings, "s_bytes") == [{"b64": "b2s="}, {"b64": "/w=="}]
