"""Gives the heap's free memory back to the operating system after large requests fail.

glibc keeps what a large request freed (its bytes, the parsed message) in the
process's heap arenas for reuse, so after a burst of large refused requests the
server's resident memory stays as high as at the burst's peak (issue 21: 40
gRPC requests with 8 MB model names, 0.87 -> 2.2 GB, never given back).
`malloc_trim(0)` returns the free pages; it walks every arena, so it runs at
most once per `_MIN_INTERVAL_SECONDS`, on a thread of its own, and only after
a request of at least `LARGE_REQUEST_BYTES` failed. Without glibc (musl,
macOS) it does nothing.
"""

import ctypes
import ctypes.util
import logging
import threading
import time

# A failed request at least this large asks for a trim.
LARGE_REQUEST_BYTES = 1024 * 1024
# A trim runs this long after the first such request, and at most once per interval.
_MIN_INTERVAL_SECONDS = 0.5


def _malloc_trim():
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    trim = libc.malloc_trim
  except (OSError, AttributeError):
    return None
  trim.argtypes = [ctypes.c_size_t]
  trim.restype = ctypes.c_int
  return trim


_TRIM = _malloc_trim()
_lock = threading.Lock()
_scheduled = False


def _run() -> None:
  global _scheduled
  time.sleep(_MIN_INTERVAL_SECONDS)
  with _lock:
    _scheduled = False
  try:
    _TRIM(0)
  except Exception:  # Never worth failing a request or a thread for.
    logging.debug("malloc_trim failed", exc_info=True)


def after_failed_request(size: int) -> None:
  """Schedules a trim if a failed request of `size` bytes was large; cheap otherwise."""
  global _scheduled
  if size < LARGE_REQUEST_BYTES or _TRIM is None or _scheduled:
    return
  with _lock:
    if _scheduled:
      return
    _scheduled = True
  threading.Thread(target=_run, name="heap-trim", daemon=True).start()
