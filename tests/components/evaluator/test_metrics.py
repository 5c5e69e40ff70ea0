"""Tests of the NumPy top-k accuracy against the Keras metrics it replaces."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_model_analysis.metrics import metric_specs
from tensorflow_model_analysis.metrics import metric_types

from next_category.components.evaluator import metrics
from next_category.pipeline import pipeline


def _combine(top_k, labels, predictions, weights=None, example_weighted=False):
  (computation,) = metrics.SparseTopKAccuracy(top_k=top_k, name="acc").computations(
    example_weighted=example_weighted
  )
  combiner = computation.combiner
  # Two accumulators merged, as Beam combines the bundles of a slice.
  halves = []
  for part in (slice(0, len(labels) // 2), slice(len(labels) // 2, None)):
    accumulator = combiner.create_accumulator()
    for i in range(len(labels))[part]:
      element = metric_types.StandardMetricInputs(
        labels=np.array([labels[i]]),
        predictions=predictions[i],
        example_weights=None if weights is None else np.array([weights[i]]),
      )
      accumulator = combiner.add_input(accumulator, element)
    halves.append(accumulator)
  (value,) = combiner.extract_output(combiner.merge_accumulators(halves)).values()
  return value


def _scores_with_ties(num_examples=300, num_classes=6, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, num_examples)
  # Coarse scores, so that many examples have ties at the label's score.
  predictions = rng.integers(0, 4, (num_examples, num_classes)).astype(np.float32) / 4
  return labels, predictions


def test_top_1_equals_keras_sparse_categorical_accuracy_with_ties():
  labels, predictions = _scores_with_ties()
  keras = tf.keras.metrics.sparse_categorical_accuracy(labels[:, None], predictions)
  assert _combine(1, labels, predictions) == pytest.approx(
    np.mean(np.asarray(keras, np.float64)), abs=1e-12
  )


def test_top_3_equals_keras_sparse_top_k_categorical_accuracy_with_ties():
  labels, predictions = _scores_with_ties(seed=1)
  keras = tf.keras.metrics.sparse_top_k_categorical_accuracy(labels, predictions, k=3)
  assert _combine(3, labels, predictions) == pytest.approx(
    np.mean(np.asarray(keras, np.float64)), abs=1e-12
  )


def test_exact_values_and_weights():
  labels = [0, 1, 2, 2]
  predictions = np.array(
    [[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.4, 0.35, 0.25]], dtype=np.float32
  )
  assert _combine(1, labels, predictions) == 0.5
  assert _combine(2, labels, predictions) == 0.75
  weights = [1.0, 1.0, 2.0, 4.0]
  assert _combine(1, labels, predictions, weights, example_weighted=True) == 3.0 / 8.0
  # Unweighted unless the spec asks for weights.
  assert _combine(1, labels, predictions, weights) == 0.5


def test_bad_labels_are_clear_errors():
  predictions = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
  with pytest.raises(ValueError, match="label 3 is not a class of the model's 3 scores"):
    _combine(1, [3], predictions)
  with pytest.raises(ValueError, match="top_k must be at least 1, got 0"):
    metrics.SparseTopKAccuracy(top_k=0)


def test_the_pipelines_eval_config_resolves_both_metrics_under_their_keras_names():
  eval_config = pipeline._eval_config("label", 0.5, -1e-10, ["city_tier"])  # pylint: disable=protected-access
  computations = metric_specs.to_computations(list(eval_config.metrics_specs), eval_config)
  names = {key.name for computation in computations for key in computation.keys}
  assert {"sparse_categorical_accuracy", "top_3_accuracy", "example_count"} <= names
  combiners = {
    key.name: type(c.combiner).__name__
    for c in computations
    if isinstance(c, metric_types.MetricComputation)
    for key in c.keys
  }
  assert combiners["sparse_categorical_accuracy"] == "_TopKAccuracyCombiner"
  assert combiners["top_3_accuracy"] == "_TopKAccuracyCombiner"
