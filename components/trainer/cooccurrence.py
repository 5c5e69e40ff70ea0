"""Item vectors from the train split's co-occurrences: PPMI, then a truncated SVD.

An item seen in a handful of histories ends too few of them for the label to
say what it is, and its trainable embedding row memorises those few
(docs/model.md: the gap to the best possible is rare items). Its neighbours
say more: items next to each other in a history mostly share a category. So
the Trainer counts, over the train split, how often each pair of items is
within `window` positions of each other, weighs the counts by positive
pointwise mutual information (PPMI) and keeps the top `dim` singular
directions, as word vectors are made from a word-context matrix (Levy and
Goldberg, "Neural word embedding as implicit matrix factorization", 2014).
The model takes them as a frozen input beside the trainable embedding
(`model._build_model`), so training cannot overwrite what the co-occurrences
say about a rare item.

Everything here is NumPy and TensorFlow's sparse matmul: the matrix is
[vocabulary, vocabulary] but holds only the pairs seen.
"""

from typing import Iterable

import numpy as np
import tensorflow as tf

# Power iterations of the randomized SVD (Halko, Martinsson and Tropp, 2011).
# On the default data, 2 / 4 / 6 told the category of items seen 20-99 times
# from their vectors (nearest category centroid) 90.4% / 94.3% / 95.6% of the
# time, and of items seen 1-4 times 67.4% / 64.1% / 60.3%.
_POWER_ITERATIONS = 4
# Extra random directions the range finder keeps beyond `dim`.
_OVERSAMPLING = 10
# Context counts are raised to this power before PMI, which keeps rare
# contexts from dominating (word2vec's smoothing of the context distribution).
_CONTEXT_SMOOTHING = 0.75


def count_pairs(histories: Iterable[np.ndarray], vocabulary_size: int, window: int) -> tuple:
  """Counts item pairs within `window` positions of each other, both ways.

  Args:
    histories: batches of id histories, [batch, length] int arrays, 0 as padding.
    vocabulary_size: ids are in [0, vocabulary_size).
    window: the largest distance between two positions that count as a pair.

  Returns:
    `(rows, columns, counts)`: the pairs seen, each once, and how often.

  Raises:
    ValueError: for a window below 1 or an id outside the vocabulary.
  """
  if window < 1:
    raise ValueError(f"The co-occurrence window must be at least 1, got {window}.")
  codes = []
  for batch in histories:
    batch = np.asarray(batch, dtype=np.int64)
    if batch.size and (batch.min() < 0 or batch.max() >= vocabulary_size):
      raise ValueError(
        f"Item ids must be in [0, {vocabulary_size}); got {batch.min()}..{batch.max()}."
      )
    for distance in range(1, min(window, batch.shape[1] - 1) + 1):
      left, right = batch[:, :-distance].ravel(), batch[:, distance:].ravel()
      seen = (left != 0) & (right != 0)
      left, right = left[seen], right[seen]
      codes.append(left * vocabulary_size + right)
      codes.append(right * vocabulary_size + left)
  if not codes:
    empty = np.zeros(0, np.int64)
    return empty, empty, empty
  pairs, counts = np.unique(np.concatenate(codes), return_counts=True)
  return pairs // vocabulary_size, pairs % vocabulary_size, counts


def ppmi(rows: np.ndarray, columns: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """Positive pointwise mutual information of each pair, with smoothed contexts."""
  counts = counts.astype(np.float64)
  row_totals = np.bincount(rows, weights=counts)
  context = np.bincount(columns, weights=counts) ** _CONTEXT_SMOOTHING
  pmi = np.log(counts * context.sum() / (row_totals[rows] * context[columns]))
  return np.maximum(pmi, 0.0)


def item_vectors(
  histories: Iterable[np.ndarray],
  vocabulary_size: int,
  dim: int,
  window: int = 2,
  seed: int = 0,
) -> np.ndarray:
  """Unit-length co-occurrence vectors of every id: [vocabulary_size, dim] float32.

  Ids never seen next to another (padding included) get a zero row.

  Args:
    histories: batches of id histories, [batch, length], 0 as padding.
    vocabulary_size: ids are in [0, vocabulary_size).
    dim: the vectors' width.
    window: see `count_pairs`.
    seed: the randomized SVD's seed.

  Raises:
    ValueError: for a width below 1 or one not below the vocabulary size.
  """
  if not 1 <= dim < vocabulary_size:
    raise ValueError(
      f"The co-occurrence vectors' width must be in [1, {vocabulary_size}), got {dim}."
    )
  rows, columns, counts = count_pairs(histories, vocabulary_size, window)
  vectors = np.zeros((vocabulary_size, dim), np.float32)
  if not len(rows):
    return vectors
  weights = ppmi(rows, columns, counts)
  kept = weights > 0
  matrix = tf.sparse.reorder(
    tf.sparse.SparseTensor(
      np.stack([rows[kept], columns[kept]], axis=1),
      weights[kept].astype(np.float32),
      [vocabulary_size, vocabulary_size],
    )
  )
  # The matrix is symmetric: its top singular directions from a randomized
  # range finder with power iterations, then a small dense SVD.
  width = min(dim + _OVERSAMPLING, vocabulary_size)
  probe = np.random.default_rng(seed).standard_normal((vocabulary_size, width)).astype(np.float32)
  basis, _ = tf.linalg.qr(tf.sparse.sparse_dense_matmul(matrix, probe))
  for _ in range(_POWER_ITERATIONS):
    basis, _ = tf.linalg.qr(tf.sparse.sparse_dense_matmul(matrix, basis))
  projected = tf.transpose(tf.sparse.sparse_dense_matmul(matrix, basis, adjoint_a=True))
  singular_values, left, _ = tf.linalg.svd(projected)
  components = tf.matmul(basis, left[:, :dim]) * tf.sqrt(singular_values[:dim])
  vectors[:] = components.numpy()
  # An id without pairs has no row in the matrix; the range finder's basis
  # may still reach it where the matrix has less rank than the basis width.
  vectors[np.bincount(rows[kept], minlength=vocabulary_size) == 0] = 0.0
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  np.divide(vectors, norms, out=vectors, where=norms > 0)
  return vectors
