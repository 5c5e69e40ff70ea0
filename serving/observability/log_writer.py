"""The log writer: a process that encodes and writes the audit and request logs.

All of a server's Python work runs under one GIL, so every microsecond a
writer thread spends formatting an audit line or framing a PredictionLog is a
microsecond the event loop cannot serve requests in. The server therefore only
queues its records; once a round it hands them to this process in one pipe
write (serving/observability/offload.py), and they are encoded and written here, on another
core (docs/serving-production.md#cost has the measurements).

This module imports only the standard library and google_crc32c, never
TensorFlow or protobuf, so the process starts in a few tens of milliseconds.

    python -m next_category.serving.observability.log_writer KIND CONFIG_JSON

KIND is "audit" (JSON lines into a rotated file) or "request_log" (GZIP
TFRecord files of PredictionLogs). The process reads frames from stdin, each a
4-byte little-endian length, then `marshal.dumps` of a list of records, each
`marshal.dumps` of a tuple (see `frame`). It
reports the records it could not encode or write on stdout, one `REASON COUNT`
line per round (and the audit lines lost with a file deleted under it,
`RotatingFile`), and exits at the end of its input once its files are closed.
It ignores SIGINT and SIGTERM: the end of its input, when the server closes the
pipe or dies, is its only signal to finish, so nothing queued is cut short.
It runs only on CPU time the server leaves (SCHED_IDLE).
"""

import functools
import glob
import json
import logging
import marshal
import os
import re
import signal
import struct
import sys
import time
import zlib
from typing import Callable
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple

import google_crc32c

AUDIT = "audit"
REQUEST_LOG = "request_log"
# The reason reported for a record that could not be encoded or written.
WRITE_ERROR = "write_error"
TFRECORD_SUFFIX = ".tfrecord.gz"
# tensorflow/core/lib/hash/crc32c.h, `Mask`.
_CRC_MASK_DELTA = 0xA282EAD8
# Fast and still a third or less of the raw size on request logs.
_COMPRESSION_LEVEL = 1
_FRAME_HEADER = struct.Struct("<I")
# Errors logged at most per writer: a full disk must not flood the log.
MAX_ERRORS_LOGGED = 10


# marshal's format 2 (no back references): the cheapest to write and read.
MARSHAL_VERSION = 2


def frame(records: List[bytes]) -> bytes:
  """One frame of the writer's input from marshalled records (each `marshal.dumps` of a tuple).

  The records go in as one marshalled list of bytes: `marshal.loads` takes
  the list apart in C, where `marshal.load` from a stream would read each
  record piece by piece (5 µs a record against 0.3).
  """
  data = marshal.dumps(records, MARSHAL_VERSION)
  return _FRAME_HEADER.pack(len(data)) + data


# The audit log: one JSON object per line.

# Every string an audit line holds is cut to this many characters, its end
# replaced by CUT_MARK: whatever a request names, its line stays small, and
# a few requests cannot rotate the legitimate lines away.
MAX_FIELD_CHARS = 256
CUT_MARK = "...[cut from {} characters]"
# A list in a line's details (the models a config reload changed) keeps this many items.
MAX_LIST_ITEMS = 64


def cap(text: str) -> str:
  """`text` if it has at most MAX_FIELD_CHARS characters, else its start marked as cut.

  The result has at most MAX_FIELD_CHARS characters, so capping twice
  changes nothing.
  """
  if len(text) <= MAX_FIELD_CHARS:
    return text
  mark = CUT_MARK.format(len(text))
  return text[: MAX_FIELD_CHARS - len(mark)] + mark


def audit_line(record: Sequence) -> bytes:
  """An audit record's fields (serving/observability/audit.py, AuditRecord) as one JSON line.

  Formatted by hand (json.dumps of a dict costs about twice as much): strings
  through json's own escaping, each capped (`cap`), numbers as json writes
  them; the record's details, if any, after the fixed fields.
  """
  (
    arrived,
    peer,
    principal,
    authenticated,
    model,
    version,
    api,
    entrypoint,
    signature,
    examples,
    status,
    ms,
    details,
  ) = record
  line = (
    f'{{"time":{_time(arrived)},'
    f'"peer":{_field(peer)},"principal":{_field(principal)},'
    f'"authenticated":{"true" if authenticated else "false"},"model":{_field(model)},'
    f'"version":{_field(version)},"api":{_field(api)},"entrypoint":{_field(entrypoint)},'
    f'"signature":{_field(signature)},"examples":{int(examples)},"status":{_field(status)},'
    f'"latency_ms":{float(round(ms, 3))!r}'
  )
  if details:
    line += "".join(f",{_field(key)}:{_detail(value)}" for key, value in details.items())
  return (line + "}\n").encode("utf-8")


def notice_line(event: str, **fields) -> bytes:
  """A line about the log itself rather than a request: its time, `event` and `fields`."""
  details = "".join(f",{_field(key)}:{_detail(value)}" for key, value in fields.items())
  return f'{{"time":{_time(time.time())},"event":{_field(event)}{details}}}\n'.encode("utf-8")


_quote = json.encoder.encode_basestring_ascii


def _field(text: str) -> str:
  return _quote(text if len(text) <= MAX_FIELD_CHARS else cap(text))


def _detail(value) -> str:
  """A detail's value as JSON: a string capped, a list of strings capped to MAX_LIST_ITEMS."""
  if isinstance(value, str):
    return _field(value)
  if isinstance(value, list):
    items = [_field(item) for item in value[:MAX_LIST_ITEMS]]
    if len(value) > MAX_LIST_ITEMS:
      items.append(_quote(f"...[{len(value) - MAX_LIST_ITEMS} more]"))
    return f"[{','.join(items)}]"
  if isinstance(value, (bool, int, float)) or value is None:
    return json.dumps(value)
  raise TypeError(f"an audit detail is a string, a number or a list, not a {type(value).__name__}")


def _time(arrived: float) -> str:
  seconds = int(arrived)
  return f'"{_utc_second(seconds)}.{int((arrived - seconds) * 1e6):06d}Z"'


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


# Why the audit file was opened again (`RotatingFile`): the reason in the
# notice line; the lines lost are counted under "file_<reason>".
DELETED = "deleted"
REPLACED = "replaced"
MOVED = "moved"
TRUNCATED = "truncated"
REOPENED = "audit_log_reopened"


class RotatingFile:
  """A file rotated at `max_bytes` into PATH.1 ... PATH.N, as RotatingFileHandler names them.

  Before each round it checks that PATH is still the file it writes: when
  the file was deleted, replaced or moved away, it opens PATH again; when it
  was truncated, it goes on at its new end. The first line it then writes is
  a notice (`notice_line`) with the reason and the lines this writer had put
  in the file that are gone, which `on_lost(reason, count)` also reports: a
  deleted audit log neither swallows every later line nor vanishes unnoticed.

  Args:
    path: the file.
    max_bytes: rotate when the file would grow past this.
    backup_count: rotated files kept.
    on_lost: called with ("file_<reason>", lines) when lines written were lost.
  """

  def __init__(
    self,
    path: str,
    max_bytes: int,
    backup_count: int,
    on_lost: Callable[[str, int], None] = lambda reason, count: None,
  ):
    self._path = path
    self._max_bytes = max_bytes
    self._backup_count = backup_count
    self._on_lost = on_lost
    self._file = None
    self._size = 0
    self._opened_at = 0  # The file's size when it was opened (earlier runs' lines).
    self._lines = 0  # Lines this writer put into the open file.
    self._notice: Optional[bytes] = None  # Waits for the next line written.

  def write(self, lines: List[bytes]) -> None:
    """Appends encoded lines, with one write per file (unbuffered: nothing waits in memory)."""
    if self._file is not None:
      self._check()
    if self._file is None:
      self._open()
    if self._notice is not None:
      lines = [self._notice, *lines]
      self._notice = None
    chunk = []
    for data in lines:
      if self._size and self._size + len(data) > self._max_bytes:
        self._append(chunk)
        chunk = []
        self._rotate()
      chunk.append(data)
      self._size += len(data)
    self._append(chunk)

  def _append(self, chunk: List[bytes]) -> None:
    self._file.write(b"".join(chunk))
    self._lines += len(chunk)

  def _open(self) -> None:
    self._file = open(self._path, "ab", buffering=0)
    self._size = self._opened_at = self._file.tell()
    self._lines = 0

  def _check(self) -> None:
    """Opens PATH again if it no longer is the open file; notes the lines lost."""
    own = os.fstat(self._file.fileno())
    try:
      named = os.stat(self._path)
    except FileNotFoundError:
      named = None
    if named is not None and (named.st_dev, named.st_ino) == (own.st_dev, own.st_ino):
      if own.st_size >= self._size:
        return
      # Truncated in place: what is left of this writer's lines stays.
      kept = self._lines_between(self._opened_at, own.st_size)
      self._lost(TRUNCATED, self._lines - kept)
      self._size = self._opened_at = own.st_size
      self._lines = 0
      return
    if own.st_nlink == 0:  # No name left: its lines are gone with it.
      self._lost(DELETED if named is None else REPLACED, self._lines)
    else:  # Renamed (log rotation by another tool): its lines are kept there.
      self._lost(MOVED, 0)
    self._file.close()
    self._file = None

  def _lines_between(self, start: int, end: int) -> int:
    if end <= start:
      return 0
    with open(self._path, "rb") as f:
      f.seek(start)
      return f.read(end - start).count(b"\n")

  def _lost(self, reason: str, count: int) -> None:
    self._notice = notice_line(REOPENED, reason=reason, lines_lost=count)
    if count:
      self._on_lost(f"file_{reason}", count)

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
    self._open()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


# The request log: PredictionLogs in GZIP TFRecord files.


def _masked_crc(data: bytes) -> bytes:
  crc = google_crc32c.value(data)
  return struct.pack("<I", (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF)


def tfrecord(record: bytes) -> bytes:
  """`record` framed as a TFRecord (tensorflow/core/lib/io/record_writer.cc, `WriteRecord`)."""
  length = struct.pack("<Q", len(record))
  return length + _masked_crc(length) + record + _masked_crc(record)


_ONE_BYTE_VARINTS = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
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


def _read_varint(data: bytes, position: int) -> Tuple[int, int]:
  value = shift = 0
  while True:
    byte = data[position]
    position += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, position
    shift += 7


def embedded_field(message: bytes, number: int) -> bytes:
  """The bytes of length-delimited field `number` in a serialized message.

  Occurrences are joined, which is how a parser merges a repeated embedded
  message (the protobuf encoding guide, "Last One Wins" for messages).

  Raises:
    ValueError: if `message` is not a well-formed serialized message.
  """
  parts = []
  position, end = 0, len(message)
  try:
    while position < end:
      key = message[position]  # Tags and lengths under 128 take one byte: read them inline.
      if key < 0x80:
        position += 1
      else:
        key, position = _read_varint(message, position)
      wire_type = key & 7
      if wire_type == 2:
        size = message[position]
        if size < 0x80:
          position += 1
        else:
          size, position = _read_varint(message, position)
        if key >> 3 == number:
          parts.append(message[position : position + size])
        position += size
      elif wire_type == 0:
        _, position = _read_varint(message, position)
      elif wire_type == 1:
        position += 8
      elif wire_type == 5:
        position += 4
      else:
        raise ValueError(f"wire type {wire_type} at byte {position}")
  except IndexError:
    raise ValueError("the message ends inside a field") from None
  if position != end:
    raise ValueError("the last field runs past the end of the message")
  return b"".join(parts)


def _log_metadata(
  metadata_tags: Sequence[bytes], sampling_config: bytes, spec: bytes, timestamp_secs: int
) -> bytes:
  """PredictionLog's log_metadata field: its tag, its length and the LogMetadata."""
  log_metadata_tag, model_spec_tag, sampling_config_tag, timestamp_tag = metadata_tags
  metadata = [model_spec_tag, varint(len(spec)), spec]
  metadata += (sampling_config_tag, varint(len(sampling_config)), sampling_config)
  if timestamp_secs:  # proto3 leaves a zero out.
    metadata += (timestamp_tag, varint(timestamp_secs))
  metadata = b"".join(metadata)
  return log_metadata_tag + varint(len(metadata)) + metadata


def _log_entry(api_tags: Sequence, request: bytes, response: bytes) -> bytes:
  """PredictionLog's field for the API: its tag, its length, the request and the response."""
  entry_tag, request_tag, response_tag, _ = api_tags
  entry = b"".join(
    (request_tag, varint(len(request)), request, response_tag, varint(len(response)), response)
  )
  return entry_tag + varint(len(entry)) + entry


class RotatingTFRecordFile:
  """GZIP TFRecord files, as `tf.io.TFRecordWriter(path, "GZIP")` writes them.

  `<prefix>-<UTC time>-<pid>-<n>.tfrecord.gz`, the pid of the writing process:
  a file is closed and the next one opened once `max_file_bytes` of records
  went into it, and beyond `max_files` files the oldest is deleted. Only
  files named exactly so count: the files of a model whose prefix starts
  with this one's (`next_category-canary` beside `next_category`) are never
  touched.
  """

  def __init__(self, prefix: str, max_file_bytes: int, max_files: int):
    self._prefix = prefix
    self._own_name = re.compile(
      re.escape(os.path.basename(prefix)) + r"-\d{8}T\d{6}Z-\d+-\d{5,}" + re.escape(TFRECORD_SUFFIX)
    )
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
    path = f"{self._prefix}-{stamp}-{os.getpid()}-{self._count:05d}{TFRECORD_SUFFIX}"
    self._file = open(path, "wb", buffering=0)
    # wbits 31: a gzip stream, as TensorFlow's ZlibCompressionOptions::GZIP().
    self._compressor = zlib.compressobj(_COMPRESSION_LEVEL, wbits=31)
    files = [
      name
      for name in glob.glob(glob.escape(self._prefix) + "-*" + TFRECORD_SUFFIX)
      if self._own_name.fullmatch(os.path.basename(name))
    ]
    files.sort(key=os.path.getmtime)
    for old in files[: max(0, len(files) - self._max_files)]:
      try:
        os.remove(old)
      except OSError:
        pass

  def close(self) -> None:
    # The next file starts from nothing; the records of a round that opens it are counted already.
    self._bytes = 0
    if self._file is not None:
      file, self._file = self._file, None
      try:
        file.write(self._compressor.flush(zlib.Z_FINISH))
      finally:
        file.close()


def prediction_logs(config: dict) -> Callable[[tuple], bytes]:
  """Builds serialized PredictionLogs from records (api, request bytes, response bytes, arrived).

  A PredictionLog is put together from the serialized request and response:
  an embedded message is its tag, its length and its bytes, so the result
  parses to the PredictionLog a parser would build field by field.

  Args:
    config: a request log's settings, each tag in hex (serving/observability/request_log.py
      reads them from the descriptors): "sampling_config", the serialized
      SamplingConfig; "metadata_tags", the tags of PredictionLog.log_metadata
      and of LogMetadata's model_spec, sampling_config and timestamp_secs;
      "apis", per API the tags of its PredictionLog field and of that field's
      request and response, then the number of the response's model_spec field.
  """
  metadata_tags = [bytes.fromhex(tag) for tag in config["metadata_tags"]]
  apis = {
    api: [bytes.fromhex(tag) for tag in tags[:3]] + [tags[3]]
    for api, tags in config["apis"].items()
  }
  sampling_config = bytes.fromhex(config["sampling_config"])

  # The log_metadata of the last few (model_spec, second) pairs: every
  # record of the same version within a second has the same one.
  metadata_of = {}

  def build(record) -> bytes:
    api, request, response, arrived = record
    api_tags = apis[api]
    spec = embedded_field(response, api_tags[3])
    key = (spec, int(arrived))
    metadata = metadata_of.get(key)
    if metadata is None:
      if len(metadata_of) >= 16:
        metadata_of.clear()
      metadata = metadata_of[key] = _log_metadata(metadata_tags, sampling_config, *key)
    return metadata + _log_entry(api_tags, request, response)

  return build


def _writers(
  kind: str, config: dict, report: Callable[[str, int], None]
) -> Tuple[Callable, object]:
  """(encode a record, the file the encoded records go to) for a log of `kind`.

  `report(reason, count)` is told of records lost after they were written.
  """
  if kind == AUDIT:
    audit_file = RotatingFile(
      config["path"], config["max_bytes"], config["backup_count"], on_lost=report
    )
    return audit_line, audit_file
  if kind == REQUEST_LOG:
    build = prediction_logs(config)

    def encode(record) -> bytes:
      return tfrecord(build(record))

    file = RotatingTFRecordFile(config["prefix"], config["max_file_bytes"], config["max_files"])
    return encode, file
  raise ValueError(f"Unknown log kind {kind!r}; expected {AUDIT!r} or {REQUEST_LOG!r}.")


def _reporter(reports) -> Callable[[str, int], None]:
  """Tells the server of `count` records lost for `reason`, one `REASON COUNT` line."""

  def report(reason: str, count: int) -> None:
    try:
      reports.write(f"{reason} {count}\n")
      reports.flush()
    except OSError:  # The server is gone; nobody is left to count.
      pass

  return report


def _serve(name: str, encode: Callable, file, source, reports) -> None:
  """Encodes and writes every frame from `source` until it ends; reports drops to `reports`."""
  errors_logged = 0
  report = _reporter(reports)

  def drop(count: int, error: Exception) -> None:
    nonlocal errors_logged
    report(WRITE_ERROR, count)
    if errors_logged < MAX_ERRORS_LOGGED:
      errors_logged += 1
      logging.error("%s: dropped %d record(s): %s: %s", name, count, type(error).__name__, error)

  while True:
    header = source.read(_FRAME_HEADER.size)
    if len(header) < _FRAME_HEADER.size:
      return
    (size,) = _FRAME_HEADER.unpack(header)
    data = source.read(size)
    if len(data) < size:  # The server died mid-write: the partial frame is lost.
      return
    try:
      records = marshal.loads(data)
      if records.__class__ is not list:
        raise TypeError(f"a frame holds a list of records, not a {type(records).__name__}")
    except (EOFError, ValueError, TypeError) as e:  # Not a frame the server wrote.
      drop(1, e)
      continue
    encoded = []
    for record in records:
      try:
        encoded.append(encode(marshal.loads(record)))
      except Exception as e:  # A record that cannot be read or encoded is dropped alone.
        drop(1, e)
    if encoded:
      try:
        file.write(encoded)
      except Exception as e:  # A full disk drops records, it never stops the writer.
        drop(len(encoded), e)


def _yield_to_the_server() -> None:
  """Runs this process only on CPU time the server leaves (Linux SCHED_IDLE, else nice 19).

  Waking up every round to encode, a normally scheduled writer preempts the
  server's threads (the scheduler favours a task that slept); as SCHED_IDLE it
  never does, and its input waits in the pipe and the server's queue instead.
  """
  try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
  except (AttributeError, OSError):  # Not Linux, or not allowed.
    os.nice(19)


def main(argv: List[str]) -> int:
  if len(argv) != 3:
    sys.stderr.write(
      "usage: python -m next_category.serving.observability.log_writer "
      f"{AUDIT}|{REQUEST_LOG} CONFIG_JSON\n"
    )
    return 2
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  _yield_to_the_server()
  logging.basicConfig(format="%(asctime)s %(levelname)s log_writer: %(message)s")
  kind, config = argv[1], json.loads(argv[2])
  encode, file = _writers(kind, config, _reporter(sys.stdout))
  try:
    _serve(config.get("name", kind), encode, file, sys.stdin.buffer, sys.stdout)
  finally:
    file.close()
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
