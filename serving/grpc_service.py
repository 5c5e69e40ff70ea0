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
from serving import metrics as metrics_lib
from serving import model_manager
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


class _Handler:
  """Runs one API call: status mapping, logging and metrics."""

  def __init__(self, metrics: Optional[metrics_lib.ServingMetrics]):
    self._metrics = metrics
    self._completions: Optional[_Completions] = None

  async def __call__(
    self, api: str, model_name: str, context, call: Callable, is_future: bool = True
  ):
    start = time.perf_counter()
    version, code, message = "", grpc.StatusCode.OK, ""
    try:
      result = call()
      if is_future:
        if self._completions is None:
          self._completions = _Completions(asyncio.get_running_loop())
        result = await self._completions.wrap(result)
      spec = getattr(result, "model_spec", None)
      if spec is not None and spec.HasField("version"):
        version = str(spec.version.value)
      return result
    except status.ServingError as e:
      code, message = e.code, e.message
    except asyncio.CancelledError:
      code = grpc.StatusCode.CANCELLED
      raise
    except Exception as e:  # No request may take the server down.
      logging.exception("%s failed", api)
      code, message = grpc.StatusCode.INTERNAL, f"{api} failed: {type(e).__name__}: {e}"
    finally:
      if self._metrics is not None:
        self._metrics.record_request(
          model_name, version, api, ENTRYPOINT, code.name, time.perf_counter() - start
        )
    await context.abort(code, message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """tensorflow.serving.PredictionService: Predict, Classify, Regress, GetModelMetadata."""

  def __init__(
    self, service: inference.InferenceService, metrics: Optional[metrics_lib.ServingMetrics] = None
  ):
    self._service = service
    self._handle = _Handler(metrics)

  async def Predict(self, request, context):
    return await self._handle(
      "Predict",
      request.model_spec.name,
      context,
      lambda: self._service.predict(request, _deadline(context)),
    )

  async def Classify(self, request, context):
    return await self._handle(
      "Classify",
      request.model_spec.name,
      context,
      lambda: self._service.classify(request, _deadline(context)),
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
    )

  async def MultiInference(self, request, context):
    await context.abort(
      grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by this server."
    )


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
  """tensorflow.serving.ModelService: GetModelStatus and HandleReloadConfigRequest."""

  def __init__(
    self,
    service: inference.InferenceService,
    manager: model_manager.ModelManager,
    metrics: Optional[metrics_lib.ServingMetrics] = None,
  ):
    self._service = service
    self._manager = manager
    self._handle = _Handler(metrics)

  async def GetModelStatus(self, request, context):
    return await self._handle(
      "GetModelStatus",
      request.model_spec.name,
      context,
      lambda: self._service.get_model_status(request),
      is_future=False,
    )

  async def HandleReloadConfigRequest(self, request, context):
    response = model_management_pb2.ReloadConfigResponse()
    try:
      # Loading takes a while: keep it off the event loop.
      await asyncio.get_running_loop().run_in_executor(
        None, self._manager.reload_config, request.config
      )
    except ValueError as e:
      response.status.CopyFrom(
        status_pb2.StatusProto(
          error_code=grpc.StatusCode.INVALID_ARGUMENT.value[0], error_message=str(e)
        )
      )
      context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
      context.set_details(str(e))
    return response


def add_services(
  server: grpc.aio.Server,
  service: inference.InferenceService,
  manager: model_manager.ModelManager,
  metrics: Optional[metrics_lib.ServingMetrics] = None,
) -> None:
  """Registers both TensorFlow Serving services on `server`."""
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
    PredictionServicer(service, metrics), server
  )
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(
    ModelServicer(service, manager, metrics), server
  )
