"""The audit log: one JSON line per request, written off the request path.

    {"time": "2026-11-30T10:02:03.123456Z", "peer": "ipv4:127.0.0.1:51234",
     "principal": "alice", "authenticated": true, "model": "next_category",
     "version": "3", "api": "Predict", "entrypoint": "GRPC",
     "signature": "serving_default", "examples": 1, "status": "OK",
     "latency_ms": 2.41}

Never the payload. Every string is cut to 256 characters, its end marked
`...[cut from N characters]`, so no request can grow its line (and rotate the
others away). A refused caller's line names the principal it claimed, with
`"authenticated": false` (never a token); a config reload's line adds the
models it `added`, `removed` and `changed`, and the `error` of a refused one.
The file is rotated at `max_bytes` into PATH.1 ... PATH.N (the oldest
dropped), as logging.handlers.RotatingFileHandler names them; a file deleted,
replaced or truncated under the server is opened again, and the next line
says how many lines were lost (serving/observability/log_writer.py,
RotatingFile). Lines are formatted and written by a log writer process
(serving/observability/offload.py, serving/observability/log_writer.py): a slow or full
disk drops lines, counted in the server's metrics, and never fails a request.
"""

import os
from typing import Callable
from typing import Dict
from typing import List
from typing import NamedTuple
from typing import Optional

from tensorflow_serving.config import model_server_config_pb2

from next_category.serving.observability import log_writer
from next_category.serving.observability import offload

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BACKUP_COUNT = 5
MAX_FIELD_CHARS = log_writer.MAX_FIELD_CHARS
# `text` cut to MAX_FIELD_CHARS characters, marked as cut (the log writer caps again).
cap = log_writer.cap


class AuditRecord(NamedTuple):
  """What the audit log keeps of one request (a tuple: the request path builds it cheaply)."""

  time: float  # Seconds since the epoch, when the request arrived.
  peer: str
  principal: str  # Who called, or who the caller claimed to be when refused.
  authenticated: bool  # Whether `principal` checked out.
  model: str
  version: str
  api: str
  entrypoint: str
  signature: str
  examples: int
  status: str
  latency_ms: float
  # More fields of the line (a config reload's changes), or None.
  details: Optional[Dict[str, object]] = None


def config_changes(
  old: model_server_config_pb2.ModelServerConfig,
  new: model_server_config_pb2.ModelServerConfig,
) -> Dict[str, List[str]]:
  """The models a switch from `old` to `new` adds, removes and changes, by name."""
  before = {model.name: model for model in old.model_config_list.config}
  after = {model.name: model for model in new.model_config_list.config}
  return {
    "added": sorted(after.keys() - before.keys()),
    "removed": sorted(before.keys() - after.keys()),
    "changed": sorted(name for name in after.keys() & before.keys() if after[name] != before[name]),
  }


class AuditLog:
  """Appends `AuditRecord`s to a rotated JSON lines file, off the request path.

  Args:
    path: the log file.
    max_bytes: rotate when the file would grow past this.
    backup_count: rotated files kept.
    on_drop: called with a reason for each line that could not be written or
      was lost ("file_deleted": in a file deleted under the server).

  Raises:
    ValueError: if the file's directory does not exist or the sizes are not positive.
  """

  def __init__(
    self,
    path: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backup_count: int = DEFAULT_BACKUP_COUNT,
    on_drop: Optional[Callable[[str], None]] = None,
  ):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
      raise ValueError(f"--audit_log_file: the directory {directory} does not exist.")
    if max_bytes <= 0 or backup_count < 0:
      raise ValueError("The audit log needs max_bytes > 0 and backup_count >= 0.")
    self._writer = offload.BackgroundWriter(
      "audit-log",
      log_writer.AUDIT,
      {"path": os.path.abspath(path), "max_bytes": max_bytes, "backup_count": backup_count},
      on_drop=on_drop,
    )
    # Queues a plain tuple of AuditRecord's fields in its order (the request
    # path builds one); never blocks, never raises.
    self.submit = self._writer.submit

  def record(self, record: AuditRecord) -> None:
    """Queues one request's line; never blocks, never raises."""
    self.submit(tuple(record))  # marshal takes no NamedTuple.

  def close(self) -> None:
    self._writer.close()
