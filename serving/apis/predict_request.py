"""A request's tensors checked against the signature it runs, as TensorFlow Serving checks them.

The inputs (names, dtypes, shapes, one batch size) and the output filter of
Predict, and of Classify and Regress once their examples are a tensor, with
TensorFlow Serving's messages (tensorflow_serving/servables/tensorflow/
predict_util.cc and TensorFlow's own checks).
"""

from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from serving import status
from serving.apis import tensors


def _shape_text(info: meta_graph_pb2.TensorInfo) -> str:
  if info.tensor_shape.unknown_rank:
    return "<unknown rank>"
  return "[" + ",".join(str(d.size) for d in info.tensor_shape.dim) + "]"


def validate_inputs(
  signature_name: str, infos: Dict[str, meta_graph_pb2.TensorInfo], inputs: Dict[str, np.ndarray]
) -> int:
  """Checks request inputs against a signature's, as TensorFlow Serving does.

  Args:
    signature_name: for messages.
    infos: the signature's inputs.
    inputs: the request's inputs.

  Returns:
    The batch size (dimension 0 shared by all inputs).

  Raises:
    ServingError: INVALID_ARGUMENT naming the input, for a missing or extra
      input, a wrong dtype, rank or fixed dimension, inputs with different
      batch sizes, or an empty batch.
  """
  if set(inputs) != set(infos):
    sent, expected = sorted(inputs), sorted(infos)
    extra = sorted(set(sent) - set(expected))
    missing = sorted(set(expected) - set(sent))
    if len(sent) != len(expected):
      raise status.invalid_argument(
        f"input size does not match signature: {len(sent)}!={len(expected)} "
        f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). "
        f"Sent extra: {{{','.join(extra)}}}. Missing but required: "
        f"{{{','.join(missing)}}}."
      )
    raise status.invalid_argument(
      f"input tensor alias not found in signature: {extra[0]}. Inputs expected "
      f"to be in the set {{{','.join(expected)}}}."
    )
  batch_sizes = {}
  for alias in sorted(inputs):
    array, info = inputs[alias], infos[alias]
    dtype = tensors.dtype_of(array)
    if dtype != info.dtype:
      raise status.invalid_argument(
        f"Expects arg[{alias}] of signature {signature_name} to be "
        f"{tensors.dtype_name(info.dtype)} but {tensors.dtype_name(dtype)} is provided"
      )
    if not info.tensor_shape.unknown_rank:
      dims = [d.size for d in info.tensor_shape.dim]
      if len(dims) != array.ndim or any(
        want >= 0 and want != have for want, have in zip(dims, array.shape, strict=True)
      ):
        raise status.invalid_argument(
          f"input {alias} of signature {signature_name} must have shape "
          f"{_shape_text(info)} (-1: any size), got {list(array.shape)}"
        )
    if array.ndim:
      batch_sizes[alias] = array.shape[0]
  if len(set(batch_sizes.values())) > 1:
    sizes = ", ".join(f"{alias}: {size}" for alias, size in batch_sizes.items())
    raise status.invalid_argument(
      f"inputs must have the same batch size (0th dimension), got {sizes}"
    )
  batch_size = next(iter(batch_sizes.values()), 1)
  if batch_size == 0:
    raise status.invalid_argument(
      f"input {next(iter(batch_sizes))} has an empty batch (0th dimension is 0); "
      "send at least one example"
    )
  return batch_size


def output_aliases(
  signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]
) -> Optional[Tuple[str, ...]]:
  """The outputs a request's `output_filter` asks for, in its order; None: all of them.

  Raises:
    ServingError: INVALID_ARGUMENT for an alias the signature does not have,
      or one asked twice.
  """
  if not output_filter:
    return None
  seen = set()
  for alias in output_filter:
    if alias not in signature.outputs:
      raise status.invalid_argument(
        f"output tensor alias not found in signature: {alias} Outputs expected to "
        f"be in the set {{{','.join(sorted(signature.outputs))}}}."
      )
    if alias in seen:
      raise status.invalid_argument(f"duplicate output tensor alias: {alias}")
    seen.add(alias)
  return tuple(output_filter)
