"""What every conversion is checked on: accuracy (overall and per slice) and latency.

All models are measured on the same examples in the same process, so the
numbers compare models rather than machines or data.
"""

import time
from typing import Callable
from typing import Dict
from typing import Mapping
from typing import Sequence

import numpy as np

from next_category.components.tflite_converter import examples as examples_lib


def accuracy_report(
  examples: examples_lib.EncodedExamples,
  probabilities: Mapping[str, np.ndarray],
  reference: str,
  slice_features: Sequence[str],
) -> Dict[str, object]:
  """Top-1 accuracy of each model, overall and per slice, and drops against `reference`.

  Args:
    examples: labeled examples.
    probabilities: model name -> [n, num_classes] probabilities on `examples`.
    reference: the model the others are compared with.
    slice_features: features whose values define the slices.

  Returns:
    `{"examples": n, "accuracy": {model: value}, "drop_points": {model: value},
    "slices": {feature: {value: {"examples", "accuracy", "drop_points"}}}}`,
    accuracies as fractions and drops in percentage points (positive: worse
    than the reference).

  Raises:
    ValueError: if the examples have no labels.
  """
  if examples.labels is None:
    raise ValueError("Accuracy needs labeled examples; these have no label.")
  correct = {name: np.argmax(p, axis=1) == examples.labels for name, p in probabilities.items()}

  def summarize(mask):
    accuracy = {name: float(c[mask].mean()) for name, c in correct.items()}
    return {
      "examples": int(mask.sum()),
      "accuracy": accuracy,
      "drop_points": {
        name: 100.0 * (accuracy[reference] - value)
        for name, value in accuracy.items()
        if name != reference
      },
    }

  report = summarize(np.ones(len(examples), bool))
  report["slices"] = {
    feature: {
      value: summarize(examples.slices[feature] == value)
      for value in sorted(set(examples.slices[feature]))
    }
    for feature in slice_features
  }
  return report


def latency_report(
  predictors: Mapping[str, Callable[[int], object]],
  num_examples: int,
  rounds: int = 5,
  warmup: int = 20,
) -> Dict[str, Dict[str, float]]:
  """Single-example latency percentiles of each predictor, in microseconds.

  Predictors take turns, `rounds` times over the same `num_examples` examples,
  so that load from other processes and clock changes spread over all of
  them instead of favouring whichever ran in a quiet moment.

  Args:
    predictors: name -> function predicting example `i` alone.
    num_examples: examples per round.
    rounds: how many times each predictor goes over the examples.
    warmup: untimed calls per predictor first.

  Returns:
    name -> `{"p50_us", "p99_us", "mean_us", "calls"}`.
  """
  timings = {name: [] for name in predictors}
  for predict in predictors.values():
    for i in range(warmup):
      predict(i % num_examples)
  for _ in range(rounds):
    for name, predict in predictors.items():
      for i in range(num_examples):
        start = time.perf_counter()
        predict(i)
        timings[name].append(time.perf_counter() - start)
  report = {}
  for name, seconds in timings.items():
    micros = np.array(seconds) * 1e6
    report[name] = {
      "p50_us": float(np.percentile(micros, 50)),
      "p99_us": float(np.percentile(micros, 99)),
      "mean_us": float(micros.mean()),
      "calls": len(micros),
    }
  return report
