"""gRPC services of TensorFlow Serving: tensorflow.serving.PredictionService and ModelService.

The servicers are tensorflow-serving-api's generated base classes with async
methods, served by a `grpc.aio` server: a request waiting for its batch holds
no thread.
"""

import asyncio
import collections
import logging
import threading
import time
from typing import Callable
from typing import Optional

import grpc
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import status_pb2

from serving import inference
from serving import request_policy
from serving import status

ENTRYPOINT = "GRPC"


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

  def wrap(self, future: inference.Pending) -> asyncio.Future:
    waiter = self._loop.create_future()
    future.add_done_callback(lambda done: self._done(waiter, done))
    return waiter

  def _done(self, waiter: asyncio.Future, future: inference.Pending) -> None:
    # Runs on the batch thread: build the response here, off the event loop,
    # which every request's I/O goes through.
    future.exception()
    self._pending.append((waiter, future))
    with self._lock:
      if self._scheduled:
        return
      self._scheduled = True
    self._loop.call_soon_threadsafe(self._drain)

  def _drain(self) -> None:
    with self._lock:
      self._scheduled = False
    while self._pending:
      waiter, future = self._pending.popleft()
      if waiter.cancelled():
        continue
      error = future.exception()
      if error is not None:
        waiter.set_exception(error)
      else:
        waiter.set_result(future.result())


def _metadata_value(context, key: str):
  for item in context.invocation_metadata() or ():
    if item.key == key:
      return item.value
  return None


class _Handler:
  """Runs one API call: access control, status mapping, metrics, audit and request logs."""

  def __init__(self, policy: request_policy.RequestPolicy):
    self._policy = policy
    self._completions: Optional[_Completions] = None

  async def __call__(
    self, api: str, model_name: str, context, call: Callable, is_future: bool = True, request=None
  ):
    start, arrived = time.perf_counter(), time.time()
    version, code, message, principal = "", grpc.StatusCode.OK, "", ""
    try:
      if self._policy.authenticator is not None:
        principal = self._policy.authorize(
          _metadata_value(context, request_policy.AUTHORIZATION), model_name
        )
      result = call()
      if is_future:
        if self._completions is None:
          self._completions = _Completions(asyncio.get_running_loop())
        result = await self._completions.wrap(result)
      spec = getattr(result, "model_spec", None)
      if spec is not None and spec.HasField("version"):
        version = str(spec.version.value)
      self._policy.log_request(model_name, api, request, result, arrived)
      return result
    except status.ServingError as e:
      code, message = e.code, e.message
    except asyncio.CancelledError:
      code = grpc.StatusCode.CANCELLED
      raise
    except Exception as e:  # No request may take the server down.
      logging.exception("%s failed", api)
      code, message = grpc.StatusCode.INTERNAL, f"{api} failed: {type(e).__name__}"
    finally:
      self._policy.finish(
        ENTRYPOINT,
        api,
        model_name,
        version,
        code,
        start,
        arrived,
        context.peer,
        principal,
        signature=request.model_spec.signature_name if request is not None else "",
        examples=request_policy.example_count(api, request) if self._policy.audit else 0,
      )
    await context.abort(code, status.client_message(message))


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """tensorflow.serving.PredictionService: Predict, Classify, Regress, GetModelMetadata."""

  def __init__(self, service: inference.InferenceService, policy: request_policy.RequestPolicy):
    self._service = service
    self._handle = _Handler(policy)

  async def Predict(self, request, context):
    return await self._handle(
      "Predict",
      request.model_spec.name,
      context,
      lambda: self._service.predict(request, _deadline(context)),
      request=request,
    )

  async def Classify(self, request, context):
    return await self._handle(
      "Classify",
      request.model_spec.name,
      context,
      lambda: self._service.classify(request, _deadline(context)),
      request=request,
    )

  async def GetModelMetadata(self, request, context):
    return await self._handle(
      "GetModelMetadata",
      request.model_spec.name,
      context,
      lambda: self._service.get_model_metadata(request),
      is_future=False,
    )

  async def Regress(self, request, context):
    return await self._handle(
      "Regress",
      request.model_spec.name,
      context,
      lambda: self._service.regress(request, _deadline(context)),
      request=request,
    )

  async def MultiInference(self, request, context):
    await context.abort(
      grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by this server."
    )


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
    if self._policy.reload_config is None:
      await context.abort(
        grpc.StatusCode.UNIMPLEMENTED,
        "Reloading the model config is disabled; start the server with "
        "--enable_model_config_reload to allow it.",
      )
    try:
      principal = self._policy.authorize_admin(
        _metadata_value(context, request_policy.AUTHORIZATION)
      )
    except status.ServingError as e:
      await context.abort(e.code, e.message)
    response = model_management_pb2.ReloadConfigResponse()
    try:
      # Loading takes a while: keep it off the event loop.
      await asyncio.get_running_loop().run_in_executor(
        None, self._policy.reload_config, request.config
      )
      logging.info("Model config reloaded by %r", principal or "an anonymous caller")
    except ValueError as e:
      message = status.client_message(str(e))
      response.status.CopyFrom(
        status_pb2.StatusProto(
          error_code=grpc.StatusCode.INVALID_ARGUMENT.value[0], error_message=message
        )
      )
      context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
      context.set_details(message)
    return response


def add_services(
  server: grpc.aio.Server,
  service: inference.InferenceService,
  policy: request_policy.RequestPolicy,
) -> None:
  """Registers both TensorFlow Serving services on `server`."""
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
    PredictionServicer(service, policy), server
  )
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(service, policy), server)
