"""Top-k accuracy of a sparse multi-class label as a TFMA metric computed in NumPy.

TFMA runs Keras metrics (`SparseCategoricalAccuracy`,
`SparseTopKCategoricalAccuracy`) through `tf_metric_wrapper`: every example of
every slice is converted by `metric_util.to_label_prediction_example_weight`,
and batches go through a `tf.function` that is traced again for each new batch
size. On the default data that was about half the Evaluator's time. This
metric computes the same values with one NumPy comparison per example:
top-1 as Keras's `sparse_categorical_accuracy` (`argmax(prediction) == label`,
the first of equal scores winning), top-k as `tf.math.in_top_k`, which Keras's
`sparse_top_k_categorical_accuracy` calls (the label is in the top k when
fewer than k classes score strictly higher than it, so ties count as hits).
"""

from typing import Dict
from typing import Iterable
from typing import List
from typing import Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types


class SparseTopKAccuracy(metric_types.Metric):
  """The fraction of examples whose integer label is among the k highest scores.

  Args:
    top_k: how many of the highest-scoring classes count as a hit; 1 is
      Keras's `sparse_categorical_accuracy`.
    name: the metric's name in TFMA's results (and in thresholds).

  Example:
    `tfma.MetricConfig(class_name="SparseTopKAccuracy",
    module="next_category.components.evaluator.metrics",
    config='"top_k": 3, "name": "top_3_accuracy"')`
  """

  def __init__(self, top_k: int = 1, name: str = "sparse_categorical_accuracy"):
    if top_k < 1:
      raise ValueError(f"top_k must be at least 1, got {top_k}.")
    super().__init__(_sparse_top_k_accuracy, top_k=top_k, name=name)


metric_types.register_metric(SparseTopKAccuracy)


def _sparse_top_k_accuracy(
  top_k: int,
  name: str,
  eval_config=None,
  model_names: Optional[List[str]] = None,
  output_names: Optional[List[str]] = None,
  sub_keys: Optional[List[metric_types.SubKey]] = None,
  example_weighted: bool = False,
) -> metric_types.MetricComputations:
  """One computation per model and output, each a `_TopKAccuracyCombiner`."""
  del eval_config  # The labels and predictions arrive already extracted.
  if sub_keys and any(k is not None for k in sub_keys):
    raise ValueError(
      f"{name} is computed over all classes at once and takes no sub keys (class_ids, "
      f"top_k, k), got {sub_keys}."
    )
  computations = []
  for model_name in model_names or [""]:
    for output_name in output_names or [""]:
      key = metric_types.MetricKey(
        name=name,
        model_name=model_name,
        output_name=output_name,
        example_weighted=example_weighted,
      )
      computations.append(
        metric_types.MetricComputation(
          keys=[key],
          preprocessors=[metric_types.StandardMetricInputsPreprocessor()],
          combiner=_TopKAccuracyCombiner(key, top_k, example_weighted),
        )
      )
  return computations


class _TopKAccuracyCombiner(beam.CombineFn):
  """Sums (weighted hits, weights) over the examples of one slice."""

  def __init__(self, key: metric_types.MetricKey, top_k: int, example_weighted: bool):
    self._key = key
    self._top_k = top_k
    self._example_weighted = example_weighted

  def create_accumulator(self) -> np.ndarray:
    return np.zeros(2)

  def add_input(
    self, accumulator: np.ndarray, element: metric_types.StandardMetricInputs
  ) -> np.ndarray:
    label, prediction = self._label_and_prediction(element)
    if self._top_k == 1:
      hit = int(np.argmax(prediction)) == label
    else:
      hit = int(np.count_nonzero(prediction > prediction[label])) < self._top_k
    weight = 1.0
    if self._example_weighted and element.example_weight is not None:
      weight = float(np.asarray(element.example_weight).reshape(-1)[0])
    accumulator[0] += weight * hit
    accumulator[1] += weight
    return accumulator

  def _label_and_prediction(self, element: metric_types.StandardMetricInputs):
    """The integer label and the score vector of one example."""
    label, prediction = element.label, element.prediction
    for part in ("model_name", "output_name"):
      name = getattr(self._key, part)
      if name and isinstance(prediction, dict):
        prediction = prediction[name]
      if name and isinstance(label, dict):
        label = label[name]
    if isinstance(prediction, dict) or isinstance(label, dict):
      raise ValueError(
        f"{self._key.name} needs one label and one score vector per example, got a dict "
        "(a model with several outputs needs the output_name of the one to evaluate)."
      )
    label = np.asarray(label).reshape(-1)
    prediction = np.asarray(prediction).reshape(-1)
    if label.size != 1:
      raise ValueError(
        f"{self._key.name} needs one integer class id as the label of each example, got "
        f"{label.size} values."
      )
    label = int(label[0])
    if not 0 <= label < prediction.size:
      raise ValueError(
        f"{self._key.name}: label {label} is not a class of the model's {prediction.size} scores."
      )
    return label, prediction

  def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
    accumulators = iter(accumulators)
    result = next(accumulators)
    for accumulator in accumulators:
      result = result + accumulator
    return result

  def extract_output(self, accumulator: np.ndarray) -> Dict[metric_types.MetricKey, float]:
    hits, weights = accumulator
    return {self._key: float(hits / weights) if weights else float("nan")}
