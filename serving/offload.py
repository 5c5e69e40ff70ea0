"""Work taken off the request path: a bounded queue drained by one background thread.

The request logs and the audit log both write through it: a request only
appends to a queue (or drops its record when the queue is full), so a slow or
full disk never delays or fails a request; what could not be written is
counted, never raised.
"""

import logging
import queue
import threading
from typing import Any
from typing import Callable
from typing import Optional

_STOP = object()


class BackgroundWriter:
  """Hands records to `write` on a thread of its own.

  Args:
    name: the thread's name, also used in log messages.
    write: called with each record on the background thread; an exception
      drops that record and counts it.
    on_drop: called with a reason ("queue_full" or "write_error") for each
      dropped record.
    max_queued: records waiting beyond this are dropped.
    flush: called when the queue runs empty and at `close`.
  """

  def __init__(
    self,
    name: str,
    write: Callable[[Any], None],
    on_drop: Optional[Callable[[str], None]] = None,
    max_queued: int = 10_000,
    flush: Optional[Callable[[], None]] = None,
  ):
    self._name = name
    self._write = write
    self._flush = flush
    self._on_drop = on_drop or (lambda reason: None)
    self._queue: "queue.Queue[Any]" = queue.Queue(max_queued)
    self._errors_logged = 0
    self._thread = threading.Thread(target=self._run, name=name, daemon=True)
    self._thread.start()

  def submit(self, record: Any) -> None:
    """Queues `record`; never blocks, never raises."""
    try:
      self._queue.put_nowait(record)
    except queue.Full:
      self._on_drop("queue_full")

  def _run(self) -> None:
    while True:
      record = self._queue.get()
      if record is _STOP:
        self._safe_flush()
        return
      try:
        self._write(record)
      except Exception as e:  # A full disk drops records, it never stops the server.
        self._on_drop("write_error")
        if self._errors_logged < 10:  # Bounded: a full disk must not flood the log.
          self._errors_logged += 1
          logging.error("%s: dropped a record: %s: %s", self._name, type(e).__name__, e)
      if self._queue.empty():
        self._safe_flush()

  def _safe_flush(self) -> None:
    if self._flush is None:
      return
    try:
      self._flush()
    except Exception as e:
      logging.error("%s: flush failed: %s: %s", self._name, type(e).__name__, e)

  def close(self, timeout_seconds: float = 10.0) -> None:
    """Writes what is queued, then stops the thread."""
    try:
      self._queue.put(_STOP, timeout=timeout_seconds)
    except queue.Full:
      return
    self._thread.join(timeout_seconds)
