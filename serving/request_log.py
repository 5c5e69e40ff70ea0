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

A record is put together from the serialized request and response rather than
by copying them into a PredictionLog message: an embedded message is its tag,
its length and its bytes, so the result parses to the same PredictionLog, and
the copies (about 9 of the 11 µs a record cost) are gone. Files are compressed
at zlib level 1, a third of level 6's CPU; any gzip reader reads either.

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
from typing import Optional
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
# Fast and still a third or less of the raw size on request logs.
_COMPRESSION_LEVEL = 1


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


_ONE_BYTE_VARINTS = tuple(bytes((value,)) for value in range(0x80))


def _varint(value: int) -> bytes:
  """A non-negative int as a protobuf varint."""
  if value < 0x80:
    return _ONE_BYTE_VARINTS[value]
  if value < 0x4000:
    return bytes((value & 0x7F | 0x80, value >> 7))
  out = bytearray()
  while value > 0x7F:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _tag(descriptor, field_name: str) -> bytes:
  """The wire tag of a length-delimited field (wire type 2), from the message's descriptor."""
  return _varint(descriptor.fields_by_name[field_name].number << 3 | 2)


_PREDICTION_LOG = prediction_log_pb2.PredictionLog.DESCRIPTOR
_LOG_METADATA = _PREDICTION_LOG.fields_by_name["log_metadata"].message_type
_LOG_METADATA_TAG = _tag(_PREDICTION_LOG, "log_metadata")
_MODEL_SPEC_TAG = _tag(_LOG_METADATA, "model_spec")
_SAMPLING_CONFIG_TAG = _tag(_LOG_METADATA, "sampling_config")
# timestamp_secs is a varint field (wire type 0).
_TIMESTAMP_TAG = _varint(_LOG_METADATA.fields_by_name["timestamp_secs"].number << 3)
# Per API: the PredictionLog field's tag, then its message's request and response tags.
_ENTRY_TAGS = {
  api: (
    _tag(_PREDICTION_LOG, field),
    _tag(_PREDICTION_LOG.fields_by_name[field].message_type, "request"),
    _tag(_PREDICTION_LOG.fields_by_name[field].message_type, "response"),
  )
  for api, field in _LOG_FIELDS.items()
}


def prediction_log(
  api: str,
  request,
  response,
  sampling_config: bytes,
  timestamp_secs: int,
  response_bytes: Optional[bytes] = None,
) -> bytes:
  """A serialized PredictionLog of one call, put together from the serialized messages.

  Args:
    api: "Predict", "Classify" or "Regress".
    request: the API's request, a message or its serialized bytes.
    response: the API's response message (its model_spec goes into log_metadata).
    sampling_config: the serialized SamplingConfig.
    timestamp_secs: when the request arrived, in seconds since the epoch.
    response_bytes: `response` serialized, if that was done already.
  """
  entry_tag, request_tag, response_tag = _ENTRY_TAGS[api]
  spec = response.model_spec.SerializeToString()
  metadata = [_MODEL_SPEC_TAG, _varint(len(spec)), spec]
  metadata += (_SAMPLING_CONFIG_TAG, _varint(len(sampling_config)), sampling_config)
  if timestamp_secs:  # proto3 leaves a zero out.
    metadata += (_TIMESTAMP_TAG, _varint(timestamp_secs))
  metadata = b"".join(metadata)
  if not isinstance(request, bytes):
    request = request.SerializeToString()
  if response_bytes is None:
    response_bytes = response.SerializeToString()
  entry = [request_tag, _varint(len(request)), request]
  entry += (response_tag, _varint(len(response_bytes)), response_bytes)
  entry_size = sum(map(len, entry))
  return b"".join(
    [_LOG_METADATA_TAG, _varint(len(metadata)), metadata, entry_tag, _varint(entry_size), *entry]
  )


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
    self._compressor = zlib.compressobj(_COMPRESSION_LEVEL, wbits=31)
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
    self._sampling_config = config.sampling_config.SerializeToString()
    self._file = _RotatingTFRecordFile(
      config.log_collector_config.filename_prefix, max_file_bytes, max_files
    )
    self._writer = offload.BackgroundWriter(
      f"request-log-{model_name}",
      self._encode,
      self._file.write,
      on_drop=lambda reason: on_drop(model_name, reason),
    )
    # Queues one (api, request, response, arrived, response bytes); never blocks.
    self.submit = self._writer.submit

  def _encode(self, item) -> bytes:
    api, request, response, arrived, response_bytes = item
    if request is None:  # Logged lazily: `response` builds both.
      request, response = response()
    return tfrecord(
      prediction_log(api, request, response, self._sampling_config, int(arrived), response_bytes)
    )

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

  def log(
    self,
    model_name: str,
    api: str,
    request,
    response,
    arrived: float,
    response_bytes: Optional[bytes] = None,
  ) -> None:
    """Samples and queues one answered request; never blocks, never raises.

    Args:
      api: "Predict", "Classify" or "Regress".
      request: the API's request, a message or the bytes received.
      response: the API's response message.
      arrived: `time.time()` when the request arrived.
      response_bytes: `response` serialized, if that was done already.
    """
    self._sample(model_name, (api, request, response, arrived, response_bytes))

  def log_lazily(
    self, model_name: str, api: str, protos: Callable[[], Tuple[Any, Any]], arrived: float
  ) -> None:
    """As `log`, for a request that has no protos yet: `protos()` returns (request, response).

    It is called on the writer thread, and only when the request is sampled;
    what it raises drops the record and counts it.
    """
    self._sample(model_name, (api, None, protos, arrived, None))

  def _sample(self, model_name: str, item: tuple) -> None:
    model_log = self._logs.get(model_name)
    if model_log is not None and random.random() < model_log.rate:
      model_log.submit(item)

  def close(self) -> None:
    with self._lock:
      for model_log in self._logs.values():
        model_log.close()
      self._logs = {}
      self._configs = {}
