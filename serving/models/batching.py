"""Dynamic batching of inference requests, as TensorFlow Serving's BatchingSession does.

Requests that run the same fetches on feeds of the same structure are queued into batches of at most
`max_batch_size` examples. A batch is processed as soon as it is full, or
`batch_timeout_micros` after its first request arrived, by one of
`num_batch_threads` threads; at most `max_enqueued_batches` batches wait per
queue, and a request that finds the queue full is refused at once
(`QUEUE_FULL_CODE`) instead of growing the queue without bound. Inputs are
concatenated along dimension 0 and, when `allowed_batch_sizes` is set, padded
up to the next allowed size with copies of the first row; outputs are split
back per request.
"""

import bisect
import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from typing import Callable
from typing import Deque
from typing import Dict
from typing import List
from typing import Optional
from typing import Tuple

import grpc
import numpy as np

from next_category.serving import status
from next_category.serving.config import server_config

# TensorFlow Serving answers a full batch queue with UNAVAILABLE; this server
# answers RESOURCE_EXHAUSTED (HTTP 429), the canonical code for "overloaded,
# back off", which clients and load balancers already treat as retryable.
QUEUE_FULL_CODE = grpc.StatusCode.RESOURCE_EXHAUSTED
QUEUE_FULL_MESSAGE = "The batch scheduling queue to which this task was submitted is full"

# Runs one batch: (fetches, feeds) -> fetched arrays, all with the batch first.
ProcessFn = Callable[[Tuple[str, ...], Dict[str, np.ndarray]], Dict[str, np.ndarray]]
# Observes each processed batch: (batch size, padding rows).
BatchObserver = Callable[[int, int], None]


class SchedulerClosedError(Exception):
  """The scheduler was closed (its model version is being unloaded)."""


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
  """TensorFlow Serving's `BatchingParameters`, with its defaults.

  Attributes:
    max_batch_size: the most examples in one batch; a request with more is
      rejected (INVALID_ARGUMENT), as in TensorFlow Serving.
    batch_timeout_micros: how long a batch that is not full may wait for more
      requests.
    max_enqueued_batches: batches that may wait in one queue.
    num_batch_threads: threads that process batches.
    allowed_batch_sizes: if set, batches are padded up to the next of these;
      increasing, the last equal to `max_batch_size`.
    pad_variable_length_inputs: pad inputs whose non-batch dimensions differ
      between requests (numbers with 0, strings with b"") so they can share a
      batch; otherwise such requests are processed in separate batches.
    thread_pool_name: the name of the batch threads.
  """

  max_batch_size: int = 1000
  batch_timeout_micros: int = 0
  max_enqueued_batches: int = 10
  num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
  allowed_batch_sizes: Tuple[int, ...] = ()
  pad_variable_length_inputs: bool = False
  thread_pool_name: str = "batch_threads"

  def __post_init__(self):
    if self.max_batch_size < 1:
      raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}.")
    if self.batch_timeout_micros < 0:
      raise ValueError(f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}.")
    if self.max_enqueued_batches < 1:
      raise ValueError(f"max_enqueued_batches must be >= 1, got {self.max_enqueued_batches}.")
    if self.num_batch_threads < 1:
      raise ValueError(f"num_batch_threads must be >= 1, got {self.num_batch_threads}.")
    sizes = list(self.allowed_batch_sizes)
    if sizes:
      if sizes != sorted(set(sizes)) or sizes[0] < 1:
        raise ValueError(
          f"allowed_batch_sizes must be positive and strictly increasing, got {sizes}."
        )
      if sizes[-1] != self.max_batch_size:
        raise ValueError(
          f"The last entry in allowed_batch_sizes ({sizes[-1]}) must equal "
          f"max_batch_size ({self.max_batch_size})."
        )

  @classmethod
  def from_proto(cls, proto) -> "BatchingOptions":
    """Options from a `BatchingParameters` proto; unset fields keep the defaults."""
    kwargs = {}
    for field in (
      "max_batch_size",
      "batch_timeout_micros",
      "max_enqueued_batches",
      "num_batch_threads",
      "thread_pool_name",
    ):
      if proto.HasField(field):
        kwargs[field] = getattr(proto, field).value
    kwargs["allowed_batch_sizes"] = tuple(proto.allowed_batch_sizes)
    kwargs["pad_variable_length_inputs"] = proto.pad_variable_length_inputs
    return cls(**kwargs)


def load_batching_parameters(path: Optional[str]) -> BatchingOptions:
  """Reads a BatchingParameters text proto file; no path gives the defaults.

  Raises:
    ValueError: if the file is not valid or its values are inconsistent.
  """
  if not path:
    return BatchingOptions()
  proto = server_config.read_text_proto(path, server_config.BatchingParameters())
  return BatchingOptions.from_proto(proto)


def input_batch_size(inputs: Dict[str, np.ndarray]) -> int:
  """The batch size of a batched run's feeds, as TensorFlow Serving's BatchingSession takes it.

  `ComputeTensorBatchSize` (tensorflow_serving/batching/batching_util.h:82-110),
  with its messages.

  Raises:
    ServingError: INVALID_ARGUMENT for no feeds, a scalar feed, or feeds whose
      0th dimensions differ.
  """
  if not inputs:
    raise status.invalid_argument("Batching Run() must have at least one input tensor")
  sizes = set()
  for array in inputs.values():
    if array.ndim == 0:
      raise status.invalid_argument("Batching Run() input tensors must have at least one dimension")
    sizes.add(array.shape[0])
  if len(sizes) > 1:
    raise status.invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
  return sizes.pop()


class _Task:
  __slots__ = ("fetches", "inputs", "size", "future", "deadline")

  def __init__(self, fetches, inputs, size, deadline):
    self.fetches = fetches
    self.inputs = inputs
    self.size = size
    self.future = concurrent.futures.Future()
    self.deadline = deadline


class _Batch:
  __slots__ = ("tasks", "size", "start")

  def __init__(self):
    self.tasks: List[_Task] = []
    self.size = 0
    self.start = 0.0


class BatchScheduler:
  """Batches the requests of one model version and runs them on batch threads.

  Thread-safe: `schedule` may be called from any thread.

  Args:
    process_fn: runs a batch; see `ProcessFn`.
    options: the batching parameters.
    name: used in thread names and logs.
    observer: optional callback for each processed batch.
  """

  def __init__(
    self,
    process_fn: ProcessFn,
    options: BatchingOptions,
    name: str = "",
    observer: Optional[BatchObserver] = None,
  ):
    self._process_fn = process_fn
    self._options = options
    self._name = name
    self._observer = observer
    self._timeout = options.batch_timeout_micros / 1e6
    self._cond = threading.Condition()
    # One queue per fetches and feed structure (TensorFlow Serving's
    # TensorSignature): only requests that can be concatenated share a batch.
    self._queues: Dict[tuple, Deque[_Batch]] = {}
    self._closed = False
    self._threads = [
      threading.Thread(target=self._run, daemon=True, name=f"{options.thread_pool_name}-{name}-{i}")
      for i in range(options.num_batch_threads)
    ]
    for thread in self._threads:
      thread.start()

  def _queue_key(self, fetches: Tuple[str, ...], inputs: Dict[str, np.ndarray]) -> tuple:
    if self._options.pad_variable_length_inputs:
      return (fetches,) + tuple(
        (name, array.dtype.str, array.ndim) for name, array in sorted(inputs.items())
      )
    return (fetches,) + tuple(
      (name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items())
    )

  def schedule(
    self,
    fetches: Tuple[str, ...],
    inputs: Dict[str, np.ndarray],
    size: int,
    deadline: Optional[float] = None,
  ) -> concurrent.futures.Future:
    """Queues one request of `size` examples.

    Args:
      fetches: what to fetch (passed to the process function; hashable).
      inputs: the request's feeds, all with `size` rows.
      size: the request's batch size.
      deadline: `time.monotonic()` after which the caller no longer waits.

    Returns:
      A future of the request's outputs.

    Raises:
      ServingError: INVALID_ARGUMENT if `size` is over `max_batch_size`;
        `QUEUE_FULL_CODE` if the queue is full.
      SchedulerClosedError: if the scheduler has been closed.
    """
    if size > self._options.max_batch_size:
      raise status.invalid_argument(
        f"Task size {size} is larger than maximum input batch size {self._options.max_batch_size}"
      )
    task = _Task(fetches, inputs, size, deadline)
    key = self._queue_key(fetches, inputs)
    with self._cond:
      if self._closed:
        raise SchedulerClosedError(self._name)
      queue = self._queues.get(key)
      if queue is None:
        queue = self._queues[key] = collections.deque()
      if not queue or queue[-1].size + size > self._options.max_batch_size:
        if len(queue) >= self._options.max_enqueued_batches:
          raise status.ServingError(QUEUE_FULL_CODE, QUEUE_FULL_MESSAGE)
        queue.append(_Batch())
      batch = queue[-1]
      if not batch.tasks:
        batch.start = time.monotonic()
      batch.tasks.append(task)
      batch.size += size
      # A waiting batch thread only needs waking when a batch appears (its
      # timeout starts) or fills up; waking it for every request costs each
      # request a thread switch.
      if len(batch.tasks) == 1 or batch.size >= self._options.max_batch_size:
        self._cond.notify()
    return task.future

  def close(self, timeout: Optional[float] = 30.0) -> None:
    """Stops taking requests, processes those already queued, and joins the threads."""
    with self._cond:
      self._closed = True
      self._cond.notify_all()
    for thread in self._threads:
      thread.join(timeout)

  def _next_batch(self) -> Optional[_Batch]:
    """Takes the oldest ready batch, or waits; None once closed and drained."""
    with self._cond:
      while True:
        now = time.monotonic()
        ready_key, wait = None, None
        for key, queue in self._queues.items():
          head = queue[0]
          if (
            head.size >= self._options.max_batch_size
            or len(queue) > 1
            or self._closed
            or now - head.start >= self._timeout
          ):
            if ready_key is None or head.start < self._queues[ready_key][0].start:
              ready_key = key
          else:
            remaining = self._timeout - (now - head.start)
            wait = remaining if wait is None else min(wait, remaining)
        if ready_key is not None:
          queue = self._queues[ready_key]
          batch = queue.popleft()
          if not queue:
            del self._queues[ready_key]
          return batch
        if self._closed:
          return None
        self._cond.wait(wait)

  def _run(self) -> None:
    while True:
      batch = self._next_batch()
      if batch is None:
        return
      try:
        self._process(batch.tasks)
      except Exception as e:  # Never let a batch thread die.
        logging.exception("Batch processing failed in %s", self._name)
        for task in batch.tasks:
          if not task.future.done():
            task.future.set_exception(
              status.ServingError(grpc.StatusCode.INTERNAL, f"Batch processing failed: {e}")
            )

  def _process(self, tasks: List[_Task]) -> None:
    now = time.monotonic()
    live = []
    for task in tasks:
      if task.deadline is not None and now > task.deadline:
        task.future.set_exception(
          status.ServingError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline exceeded while the request waited in the batch queue.",
          )
        )
      elif task.future.set_running_or_notify_cancel():
        live.append(task)
    if not live:
      return
    try:
      self._run_batch(live)
    except status.ServingError as e:
      if len(live) == 1:
        live[0].future.set_exception(e)
        return
      # One bad request (say, an undecodable tf.Example) must not fail the
      # others it was batched with: run each alone to find out whose it is.
      for task in live:
        try:
          self._run_batch([task])
        except status.ServingError as single_error:
          task.future.set_exception(single_error)

  def _run_batch(self, tasks: List[_Task]) -> None:
    size = sum(task.size for task in tasks)
    target = size
    if self._options.allowed_batch_sizes:
      sizes = self._options.allowed_batch_sizes
      target = sizes[min(bisect.bisect_left(sizes, size), len(sizes) - 1)]
    inputs = {
      name: _concatenate([task.inputs[name] for task in tasks], target - size)
      for name in tasks[0].inputs
    }
    outputs = self._process_fn(tasks[0].fetches, inputs)
    if self._observer is not None:
      self._observer(size, target - size)
    start = 0
    for task in tasks:
      end = start + task.size
      result = {}
      for name, array in outputs.items():
        # BatchingSession::SplitOutputTensors (batching_session.cc:624-633).
        if array.ndim == 0:
          raise status.ServingError(
            grpc.StatusCode.FAILED_PRECONDITION, "Batched output tensor has 0 dimensions"
          )
        if array.shape[0] != target:
          raise status.ServingError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "Batched output tensor's 0th dimension does not equal the sum of the "
            "0th dimension sizes of the input tensors",
          )
        result[name] = array[start:end]
      task.future.set_result(result)
      start = end


def _concatenate(arrays: List[np.ndarray], padding_rows: int) -> np.ndarray:
  """Concatenates along dimension 0, padding non-batch dimensions and rows."""
  inner = tuple(max(dims) for dims in zip(*(a.shape[1:] for a in arrays), strict=True))
  fill = b"" if arrays[0].dtype == object else 0
  padded = []
  for array in arrays:
    if array.shape[1:] != inner:
      growth = zip(array.shape[1:], inner, strict=True)
      widths = [(0, 0)] + [(0, want - have) for have, want in growth]
      array = np.pad(array, widths, constant_values=fill)
    padded.append(array)
  if padding_rows:
    padded.append(np.repeat(padded[0][:1], padding_rows, axis=0))
  if len(padded) == 1:
    return padded[0]
  return np.concatenate(padded, axis=0)
