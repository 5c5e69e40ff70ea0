"""Work taken off the request path: records queued in memory, written by one background thread.

The request logs and the audit log both write through it. A request only
appends its record to a bounded deque (or drops it when the deque is full):
no lock, no wakeup of another thread. The writer thread wakes on its own
every `interval_seconds`, encodes everything queued and writes it in one
call, so a slow or full disk never delays or fails a request; what cannot be
written is counted, never raised.

One write per round rather than one per record matters on a busy server: a
write releases the GIL, and taking it back costs the thread that had it (the
event loop) a forced switch; per record, that cost the server more than the
encoding itself (README "Serving in production").
"""

import collections
import logging
import threading
from typing import Any
from typing import Callable
from typing import List
from typing import Optional


class BackgroundWriter:
  """Hands records to `write` on a thread of its own.

  Args:
    name: the thread's name, also used in log messages.
    encode: turns one record into bytes, on the background thread; an
      exception drops that record and counts it.
    write: called on the background thread with the encoded records of a
      round, in order; an exception drops them all and counts them.
    on_drop: called with a reason ("queue_full" or "write_error") for each
      dropped record.
    max_queued: records waiting beyond this are dropped.
    interval_seconds: how often the thread wakes to write what is queued.
  """

  def __init__(
    self,
    name: str,
    encode: Callable[[Any], bytes],
    write: Callable[[List[bytes]], None],
    on_drop: Optional[Callable[[str], None]] = None,
    max_queued: int = 10_000,
    interval_seconds: float = 0.05,
  ):
    self._name = name
    self._encode = encode
    self._write = write
    self._on_drop = on_drop or (lambda reason: None)
    self._max_queued = max_queued
    self._interval_seconds = interval_seconds
    # deque.append and popleft are atomic: the request path takes no lock.
    self._records: collections.deque = collections.deque()
    self._errors_logged = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name=name, daemon=True)
    self._thread.start()

  def submit(self, record: Any) -> None:
    """Queues `record`; never blocks, never raises."""
    if len(self._records) >= self._max_queued:
      self._on_drop("queue_full")
      return
    self._records.append(record)

  def _run(self) -> None:
    while not self._stop.wait(self._interval_seconds):
      self._drain()
    self._drain()

  def _drain(self) -> None:
    encoded = []
    while self._records:
      record = self._records.popleft()
      try:
        encoded.append(self._encode(record))
      except Exception as e:  # A record that cannot be encoded is dropped alone.
        self._drop(1, e)
    if not encoded:
      return
    try:
      self._write(encoded)
    except Exception as e:  # A full disk drops records, it never stops the server.
      self._drop(len(encoded), e)

  def _drop(self, count: int, error: Exception) -> None:
    for _ in range(count):
      self._on_drop("write_error")
    if self._errors_logged < 10:  # Bounded: a full disk must not flood the log.
      self._errors_logged += 1
      logging.error(
        "%s: dropped %d record(s): %s: %s", self._name, count, type(error).__name__, error
      )

  def close(self, timeout_seconds: float = 10.0) -> None:
    """Writes what is queued, then stops the thread."""
    self._stop.set()
    self._thread.join(timeout_seconds)
