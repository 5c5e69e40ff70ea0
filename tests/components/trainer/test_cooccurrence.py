"""Tests of the co-occurrence item vectors and of the model's frozen rows of them."""

import numpy as np
import pytest

from next_category import contract
from next_category.components.trainer import cooccurrence
from next_category.components.trainer import model as model_lib
from next_category.components.trainer import presets
from next_category.dataset import clickstream


def _histories(rng, clusters, num_histories=400, length=6):
  """Histories that each stay within one cluster of ids, 0-padded at random lengths."""
  batch = np.zeros((num_histories, length), np.int64)
  for row in batch:
    cluster = clusters[rng.integers(len(clusters))]
    size = rng.integers(2, length + 1)
    row[:size] = rng.choice(cluster, size=size)
  return [batch[i : i + 64] for i in range(0, num_histories, 64)]


def test_pairs_are_counted_both_ways_within_the_window_and_padding_is_skipped():
  rows, columns, counts = cooccurrence.count_pairs([np.array([[1, 2, 3, 0], [2, 1, 0, 0]])], 5, 1)
  assert sorted(zip(rows.tolist(), columns.tolist(), counts.tolist(), strict=True)) == [
    (1, 2, 2),
    (2, 1, 2),
    (2, 3, 1),
    (3, 2, 1),
  ]
  rows, columns, _ = cooccurrence.count_pairs([np.array([[1, 2, 3]])], 5, 2)
  assert (1, 3) in set(zip(rows.tolist(), columns.tolist(), strict=True))


def test_items_of_one_cluster_get_close_vectors_and_unseen_ids_zero_rows():
  rng = np.random.default_rng(0)
  clusters = [np.arange(1, 11), np.arange(11, 21), np.arange(21, 31)]
  vectors = cooccurrence.item_vectors(_histories(rng, clusters), 40, dim=4)
  assert vectors.shape == (40, 4) and vectors.dtype == np.float32
  assert not vectors[0].any() and not vectors[31:].any()  # Padding and ids never seen.
  np.testing.assert_allclose(np.linalg.norm(vectors[1:31], axis=1), 1.0, rtol=1e-5)
  similarity = vectors @ vectors.T
  same = np.mean([similarity[a, b] for c in clusters for a in c for b in c if a != b])
  other = np.mean([similarity[a, b] for a in clusters[0] for b in clusters[1]])
  assert same > 0.8 and other < 0.3, (same, other)


def test_the_vectors_are_the_same_for_the_same_histories():
  histories = _histories(np.random.default_rng(1), [np.arange(1, 9), np.arange(9, 17)])
  np.testing.assert_array_equal(
    cooccurrence.item_vectors(histories, 20, 3), cooccurrence.item_vectors(histories, 20, 3)
  )


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: cooccurrence.count_pairs([np.array([[1, 2]])], 5, 0), "window must be at least 1"),
    (lambda: cooccurrence.count_pairs([np.array([[1, 7]])], 5, 1), r"must be in \[0, 5\)"),
    (lambda: cooccurrence.item_vectors([np.array([[1, 2]])], 5, 5), r"width must be in \[1, 5\)"),
    (lambda: presets.get("tiny", cooccurrence_dim=-1), "cooccurrence_dim must be 0 or more"),
  ],
)
def test_bad_arguments_are_named(call, message):
  with pytest.raises(ValueError, match=message):
    call()


def test_the_model_keeps_the_given_vectors_frozen_and_needs_a_width_for_them():
  data_contract = contract.load()
  config = presets.get("tiny", cooccurrence_dim=4)
  vocabulary = data_contract.sequence.max_id + 1
  vectors = np.random.default_rng(0).standard_normal((vocabulary, 4)).astype(np.float32)
  model = model_lib._build_model(config, data_contract, item_vectors=vectors)
  rows = model.get_layer(model_lib._COOCCURRENCE_LAYER)
  assert not rows.trainable and rows.trainable_weights == []
  np.testing.assert_array_equal(rows.get_weights()[0], vectors)
  with pytest.raises(ValueError, match="cooccurrence_dim is 0"):
    model_lib._build_model(presets.get("tiny"), data_contract, item_vectors=vectors)


def test_the_trainer_makes_the_vectors_from_the_split_it_is_given(tmp_path):
  data_contract = contract.load()
  files = clickstream.write_span(str(tmp_path), span=1, num_examples=300, seed=3)
  vectors = model_lib._item_vectors(presets.get("tiny", cooccurrence_dim=4), data_contract, files)
  assert vectors.shape == (data_contract.sequence.max_id + 1, 4)
  seen = np.linalg.norm(vectors, axis=1) > 0
  # 300 short histories touch some of the 10,000 ids, not all.
  assert 0 < seen.sum() < len(seen)
  assert model_lib._item_vectors(presets.get("tiny"), data_contract, files) is None
