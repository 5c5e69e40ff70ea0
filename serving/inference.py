"""The serving APIs (Predict, Classify, GetModelMetadata, GetModelStatus), transport-free.

gRPC and REST both call these, so both check requests the same way and answer
with TensorFlow Serving's status codes and messages (see
`tensorflow_serving/servables/tensorflow/predict_util.cc` and friends).
Predict and Classify return `Pending` responses: with batching on, the model
runs on batch threads, and each response is built by the first thread that
asks for it (see `Pending`).
"""

import concurrent.futures
import threading
import time
from typing import Callable
from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

import grpc
import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2

from components.trainer import constants
from serving import batching
from serving import model_manager
from serving import servables
from serving import status
from serving import tensors

SIGNATURE_DEF_FIELD = "signature_def"
# Classify reads the class scores from this output (the model's softmax).
PROBABILITIES_OUTPUT = constants.PROBABILITIES_KEY


def _labels(num_classes: int) -> Tuple[str, ...]:
  if num_classes == len(constants.CATEGORY_NAMES):
    return constants.CATEGORY_NAMES
  return tuple(str(i) for i in range(num_classes))


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


class Pending:
  """A response computed once from a future's value, by the first thread that asks for it.

  The front end chooses that thread: a REST request thread builds its own
  response when it waits for it; the gRPC front end asks from the done
  callback, on the batch thread, to keep the work off its event loop. Has the
  parts of `concurrent.futures.Future` the front ends use.
  """

  def __init__(self, future: Union[concurrent.futures.Future, "Pending"], fn: Callable):
    self._future = future
    self._fn = fn
    self._lock = threading.Lock()
    self._resolved = False
    self._value = None
    self._error: Optional[BaseException] = None

  def result(self, timeout: Optional[float] = None):
    """`fn(future.result(timeout))`, computed once.

    Raises:
      concurrent.futures.TimeoutError: if the future is not done in time.
      Exception: whatever the future or `fn` raises.
    """
    value = self._future.result(timeout)  # Raises on timeout: nothing is cached.
    with self._lock:
      if not self._resolved:
        try:
          self._value = self._fn(value)
        except BaseException as e:  # Handed to every caller.
          self._error = e
        self._resolved = True
    if self._error is not None:
      raise self._error
    return self._value

  def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
    try:
      self.result(timeout)
    except concurrent.futures.TimeoutError:
      raise
    except BaseException as e:  # The exception is the answer here.
      return e
    return None

  def add_done_callback(self, fn: Callable[["Pending"], None]) -> None:
    """Calls `fn(self)` once the underlying future is done."""
    self._future.add_done_callback(lambda _: fn(self))

  def cancel(self) -> bool:
    """Cancels the work if it has not started (a batch skips a cancelled request)."""
    return self._future.cancel()


class InferenceService:
  """Answers the TensorFlow Serving APIs from the models of a `ModelManager`."""

  def __init__(self, manager: model_manager.ModelManager):
    self._manager = manager

  def signature_inputs(
    self, model_spec: model_pb2.ModelSpec, signature_name: str, request_inputs=()
  ) -> Dict[str, meta_graph_pb2.TensorInfo]:
    """A signature's inputs (for decoding REST JSON in the right dtypes)."""
    servable = self._manager.servable(model_spec)
    signature_name = signature_name or servables.DEFAULT_SIGNATURE_NAME
    if signature_name not in servable.signature_defs:
      raise status.ServingError(
        grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.'
      )
    return servable.input_infos(signature_name, request_inputs)

  def run(
    self,
    model_spec: model_pb2.ModelSpec,
    signature_name: str,
    inputs: Dict[str, np.ndarray],
    output_filter: Sequence[str] = (),
    deadline: Optional[float] = None,
    servable: Optional[servables.Servable] = None,
  ) -> Tuple[servables.Servable, str, Union[concurrent.futures.Future, Pending]]:
    """Validates and submits one request.

    Args:
      model_spec: the model and version asked for.
      signature_name: the signature; empty means `serving_default`.
      inputs: the inputs by alias.
      output_filter: outputs to return; empty returns all.
      deadline: `time.monotonic()` after which the caller stops waiting.
      servable: run on this servable instead of resolving `model_spec`
        (warmup).

    Returns:
      `(servable, signature name, future of the outputs)`.

    Raises:
      ServingError: for an invalid request, an unknown model, version or
        signature, or a full batch queue.
    """
    signature_name = signature_name or servables.DEFAULT_SIGNATURE_NAME
    # A version being unloaded refuses new work after the request resolved
    # it; the request then goes to the version that replaced it.
    for attempt in range(3):
      target = servable or self._manager.servable(model_spec)
      signature = target.signature_defs.get(signature_name)
      if signature is None:
        raise status.ServingError(
          grpc.StatusCode.FAILED_PRECONDITION,
          f'Serving signature key "{signature_name}" not found.',
        )
      batch_size = validate_inputs(
        signature_name, target.input_infos(signature_name, inputs), inputs
      )
      aliases = _output_aliases(signature, output_filter)
      try:
        future = target.submit(signature_name, inputs, batch_size, deadline)
      except batching.SchedulerClosedError:
        if servable is not None or attempt == 2:
          raise status.ServingError(
            grpc.StatusCode.UNAVAILABLE,
            f"Model {target.name} version {target.version} is being unloaded.",
          ) from None
        continue
      if aliases is not None:
        future = Pending(future, lambda outputs, aliases=aliases: {a: outputs[a] for a in aliases})
      return target, signature_name, future
    raise AssertionError("unreachable")

  def predict(
    self,
    request: predict_pb2.PredictRequest,
    deadline: Optional[float] = None,
    servable: Optional[servables.Servable] = None,
  ) -> Pending:
    """Predict: the pending PredictResponse.

    Raises:
      ServingError: as `run` does, and INVALID_ARGUMENT for a malformed tensor.
    """
    inputs = {alias: tensors.to_ndarray(proto, alias) for alias, proto in request.inputs.items()}
    target, signature_name, outputs = self.run(
      request.model_spec,
      request.model_spec.signature_name,
      inputs,
      request.output_filter,
      deadline,
      servable,
    )

    def respond(outputs: Dict[str, np.ndarray]) -> predict_pb2.PredictResponse:
      response = predict_pb2.PredictResponse()
      _fill_model_spec(response.model_spec, target, signature_name)
      for alias, array in outputs.items():
        tensors.fill_tensor_proto(array, response.outputs[alias])
      return response

    return Pending(outputs, respond)

  def classify(
    self,
    request: classification_pb2.ClassificationRequest,
    deadline: Optional[float] = None,
    servable: Optional[servables.Servable] = None,
  ) -> Pending:
    """Classify over a signature taking serialized tf.Examples.

    The class scores come from the signature's `probabilities` output
    [batch, classes] (or its `scores` output); class labels are the category
    names.

    Raises:
      ServingError: INVALID_ARGUMENT for empty input or a signature that
        cannot classify, and as `run` does.
    """
    examples = _examples(request.input)
    if not examples:
      raise status.invalid_argument("Input is empty.")
    signature_name = request.model_spec.signature_name or servables.DEFAULT_SIGNATURE_NAME
    target = servable or self._manager.servable(request.model_spec)
    signature = target.signature_defs.get(signature_name)
    if signature is None:
      raise status.ServingError(
        grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.'
      )
    infos = target.input_infos(signature_name, [servables.EXAMPLES_INPUT])
    if len(infos) != 1 or next(iter(infos.values())).dtype != types_pb2.DT_STRING:
      raise status.invalid_argument(
        f"Classify needs a signature with one DT_STRING input of serialized "
        f"tf.Examples; {signature_name} has inputs {{{','.join(sorted(infos))}}}."
      )
    score_output = next(
      (name for name in (PROBABILITIES_OUTPUT, "scores") if name in signature.outputs), None
    )
    if score_output is None:
      raise status.invalid_argument(
        f"Classify needs a [batch, classes] output named {PROBABILITIES_OUTPUT} or "
        f"scores; {signature_name} has outputs "
        f"{{{','.join(sorted(signature.outputs))}}}."
      )
    alias = next(iter(infos))
    serialized = np.empty(len(examples), dtype=object)
    serialized[:] = examples
    target, signature_name, outputs = self.run(
      request.model_spec, signature_name, {alias: serialized}, (score_output,), deadline, servable
    )

    def respond(outputs):
      scores = outputs[score_output]
      if scores.ndim != 2:
        raise status.invalid_argument(
          f"Classify needs output {score_output} to be [batch, classes], got "
          f"shape {list(scores.shape)}."
        )
      labels = _labels(scores.shape[1])
      response = classification_pb2.ClassificationResponse()
      _fill_model_spec(response.model_spec, target, signature_name)
      for row in scores.tolist():
        classifications = response.result.classifications.add()
        for label, score in zip(labels, row, strict=True):
          classifications.classes.add(label=label, score=score)
      return response

    return Pending(outputs, respond)

  def get_model_metadata(
    self, request: get_model_metadata_pb2.GetModelMetadataRequest
  ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadata: the signature_def map of the asked version.

    Raises:
      ServingError: INVALID_ARGUMENT for missing or unsupported metadata
        fields, NOT_FOUND for an unknown model or version.
    """
    if not request.metadata_field:
      raise status.invalid_argument(
        "GetModelMetadataRequest must specify at least one metadata_field"
      )
    for field in request.metadata_field:
      if field != SIGNATURE_DEF_FIELD:
        raise status.invalid_argument(f"Metadata field {field} is not supported")
    servable = self._manager.servable(request.model_spec)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
      signature_map.signature_def[key].CopyFrom(signature)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response

  def get_model_status(
    self, request: get_model_status_pb2.GetModelStatusRequest
  ) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatus: the state of each version (or of the asked one)."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state, error in self._manager.version_statuses(request.model_spec):
      version_status = response.model_version_status.add(version=version, state=state)
      version_status.status.SetInParent()  # TF Serving always sends a status, OK too.
      if error is not None:
        version_status.status.error_code = error.code.value[0]
        version_status.status.error_message = error.message
    return response


def _fill_model_spec(
  model_spec: model_pb2.ModelSpec, servable: servables.Servable, signature_name: str
) -> None:
  model_spec.name = servable.name
  model_spec.version.value = servable.version
  model_spec.signature_name = signature_name


def _output_aliases(
  signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]
) -> Optional[Tuple[str, ...]]:
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


def _examples(model_input) -> list:
  """Serialized tf.Examples of a tensorflow.serving.Input, context merged in."""
  kind = model_input.WhichOneof("kind")
  if kind == "example_list":
    return [e.SerializeToString() for e in model_input.example_list.examples]
  if kind == "example_list_with_context":
    listed = model_input.example_list_with_context
    serialized = []
    for example in listed.examples:
      merged = example_pb2.Example()
      for key, feature in listed.context.features.feature.items():
        merged.features.feature[key].CopyFrom(feature)
      for key, feature in example.features.feature.items():
        merged.features.feature[key].CopyFrom(feature)
      serialized.append(merged.SerializeToString())
    return serialized
  return []


def deadline_after(seconds: Optional[float]) -> Optional[float]:
  """A `time.monotonic()` deadline `seconds` from now (None: no deadline)."""
  return None if seconds is None else time.monotonic() + seconds
