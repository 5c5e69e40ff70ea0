"""gRPC services of TensorFlow Serving: tensorflow.serving.PredictionService and ModelService.

Async methods served by a `grpc.aio` server: a request waiting for its batch
holds no thread. ModelService is tensorflow-serving-api's generated servicer.
PredictionService is registered by hand, with the same method names and
messages, so that its handlers see each request's bytes as they came (the
request log writes them as they are) and send a response serialized once, on
the batch thread, off the event loop (the request log writes those bytes too).
"""

import asyncio
import collections
import contextvars
import logging
import threading
import time
from typing import Callable
from typing import Optional

import grpc
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import regression_pb2
from tensorflow_serving.apis import status_pb2

from next_category.serving import status
from next_category.serving.apis import heap
from next_category.serving.apis import inference
from next_category.serving.observability import request_policy

ENTRYPOINT = "GRPC"
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


def _deadline(context: grpc.aio.ServicerContext) -> Optional[float]:
  remaining = context.time_remaining()
  return None if remaining is None else time.monotonic() + remaining


class _Completions:
  """Hands results from batch threads to the event loop, one wakeup per burst.

  `asyncio.wrap_future` wakes the loop once per request; a batch completes
  many requests at once, and waking once for all of them leaves the loop
  more time to take in requests.
  """

  def __init__(self, loop: asyncio.AbstractEventLoop):
    self._loop = loop
    self._pending = collections.deque()
    self._lock = threading.Lock()
    self._scheduled = False
    self._after = []

  def wrap(self, future: inference.Pending) -> asyncio.Future:
    waiter = self._loop.create_future()
    future.add_done_callback(lambda done: self._done(waiter, done))
    return waiter

  def _done(self, waiter: asyncio.Future, future: inference.Pending) -> None:
    # Runs on the batch thread: build and serialize the response here, off
    # the event loop, which every request's I/O goes through. When the model
    # finished is the end of the request's runtime (its metric).
    done = time.perf_counter()
    if future.exception() is None:
      response = future.result()
      self._pending.append((waiter, (response, response.SerializeToString(), done)))
    else:
      self._pending.append((waiter, future))
    with self._lock:
      if self._scheduled:
        return
      self._scheduled = True
    self._loop.call_soon_threadsafe(self._drain)

  def after_response(self, function: Callable, argument) -> None:
    """Calls `function(argument)` on the loop once the responses being sent are on their way.

    A handler's response is sent after it returns; what it leaves for
    afterwards (metrics, audit and request logs) no longer holds up the
    responses of a batch that completed together. Runs on the loop only.
    """
    if not self._after:
      self._loop.call_soon(self._run_after)
    self._after.append((function, argument))

  def _run_after(self) -> None:
    after, self._after = self._after, []
    for function, argument in after:
      try:
        function(argument)
      except Exception:  # One record's failure must not cost the others theirs.
        logging.exception("Recording a finished request failed")

  def _drain(self) -> None:
    with self._lock:
      self._scheduled = False
    while self._pending:
      waiter, outcome = self._pending.popleft()
      if waiter.cancelled():
        continue
      if isinstance(outcome, tuple):
        waiter.set_result(outcome)
      else:
        waiter.set_exception(outcome.exception())


def _served_version(response) -> str:
  """The version a response names in its model_spec ('' if none)."""
  spec = getattr(response, "model_spec", None)
  if spec is not None and spec.HasField("version"):
    return str(spec.version.value)
  return ""


# The invocation metadata of the call the current task serves (see _MethodHandlers).
_CALL_METADATA: contextvars.ContextVar = contextvars.ContextVar("invocation_metadata", default=None)


def metadata_value(metadata, key: str):
  """The value of `key` in a call's invocation metadata (None if absent)."""
  for item in metadata or ():
    if item.key == key:
      return item.value
  return None


class _Handler:
  """Runs one API call: access control, status mapping, metrics, audit and request logs."""

  def __init__(self, policy: request_policy.RequestPolicy):
    self._policy = policy
    self._completions: Optional[_Completions] = None

  @property
  def checks_credentials(self) -> bool:
    return self._policy.authenticator is not None

  async def __call__(
    self,
    api: str,
    model_name: str,
    context,
    call: Callable,
    is_future: bool = True,
    request=None,
    request_bytes: bytes = b"",
    signature_name: Optional[str] = None,
  ):
    """Runs `call()` and answers with its result.

    Args:
      call: returns the response, or an `inference.Pending` one if `is_future`;
        then the answer is the response's bytes, serialized on the batch thread.
      request: the request message, for the audit and request logs.
      request_bytes: the request as received, for the request log.
      signature_name: for the audit log; default: the request's model spec's.
    """
    start, arrived = time.perf_counter(), time.time()
    version, code, message, principal, examples = "", grpc.StatusCode.OK, "", "", 0
    authenticated = False
    runtime = 0.0
    logged = None  # (request bytes, response, response bytes) for the request log.
    try:
      if self._policy.authenticator is not None:
        metadata = _CALL_METADATA.get()
        if metadata is None:  # Not looked up through _MethodHandlers.
          metadata = context.invocation_metadata()
        principal = self._policy.authorize(
          metadata_value(metadata, request_policy.AUTHORIZATION), model_name
        )
        authenticated = True
      result = call()
      if not is_future:
        version = _served_version(result)
        return result
      submitted = time.perf_counter()
      examples = result.examples
      if self._completions is None:
        self._completions = _Completions(asyncio.get_running_loop())
      response, response_bytes, done = await self._completions.wrap(result)
      runtime = done - submitted
      version = _served_version(response)
      if self._policy.request_logs is not None:
        logged = (request_bytes, response, response_bytes)
      return response_bytes
    except request_policy.AccessDenied as e:  # The audit line names who was refused.
      code, message, principal, authenticated = e.code, e.message, e.principal, e.authenticated
    except status.ServingError as e:
      code, message = e.code, e.message
    except asyncio.CancelledError:
      code = grpc.StatusCode.CANCELLED
      raise
    except Exception as e:  # No request may take the server down.
      logging.exception("%s failed", api)
      code, message = grpc.StatusCode.INTERNAL, f"{api} failed: {type(e).__name__}"
    finally:
      record = request_policy.RequestRecord(
        ENTRYPOINT,
        api,
        model_name,
        version,
        code,
        start,
        time.perf_counter(),
        arrived,
        context.peer,
        principal,
        signature_name
        if signature_name is not None
        else (request.model_spec.signature_name if request is not None else ""),
        examples,
        logged,
      )
      record.runtime = runtime
      record.authenticated = authenticated
      if code is not grpc.StatusCode.OK:
        # A large refused request's memory goes back to the system.
        heap.after_failed_request(len(request_bytes) + len(model_name))
      if code is grpc.StatusCode.OK and is_future:
        # The response leaves first: logging it does not delay it.
        self._completions.after_response(self._policy.finish, record)
      else:
        self._policy.finish(record)
    # The status, without raising: an aborted call's exception and its
    # traceback would keep this frame, and so the request (up to
    # --max_request_bytes), in a reference cycle with the call's state until
    # the garbage collector's next full pass. grpc.aio sends no message with
    # a status that is not OK.
    context.set_code(code)
    context.set_details(status.client_message(message))
    return None


def _keeping_bytes(message_class) -> Callable[[bytes], tuple]:
  """A request deserializer that hands the handler `(message, the bytes received)`."""
  parse = message_class.FromString

  def deserialize(data: bytes) -> tuple:
    return parse(data), data

  return deserialize


def _serialize(response) -> bytes:
  return response if isinstance(response, bytes) else response.SerializeToString()


class PredictionServicer:
  """tensorflow.serving.PredictionService: Predict, Classify, Regress, MultiInference, metadata.

  Each method takes `(request message, request bytes)` (see `handler`).
  """

  def __init__(self, service: inference.InferenceService, policy: request_policy.RequestPolicy):
    self._service = service
    self._handle = _Handler(policy)

  async def _run(self, api: str, run: Callable, received, context):
    """Predict, Classify or Regress: `run(request, deadline)` gives the pending response."""
    request, data = received
    return await self._handle(
      api,
      request.model_spec.name,
      context,
      lambda: run(request, _deadline(context)),
      request=request,
      request_bytes=data,
    )

  async def Predict(self, received, context):
    return await self._run("Predict", self._service.predict, received, context)

  async def Classify(self, received, context):
    return await self._run("Classify", self._service.classify, received, context)

  async def Regress(self, received, context):
    return await self._run("Regress", self._service.regress, received, context)

  async def GetModelMetadata(self, received, context):
    request, _ = received
    return await self._handle(
      "GetModelMetadata",
      request.model_spec.name,
      context,
      lambda: self._service.get_model_metadata(request),
      is_future=False,
    )

  async def MultiInference(self, received, context):
    # Not request-logged: the request log's records carry one model spec.
    request, _ = received
    first = request.tasks[0].model_spec if request.tasks else None
    return await self._handle(
      "MultiInference",
      first.name if first is not None else "",
      context,
      lambda: self._service.multi_inference(request, _deadline(context)),
      signature_name=first.signature_name if first is not None else "",
    )

  def handler(self) -> grpc.GenericRpcHandler:
    """The service's handler, as prediction_service_pb2_grpc would register it."""
    requests = {
      "Classify": classification_pb2.ClassificationRequest,
      "Regress": regression_pb2.RegressionRequest,
      "Predict": predict_pb2.PredictRequest,
      "MultiInference": inference_pb2.MultiInferenceRequest,
      "GetModelMetadata": get_model_metadata_pb2.GetModelMetadataRequest,
    }
    return _MethodHandlers(
      {
        f"/{PREDICTION_SERVICE}/{name}": grpc.unary_unary_rpc_method_handler(
          getattr(self, name),
          request_deserializer=_keeping_bytes(message_class),
          response_serializer=_serialize,
        )
        for name, message_class in requests.items()
      },
      pass_metadata=self._handle.checks_credentials,
    )


class _MethodHandlers(grpc.GenericRpcHandler):
  """Finds a method's handler, as `grpc.method_handlers_generic_handler` does.

  With `pass_metadata`, it also leaves the call's invocation metadata where the
  handler finds it (`_CALL_METADATA`): grpc.aio builds the metadata to look the
  handler up, and taking it here saves building it again through
  `context.invocation_metadata()`, which on a busy server costs more than
  checking the credentials themselves.

  A context variable, because grpc.aio looks the handler up and runs it in the
  same task, one per call (`_handle_rpc` in
  grpc/_cython/_cygrpc/aio/server.pyx.pxi), and a task's context is its own:
  a call never sees another's metadata. Handing the metadata over in a
  `functools.partial` instead costs more than it saves, since grpc.aio then
  takes the partial apart on every call to learn whether it is a coroutine.
  """

  def __init__(self, handlers: dict, pass_metadata: bool):
    self._handlers = handlers
    self._pass_metadata = pass_metadata

  def service(self, handler_call_details):
    if self._pass_metadata:
      _CALL_METADATA.set(handler_call_details.invocation_metadata)
    return self._handlers.get(handler_call_details.method)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
  """tensorflow.serving.ModelService: GetModelStatus and HandleReloadConfigRequest.

  The reload RPC answers UNIMPLEMENTED unless the server was started with
  --enable_model_config_reload; then, with access control on, only a principal
  allowed every model may call it.
  """

  def __init__(self, service: inference.InferenceService, policy: request_policy.RequestPolicy):
    self._service = service
    self._policy = policy
    self._handle = _Handler(policy)

  async def GetModelStatus(self, request, context):
    return await self._handle(
      "GetModelStatus",
      request.model_spec.name,
      context,
      lambda: self._service.get_model_status(request),
      is_future=False,
    )

  async def HandleReloadConfigRequest(self, request, context):
    # Every attempt is audited (who, what it changed, how it ended), refused ones too.
    start, arrived = time.perf_counter(), time.time()
    code, message, principal, authenticated, changes = grpc.StatusCode.OK, "", "", False, None
    try:
      if self._policy.reload_config is None:
        code = grpc.StatusCode.UNIMPLEMENTED
        message = (
          "Reloading the model config is disabled; start the server with "
          "--enable_model_config_reload to allow it."
        )
        await context.abort(code, message)
      try:
        principal = self._policy.authorize_admin(
          metadata_value(context.invocation_metadata(), request_policy.AUTHORIZATION)
        )
        authenticated = self._policy.authenticator is not None
      except request_policy.AccessDenied as e:
        code, message, principal, authenticated = e.code, e.message, e.principal, e.authenticated
        await context.abort(e.code, e.message)
      response = model_management_pb2.ReloadConfigResponse()
      try:
        # Loading takes a while: keep it off the event loop.
        changes = await asyncio.get_running_loop().run_in_executor(
          None, self._policy.reload_config, request.config
        )
        logging.info("Model config reloaded by %r", principal or "an anonymous caller")
      except ValueError as e:
        code, message = grpc.StatusCode.INVALID_ARGUMENT, status.client_message(str(e))
        response.status.CopyFrom(
          status_pb2.StatusProto(error_code=code.value[0], error_message=message)
        )
        context.set_code(code)
        context.set_details(message)
      return response
    except grpc.aio.AbortError:
      raise
    except asyncio.CancelledError:
      code = grpc.StatusCode.CANCELLED
      raise
    except Exception as e:  # grpc.aio answers it UNKNOWN.
      code, message = grpc.StatusCode.UNKNOWN, f"Reloading failed: {type(e).__name__}"
      raise
    finally:
      self._policy.record_reload(
        ENTRYPOINT, context.peer(), principal, authenticated, code, start, arrived, changes, message
      )


def add_services(
  server: grpc.aio.Server,
  service: inference.InferenceService,
  policy: request_policy.RequestPolicy,
) -> None:
  """Registers both TensorFlow Serving services on `server`."""
  server.add_generic_rpc_handlers((PredictionServicer(service, policy).handler(),))
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(service, policy), server)
