"""The audit log: one JSON line per request, written off the request path.

    {"time": "2026-11-30T10:02:03.123456Z", "peer": "ipv4:127.0.0.1:51234",
     "principal": "alice", "model": "next_category", "version": "3",
     "api": "Predict", "entrypoint": "GRPC", "signature": "serving_default",
     "examples": 1, "status": "OK", "latency_ms": 2.41}

Never the payload. The file is rotated at `max_bytes` into PATH.1 ... PATH.N
(the oldest dropped), as logging.handlers.RotatingFileHandler names them.
Writing happens on a background thread (serving/offload.py): a slow or full
disk drops lines, counted in the server's metrics, and never fails a request.
"""

import functools
import json
import os
import time
from typing import Callable
from typing import List
from typing import NamedTuple
from typing import Optional

from serving import offload

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BACKUP_COUNT = 5


class AuditRecord(NamedTuple):
  """What the audit log keeps of one request (a tuple: the request path builds it cheaply)."""

  time: float  # Seconds since the epoch, when the request arrived.
  peer: str
  principal: str
  model: str
  version: str
  api: str
  entrypoint: str
  signature: str
  examples: int
  status: str
  latency_ms: float


def _json_line(record: tuple) -> str:
  """An AuditRecord's fields as one JSON object.

  Formatted by hand (json.dumps of a dict costs about twice as much on a busy
  server): strings through json's own escaping, numbers as json writes them.
  """
  arrived, peer, principal, model, version, api, entrypoint, signature, examples, status, ms = (
    record
  )
  seconds = int(arrived)
  return (
    f'{{"time":"{_utc_second(seconds)}.{int((arrived - seconds) * 1e6):06d}Z",'
    f'"peer":{_quote(peer)},"principal":{_quote(principal)},"model":{_quote(model)},'
    f'"version":{_quote(version)},"api":{_quote(api)},"entrypoint":{_quote(entrypoint)},'
    f'"signature":{_quote(signature)},"examples":{int(examples)},"status":{_quote(status)},'
    f'"latency_ms":{float(round(ms, 3))!r}}}'
  )


_quote = json.encoder.encode_basestring_ascii


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class _RotatingFile:
  def __init__(self, path: str, max_bytes: int, backup_count: int):
    self._path = path
    self._max_bytes = max_bytes
    self._backup_count = backup_count
    self._file = None
    self._size = 0

  def write(self, lines: List[bytes]) -> None:
    """Appends encoded lines, with one write per file (unbuffered: nothing waits in memory)."""
    if self._file is None:
      self._file = open(self._path, "ab", buffering=0)
      self._size = self._file.tell()
    chunk = []
    for data in lines:
      if self._size and self._size + len(data) > self._max_bytes:
        self._file.write(b"".join(chunk))
        chunk = []
        self._rotate()
      chunk.append(data)
      self._size += len(data)
    self._file.write(b"".join(chunk))

  def _rotate(self) -> None:
    self._file.close()
    self._file = None
    for index in range(self._backup_count - 1, 0, -1):
      older = f"{self._path}.{index}"
      if os.path.exists(older):
        os.replace(older, f"{self._path}.{index + 1}")
    if self._backup_count > 0:
      os.replace(self._path, f"{self._path}.1")
    else:
      os.remove(self._path)
    self._file = open(self._path, "ab", buffering=0)
    self._size = 0

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


class AuditLog:
  """Appends `AuditRecord`s to a rotated JSON lines file, off the request path.

  Args:
    path: the log file.
    max_bytes: rotate when the file would grow past this.
    backup_count: rotated files kept.
    on_drop: called with a reason for each line that could not be written.

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
    self._file = _RotatingFile(path, max_bytes, backup_count)
    self._writer = offload.BackgroundWriter(
      "audit-log",
      lambda record: (_json_line(record) + "\n").encode("utf-8"),
      self._file.write,
      on_drop=on_drop,
    )

  def record(self, record: tuple) -> None:
    """Queues one request's line; never blocks, never raises.

    Args:
      record: an AuditRecord, or a plain tuple of its fields in its order.
    """
    self._writer.submit(record)

  def close(self) -> None:
    self._writer.close()
    self._file.close()
