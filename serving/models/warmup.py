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
from typing import List

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

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


def replay_warmup_requests(servable, service) -> None:
  """Replays a servable's warmup requests on it, as TF Serving does at load.

  Args:
    servable: the loaded version, not yet serving.
    service: answers the requests (the `InferenceService`; its `predict`,
      `classify` and `regress` take `servable=`).

  Raises:
    ValueError: for a bad warmup file or a record of another type.
    ServingError: if a request fails.
  """
  logs = read_warmup_requests(servable.path)
  for log in logs:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
      service.predict(log.predict_log.request, servable=servable).result()
    elif kind == "classify_log":
      service.classify(log.classify_log.request, servable=servable).result()
    elif kind == "regress_log":
      service.regress(log.regress_log.request, servable=servable).result()
    else:
      raise ValueError(f"Unsupported warmup record type {kind!r} in {servable.path}.")
  if logs:
    logging.info(
      "Finished reading warmup data for model %s version %d: %d records",
      servable.name,
      servable.version,
      len(logs),
    )
