"""Work taken off the request path: records queued in memory, written by a log writer process.

The request logs and the audit log both write through it. A finished call
only marshals its record (a tuple) and appends it to a bounded deque, or
drops it when the deque is full: no lock, no wakeup of another thread. A
background thread wakes on its own every `interval_seconds` and hands
everything queued to the log writer process (serving/observability/log_writer.py) in one
pipe write; that process encodes the records and writes the files. So a slow
or full disk never delays or fails a request, what cannot be written is
counted, never raised, and the encoding takes no time from the server's GIL
(docs/serving-production.md#cost).
"""

import collections
import itertools
import json
import logging
import marshal
import os
import subprocess
import sys
import threading
from typing import Any
from typing import Callable
from typing import Optional

from next_category.serving.observability import log_writer

QUEUE_FULL = "queue_full"
# The directory `python -m next_category.serving.observability.log_writer` is found from.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class BackgroundWriter:
  """Hands records to a log writer process of its own.

  Args:
    name: the thread's name, also used in log messages.
    kind: the log writer's kind (`log_writer.AUDIT` or `log_writer.REQUEST_LOG`).
    config: the log writer's settings (see `log_writer._writers`), as JSON.
    prepare: turns a record queued by `submit_lazily` into a tuple of str,
      bytes and numbers, on the background thread. An exception drops that
      record and counts it.
    on_drop: called with a reason ("queue_full" or "write_error") for each
      dropped record.
    max_queued: records waiting beyond this are dropped.
    interval_seconds: how often the thread wakes to hand over what is queued.
      Longer rounds cost the server less (fewer wakeups of this thread and of
      the writer, fewer and larger writes): 250 ms against 50 saved 4-30 µs
      of CPU a request at 3,000 requests/s (docs/serving-production.md#cost).
  """

  def __init__(
    self,
    name: str,
    kind: str,
    config: dict,
    prepare: Optional[Callable[[Any], Any]] = None,
    on_drop: Optional[Callable[[str], None]] = None,
    max_queued: int = 10_000,
    interval_seconds: float = 0.25,
  ):
    self._name = name
    self._command = [
      sys.executable,
      "-m",
      "next_category.serving.observability.log_writer",
      kind,
      json.dumps(config),
    ]
    self._prepare = prepare
    self._on_drop = on_drop or (lambda reason: None)
    self._max_queued = max_queued
    self._interval_seconds = interval_seconds
    # deque.append and popleft are atomic: the request path takes no lock.
    self._records: collections.deque = collections.deque()
    self._errors_logged = 0
    self._process: Optional[subprocess.Popen] = None
    self._reader: Optional[threading.Thread] = None
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name=name, daemon=True)
    self._thread.start()

  def submit(self, record: tuple) -> None:
    """Queues `record`, a tuple of str, bytes and numbers; never blocks, never raises.

    It is marshalled here, while its objects are still in the CPU's cache: on
    the background thread the same work costs several times as much.
    """
    if len(self._records) >= self._max_queued:
      self._on_drop(QUEUE_FULL)
      return
    try:
      self._records.append(marshal.dumps(record, log_writer.MARSHAL_VERSION))
    except ValueError as e:  # Not a plain tuple: a caller's mistake, counted, not raised.
      self._drop(1, e)

  def submit_lazily(self, record: Any) -> None:
    """As `submit`, for a record that `prepare` turns into a tuple on the background thread."""
    if len(self._records) >= self._max_queued:
      self._on_drop(QUEUE_FULL)
      return
    self._records.append(record)

  def _run(self) -> None:
    while not self._stop.wait(self._interval_seconds):
      self._drain()
    self._drain()

  def _drain(self) -> None:
    # As many popleft calls as were queued, made from C: a round holds
    # hundreds of records, and a Python loop over them would hold the GIL.
    records = list(
      itertools.starmap(self._records.popleft, itertools.repeat((), len(self._records)))
    )
    if set(map(type, records)) - {bytes}:  # Some were queued lazily.
      records = self._prepared(records)
    if records:
      self._send(records)

  def _prepared(self, records: list) -> list:
    """`records` all marshalled, those queued lazily through `prepare`."""
    prepared = []
    for record in records:
      if record.__class__ is not bytes:
        try:
          record = marshal.dumps(self._prepare(record), log_writer.MARSHAL_VERSION)
        except Exception as e:  # A record that cannot be prepared is dropped alone.
          self._drop(1, e)
          continue
      prepared.append(record)
    return prepared

  def _send(self, records: list) -> None:
    try:
      process = self._writer_process()
      process.stdin.write(log_writer.frame(records))
      process.stdin.flush()
    except (OSError, ValueError) as e:  # The writer died or could not start.
      self._drop(len(records), e)

  def _writer_process(self) -> subprocess.Popen:
    """The log writer process, started on first use and again if it exited."""
    if self._process is not None and self._process.poll() is None:
      return self._process
    if self._process is not None:
      logging.error(
        "%s: the log writer exited with code %s; starting another",
        self._name,
        self._process.returncode,
      )
      self._close_process()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (_PACKAGE_ROOT, env.get("PYTHONPATH"))))
    self._process = subprocess.Popen(
      self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    self._reader = threading.Thread(
      target=self._read_reports,
      args=(self._process.stdout,),
      name=f"{self._name}-reports",
      daemon=True,
    )
    self._reader.start()
    return self._process

  def _read_reports(self, reports) -> None:
    """Counts the records the writer process reports dropped (`REASON COUNT` lines)."""
    for line in reports:
      reason, _, count = line.decode("utf-8", "replace").partition(" ")
      for _ in range(int(count or 1)):
        self._on_drop(reason)

  def _drop(self, count: int, error: Exception) -> None:
    for _ in range(count):
      self._on_drop(log_writer.WRITE_ERROR)
    if self._errors_logged < log_writer.MAX_ERRORS_LOGGED:
      self._errors_logged += 1
      logging.error(
        "%s: dropped %d record(s): %s: %s", self._name, count, type(error).__name__, error
      )

  def _close_process(self, timeout_seconds: float = 10.0) -> None:
    """Ends the writer's input and waits until it has written everything and exited."""
    process, self._process = self._process, None
    try:
      process.stdin.close()
    except OSError:  # It died with records in the pipe: they are lost.
      pass
    try:
      process.wait(timeout_seconds)
    except subprocess.TimeoutExpired:
      logging.error("%s: the log writer did not finish in %gs", self._name, timeout_seconds)
      process.kill()
      process.wait()
    self._reader.join(timeout_seconds)
    process.stdout.close()

  def close(self, timeout_seconds: float = 10.0) -> None:
    """Writes what is queued, then stops the thread and the writer process."""
    self._stop.set()
    self._thread.join(timeout_seconds)
    if self._process is not None:
      self._close_process(timeout_seconds)
