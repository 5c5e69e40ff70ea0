"""Conversions between NumPy arrays and TensorFlow Serving's `TensorProto`s (gRPC).

`TensorProto`s are read as TensorFlow's `tf.make_ndarray` reads them,
after checks that keep a malformed or oversized proto from it. Outputs are written
into the typed `*_val` fields, as TensorFlow Serving writes them by default
(`AsProtoField`, predict_util.cc), which is what many clients read:
`tf.make_tensor_proto` would write `tensor_content`, which TensorFlow Serving
writes only with `--enable_serialization_as_tensor_content`. JSON values
(REST) are json_tensor.py's.
"""

import math

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import types_pb2

from next_category.serving import status

# A tensor may repeat its last value to fill its shape; this bounds what one
# small request can make the server allocate.
MAX_ELEMENTS = 2**25
# NumPy type of each supported TensorFlow dtype; strings are object arrays of bytes.
NUMPY_DTYPES = {
  types_pb2.DT_FLOAT: np.dtype(np.float32),
  types_pb2.DT_DOUBLE: np.dtype(np.float64),
  types_pb2.DT_HALF: np.dtype(np.float16),
  types_pb2.DT_INT8: np.dtype(np.int8),
  types_pb2.DT_INT16: np.dtype(np.int16),
  types_pb2.DT_INT32: np.dtype(np.int32),
  types_pb2.DT_INT64: np.dtype(np.int64),
  types_pb2.DT_UINT8: np.dtype(np.uint8),
  types_pb2.DT_UINT16: np.dtype(np.uint16),
  types_pb2.DT_UINT32: np.dtype(np.uint32),
  types_pb2.DT_UINT64: np.dtype(np.uint64),
  types_pb2.DT_BOOL: np.dtype(np.bool_),
  types_pb2.DT_STRING: np.dtype(object),
}
_DTYPE_ENUMS = {v: k for k, v in NUMPY_DTYPES.items()}

_VALUE_FIELDS = {
  types_pb2.DT_FLOAT: "float_val",
  types_pb2.DT_DOUBLE: "double_val",
  types_pb2.DT_HALF: "half_val",
  types_pb2.DT_INT8: "int_val",
  types_pb2.DT_INT16: "int_val",
  types_pb2.DT_INT32: "int_val",
  types_pb2.DT_INT64: "int64_val",
  types_pb2.DT_UINT8: "int_val",
  types_pb2.DT_UINT16: "int_val",
  types_pb2.DT_UINT32: "uint32_val",
  types_pb2.DT_UINT64: "uint64_val",
  types_pb2.DT_BOOL: "bool_val",
  types_pb2.DT_STRING: "string_val",
}


def dtype_name(dtype: int) -> str:
  """`DT_INT64` -> `int64`, the spelling TensorFlow's messages use."""
  return types_pb2.DataType.Name(dtype)[3:].lower()


def dtype_of(array: np.ndarray) -> int:
  """The TensorFlow dtype enum of a NumPy array (str and bytes arrays are DT_STRING)."""
  if array.dtype.kind in ("S", "U", "O"):
    return types_pb2.DT_STRING
  try:
    return _DTYPE_ENUMS[array.dtype]
  except KeyError:
    raise status.ServingError(
      grpc.StatusCode.INTERNAL, f"Unsupported output dtype {array.dtype}."
    ) from None


def to_ndarray(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
  """Reads a TensorProto as TensorFlow's `Tensor::FromProto` does.

  The two forms requests send (strings with one value per element, and
  packed `tensor_content`) are read directly; any other goes through
  `tf.make_ndarray` (typed `*_val` fields, fewer values than the shape holds
  filled with the last one, more cut to the shape, as FromProto does).
  `tf.make_ndarray` takes 2.3x as long for a
  one-example string tensor (20 against 9 us), so the hot path skips it.

  Raises:
    ServingError: INVALID_ARGUMENT naming `alias` if the proto is malformed.
  """
  if proto.tensor_shape.unknown_rank:
    raise status.invalid_argument(
      f"tensor parsing error: {alias}: the tensor shape has an unknown rank."
    )
  shape = [d.size for d in proto.tensor_shape.dim]
  if any(size < 0 for size in shape):
    raise status.invalid_argument(
      f"tensor parsing error: {alias}: negative dimension in shape {shape}."
    )
  dtype = NUMPY_DTYPES.get(proto.dtype)
  if dtype is None:
    raise status.invalid_argument(
      f"tensor parsing error: {alias}: unsupported dtype {proto.dtype}."
    )
  num_elements = math.prod(shape)
  if num_elements > MAX_ELEMENTS:
    raise status.invalid_argument(
      f"tensor parsing error: {alias}: shape {shape} has more than {MAX_ELEMENTS} elements."
    )
  if proto.dtype == types_pb2.DT_STRING and len(proto.string_val) == num_elements:
    array = np.empty(num_elements, dtype=object)
    array[:] = list(proto.string_val)
    return array.reshape(shape)
  if proto.tensor_content and len(proto.tensor_content) == num_elements * dtype.itemsize:
    return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
  values = getattr(proto, _VALUE_FIELDS[proto.dtype])
  if not proto.tensor_content and len(values) > num_elements:
    # Tensor::FromProto reads the first values the shape holds and ignores
    # the rest (tf.io.parse_tensor, which is FromProto, does the same).
    trimmed = tensor_pb2.TensorProto()
    trimmed.CopyFrom(proto)
    del getattr(trimmed, _VALUE_FIELDS[proto.dtype])[num_elements:]
    proto = trimmed
  try:
    return tf.make_ndarray(proto)
  except (ValueError, TypeError) as e:
    raise status.invalid_argument(
      f"tensor parsing error: {alias}: the values do not fit shape {shape} of "
      f"{dtype_name(proto.dtype)} ({e})."
    ) from None


def fill_tensor_proto(array: np.ndarray, proto: tensor_pb2.TensorProto) -> None:
  """Writes `array` into `proto` in the typed value field, as `AsProtoField` does."""
  dtype = dtype_of(array)
  proto.dtype = dtype
  proto.tensor_shape.SetInParent()  # AsProtoField writes a shape, empty for a scalar.
  for size in array.shape:
    proto.tensor_shape.dim.add().size = size
  flat = array.ravel()
  if dtype == types_pb2.DT_STRING:
    proto.string_val.extend(
      v if isinstance(v, bytes) else str(v).encode("utf-8") for v in flat.tolist()
    )
  elif dtype == types_pb2.DT_HALF:
    proto.half_val.extend(flat.view(np.uint16).tolist())
  else:
    getattr(proto, _VALUE_FIELDS[dtype]).extend(flat.tolist())
