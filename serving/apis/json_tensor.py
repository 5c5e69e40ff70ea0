"""TensorFlow Serving's JSON: tensors, tf.Examples, and the REST request and response bodies.

As `tensorflow_serving/util/json_tensor.cc`, with its messages where this
server has them:
- tensors: nested lists, `{"b64": ...}` for bytes; read in the dtype of the
  signature input they feed (`json_to_ndarray`), written as
  `MakeJsonFromTensors` writes them (`ndarray_to_json`);
- tf.Examples: `{"feature": value or [values]}` with JSON integers and
  booleans as int64, other numbers as float, strings and `{"b64": ...}` as
  bytes (`MakeExampleFromJsonObject` / `AddValueToFeature`). The REST API's
  `:classify` and `:regress` read `examples` and `context` this way, and the
  client reads JSON lines of raw features the same way, so one file works for
  both;
- bodies: Predict's row (`instances` -> `predictions`) and columnar (`inputs`
  -> `outputs`) formats (`FillPredictRequestFromJson`), Classify and Regress
  requests (`FillClassifyRegressRequestFromJson`) and their `results`.

The URLs, status and metadata answers and errors are rest/handler.py's.
"""

import base64
import binascii
import json
import math
from typing import Any
from typing import Dict

import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow.core.example import feature_pb2
from tensorflow.core.framework import types_pb2

from next_category.serving import status
from next_category.serving.apis import tensors

# Tensors.


def _value_type(value: Any) -> str:
  """A tensor value's JSON type, as this server's messages name it ("Bool", not "True")."""
  if isinstance(value, bool):
    return "Bool"
  if isinstance(value, (int, float)):
    return "Number"
  if isinstance(value, str):
    return "String"
  if isinstance(value, list):
    return "Array"
  if value is None:
    return "Null"
  return "Object"


def _type_error(value: Any, dtype: int) -> status.ServingError:
  text = str(value) if not isinstance(value, str) else f'"{value}"'
  return status.invalid_argument(
    f"JSON Value: {text[:100]} Type: {_value_type(value)} is not of expected "
    f"type: {tensors.dtype_name(dtype)}"
  )


def _decode_b64_object(value: Dict[str, Any]) -> bytes:
  if len(value) != 1 or not isinstance(value.get("b64"), str):
    raise status.invalid_argument(
      'JSON object for a string tensor must be {"b64": "<base64 string>"}, '
      f"got keys {sorted(value)}."
    )
  try:
    return base64.b64decode(value["b64"], validate=True)
  except (binascii.Error, ValueError):
    raise status.invalid_argument(f"Unable to base64 decode: {value['b64'][:100]!r}") from None


def _string_leaves(value: Any, dtype: int) -> Any:
  if isinstance(value, list):
    return [_string_leaves(v, dtype) for v in value]
  if isinstance(value, str):
    return value.encode("utf-8")
  if isinstance(value, dict):
    return _decode_b64_object(value)
  raise _type_error(value, dtype)


def _nested_shape(value: Any, alias: str) -> list:
  shape = []
  level = [value]
  while level and isinstance(level[0], list):
    lengths = {len(v) if isinstance(v, list) else -1 for v in level}
    if len(lengths) != 1 or -1 in lengths:
      raise status.invalid_argument(
        f"Input {alias} is a ragged list: every list at the same depth must "
        "have the same length (pad variable-length inputs)."
      )
    shape.append(lengths.pop())
    level = [item for v in level for item in v]
  if any(isinstance(v, list) for v in level):
    raise status.invalid_argument(f"Input {alias} mixes lists and scalars at the same depth.")
  return shape


def json_to_ndarray(value: Any, dtype: int, alias: str) -> np.ndarray:
  """Converts a JSON value (nested lists) to an array of a signature input's dtype.

  Raises:
    ServingError: INVALID_ARGUMENT if a value has the wrong type or the lists
      are ragged.
  """
  shape = _nested_shape(value, alias)
  if dtype == types_pb2.DT_STRING:
    array = np.empty(math.prod(shape), dtype=object)
    flat = _string_leaves(value, dtype)
    for _ in shape[1:]:
      flat = [item for sub in flat for item in sub]
    if shape:
      array[:] = flat
    else:
      array[0] = flat
    return array.reshape(shape)
  target = tensors.NUMPY_DTYPES.get(dtype)
  if target is None:
    raise status.invalid_argument(
      f"Input {alias} has dtype {tensors.dtype_name(dtype)}, which JSON cannot carry."
    )
  try:
    array = np.array(value)
  except (ValueError, TypeError) as e:
    raise status.invalid_argument(f"Input {alias}: {e}") from None
  kind = array.dtype.kind
  if target.kind == "b":
    ok = kind == "b"
  elif target.kind in ("i", "u"):
    ok = kind in ("i", "u") or (kind == "b" and array.size == 0)
  else:
    ok = kind in ("i", "u", "f")
  if array.size == 0:
    ok = True
  if not ok:
    bad = _first_bad_leaf(value, target.kind)
    raise _type_error(bad, dtype)
  if target.kind in ("i", "u") and array.size:
    info = np.iinfo(target)
    if array.min() < info.min or array.max() > info.max:
      raise status.invalid_argument(
        f"Input {alias}: a value is out of range for {tensors.dtype_name(dtype)}."
      )
  return array.astype(target, copy=False)


def _first_bad_leaf(value: Any, kind: str) -> Any:
  if isinstance(value, list):
    for v in value:
      bad = _first_bad_leaf(v, kind)
      if bad is not None:
        return bad
    return None
  if kind == "b":
    return None if isinstance(value, bool) else value
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return value
  if kind in ("i", "u") and isinstance(value, float):
    return value
  return None


def _json_strings(value: Any, as_b64: bool) -> Any:
  if isinstance(value, list):
    return [_json_strings(v, as_b64) for v in value]
  if isinstance(value, str):
    value = value.encode("utf-8")
  if not as_b64:
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      pass
  return {"b64": base64.b64encode(value).decode("ascii")}


def ndarray_to_json(array: np.ndarray, alias: str) -> Any:
  """A JSON value for an output array.

  Strings are written as text; outputs whose name ends in `_bytes`, or that
  are not UTF-8, are written as `{"b64": ...}`.
  """
  if array.dtype.kind in ("S", "U", "O"):
    return _json_strings(array.tolist(), alias.endswith("_bytes"))
  if array.dtype == np.float16:
    array = array.astype(np.float32)
  return array.tolist()


# tf.Examples.

_INT64_MAX = 2**63 - 1


def _json_type_string(value: Any) -> str:
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
      value.encode("utf-8") if isinstance(value, str) else _decode_b64_text(value["b64"])
    )
  else:
    raise ValueError(
      f"Feature: {name} has element with unexpected JSON type: {_json_type_string(value)}"
    )


def _decode_b64_text(text: Any) -> bytes:
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
    raise ValueError(f"Example must be JSON object but got JSON {_json_type_string(value)}")
  example = example_pb2.Example()
  for name, content in value.items():
    feature = feature_pb2.Feature()
    for item in content if isinstance(content, list) else [content]:
      _add_value(item, name, feature)
    example.features.feature[name].CopyFrom(feature)
  return example


# Request and response bodies.


def parse_body(body: bytes) -> Dict[str, Any]:
  """A request body as a JSON object.

  Raises:
    ServingError: INVALID_ARGUMENT if it is not JSON or not an object.
  """
  # TensorFlow Serving's words (json_tensor.cc:419-448, rapidjson's
  # GetParseError_En) for an empty document and for a value that is not JSON;
  # other errors keep Python's description, after the same prefix.
  if not body.strip():
    raise status.invalid_argument("JSON Parse error: The document is empty")
  try:
    value = json.loads(body)
  except json.JSONDecodeError as e:
    reason = "Invalid value." if e.msg == "Expecting value" else e.msg
    raise status.invalid_argument(f"JSON Parse error: {reason} at offset: {e.pos}") from None
  except (ValueError, UnicodeDecodeError) as e:
    raise status.invalid_argument(f"JSON Parse error: {e}") from None
  if not isinstance(value, dict):
    raise status.invalid_argument("JSON Value: the request body must be a JSON object.")
  return value


def signature_name(body: Dict[str, Any]) -> str:
  """The body's `signature_name` ('' if none).

  Raises:
    ServingError: INVALID_ARGUMENT if it is not a string.
  """
  name = body.get("signature_name", "")
  if not isinstance(name, str):
    raise status.invalid_argument("'signature_name' key must be a string value.")
  return name


def _is_named(value: Any, aliases) -> bool:
  return isinstance(value, dict) and set(value) == set(aliases)


def _row_inputs(instances: Any, infos) -> Dict[str, Any]:
  if not isinstance(instances, list):
    raise status.invalid_argument("'instances' must be a JSON list.")
  if not instances:
    raise status.invalid_argument("'instances' is empty; send at least one instance.")
  aliases = sorted(infos)
  if len(aliases) == 1 and not all(_is_named(i, aliases) for i in instances):
    return {aliases[0]: instances}
  columns = {alias: [] for alias in aliases}
  for index, instance in enumerate(instances):
    if not _is_named(instance, aliases):
      keys = sorted(instance) if isinstance(instance, dict) else type(instance).__name__
      raise status.invalid_argument(
        f"Failed to process element: {index} of 'instances' list. Expected an object "
        f"with the keys {aliases} (the signature's inputs), got {keys}."
      )
    for alias in aliases:
      columns[alias].append(instance[alias])
  return columns


def _columnar_inputs(inputs: Any, infos) -> Dict[str, Any]:
  aliases = sorted(infos)
  if _is_named(inputs, aliases):
    return inputs
  if len(aliases) == 1:
    return {aliases[0]: inputs}
  keys = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
  raise status.invalid_argument(
    f"'inputs' must be an object with the keys {aliases} (the signature's inputs), got {keys}."
  )


def predict_row_format(body: Dict[str, Any]) -> bool:
  """Whether a Predict body is in the row format (`instances`) rather than columnar (`inputs`).

  Raises:
    ServingError: INVALID_ARGUMENT if it has both keys or neither.
  """
  if "instances" in body and "inputs" in body:
    raise status.invalid_argument("Only one of 'instances' or 'inputs' may be specified.")
  if "instances" not in body and "inputs" not in body:
    raise status.invalid_argument("Missing 'instances' or 'inputs' key.")
  return "instances" in body


def predict_inputs(
  body: Dict[str, Any], row_format: bool, infos: Dict[str, Any]
) -> Dict[str, np.ndarray]:
  """A Predict body's inputs, each read in the dtype of its signature input.

  Args:
    body: the request body.
    row_format: from `predict_row_format`.
    infos: the signature's inputs (`TensorInfo`s by alias), as TF Serving's
      `GetInfoMap` gives them.

  Raises:
    ServingError: INVALID_ARGUMENT naming what does not fit the signature.
  """
  if row_format:
    values = _row_inputs(body["instances"], infos)
  else:
    values = _columnar_inputs(body["inputs"], infos)
  return {
    alias: json_to_ndarray(value, infos[alias].dtype, alias) for alias, value in values.items()
  }


def predict_response(outputs: Dict[str, np.ndarray], row_format: bool) -> bytes:
  """The body answering a Predict: `predictions` (row format) or `outputs` (columnar).

  Raises:
    ServingError: INVALID_ARGUMENT if the row format is asked of outputs
      without one shared batch size.
  """
  if row_format:
    aliases = sorted(outputs)
    batch = {outputs[a].shape[0] if outputs[a].ndim else -1 for a in aliases}
    if len(batch) != 1 or -1 in batch:
      raise status.invalid_argument(
        "The signature's outputs do not share a batch size; use the columnar 'inputs' format."
      )
    if len(aliases) == 1:
      predictions = ndarray_to_json(outputs[aliases[0]], aliases[0])
    else:
      columns = {a: ndarray_to_json(outputs[a], a) for a in aliases}
      predictions = [{a: columns[a][i] for a in aliases} for i in range(batch.pop())]
    result = {"predictions": predictions}
  else:
    if len(outputs) == 1:
      alias, array = next(iter(outputs.items()))
      result = {"outputs": ndarray_to_json(array, alias)}
    else:
      result = {"outputs": {a: ndarray_to_json(v, a) for a, v in outputs.items()}}
  return json.dumps(result).encode("utf-8")


def fill_classify_regress_request(request, body: Dict[str, Any]) -> None:
  """Fills a Classify or Regress request from its JSON body.

  As `FillClassifyRegressRequestFromJson` (tensorflow_serving/util/json_tensor.cc).

  Raises:
    ServingError: INVALID_ARGUMENT with TensorFlow Serving's message.
  """
  request.model_spec.signature_name = signature_name(body)
  try:
    if "context" in body:
      listed = request.input.example_list_with_context
      listed.context.CopyFrom(example_from_json(body["context"]))
    else:
      listed = request.input.example_list
    examples = body.get("examples")
    if "examples" not in body:
      raise ValueError("When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
      raise ValueError("Expecting 'examples' value to be an list/array")
    if not examples:
      raise ValueError("'examples' value is an empty array")
    for value in examples:
      listed.examples.add().CopyFrom(example_from_json(value))
  except ValueError as e:
    raise status.invalid_argument(str(e)) from None


# json_tensor.cc:76-78 kClassifyRegressResponseKey (g3doc/api_rest.md's prose
# says "result"; its examples, the code and its tests say "results").
CLASSIFY_REGRESS_RESPONSE_KEY = "results"


def classification_response(response) -> bytes:
  """The body answering a Classify: `[label, score]` pairs per example (json_tensor.cc:1014)."""
  results = [
    [[c.label, c.score] for c in classifications.classes]
    for classifications in response.result.classifications
  ]
  return json.dumps({CLASSIFY_REGRESS_RESPONSE_KEY: results}).encode("utf-8")


def regression_response(response) -> bytes:
  """The body answering a Regress: one value per example (json_tensor.cc:1050-1073)."""
  results = [regression.value for regression in response.result.regressions]
  return json.dumps({CLASSIFY_REGRESS_RESPONSE_KEY: results}).encode("utf-8")
