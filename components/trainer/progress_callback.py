"""A Keras callback that reports training progress through the `progress` module beside it."""

import time
from typing import List
from typing import Optional

import tensorflow as tf

from next_category.components.trainer import budget as training_budget
from next_category.components.trainer import progress

# Seconds between two reports (the last step is always reported).
_INTERVAL_SECONDS = 0.5


class ProgressReporter(tf.keras.callbacks.Callback):
  """Appends step, epoch, loss, examples/s and time left to a progress file.

  Args:
    path: the progress file (see `progress.report_path`).
    total_steps: the most training steps of the run.
    global_batch_size: examples per step, over all replicas.
    interval_seconds: the least time between two reports.
    steps_per_epoch: steps in one pass over the train split (0: unknown, no
      epochs reported).

  Example:

  ```python
  model.fit(dataset, steps_per_epoch=400, callbacks=[ProgressReporter(path, 400, 256)])
  ```
  """

  def __init__(
    self,
    path: str,
    total_steps: int,
    global_batch_size: int,
    interval_seconds: float = _INTERVAL_SECONDS,
    steps_per_epoch: int = 0,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.path = path
    self.total_steps = total_steps
    self.global_batch_size = global_batch_size
    self.interval_seconds = interval_seconds
    self.steps_per_epoch = steps_per_epoch
    self._first = None  # (step, time) of the first finished step
    self._last_report = 0.0
    self._step = 0

  def on_train_batch_end(self, batch, logs=None):
    now = time.monotonic()
    self._step += 1
    if self._first is None:
      # The first step includes tracing: rates count from its end.
      self._first = (self._step, now)
    if self._step < self.total_steps and now - self._last_report < self.interval_seconds:
      return
    self._last_report = now
    first_step, first_time = self._first
    steps_per_second = (self._step - first_step) / (now - first_time) if now > first_time else 0
    report = {
      "phase": progress.TRAIN,
      "step": self._step,
      "total": self.total_steps,
      "epoch": self._step / self.steps_per_epoch if self.steps_per_epoch else None,
      "loss": float((logs or {}).get("loss", float("nan"))),
      "examples_per_second": steps_per_second * self.global_batch_size,
      "seconds_left": (
        (self.total_steps - self._step) / steps_per_second if steps_per_second else None
      ),
    }
    progress.write(self.path, report)

  def on_test_begin(self, logs=None):
    progress.write(self.path, {"phase": progress.VALIDATE})

  def on_epoch_end(self, epoch, logs=None):
    # Keras epochs are validation periods (see `budget.TrainingBudget`).
    if logs and "val_loss" in logs:
      progress.write(
        self.path,
        {"phase": progress.VALIDATED, "step": self._step, "val_loss": float(logs["val_loss"])},
      )

  def on_train_end(self, logs=None):
    progress.write(self.path, {"phase": progress.EXPORT})


def callbacks(
  budget: training_budget.TrainingBudget, global_batch_size: int, chief: bool = True
) -> List[ProgressReporter]:
  """The progress callback when the pipeline listens (and this is the chief), else none."""
  path: Optional[str] = progress.report_path()
  if not path or not chief:
    return []
  return [
    ProgressReporter(
      path, budget.total_steps, global_batch_size, steps_per_epoch=budget.steps_per_epoch
    )
  ]
