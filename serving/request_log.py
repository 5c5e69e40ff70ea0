"""Request logging, configured as TensorFlow Serving configures it: a model's `logging_config`.

    config {
      name: "next_category" base_path: "..."
      logging_config {
        sampling_config { sampling_rate: 0.1 }
        log_collector_config { type: "tfrecord" filename_prefix: "/logs/next_category" }
      }
    }

A sampled Predict, Classify or Regress call, over gRPC or REST, is written as a `PredictionLog`
(tensorflow_serving/apis/prediction_log.proto: `log_metadata` with the model
spec, sampling config and time, then the request and the response) to
GZIP-compressed TFRecord files `<filename_prefix>-<UTC time>-<pid>-<n>.tfrecord.gz`.
A file is closed and the next one opened once `max_file_bytes` of records
went into it; beyond `max_files` files the oldest is deleted, so the logs stay
bounded on disk. `make skew-report SERVING_DATA='<filename_prefix>-*.tfrecord.gz'`
reads them. Sampling is one random draw on the request path; building and
writing the record happen on a background thread (serving/offload.py), and
records that cannot be written (queue full, disk full) are dropped and counted.

REST requests are logged as TensorFlow Serving logs them: its HTTP handlers
turn the JSON into the same PredictRequest or ClassificationRequest and call
the same services as gRPC (tensorflow_serving/model_servers/http_rest_api_handler.cc,
`ProcessPredictRequest` and `ProcessClassifyRequest`), so a REST call's record
is the one the equivalent gRPC call would write. The REST Predict path decodes
JSON straight into arrays; its protos are built on the writer thread, and only
for the requests sampled (`RequestLogs.log_lazily`).
"""

import glob
import logging
import os
import random
import struct
import threading
import time
import zlib
from typing import Any
from typing import Callable
from typing import Dict
from typing import List
from typing import Tuple

import google_crc32c
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import logging_config_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import offload

COLLECTOR_TYPE = "tfrecord"
SUFFIX = ".tfrecord.gz"
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_FILES = 100
# tensorflow/core/lib/hash/crc32c.h, `Mask`.
_CRC_MASK_DELTA = 0xA282EAD8
# The PredictionLog field of each API logged.
_LOG_FIELDS = {"Predict": "predict_log", "Classify": "classify_log", "Regress": "regress_log"}


def validate_logging_config(model_name: str, config: logging_config_pb2.LoggingConfig) -> None:
  """Raises ValueError on a logging_config this server cannot honour."""
  rate = config.sampling_config.sampling_rate
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"Model {model_name!r}: sampling_rate must be within [0, 1], got {rate}.")
  collector = config.log_collector_config
  if collector.type != COLLECTOR_TYPE:
    raise ValueError(
      f"Model {model_name!r}: log_collector_config type {collector.type!r} is not supported; "
      f'use "{COLLECTOR_TYPE}".'
    )
  if not collector.filename_prefix:
    raise ValueError(f"Model {model_name!r}: log_collector_config needs a filename_prefix.")
  directory = os.path.dirname(os.path.abspath(collector.filename_prefix))
  if not os.path.isdir(directory):
    raise ValueError(f"Model {model_name!r}: the request log directory {directory} does not exist.")


def _masked_crc(data: bytes) -> bytes:
  crc = google_crc32c.value(data)
  return struct.pack("<I", (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF)


def tfrecord(record: bytes) -> bytes:
  """`record` framed as a TFRecord (tensorflow/core/lib/io/record_writer.cc, `WriteRecord`)."""
  length = struct.pack("<Q", len(record))
  return length + _masked_crc(length) + record + _masked_crc(record)


class _RotatingTFRecordFile:
  """GZIP TFRecord files, as `tf.io.TFRecordWriter(path, "GZIP")` writes them.

  Written from Python (zlib, a gzip stream, one compress and one write per
  round of records) rather than through TFRecordWriter, whose every `write`
  releases and retakes the GIL.
  """

  def __init__(self, prefix: str, max_file_bytes: int, max_files: int):
    self._prefix = prefix
    self._max_file_bytes = max_file_bytes
    self._max_files = max_files
    self._file = None
    self._compressor = None
    self._bytes = 0
    self._count = 0

  def write(self, records: List[bytes]) -> None:
    """Appends framed records; what a round wrote is readable once it returns."""
    chunk = []
    for record in records:
      chunk.append(record)
      self._bytes += len(record)
      if self._bytes >= self._max_file_bytes:
        self._append(chunk)
        chunk = []
        self.close()
    if chunk:
      self._append(chunk)

  def _append(self, chunk: List[bytes]) -> None:
    if self._file is None:
      self._open()
    data = self._compressor.compress(b"".join(chunk))
    self._file.write(data + self._compressor.flush(zlib.Z_SYNC_FLUSH))

  def _open(self) -> None:
    self._count += 1
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = f"{self._prefix}-{stamp}-{os.getpid()}-{self._count:05d}{SUFFIX}"
    self._file = open(path, "wb", buffering=0)
    # wbits 31: a gzip stream, as TensorFlow's ZlibCompressionOptions::GZIP().
    self._compressor = zlib.compressobj(wbits=31)
    self._bytes = 0
    files = sorted(glob.glob(glob.escape(self._prefix) + "-*" + SUFFIX), key=os.path.getmtime)
    for old in files[: max(0, len(files) - self._max_files)]:
      try:
        os.remove(old)
      except OSError:
        pass

  def close(self) -> None:
    if self._file is not None:
      file, self._file = self._file, None
      try:
        file.write(self._compressor.flush(zlib.Z_FINISH))
      finally:
        file.close()


class _ModelLog:
  def __init__(self, model_name, config, max_file_bytes, max_files, on_drop):
    self.rate = config.sampling_config.sampling_rate
    self._sampling_config = config.sampling_config
    self._file = _RotatingTFRecordFile(
      config.log_collector_config.filename_prefix, max_file_bytes, max_files
    )
    self._writer = offload.BackgroundWriter(
      f"request-log-{model_name}",
      self._encode,
      self._file.write,
      on_drop=lambda reason: on_drop(model_name, reason),
    )

  def submit(self, item: tuple) -> None:
    self._writer.submit(item)

  def _encode(self, item) -> bytes:
    api, request, response, arrived = item
    if request is None:  # Logged lazily: `response` builds both.
      request, response = response()
    log = prediction_log_pb2.PredictionLog()
    metadata = log.log_metadata
    metadata.model_spec.CopyFrom(response.model_spec)
    metadata.sampling_config.CopyFrom(self._sampling_config)
    metadata.timestamp_secs = int(arrived)
    entry = getattr(log, _LOG_FIELDS[api])
    entry.request.CopyFrom(request)
    entry.response.CopyFrom(response)
    return tfrecord(log.SerializeToString())

  def close(self) -> None:
    self._writer.close()
    self._file.close()


class RequestLogs:
  """The request logs of every model that has a `logging_config`.

  Args:
    on_drop: called with (model name, reason) for each record dropped.
    max_file_bytes: serialized record bytes per file before the next file.
    max_files: files kept per model; the oldest are deleted.
  """

  def __init__(
    self,
    on_drop: Callable[[str, str], None] = lambda model, reason: None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
  ):
    self._on_drop = on_drop
    self._max_file_bytes = max_file_bytes
    self._max_files = max_files
    self._logs: Dict[str, _ModelLog] = {}
    self._configs: Dict[str, bytes] = {}
    self._lock = threading.Lock()

  def configure(self, config: model_server_config_pb2.ModelServerConfig) -> None:
    """Opens the logs a config asks for and closes the ones it no longer does.

    Raises:
      ValueError: on an unsupported logging_config (nothing changes then).
    """
    wanted = {}
    for model in config.model_config_list.config:
      if model.HasField("logging_config"):
        validate_logging_config(model.name, model.logging_config)
        wanted[model.name] = model.logging_config
    with self._lock:
      logs = dict(self._logs)
      for name in list(logs):
        if name not in wanted or wanted[name].SerializeToString() != self._configs[name]:
          logs.pop(name).close()
          self._configs.pop(name)
      for name, logging_config in wanted.items():
        if name not in logs:
          logs[name] = _ModelLog(
            name, logging_config, self._max_file_bytes, self._max_files, self._on_drop
          )
          self._configs[name] = logging_config.SerializeToString()
          logging.info(
            "Logging %g of the requests of model %s to %s-*%s",
            logging_config.sampling_config.sampling_rate,
            name,
            logging_config.log_collector_config.filename_prefix,
            SUFFIX,
          )
      self._logs = logs  # Swapped whole: `log` reads it without the lock.

  def log(self, model_name: str, api: str, request, response, arrived: float) -> None:
    """Samples and queues one answered request; never blocks, never raises.

    Args:
      api: "Predict", "Classify" or "Regress".
      request: the API's request proto.
      response: the API's response proto.
      arrived: `time.time()` when the request arrived.
    """
    self._sample(model_name, (api, request, response, arrived))

  def log_lazily(
    self, model_name: str, api: str, protos: Callable[[], Tuple[Any, Any]], arrived: float
  ) -> None:
    """As `log`, for a request that has no protos yet: `protos()` returns (request, response).

    It is called on the writer thread, and only when the request is sampled;
    what it raises drops the record and counts it.
    """
    self._sample(model_name, (api, None, protos, arrived))

  def _sample(self, model_name: str, item: tuple) -> None:
    model_log = self._logs.get(model_name)
    if model_log is None or random.random() >= model_log.rate:
      return
    model_log.submit(item)

  def close(self) -> None:
    with self._lock:
      for model_log in self._logs.values():
        model_log.close()
      self._logs = {}
      self._configs = {}
