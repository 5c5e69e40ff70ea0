"""gRPC services of TensorFlow Serving: tensorflow.serving.PredictionService and ModelService.

The servicers are tensorflow-serving-api's generated base classes, served by a
synchronous `grpc.server` with a thread pool, as TensorFlow Serving serves them
with gRPC's synchronous C++ server: a request's thread waits (without the GIL)
for its batch. On this project's 2-core reference machine that costs about half
the CPU per request of a `grpc.aio` server doing the same work (see README
"Serving"), and CPU per request is what bounds throughput here.
"""

import concurrent.futures
import logging
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


def _deadline(context: grpc.ServicerContext) -> Optional[float]:
  remaining = context.time_remaining()
  return None if remaining is None else time.monotonic() + remaining


class _Handler:
  """Runs one API call: status mapping, logging and metrics."""

  def __init__(self, metrics: Optional[metrics_lib.ServingMetrics]):
    self._metrics = metrics

  def __call__(self, api: str, model_name: str, context, call: Callable, is_future: bool = True):
    start = time.perf_counter()
    version, code, message = "", grpc.StatusCode.OK, ""
    try:
      result = call()
      if is_future:
        # The batch threads always settle the future; the deadline only
        # bounds how long this thread waits for it.
        result = result.result(timeout=context.time_remaining())
      spec = getattr(result, "model_spec", None)
      if spec is not None and spec.HasField("version"):
        version = str(spec.version.value)
      return result
    except status.ServingError as e:
      code, message = e.code, e.message
    except concurrent.futures.TimeoutError:
      code, message = grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
    except Exception as e:  # No request may take the server down.
      logging.exception("%s failed", api)
      code, message = grpc.StatusCode.INTERNAL, f"{api} failed: {type(e).__name__}: {e}"
    finally:
      if self._metrics is not None:
        if code == grpc.StatusCode.OK and not context.is_active():
          code = grpc.StatusCode.CANCELLED
        self._metrics.record_request(
          model_name, version, api, ENTRYPOINT, code.name, time.perf_counter() - start
        )
    context.abort(code, message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """tensorflow.serving.PredictionService: Predict, Classify, GetModelMetadata."""

  def __init__(
    self, service: inference.InferenceService, metrics: Optional[metrics_lib.ServingMetrics] = None
  ):
    self._service = service
    self._handle = _Handler(metrics)

  def Predict(self, request, context):
    return self._handle(
      "Predict",
      request.model_spec.name,
      context,
      lambda: self._service.predict(request, _deadline(context)),
    )

  def Classify(self, request, context):
    return self._handle(
      "Classify",
      request.model_spec.name,
      context,
      lambda: self._service.classify(request, _deadline(context)),
    )

  def GetModelMetadata(self, request, context):
    return self._handle(
      "GetModelMetadata",
      request.model_spec.name,
      context,
      lambda: self._service.get_model_metadata(request),
      is_future=False,
    )

  def Regress(self, request, context):
    context.abort(
      grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported: the models here classify."
    )

  def MultiInference(self, request, context):
    context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by this server.")


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

  def GetModelStatus(self, request, context):
    return self._handle(
      "GetModelStatus",
      request.model_spec.name,
      context,
      lambda: self._service.get_model_status(request),
      is_future=False,
    )

  def HandleReloadConfigRequest(self, request, context):
    response = model_management_pb2.ReloadConfigResponse()
    try:
      self._manager.reload_config(request.config)
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
  server: grpc.Server,
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
