"""How long the Trainer trains: a number of epochs that follows the data, with a cap.

The default budget is `train_epochs` passes over the train split, so a larger
dataset trains longer. A small split still gets `MIN_STEPS` steps (many
epochs of a few thousand documents), early stopping ending it once the eval
loss stops falling. Passes over a large split are capped by
`max_steps_for`, which grows with the square root of the split's size:
on 2 CPU cores a million examples must still train in about two minutes, and
early stopping on the eval split's loss (checked every `validation_every`
steps) ends a run that has stopped improving before either limit. An explicit
`train_steps` (the Trainer's `train_args.num_steps`) overrides all of this:
exactly that many steps, validated once at the end, no early stopping.
"""

import dataclasses
import json
import math
import os
from typing import Any
from typing import Dict
from typing import Optional

# Epochs of the train split when neither `train_epochs` nor `train_steps` is given.
DEFAULT_EPOCHS = 2
# The fewest steps of an epochs budget: a few thousand examples need many epochs.
MIN_STEPS = 400
# Early stopping waits for this many validations without a better eval loss,
# and for at least `_PATIENCE_STEPS` steps.
_PATIENCE = 2
_PATIENCE_STEPS = 100
# The step cap is this many steps at `_REFERENCE_EXAMPLES` train examples and
# grows with the square root of the size beyond (see `max_steps_for`).
_REFERENCE_STEPS = 640
_REFERENCE_EXAMPLES = 40_000
# The eval split's loss is checked at least this often (in steps), and at
# least once an epoch.
_MAX_VALIDATION_INTERVAL = 250
# Written to the Trainer's model_run directory, read by the run report.
STOPPING_POINT_FILE = "training.json"
# Warmup: this fraction of the run's steps, at most `_MAX_WARMUP_STEPS`.
_WARMUP_FRACTION = 0.05
_MAX_WARMUP_STEPS = 100


@dataclasses.dataclass(frozen=True)
class TrainingBudget:
  """The steps of one training run and how they are cut into validation periods.

  Attributes:
    total_steps: the most steps the run takes (early stopping may end it sooner).
    steps_per_epoch: steps in one pass over the train split (0 when unknown).
    validation_every: steps between two checks of the eval split's loss; the
      run is `total_steps // validation_every` Keras epochs of this many steps.
    warmup_steps: steps of linear learning-rate warmup before the cosine decay.
    epochs: the epochs asked for (None when `train_steps` set the budget).
    capped: whether `max_steps_for` cut the epochs short.
    patience: validations without a better eval loss before training stops.
  """

  total_steps: int
  steps_per_epoch: int
  validation_every: int
  warmup_steps: int
  epochs: Optional[int] = None
  capped: bool = False
  patience: int = _PATIENCE

  @property
  def periods(self) -> int:
    """Keras epochs of `validation_every` steps each."""
    return max(1, self.total_steps // self.validation_every)

  def epochs_done(self, steps: int) -> float:
    """How many passes over the train split `steps` steps make (0 when unknown)."""
    return steps / self.steps_per_epoch if self.steps_per_epoch else 0.0


def max_steps_for(num_train_examples: int) -> int:
  """The step cap for a train split of this size: `_REFERENCE_STEPS` × sqrt(size / reference).

  At the default 40,000 train examples the cap is above 4 epochs of batch
  256; at 800,000 (a million examples, split 4:1) it is 2,862 steps, under
  one epoch, which is enough there: each step sees new examples.
  """
  scale = max(1.0, num_train_examples / _REFERENCE_EXAMPLES)
  return int(round(_REFERENCE_STEPS * math.sqrt(scale)))


def plan(
  num_train_examples: int,
  batch_size: int,
  train_epochs: Optional[int] = None,
  train_steps: Optional[int] = None,
) -> TrainingBudget:
  """The budget of a run on `num_train_examples` examples at `batch_size`.

  Args:
    num_train_examples: examples in the train split.
    batch_size: the global batch size.
    train_epochs: passes over the train split (default `DEFAULT_EPOCHS`).
    train_steps: an exact number of steps; overrides `train_epochs` and the cap.

  Returns:
    The `TrainingBudget`.

  Raises:
    ValueError: if a count is not positive or the split is smaller than a batch.
  """
  if batch_size < 1:
    raise ValueError(f"The batch size must be positive, got {batch_size}.")
  if train_steps is not None and train_steps < 1:
    raise ValueError(f"train_steps must be positive, got {train_steps}.")
  if train_epochs is not None and train_epochs < 1:
    raise ValueError(f"train_epochs must be positive, got {train_epochs}.")
  steps_per_epoch = num_train_examples // batch_size
  if train_steps is None and steps_per_epoch < 1:
    raise ValueError(
      f"The train split has {num_train_examples} examples, fewer than one batch of "
      f"{batch_size}: give the Trainer more data or a preset with a smaller batch size."
    )
  epochs = None
  capped = False
  if train_steps is not None:
    total = train_steps
  else:
    epochs = train_epochs or DEFAULT_EPOCHS
    total = max(epochs * steps_per_epoch, MIN_STEPS)
    cap = max_steps_for(num_train_examples)
    if total > cap:
      total, capped = cap, True
  if train_steps is not None:
    every = total
  else:
    every = min(_MAX_VALIDATION_INTERVAL, steps_per_epoch, total)
    # Whole periods: the last partial period would end without validation.
    total = total // every * every
  warmup = min(_MAX_WARMUP_STEPS, int(total * _WARMUP_FRACTION))
  patience = max(_PATIENCE, math.ceil(_PATIENCE_STEPS / every))
  return TrainingBudget(total, steps_per_epoch, every, warmup, epochs, capped, patience)


@dataclasses.dataclass(frozen=True)
class StoppingPoint:
  """Where a run stopped and which weights it kept.

  Attributes:
    budget: the run's budget.
    steps_run: steps trained before stopping.
    best_step: the step whose weights were kept (the lowest eval loss).
    stopped_early: whether early stopping ended the run before its budget.
  """

  budget: TrainingBudget
  steps_run: int
  best_step: int
  stopped_early: bool

  def as_dict(self) -> Dict[str, Any]:
    """The JSON form: the budget's fields, these, and both points in epochs."""
    return {
      **dataclasses.asdict(self.budget),
      "steps_run": self.steps_run,
      "best_step": self.best_step,
      "stopped_early": self.stopped_early,
      "epochs_run": round(self.budget.epochs_done(self.steps_run), 3),
      "best_epoch": round(self.budget.epochs_done(self.best_step), 3),
    }


def describe(point: Dict[str, Any]) -> str:
  """One line for a stopping point's JSON form (`StoppingPoint.as_dict`)."""
  if point.get("epochs"):
    asked = f"{point['epochs']} epochs"
    if point.get("capped"):
      asked += f", capped at {point['total_steps']} steps"
  else:
    asked = f"{point['total_steps']} steps"
  ran = f"{point['steps_run']} steps ({point['epochs_run']:.2f} epochs)"
  text = f"stopped early after {ran}" if point.get("stopped_early") else f"trained {ran}"
  best = f"step {point['best_step']} ({point['best_epoch']:.2f} epochs)"
  return f"{text} of {asked}; kept the weights of {best}, the lowest eval loss"


def write_stopping_point(model_run_dir: str, point: StoppingPoint) -> str:
  """Writes `point` as JSON into the run directory; returns the file's path."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  path = os.path.join(model_run_dir, STOPPING_POINT_FILE)
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump(point.as_dict(), f)
  return path
