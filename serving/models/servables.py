"""A loaded model version (a servable), whatever its format, run as TF Serving runs a session.

A servable knows its signatures (`SignatureDef`s, exactly as TensorFlow Serving
reports them) and runs them as a TensorFlow `Session` runs a graph: tensors fed
by tensor name, tensors fetched by tensor name (`Session::Run(feeds, fetches)`,
which TensorFlow Serving's Predict, Classify, Regress and MultiInference all
call). It runs either directly or through a `BatchScheduler` when batching is
on, as TensorFlow Serving wraps a session in a BatchingSession at load time.
Each model format subclasses `Servable` in a module of its own
(saved_model.py, tflite.py); loader.py picks the format.
"""

import concurrent.futures
from typing import Callable
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from next_category.serving.models import batching

DEFAULT_SIGNATURE_NAME = "serving_default"

BatchObserverFactory = Callable[[str, int], Optional[batching.BatchObserver]]


class Servable:
  """One loaded version of a model.

  Attributes:
    name: the model name.
    version: the version number.
    path: the version directory.
    platform: "tensorflow" or "tflite".
    signature_defs: every SignatureDef of the model, by key.
  """

  platform = ""

  def __init__(self, name: str, version: int, path: str):
    self.name = name
    self.version = version
    self.path = path
    self.signature_defs: Dict[str, meta_graph_pb2.SignatureDef] = {}
    self._scheduler: Optional[batching.BatchScheduler] = None
    self._executor: Optional[concurrent.futures.Executor] = None
    self._close_callbacks: List[Callable[[], None]] = []

  def run(self, fetches: Sequence[str], feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Runs the model on the calling thread: `Session::Run(feeds, fetches)`.

    Args:
      fetches: tensor names to fetch (a signature's `TensorInfo.name`s).
      feeds: arrays by the tensor name they feed.

    Returns:
      The fetched arrays, by tensor name.

    Raises:
      ServingError: with TensorFlow's status if the model fails.
    """
    raise NotImplementedError

  def attach(
    self,
    executor: concurrent.futures.Executor,
    batching_options: Optional[batching.BatchingOptions] = None,
    observer: Optional[batching.BatchObserver] = None,
  ) -> None:
    """Sets where `submit` runs requests: a batch scheduler, or `executor`."""
    self._executor = executor
    if batching_options is not None:
      self._scheduler = batching.BatchScheduler(
        self.run, batching_options, name=f"{self.name}-{self.version}", observer=observer
      )

  @property
  def batching(self) -> bool:
    """Whether `submit` batches requests (then inputs must share a 0th dimension)."""
    return self._scheduler is not None

  def submit(
    self,
    fetches: Sequence[str],
    feeds: Dict[str, np.ndarray],
    batch_size: int,
    deadline: Optional[float] = None,
  ) -> concurrent.futures.Future:
    """Runs the model asynchronously, batched with other requests if batching is on.

    Args:
      fetches: as `run`; a tuple (it keys the batch queues).
      feeds: as `run`.
      batch_size: the request's examples (the feeds' 0th dimension).
      deadline: `time.monotonic()` after which the caller stops waiting.

    Returns:
      A future of `run`'s result.

    Raises:
      ServingError: if the batch queue refuses the request.
      SchedulerClosedError: if this servable is being unloaded.
    """
    fetches = tuple(fetches)
    if self._scheduler is not None:
      return self._scheduler.schedule(fetches, feeds, batch_size, deadline)
    if self._executor is None:
      raise batching.SchedulerClosedError(self.name)
    try:
      return self._executor.submit(self.run, fetches, feeds)
    except RuntimeError:  # The executor is shut down: the server is stopping.
      raise batching.SchedulerClosedError(self.name) from None

  def call_when_closed(self, callback: Callable[[], None]) -> None:
    """Runs `callback` after `close` (the loader removes the version's private copy so)."""
    self._close_callbacks.append(callback)

  def close(self) -> None:
    """Finishes queued requests and stops taking new ones."""
    if self._scheduler is not None:
      self._scheduler.close()
    self._executor = None
    callbacks, self._close_callbacks = self._close_callbacks, []
    for callback in callbacks:
      callback()
