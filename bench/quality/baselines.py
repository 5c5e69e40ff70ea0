"""The simple baselines the model is compared with, on the examples the pipeline used.

Both read what the model reads (the sequence's ids and the context values of
the same tf.Examples), so a gap is the model's, not the input's:

* majority: the train split's most frequent class (its k most frequent for top-k);
* TF-IDF logistic regression: TF-IDF of the sequence's ids as a bag of items
  (sublinear term frequency), each context value one-hot (the schema's
  vocabulary), and a multinomial logistic regression whose C is chosen by
  stratified cross-validation on the train split only.
"""

import collections
import dataclasses
from typing import Dict
from typing import List
from typing import Sequence
from typing import Tuple

import numpy as np
from scipy import sparse
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline

# Inverse regularisation strengths the cross-validation chooses among.
C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)
CV_FOLDS = 3
_SEED = 0
_MAX_ITER = 2000


@dataclasses.dataclass(frozen=True)
class Split:
  """One split's examples, as the baselines read them.

  Attributes:
    sequences: each example's sequence ids.
    context: each example's context values, in the contract's order.
    labels: each example's class id.
  """

  sequences: List[Sequence[int]]
  context: List[Tuple[str, ...]]
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of rows whose label is among the k highest scores (ties: lower class first)."""
  if len(labels) == 0:
    raise ValueError("top_k_accuracy needs at least one example.")
  # A stable sort of -scores ranks equal scores by class id, as argmax does.
  top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def majority(
  train_labels: np.ndarray, eval_labels: np.ndarray, num_classes: int, k: int
) -> Dict[str, object]:
  """Accuracy of ranking classes by their frequency in the train split.

  Returns:
    `{"top1", "topk", "classes": the k most frequent, most frequent first}`.
  """
  counts = collections.Counter(int(y) for y in train_labels)
  ranked = sorted(range(num_classes), key=lambda c: (-counts[c], c))
  scores = np.zeros((len(eval_labels), num_classes))
  for rank, c in enumerate(ranked):
    scores[:, c] = num_classes - rank
  return {
    "top1": top_k_accuracy(scores, eval_labels, 1),
    "topk": top_k_accuracy(scores, eval_labels, k),
    "classes": ranked[:k],
  }


def bag_of_items(sequences: Sequence[Sequence[int]], num_ids: int) -> sparse.csr_matrix:
  """How often each id occurs in each example: a [examples, num_ids] sparse matrix."""
  indptr = [0]
  indices: List[int] = []
  for ids in sequences:
    indices.extend(ids)
    indptr.append(len(indices))
  matrix = sparse.csr_matrix(
    (np.ones(len(indices)), np.asarray(indices, dtype=np.int64), indptr),
    shape=(len(sequences), num_ids),
  )
  matrix.sum_duplicates()
  return matrix


def one_hot(
  context: Sequence[Tuple[str, ...]], vocabularies: Sequence[Sequence[str]]
) -> sparse.csr_matrix:
  """One column per (feature, value) of the schema's vocabularies; unknown values: none."""
  offsets = np.cumsum([0] + [len(v) for v in vocabularies])
  columns = [
    {value: offsets[i] + j for j, value in enumerate(vocabulary)}
    for i, vocabulary in enumerate(vocabularies)
  ]
  rows, cols = [], []
  for row, values in enumerate(context):
    for feature, value in enumerate(values):
      if value in columns[feature]:
        rows.append(row)
        cols.append(columns[feature][value])
  return sparse.csr_matrix(
    (np.ones(len(rows)), (rows, cols)), shape=(len(context), int(offsets[-1]))
  )


def _features(split: Split, num_ids: int, vocabularies: Sequence[Sequence[str]]):
  return sparse.hstack(
    [bag_of_items(split.sequences, num_ids), one_hot(split.context, vocabularies)]
  ).tocsr()


def logistic_regression(
  train: Split,
  eval_split: Split,
  num_ids: int,
  vocabularies: Sequence[Sequence[str]],
  num_classes: int,
  k: int,
  c_grid: Sequence[float] = C_GRID,
  folds: int = CV_FOLDS,
) -> Dict[str, object]:
  """TF-IDF bag of items (+ one-hot context) and logistic regression; C by CV on `train`.

  Args:
    train: the train split; the only data the model, its TF-IDF weights and C see.
    eval_split: the split scored.
    num_ids: one more than the largest id (ids index columns).
    vocabularies: each context feature's values, in the order of `Split.context`.
    num_classes: the number of classes.
    k: the k of top-k accuracy.
    c_grid: the C values cross-validation chooses among.
    folds: cross-validation folds (stratified, shuffled with a fixed seed).

  Returns:
    `{"top1", "topk", "best_c", "cv_accuracy": {C: mean fold accuracy}}`.
  """
  # TF-IDF weights the id columns, refitted in each fold; the one-hot columns pass through.
  model = make_pipeline(
    ColumnTransformer(
      [("ids", TfidfTransformer(sublinear_tf=True), slice(0, num_ids))], remainder="passthrough"
    ),
    LogisticRegression(max_iter=_MAX_ITER),
  )
  search = GridSearchCV(
    model,
    {"logisticregression__C": list(c_grid)},
    cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=_SEED),
    scoring="accuracy",
    # The folds' fits in two processes: the 2-core machine's two cores.
    n_jobs=2,
  )
  search.fit(_features(train, num_ids, vocabularies), train.labels)
  scores = np.zeros((len(eval_split), num_classes))
  probabilities = search.predict_proba(_features(eval_split, num_ids, vocabularies))
  scores[:, search.best_estimator_.classes_] = probabilities
  results = search.cv_results_
  return {
    "top1": top_k_accuracy(scores, eval_split.labels, 1),
    "topk": top_k_accuracy(scores, eval_split.labels, k),
    "best_c": float(search.best_params_["logisticregression__C"]),
    "cv_accuracy": {
      str(float(c)): round(float(s), 4)
      for c, s in zip(
        results["param_logisticregression__C"], results["mean_test_score"], strict=True
      )
    },
  }
