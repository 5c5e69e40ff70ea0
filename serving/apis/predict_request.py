"""A Predict request checked against its signature and made a session run, as TF Serving does.

tensorflow_serving/servables/tensorflow/predict_util.cc, `PreProcessPrediction`
(78-161), in its order: the method name (only with
`--enable_signature_method_name_check`), the number of inputs, the inputs fed
under their tensor names (TensorFlow's `saved_model::GetInputValues`,
tensorflow/cc/saved_model/util.cc), the output filter. Nothing else is
checked here: TensorFlow Serving hands the tensors to the session, and
TensorFlow's own checks (a feed's dtype; whatever its kernels require of
shapes) answer the rest.
"""

from typing import Callable
from typing import Dict
from typing import List
from typing import Mapping
from typing import Sequence
from typing import Tuple
from typing import TypeVar

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from next_category.serving import status
from next_category.serving.apis import tensors

_METHOD_NAMES = (
  tf.saved_model.PREDICT_METHOD_NAME,
  tf.saved_model.CLASSIFY_METHOD_NAME,
  tf.saved_model.REGRESS_METHOD_NAME,
)

Value = TypeVar("Value")


def check_method_name(signature: meta_graph_pb2.SignatureDef) -> None:
  """`VerifySignature` (predict_util.cc:38-49), called only when the method check is on.

  Raises:
    ServingError: INTERNAL, as TensorFlow Serving answers it.
  """
  if signature.method_name not in _METHOD_NAMES:
    raise status.ServingError(
      grpc.StatusCode.INTERNAL,
      "Expected prediction signature method_name to be one of {"
      + ", ".join(_METHOD_NAMES)
      + f"}}. Was: {signature.method_name}",
    )


def check_inputs_size(signature: meta_graph_pb2.SignatureDef, aliases: Sequence[str]) -> None:
  """`VerifyRequestInputsSize` (predict_util.cc:51-73).

  More inputs than the signature has, or fewer when it has no defaults.

  Raises:
    ServingError: INVALID_ARGUMENT with TensorFlow Serving's message.
  """
  sent, expected = len(aliases), len(signature.inputs)
  if sent > expected or (sent < expected and not signature.defaults):
    request_inputs, signature_inputs = sorted(aliases), sorted(signature.inputs)
    extra = sorted(set(request_inputs) - set(signature_inputs))
    missing = sorted(set(signature_inputs) - set(request_inputs))
    raise status.invalid_argument(
      f"input size does not match signature: {sent}!={expected} "
      f"len({{{','.join(request_inputs)}}}) != len({{{','.join(signature_inputs)}}}). "
      f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
    )


def input_feeds(
  signature: meta_graph_pb2.SignatureDef,
  inputs: Mapping[str, Value],
  to_ndarray: Callable[[Value, str], np.ndarray],
) -> Dict[str, np.ndarray]:
  """The request's inputs by the tensor name they feed: `saved_model::GetInputValues`.

  Every signature input comes from the request, or else from the signature's
  `defaults`; a request input the signature does not have is an error.

  Args:
    signature: the signature run.
    inputs: the request's inputs by alias (TensorProtos, or arrays over REST).
    to_ndarray: reads one input (`Tensor::FromProto`); raises ServingError.

  Raises:
    ServingError: INVALID_ARGUMENT with TensorFlow's messages.
  """
  feeds = {}
  used = set()
  for alias in sorted(signature.inputs):
    feed_name = signature.inputs[alias].name
    if alias in inputs:
      value = to_ndarray(inputs[alias], alias)
      used.add(alias)
    elif alias in signature.defaults:
      value = tensors.to_ndarray(signature.defaults[alias], alias)
    else:
      raise status.invalid_argument(
        f"Signature input alias: {alias}(feed name: {feed_name}) not found in request and no "
        f"default value provided. Inputs expected to be in the request "
        f"{{{','.join(sorted(inputs))}}}, or default input alias set: "
        f"{','.join(sorted(signature.defaults))}"
      )
    feeds[feed_name] = value
  if inputs and len(used) != len(inputs):
    raise status.invalid_argument(
      f"Inputs contains invalid name. Used request inputs: {','.join(sorted(used))}, "
      f"request input: {','.join(sorted(inputs))}"
    )
  return feeds


def output_fetches(
  signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]
) -> Tuple[List[str], List[str]]:
  """`(tensor names, aliases)` to fetch: the filter's, in its order, or every output.

  predict_util.cc:129-159.

  Raises:
    ServingError: INVALID_ARGUMENT for an alias the signature does not have,
      or one asked twice.
  """
  names, aliases = [], []
  for alias in output_filter:
    if alias not in signature.outputs:
      raise status.invalid_argument(
        f"output tensor alias not found in signature: {alias} Outputs expected to "
        f"be in the set {{{','.join(sorted(signature.outputs))}}}."
      )
    if alias in aliases:
      raise status.invalid_argument(f"duplicate output tensor alias: {alias}")
    names.append(signature.outputs[alias].name)
    aliases.append(alias)
  if not names:
    for alias in sorted(signature.outputs):
      names.append(signature.outputs[alias].name)
      aliases.append(alias)
  return names, aliases
