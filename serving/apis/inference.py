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
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import input_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import regression_pb2

from serving import status
from serving.apis import tensors
from serving.models import batching
from serving.models import model_manager
from serving.models import servables

SIGNATURE_DEF_FIELD = "signature_def"


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
  parts of `concurrent.futures.Future` the front ends use, and `examples`: the
  number of examples in the request (for the audit log).
  """

  def __init__(
    self, future: Union[concurrent.futures.Future, "Pending"], fn: Callable, examples: int = 0
  ):
    self._future = future
    self._fn = fn
    self.examples = examples
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
  """Answers the TensorFlow Serving APIs from the models of a `ModelManager`.

  Args:
    manager: the loaded models.
    signature_method_name_check: Classify and Regress accept only a signature
      of their method name (tensorflow_model_server's
      `--enable_signature_method_name_check`); by default, as there, any
      signature with the expected input and output keys.
  """

  def __init__(
    self, manager: model_manager.ModelManager, signature_method_name_check: bool = False
  ):
    self._manager = manager
    self._method_name_check = signature_method_name_check

  def signature_inputs(
    self, model_spec: model_pb2.ModelSpec, signature_name: str
  ) -> Dict[str, meta_graph_pb2.TensorInfo]:
    """A signature's inputs (for decoding REST JSON in the right dtypes)."""
    servable = self._manager.servable(model_spec)
    signature_name = signature_name or servables.DEFAULT_SIGNATURE_NAME
    if signature_name not in servable.signature_defs:
      raise status.ServingError(
        grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.'
      )
    return dict(servable.signature_defs[signature_name].inputs)

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
      batch_size = validate_inputs(signature_name, dict(signature.inputs), inputs)
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
    first = next(iter(inputs.values()), None)
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

    # `run` checked that every input has this batch size (a scalar is one example).
    return Pending(outputs, respond, first.shape[0] if first.ndim else 1)

  def classify(
    self,
    request: classification_pb2.ClassificationRequest,
    deadline: Optional[float] = None,
    servable: Optional[servables.Servable] = None,
  ) -> Pending:
    """Classify, as TensorFlow Serving's classifier runs it.

    Runs the signature the request names (empty: `serving_default`), which
    must be a classification signature: input `inputs` (serialized
    tf.Examples), outputs `classes` (DT_STRING) and/or `scores` (DT_FLOAT),
    both [batch, num_classes]. Labels and scores come from those outputs.

    Raises:
      ServingError: INVALID_ARGUMENT with TensorFlow Serving's message for a
        signature that cannot classify, empty input or misshapen outputs, and
        as `run` does.
    """
    return self._run_examples(
      request,
      classification_pb2.ClassificationResponse,
      _classification_outputs,
      _classification_result,
      deadline,
      servable,
    )

  def regress(
    self,
    request: regression_pb2.RegressionRequest,
    deadline: Optional[float] = None,
    servable: Optional[servables.Servable] = None,
  ) -> Pending:
    """Regress, as TensorFlow Serving's regressor runs it.

    Runs the signature the request names (empty: `serving_default`), which
    must be a regression signature: input `inputs` (serialized tf.Examples),
    output `outputs`, DT_FLOAT [batch] or [batch, 1].

    Raises:
      ServingError: as `classify` does, with the regressor's messages.
    """
    return self._run_examples(
      request,
      regression_pb2.RegressionResponse,
      _regression_outputs,
      _regression_result,
      deadline,
      servable,
    )

  def _run_examples(
    self, request, response_class, outputs_of, result_of, deadline, servable
  ) -> Pending:
    """Runs a Classify or Regress request on serialized tf.Examples.

    In TensorFlow Serving's order: the servable, the signature
    (`Get{Classification,Regression}SignatureDef`), the input
    (`InputToSerializedExampleTensor`, util.cc), the run, the result
    (`PostProcess{Classification,Regression}Result`).
    """
    if not request.HasField("model_spec"):
      raise status.invalid_argument("Missing ModelSpec")
    target = servable or self._manager.servable(request.model_spec)
    signature_name = request.model_spec.signature_name or servables.DEFAULT_SIGNATURE_NAME
    signature = target.signature_defs.get(signature_name)
    if signature is None:
      raise status.invalid_argument(f"No signature was found with the name: {signature_name}")
    output_names = outputs_of(signature, self._method_name_check)
    examples = _serialized_examples(request.input)
    if not examples:
      raise status.invalid_argument("Input is empty.")
    serialized = np.empty(len(examples), dtype=object)
    serialized[:] = examples
    target, signature_name, outputs = self.run(
      request.model_spec,
      signature_name,
      {tf.saved_model.CLASSIFY_INPUTS: serialized},
      output_names,
      deadline,
      servable,
    )

    def respond(outputs):
      response = response_class()
      _fill_model_spec(response.model_spec, target, signature_name)
      result_of(outputs, len(examples), response.result)
      return response

    return Pending(outputs, respond, len(examples))

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


def _serialized_examples(model_input: input_pb2.Input) -> List[bytes]:
  """The serialized tf.Examples of a tensorflow.serving.Input.

  As `InputToSerializedExampleTensor` (util.cc): with a context, each example
  is the context's bytes followed by its own, which parses as the two merged
  (the example's value wins for a feature both have).
  """
  kind = model_input.WhichOneof("kind")
  if kind == "example_list":
    return [e.SerializeToString() for e in model_input.example_list.examples]
  if kind == "example_list_with_context":
    listed = model_input.example_list_with_context
    context = listed.context.SerializeToString()
    return [context + e.SerializeToString() for e in listed.examples]
  return []


def _debug_string(signature: meta_graph_pb2.SignatureDef) -> str:
  return text_format.MessageToString(signature)


def _check_method_and_input(
  signature: meta_graph_pb2.SignatureDef, method_name_check: bool, kind: str, method_name: str
) -> None:
  """The checks classifier.cc and regressor.cc share: method name (if on), one input."""
  if method_name_check and signature.method_name != method_name:
    raise status.invalid_argument(
      f"Expected {kind} signature method_name to be {method_name}. Was: {signature.method_name}"
    )
  if len(signature.inputs) != 1:
    raise status.invalid_argument("Expected one input Tensor.")


def _classification_outputs(
  signature: meta_graph_pb2.SignatureDef, method_name_check: bool
) -> Tuple[str, ...]:
  """The outputs Classify reads, or TensorFlow Serving's error for the signature.

  tensorflow_serving/servables/tensorflow/classifier.cc,
  `GetClassificationSignatureDef` and `PreProcessClassification`.
  """
  _check_method_and_input(
    signature, method_name_check, "classification", tf.saved_model.CLASSIFY_METHOD_NAME
  )
  if len(signature.outputs) not in (1, 2):
    raise status.invalid_argument(
      f"Expected one or two output Tensors, found {len(signature.outputs)}"
    )
  if tf.saved_model.CLASSIFY_INPUTS not in signature.inputs:
    raise status.invalid_argument(
      f"No classification inputs found in SignatureDef: {_debug_string(signature)}"
    )
  names = tuple(
    name
    for name in (tf.saved_model.CLASSIFY_OUTPUT_CLASSES, tf.saved_model.CLASSIFY_OUTPUT_SCORES)
    if name in signature.outputs
  )
  if not names:
    raise status.invalid_argument(
      "Expected classification signature outputs to contain at least one of "
      f'"{tf.saved_model.CLASSIFY_OUTPUT_CLASSES}" or '
      f'"{tf.saved_model.CLASSIFY_OUTPUT_SCORES}". Signature was: {_debug_string(signature)}'
    )
  return names


def _shape_debug_string(array: np.ndarray) -> str:
  return "[" + ",".join(str(size) for size in array.shape) + "]"


def _check_class_output(array, name: str, dtype: int, num_examples: int) -> None:
  if array.ndim != 2:
    raise status.invalid_argument(
      f"Expected Tensor shape: [batch_size num_classes] but got {_shape_debug_string(array)}"
    )
  got = tensors.dtype_of(array)
  if got != dtype:
    raise status.invalid_argument(
      f"Expected {name} Tensor of {types_pb2.DataType.Name(dtype)}. Got: "
      f"{types_pb2.DataType.Name(got)}"
    )
  if array.shape[0] != num_examples:
    raise status.invalid_argument(
      f"Expected {name} output batch size of {num_examples}. Got: {array.shape[0]}"
    )


def _classification_result(
  outputs: Dict[str, np.ndarray], num_examples: int, result: classification_pb2.ClassificationResult
) -> None:
  """Fills `result` from `classes` and `scores`.

  classifier.cc, `PostProcessClassificationResult`.
  """
  classes = outputs.get(tf.saved_model.CLASSIFY_OUTPUT_CLASSES)
  scores = outputs.get(tf.saved_model.CLASSIFY_OUTPUT_SCORES)
  if classes is not None:
    _check_class_output(classes, "classes", types_pb2.DT_STRING, num_examples)
  if scores is not None:
    _check_class_output(scores, "scores", types_pb2.DT_FLOAT, num_examples)
  if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
    raise status.invalid_argument(
      "Tensors class and score should match in dim_size(1). Got "
      f"{classes.shape[1]} vs. {scores.shape[1]}"
    )
  num_classes = (classes if classes is not None else scores).shape[1]
  labels = [[""] * num_classes] * num_examples
  if classes is not None:
    labels = [
      [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in row]
      for row in classes.tolist()
    ]
  rows = scores.tolist() if scores is not None else [[0.0] * num_classes] * num_examples
  for row_labels, row_scores in zip(labels, rows, strict=True):
    classes_out = result.classifications.add().classes
    for label, score in zip(row_labels, row_scores, strict=True):
      classes_out.add(label=label, score=score)


def _regression_outputs(
  signature: meta_graph_pb2.SignatureDef, method_name_check: bool
) -> Tuple[str, ...]:
  """The output Regress reads, or TensorFlow Serving's error for the signature.

  tensorflow_serving/servables/tensorflow/regressor.cc,
  `GetRegressionSignatureDef` and `PreProcessRegression`.
  """
  _check_method_and_input(
    signature, method_name_check, "regression", tf.saved_model.REGRESS_METHOD_NAME
  )
  if len(signature.outputs) != 1:
    raise status.invalid_argument("Expected one output Tensor.")
  if tf.saved_model.REGRESS_INPUTS not in signature.inputs:
    raise status.invalid_argument(
      f"No regression inputs found in SignatureDef: {_debug_string(signature)}"
    )
  if tf.saved_model.REGRESS_OUTPUTS not in signature.outputs:
    raise status.invalid_argument(
      f"No regression outputs found in SignatureDef: {_debug_string(signature)}"
    )
  return (tf.saved_model.REGRESS_OUTPUTS,)


def _regression_result(
  outputs: Dict[str, np.ndarray], num_examples: int, result: regression_pb2.RegressionResult
) -> None:
  """Fills `result` from `outputs` (regressor.cc, `PostProcessRegressionResult`)."""
  values = outputs[tf.saved_model.REGRESS_OUTPUTS]
  if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
    raise status.invalid_argument(
      "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
      f"{_shape_debug_string(values)}"
    )
  if values.shape[0] != num_examples:
    raise status.invalid_argument(
      f"Input batch size did not match output batch size: {num_examples} vs. {values.shape[0]}"
    )
  got = tensors.dtype_of(values)
  if got != types_pb2.DT_FLOAT:
    raise status.invalid_argument(
      f"Expected output Tensor of DT_FLOAT.  Got: {types_pb2.DataType.Name(got)}"
    )
  for value in values.ravel().tolist():
    result.regressions.add(value=value)


def deadline_after(seconds: Optional[float]) -> Optional[float]:
  """A `time.monotonic()` deadline `seconds` from now (None: no deadline)."""
  return None if seconds is None else time.monotonic() + seconds
