"""tf.Examples from JSON objects, as TensorFlow Serving's REST API builds them.

`{"feature": value or [values]}` with JSON integers and booleans as int64,
other numbers as float, strings and `{"b64": ...}` as bytes: the rules of
`MakeExampleFromJsonObject` / `AddValueToFeature` in
`tensorflow_serving/util/json_tensor.cc`, with its messages. The REST API's
`:classify` and `:regress` read `examples` and `context` this way, and the
client reads JSON lines of raw features the same way, so one file works for
both.
"""

import base64
import binascii
from typing import Any

from tensorflow.core.example import example_pb2
from tensorflow.core.example import feature_pb2

_INT64_MAX = 2**63 - 1


def json_type(value: Any) -> str:
  """The name TensorFlow Serving gives a JSON value's type (`JsonTypeString`)."""
  if value is None:
    return "Null"
  if value is True:
    return "True"
  if value is False:
    return "False"
  if isinstance(value, dict):
    return "Object"
  if isinstance(value, list):
    return "Array"
  if isinstance(value, str):
    return "String"
  return "Number"


def _kind_error(name: str, feature: feature_pb2.Feature) -> ValueError:
  kind = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}.get(
    feature.WhichOneof("kind"), "UNKNOWN"
  )
  return ValueError(f"Unexpected element type in feature: {name} expecting type: {kind}")


def _add_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
  kind = feature.WhichOneof("kind")
  if isinstance(value, bool) or (isinstance(value, int) and not isinstance(value, bool)):
    if kind not in (None, "int64_list"):
      raise _kind_error(name, feature)
    if value > _INT64_MAX:
      raise ValueError(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    feature.int64_list.value.append(int(value))
  elif isinstance(value, float):
    if kind not in (None, "float_list"):
      raise _kind_error(name, feature)
    feature.float_list.value.append(value)
  elif isinstance(value, str) or (isinstance(value, dict) and set(value) == {"b64"}):
    if kind not in (None, "bytes_list"):
      raise _kind_error(name, feature)
    feature.bytes_list.value.append(
      value.encode("utf-8") if isinstance(value, str) else decode_b64(value["b64"])
    )
  else:
    raise ValueError(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")


def decode_b64(text: Any) -> bytes:
  """Decodes the string of a `{"b64": ...}` object.

  Raises:
    ValueError: "Unable to base64 decode" if `text` is not base64.
  """
  if not isinstance(text, str):
    raise ValueError("Unable to base64 decode")
  try:
    return base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError):
    raise ValueError("Unable to base64 decode") from None


def example_from_json(value: Any) -> example_pb2.Example:
  """A tf.Example from a JSON object of features.

  Raises:
    ValueError: with TensorFlow Serving's message if `value` is not an object
      or a feature mixes kinds or holds nulls, nested lists or other objects.
  """
  if not isinstance(value, dict):
    raise ValueError(f"Example must be JSON object but got JSON {json_type(value)}")
  example = example_pb2.Example()
  for name, content in value.items():
    feature = feature_pb2.Feature()
    for item in content if isinstance(content, list) else [content]:
      _add_value(item, name, feature)
    example.features.feature[name].CopyFrom(feature)
  return example
