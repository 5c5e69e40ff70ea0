"""SavedModel warmup requests in TensorFlow Serving's format.

TensorFlow Serving replays the records of
`<saved model>/assets.extra/tf_serving_warmup_requests` (a TFRecord file of
`PredictionLog`s) when it loads a version, before the version serves, so the
first real requests do not pay for graph initialisation. The Trainer writes
the file with `write_warmup_requests`; the server replays it with
`read_warmup_requests`.
"""

import os
from typing import Iterable
from typing import List

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

WARMUP_DIRECTORY = "assets.extra"
WARMUP_FILENAME = "tf_serving_warmup_requests"
# TensorFlow Serving refuses to load a model with more warmup records.
MAX_WARMUP_RECORDS = 1000
_SIGNATURE_NAME = "serving_default"
_EXAMPLES_INPUT = "examples"


def warmup_file(saved_model_dir: str) -> str:
  """The path TensorFlow Serving reads warmup requests from."""
  return os.path.join(saved_model_dir, WARMUP_DIRECTORY, WARMUP_FILENAME)


def write_warmup_requests(
  saved_model_dir: str, serialized_examples: Iterable[bytes], model_name: str = "next_category"
) -> str:
  """Writes one `serving_default` PredictRequest per example as warmup records.

  Args:
    saved_model_dir: the exported SavedModel directory (a version directory).
    serialized_examples: serialized tf.Examples, label absent, as clients send
      them.
    model_name: the model name written into each request's model_spec.

  Returns:
    The path of the written file.

  Raises:
    ValueError: if there are no examples, or more than `MAX_WARMUP_RECORDS`.
  """
  examples = list(serialized_examples)
  if not examples:
    raise ValueError("write_warmup_requests needs at least one example.")
  if len(examples) > MAX_WARMUP_RECORDS:
    raise ValueError(
      f"TensorFlow Serving reads at most {MAX_WARMUP_RECORDS} warmup records; "
      f"got {len(examples)} examples."
    )
  path = warmup_file(saved_model_dir)
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path) as writer:
    for example in examples:
      request = predict_pb2.PredictRequest()
      request.model_spec.name = model_name
      request.model_spec.signature_name = _SIGNATURE_NAME
      request.inputs[_EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto([example], dtype=tf.string))
      log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
      )
      writer.write(log.SerializeToString())
  return path


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
