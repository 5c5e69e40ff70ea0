"""Tests of the baselines `make bench-quality` compares the model with, on known answers."""

import numpy as np
import pytest

from bench.quality import baselines


def test_top_k_accuracy_counts_labels_among_the_k_best_scores_ties_to_the_lower_class():
  scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.4, 0.4, 0.2], [0.2, 0.3, 0.5]])
  labels = np.array([1, 2, 1, 0])
  # Top-1: [1, 0, 0 (tie, lower class), 2] -> only the first is right.
  assert baselines.top_k_accuracy(scores, labels, 1) == 0.25
  # Top-2: [1,2], [0,2], [0,1], [2,1] -> right for rows 0, 1 and 2.
  assert baselines.top_k_accuracy(scores, labels, 2) == 0.75
  assert baselines.top_k_accuracy(scores, labels, 3) == 1.0
  with pytest.raises(ValueError, match="at least one example"):
    baselines.top_k_accuracy(np.zeros((0, 3)), np.array([], dtype=int), 1)


def test_majority_ranks_classes_by_their_train_frequency():
  train = np.array([2, 2, 2, 0, 0, 1, 3, 3])
  evaluation = np.array([2, 0, 3, 1, 2])
  result = baselines.majority(train, evaluation, num_classes=4, k=3)
  # Ranked 2 (3), 0 (2), 3 (2, tie after 0), 1 (1).
  assert result == {"top1": 0.4, "topk": 0.8, "classes": [2, 0, 3]}


def test_bag_of_items_counts_each_id_per_example():
  matrix = baselines.bag_of_items([[1, 3, 3], [], [2]], num_ids=4)
  assert matrix.toarray().tolist() == [[0, 1, 0, 2], [0, 0, 0, 0], [0, 0, 1, 0]]


def test_one_hot_has_a_column_per_value_of_each_vocabulary():
  matrix = baselines.one_hot([("b", "y"), ("a", "z"), ("c", "x")], [("a", "b"), ("x", "y", "z")])
  # Columns: a, b | x, y, z; "c" is in no vocabulary, so that row has only x.
  assert matrix.toarray().tolist() == [
    [0, 1, 0, 1, 0],
    [1, 0, 0, 0, 1],
    [0, 0, 1, 0, 0],
  ]


def _split(rng, n, context_decides):
  """Examples of 3 classes: the class is told by id 2 + class, or by the context value."""
  labels = rng.integers(0, 3, size=n)
  noise = rng.integers(5, 30, size=(n, 4))
  if context_decides:
    sequences = [list(row) for row in noise]
    context = [(("low", "mid", "high")[y],) for y in labels]
  else:
    sequences = [list(row) + [2 + y] for row, y in zip(noise, labels, strict=True)]
    context = [("mid",) for _ in labels]
  return baselines.Split(sequences, context, labels)


@pytest.mark.parametrize("context_decides", [False, True], ids=["by_item", "by_context"])
def test_logistic_regression_learns_a_class_told_by_an_item_or_by_the_context(context_decides):
  rng = np.random.default_rng(0)
  train = _split(rng, 90, context_decides)
  evaluation = _split(rng, 30, context_decides)
  result = baselines.logistic_regression(
    train,
    evaluation,
    num_ids=30,
    vocabularies=[("low", "mid", "high")],
    num_classes=3,
    k=2,
    c_grid=(0.01, 100.0),
  )
  assert result["top1"] == 1.0 and result["topk"] == 1.0
  # C is chosen on the train split's folds: the weak regularisation separates them.
  assert result["best_c"] == 100.0
  assert set(result["cv_accuracy"]) == {"0.01", "100.0"}
  assert result["cv_accuracy"]["100.0"] == 1.0


def test_logistic_regression_on_noise_is_no_better_than_chance_on_new_examples():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, size=200)
  sequences = [list(rng.integers(1, 50, size=5)) for _ in labels]
  train = baselines.Split(sequences[:150], [()] * 150, labels[:150])
  evaluation = baselines.Split(sequences[150:], [()] * 50, labels[150:])
  result = baselines.logistic_regression(
    train, evaluation, num_ids=50, vocabularies=[], num_classes=2, k=1
  )
  assert 0.3 <= result["top1"] <= 0.7
