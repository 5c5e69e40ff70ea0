"""The data plane: Predict, Classify, Regress, MultiInference, GetModelMetadata, GetModelStatus.

Transport-free: gRPC and REST both call these, so both check requests the
same way and answer with TensorFlow Serving's status codes and messages (see
`tensorflow_serving/servables/tensorflow/predict_util.cc` and friends: here
predict_request.py, classify_regress.py and multi_inference.py). Each request
becomes one session run on its servable: feeds and fetches by tensor name, as
TensorFlow Serving's `Session::Run`. Predict, Classify, Regress and
MultiInference return `Pending` responses: with batching on, the model runs on batch
threads, and each response is built by the first thread that asks for it
(see `Pending`).
"""

import concurrent.futures
import dataclasses
import threading
import time
from typing import Any
from typing import Callable
from typing import Dict
from typing import Mapping
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import input_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import regression_pb2

from next_category.serving import status
from next_category.serving.apis import classify_regress
from next_category.serving.apis import multi_inference
from next_category.serving.apis import predict_request
from next_category.serving.apis import tensors
from next_category.serving.models import batching
from next_category.serving.models import model_manager
from next_category.serving.models import servables

SIGNATURE_DEF_FIELD = "signature_def"


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
    """A signature's inputs, for decoding REST JSON in their dtypes.

    TensorFlow Serving's `HttpRestApiHandler::GetInfoMap`
    (http_rest_api_handler.cc:237-251), with its message.

    Raises:
      ServingError: as the model lookup does; INVALID_ARGUMENT for an unknown
        signature.
    """
    servable = self._manager.servable(model_spec)
    signature_name = signature_name or servables.DEFAULT_SIGNATURE_NAME
    if signature_name not in servable.signature_defs:
      raise status.invalid_argument(
        f'Serving signature name: "{signature_name}" not found in signature def'
      )
    return dict(servable.signature_defs[signature_name].inputs)

  def _submit(
    self,
    model_spec: model_pb2.ModelSpec,
    servable: Optional[servables.Servable],
    prepare: Callable[[servables.Servable], "_Run"],
    deadline: Optional[float],
  ) -> Tuple[servables.Servable, "_Run", concurrent.futures.Future]:
    """Resolves the servable, prepares the run on it and submits it.

    A version being unloaded refuses new work after the request resolved it;
    the request then goes to the version that replaced it.
    """
    for attempt in range(3):
      target = servable or self._manager.servable(model_spec)
      run = prepare(target)
      if target.batching:
        batch_size = batching.input_batch_size(run.feeds)
      else:
        batch_size = _examples(run.feeds)
      try:
        return target, run, target.submit(run.fetches, run.feeds, batch_size, deadline)
      except batching.SchedulerClosedError:
        if servable is not None or attempt == 2:
          raise status.ServingError(
            grpc.StatusCode.UNAVAILABLE,
            f"Model {target.name} version {target.version} is being unloaded.",
          ) from None
    raise AssertionError("unreachable")

  def _predict(
    self,
    model_spec: model_pb2.ModelSpec,
    signature_name: str,
    inputs: Mapping[str, Any],
    output_filter: Sequence[str] = (),
    deadline: Optional[float] = None,
    servable: Optional[servables.Servable] = None,
    to_ndarray: Callable[[Any, str], np.ndarray] = lambda array, alias: array,
  ) -> Tuple[servables.Servable, str, "_Run", concurrent.futures.Future]:
    """Checks and submits one Predict, as TensorFlow Serving's `RunPredict` does.

    In predict_util.cc's order: the signature, the method name (with the
    check on), the number of inputs, each input fed under its tensor name, the
    output filter; then the run, with TensorFlow's own checks.

    Args:
      model_spec: the model and version asked for.
      signature_name: the signature; empty means `serving_default`.
      inputs: the inputs by alias, as `to_ndarray` reads them (arrays by default).
      output_filter: outputs to return; empty returns all.
      deadline: `time.monotonic()` after which the caller stops waiting.
      servable: run on this servable instead of resolving `model_spec`
        (warmup).
      to_ndarray: reads one input (`tensors.to_ndarray` for TensorProtos).

    Returns:
      `(servable, signature name, the run, future of the fetched arrays)`.

    Raises:
      ServingError: for an invalid request, an unknown model, version or
        signature, or a full batch queue.
    """
    signature_name = signature_name or servables.DEFAULT_SIGNATURE_NAME

    def prepare(target: servables.Servable) -> _Run:
      signature = target.signature_defs.get(signature_name)
      if signature is None:
        raise status.ServingError(
          grpc.StatusCode.FAILED_PRECONDITION,
          f'Serving signature key "{signature_name}" not found.',
        )
      if self._method_name_check:
        predict_request.check_method_name(signature)
      predict_request.check_inputs_size(signature, list(inputs))
      feeds = predict_request.input_feeds(signature, inputs, to_ndarray)
      names, aliases = predict_request.output_fetches(signature, output_filter)
      return _Run(feeds, tuple(names), tuple(aliases))

    target, run, future = self._submit(model_spec, servable, prepare, deadline)
    return target, signature_name, run, future

  def run(
    self,
    model_spec: model_pb2.ModelSpec,
    signature_name: str,
    inputs: Mapping[str, np.ndarray],
    output_filter: Sequence[str] = (),
    deadline: Optional[float] = None,
    servable: Optional[servables.Servable] = None,
  ) -> Tuple[servables.Servable, str, Pending]:
    """Predict on arrays (REST): `(servable, signature name, pending outputs by alias)`.

    Raises:
      ServingError: as `_predict` does.
    """
    target, signature_name, run, future = self._predict(
      model_spec, signature_name, inputs, output_filter, deadline, servable
    )
    return target, signature_name, Pending(future, run.by_alias, _examples(run.feeds))

  def predict(
    self,
    request: predict_pb2.PredictRequest,
    deadline: Optional[float] = None,
    servable: Optional[servables.Servable] = None,
  ) -> Pending:
    """Predict: the pending PredictResponse.

    Raises:
      ServingError: as `run` does; INVALID_ARGUMENT `Missing ModelSpec`
        (predict_impl.cc) and `tensor parsing error: <alias>` for a malformed
        tensor.
    """
    if not request.HasField("model_spec") and servable is None:
      raise status.invalid_argument("Missing ModelSpec")
    target, signature_name, run, future = self._predict(
      request.model_spec,
      request.model_spec.signature_name,
      request.inputs,
      request.output_filter,
      deadline,
      servable,
      tensors.to_ndarray,
    )

    def respond(fetched: Dict[str, np.ndarray]) -> predict_pb2.PredictResponse:
      response = predict_pb2.PredictResponse()
      _fill_model_spec(response.model_spec, target, signature_name)
      for alias, name in zip(run.aliases, run.fetches, strict=True):
        tensors.fill_tensor_proto(fetched[name], response.outputs[alias])
      return response

    return Pending(future, respond, _examples(run.feeds))

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
      classify_regress.classification_outputs,
      classify_regress.classification_result,
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
      classify_regress.regression_outputs,
      classify_regress.regression_result,
      deadline,
      servable,
    )

  def _run_examples(
    self, request, response_class, outputs_of, result_of, deadline, servable
  ) -> Pending:
    """Runs a Classify or Regress request on serialized tf.Examples.

    In TensorFlow Serving's order: the servable, the signature
    (`Get{Classification,Regression}SignatureDef`), the input
    (`InputToSerializedExampleTensor`, util.cc), the run (the examples fed to
    the input's tensor name, whatever dtype the signature declares), the
    result (`PostProcess{Classification,Regression}Result`).
    """
    if not request.HasField("model_spec"):
      raise status.invalid_argument("Missing ModelSpec")
    signature_name = request.model_spec.signature_name or servables.DEFAULT_SIGNATURE_NAME
    serialized = _serialized_examples(request.input)

    def prepare(target: servables.Servable) -> _Run:
      signature = target.signature_defs.get(signature_name)
      if signature is None:
        raise status.invalid_argument(f"No signature was found with the name: {signature_name}")
      aliases = outputs_of(signature, self._method_name_check)
      if serialized is None:
        raise status.invalid_argument("Input is empty.")
      input_name = signature.inputs[tf.saved_model.CLASSIFY_INPUTS].name
      names = tuple(signature.outputs[alias].name for alias in aliases)
      return _Run({input_name: serialized}, names, tuple(aliases))

    target, run, future = self._submit(request.model_spec, servable, prepare, deadline)

    def respond(fetched: Dict[str, np.ndarray]):
      response = response_class()
      _fill_model_spec(response.model_spec, target, signature_name)
      result_of(run.by_alias(fetched), len(serialized), response.result)
      return response

    return Pending(future, respond, len(serialized))

  def multi_inference(
    self,
    request: inference_pb2.MultiInferenceRequest,
    deadline: Optional[float] = None,
    servable: Optional[servables.Servable] = None,
  ) -> Pending:
    """MultiInference, as TensorFlow Serving's `RunMultiInferenceWithServerCore` runs it.

    The servable of the first task's model spec; every task checked
    (multi_inference.py); the serialized examples fed to each task's input
    tensor and all outputs fetched in one run; a result per task.

    Raises:
      ServingError: with TensorFlow Serving's codes and messages.
    """
    serialized = _serialized_examples(request.input)

    def prepare(target: servables.Servable) -> _Run:
      multi_plan = multi_inference.plan(request, target.signature_defs, self._method_name_check)
      if serialized is None:
        raise status.invalid_argument("Input is empty.")
      feeds = {name: serialized for name in multi_plan.input_names}
      return _Run(feeds, multi_plan.output_names, (), multi_plan)

    target, run, future = self._submit(
      multi_inference.servable_spec(request), servable, prepare, deadline
    )

    def respond(fetched: Dict[str, np.ndarray]) -> inference_pb2.MultiInferenceResponse:
      response = inference_pb2.MultiInferenceResponse()
      multi_inference.fill_response(run.plan, fetched, len(serialized), target.version, response)
      return response

    return Pending(future, respond, len(serialized))

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


@dataclasses.dataclass(frozen=True)
class _Run:
  """One session run a request stands for.

  Attributes:
    feeds: arrays by the tensor name they feed.
    fetches: tensor names to fetch.
    aliases: the alias each fetch answers (Predict, Classify, Regress).
    plan: a MultiInference's plan.
  """

  feeds: Dict[str, np.ndarray]
  fetches: Tuple[str, ...]
  aliases: Tuple[str, ...]
  plan: Optional[multi_inference.Plan] = None

  def by_alias(self, fetched: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The fetched arrays by the alias each answers."""
    return {alias: fetched[name] for alias, name in zip(self.aliases, self.fetches, strict=True)}


def _examples(feeds: Dict[str, np.ndarray]) -> int:
  """A request's examples (the first feed's 0th dimension; a scalar or no feed: 1)."""
  first = next(iter(feeds.values()), None)
  return first.shape[0] if first is not None and first.ndim else 1


def _serialized_examples(model_input: input_pb2.Input) -> Optional[np.ndarray]:
  """The examples of an `Input` as a string vector; None when it has none (`Input is empty.`)."""
  examples = classify_regress.serialized_examples(model_input)
  if not examples:
    return None
  serialized = np.empty(len(examples), dtype=object)
  serialized[:] = examples
  return serialized


def _fill_model_spec(
  model_spec: model_pb2.ModelSpec, servable: servables.Servable, signature_name: str
) -> None:
  model_spec.name = servable.name
  model_spec.version.value = servable.version
  model_spec.signature_name = signature_name


def deadline_after(seconds: Optional[float]) -> Optional[float]:
  """A `time.monotonic()` deadline `seconds` from now (None: no deadline)."""
  return None if seconds is None else time.monotonic() + seconds
