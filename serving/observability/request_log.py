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
GZIP-compressed TFRecord files
`<filename_prefix>-<UTC time>-<writer pid>-<n>.tfrecord.gz` (the log writer's pid).
A file is closed and the next one opened once `max_file_bytes` of records
went into it; beyond `max_files` files the oldest is deleted, so the logs stay
bounded on disk (only files named as above: a model whose prefix extends this
one's keeps its files, and two models may not share a prefix).
`make skew-report SERVING_DATA='<filename_prefix>-*.tfrecord.gz'` reads them.
Sampling is one random draw on the request path; the record is built and
written by a log writer process (serving/observability/offload.py,
serving/observability/log_writer.py), and records that cannot be written
(queue full, disk full) are dropped and counted.

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
JSON straight into arrays; its protos are built on the background thread, and
only for the requests sampled (`RequestLogs.log_lazily`).
"""

import logging
import os
import random
import threading
from typing import Any
from typing import Callable
from typing import Dict
from typing import Optional
from typing import Tuple

from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import logging_config_pb2
from tensorflow_serving.config import model_server_config_pb2

from next_category.serving.observability import log_writer
from next_category.serving.observability import offload

COLLECTOR_TYPE = "tfrecord"
SUFFIX = log_writer.TFRECORD_SUFFIX
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_FILES = 100
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


def validate_prefixes(config: model_server_config_pb2.ModelServerConfig) -> None:
  """Raises ValueError when two models log to one filename_prefix.

  Each model's writer deletes its oldest files beyond `max_files`; sharing a
  prefix, two models would delete each other's. (A prefix that merely starts
  with another, `next_category-canary` beside `next_category`, is safe: a
  writer deletes only files named exactly as it names them.)
  """
  owners: Dict[str, str] = {}
  for model in config.model_config_list.config:
    if model.HasField("logging_config"):
      prefix = os.path.abspath(model.logging_config.log_collector_config.filename_prefix)
      if prefix in owners:
        raise ValueError(
          f"Models {owners[prefix]!r} and {model.name!r} log to the same filename_prefix "
          f"{prefix}; give each model its own."
        )
      owners[prefix] = model.name


def _tag(descriptor, field_name: str) -> str:
  """The hex wire tag of a length-delimited field (wire type 2), from the message's descriptor."""
  return log_writer.varint(descriptor.fields_by_name[field_name].number << 3 | 2).hex()


_PREDICTION_LOG = prediction_log_pb2.PredictionLog.DESCRIPTOR
_LOG_METADATA = _PREDICTION_LOG.fields_by_name["log_metadata"].message_type
# What the log writer puts a PredictionLog together with (log_writer.prediction_logs),
# read from the descriptors: the tags of log_metadata and of its model_spec,
# sampling_config and timestamp_secs (a varint field, wire type 0) ...
_METADATA_TAGS = [
  _tag(_PREDICTION_LOG, "log_metadata"),
  _tag(_LOG_METADATA, "model_spec"),
  _tag(_LOG_METADATA, "sampling_config"),
  log_writer.varint(_LOG_METADATA.fields_by_name["timestamp_secs"].number << 3).hex(),
]


def _api_tags(field: str) -> list:
  """... and per API: the tags of the PredictionLog field and of its request and response,
  then the number of the response's model_spec field."""
  entry = _PREDICTION_LOG.fields_by_name[field].message_type
  response = entry.fields_by_name["response"].message_type
  return [
    _tag(_PREDICTION_LOG, field),
    _tag(entry, "request"),
    _tag(entry, "response"),
    response.fields_by_name["model_spec"].number,
  ]


_API_TAGS = {api: _api_tags(field) for api, field in _LOG_FIELDS.items()}


def _log_settings(sampling_config: bytes) -> dict:
  """What the log writer builds a model's PredictionLogs with (log_writer.prediction_logs)."""
  return {
    "sampling_config": sampling_config.hex(),
    "metadata_tags": _METADATA_TAGS,
    "apis": _API_TAGS,
  }


def prediction_log(
  api: str,
  request,
  response,
  sampling_config: bytes,
  timestamp_secs: int,
  response_bytes: Optional[bytes] = None,
) -> bytes:
  """A serialized PredictionLog of one call, put together as the log writer does it.

  Args:
    api: "Predict", "Classify" or "Regress".
    request: the API's request, a message or its serialized bytes.
    response: the API's response message (its model_spec goes into log_metadata).
    sampling_config: the serialized SamplingConfig.
    timestamp_secs: when the request arrived, in seconds since the epoch.
    response_bytes: `response` serialized, if that was done already.
  """
  build = log_writer.prediction_logs(_log_settings(sampling_config))
  return build(_serialized((api, request, response, timestamp_secs, response_bytes)))


def _serialized(item: tuple) -> tuple:
  """A queued request, (api, request, response, arrived, response bytes), as the log writer
  takes it: (api, request bytes, response bytes, arrived)."""
  api, request, response, arrived, response_bytes = item
  if request is None:  # Logged lazily: `response` builds both.
    request, response = response()
  if not isinstance(request, bytes):
    request = request.SerializeToString()
  if response_bytes is None:
    response_bytes = response.SerializeToString()
  return api, request, response_bytes, arrived


class _ModelLog:
  def __init__(self, model_name, config, max_file_bytes, max_files, on_drop):
    self.rate = config.sampling_config.sampling_rate
    self._writer = offload.BackgroundWriter(
      f"request-log-{model_name}",
      log_writer.REQUEST_LOG,
      {
        "prefix": os.path.abspath(config.log_collector_config.filename_prefix),
        "max_file_bytes": max_file_bytes,
        "max_files": max_files,
        **_log_settings(config.sampling_config.SerializeToString()),
      },
      prepare=_serialized,
      on_drop=lambda reason: on_drop(model_name, reason),
    )
    # Queue (api, request bytes, response bytes, arrived), or lazily
    # (api, request, response, arrived, response bytes) for `_serialized`; never block.
    self.submit = self._writer.submit
    self.submit_lazily = self._writer.submit_lazily

  def close(self) -> None:
    self._writer.close()


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
    validate_prefixes(config)
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
    model_log = self._sampled(model_name)
    if model_log is None:
      return
    if response_bytes is not None and request.__class__ is bytes:  # gRPC: ready as it is.
      model_log.submit((api, request, response_bytes, arrived))
    else:
      model_log.submit_lazily((api, request, response, arrived, response_bytes))

  def log_lazily(
    self, model_name: str, api: str, protos: Callable[[], Tuple[Any, Any]], arrived: float
  ) -> None:
    """As `log`, for a request that has no protos yet: `protos()` returns (request, response).

    It is called on the background thread, and only when the request is sampled;
    what it raises drops the record and counts it.
    """
    model_log = self._sampled(model_name)
    if model_log is not None:
      model_log.submit_lazily((api, None, protos, arrived, None))

  def _sampled(self, model_name: str) -> Optional[_ModelLog]:
    """The model's log if it has one and this request is drawn, else None."""
    model_log = self._logs.get(model_name)
    if model_log is not None and random.random() < model_log.rate:
      return model_log
    return None

  def close(self) -> None:
    with self._lock:
      for model_log in self._logs.values():
        model_log.close()
      self._logs = {}
      self._configs = {}
