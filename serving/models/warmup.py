"""SavedModel warmup requests in TensorFlow Serving's format.

TensorFlow Serving replays the records of
`<saved model>/assets.extra/tf_serving_warmup_requests` (a TFRecord file of
`PredictionLog`s) when it loads a version, before the version serves, so the
first real requests do not pay for graph initialisation. The Trainer writes
the file; the server replays it with `replay_warmup_requests` when it loads a
version (loader.py).
"""

import logging
import os
import time
from typing import Callable
from typing import List
from typing import Optional

import grpc
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from next_category.serving import status

WARMUP_DIRECTORY = "assets.extra"
WARMUP_FILENAME = "tf_serving_warmup_requests"
# TensorFlow Serving refuses to load a model with more warmup records.
MAX_WARMUP_RECORDS = 1000


def warmup_file(saved_model_dir: str) -> str:
  """The path TensorFlow Serving reads warmup requests from."""
  return os.path.join(saved_model_dir, WARMUP_DIRECTORY, WARMUP_FILENAME)


def read_warmup_requests(saved_model_dir: str) -> List[prediction_log_pb2.PredictionLog]:
  """The warmup records of a version directory; empty if it has none.

  Raises:
    ValueError: if the file has more than `MAX_WARMUP_RECORDS` records or a
      record is not a PredictionLog.
  """
  path = warmup_file(saved_model_dir)
  if not tf.io.gfile.exists(path):
    return []
  logs = []
  for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
    if len(logs) == MAX_WARMUP_RECORDS:
      raise ValueError(
        f"Number of warmup records in {path} exceeds the maximum ({MAX_WARMUP_RECORDS})."
      )
    log = prediction_log_pb2.PredictionLog()
    try:
      log.ParseFromString(record)
    except Exception:  # The protobuf runtimes raise different DecodeErrors.
      raise ValueError(f"A warmup record in {path} is not a PredictionLog.") from None
    logs.append(log)
  return logs


def replay_warmup_requests(
  servable,
  service,
  num_request_iterations: int = 0,
  on_warmed_up: Optional[Callable[[str, str, float], None]] = None,
) -> None:
  """Replays a servable's warmup requests on it, as TF Serving does at load.

  As `RunSavedModelWarmup` (servables/tensorflow/saved_model_warmup_util.cc):
  each record is replayed `num_request_iterations` times when that is above
  0, else once; the time it took is reported when every record was replayed
  or the file could not be read, not when a request failed.

  Args:
    servable: the loaded version, not yet serving.
    service: answers the requests (the `InferenceService`; its `predict`,
      `classify` and `regress` take `servable=`).
    num_request_iterations: `--num_request_iterations_for_warmup`.
    on_warmed_up: called with `(version directory, status, seconds)`, status
      "OK" or TensorFlow's `CODE: message`, for a version with a warmup file
      (the `model_warmup_latency` metric).

  Raises:
    ValueError: for a bad warmup file or a record of another type.
    ServingError: if a request fails; DATA_LOSS if the file is not TFRecords.
  """
  path = warmup_file(servable.path)
  if not tf.io.gfile.exists(path):
    return
  start = time.perf_counter()
  try:
    logs = read_warmup_requests(servable.path)
  except tf.errors.DataLossError as e:
    if on_warmed_up is not None:
      on_warmed_up(servable.path, f"DATA_LOSS: {e.message}", time.perf_counter() - start)
    raise status.ServingError(
      grpc.StatusCode.DATA_LOSS,
      f"{e.message}. Please verify your warmup data is in TFRecord format.",
    ) from None
  iterations = num_request_iterations if num_request_iterations > 0 else 1
  for log in logs:
    kind = log.WhichOneof("log_type")
    for _ in range(iterations):
      if kind == "predict_log":
        service.predict(log.predict_log.request, servable=servable).result()
      elif kind == "classify_log":
        service.classify(log.classify_log.request, servable=servable).result()
      elif kind == "regress_log":
        service.regress(log.regress_log.request, servable=servable).result()
      elif kind == "multi_inference_log":
        service.multi_inference(log.multi_inference_log.request, servable=servable).result()
      else:
        raise ValueError(f"Unsupported warmup record type {kind!r} in {servable.path}.")
  seconds = time.perf_counter() - start
  if on_warmed_up is not None:
    on_warmed_up(servable.path, "OK", seconds)
  logging.info(
    "Finished reading warmup data for model %s version %d: %d records, %d us",
    servable.name,
    servable.version,
    len(logs),
    seconds * 1e6,
  )
