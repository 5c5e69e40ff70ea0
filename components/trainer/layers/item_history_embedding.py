"""Item-id plus recency-position embedding."""

import math

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="next_category")
class ItemHistoryEmbedding(tf.keras.layers.Layer):
  """Embeds an item history as item embeddings plus recency embeddings.

  Positions count back from the most recent item (0 is the last item bought or
  viewed), so the same recent item gets the same position whether the history
  is padded on the left or on the right, and whatever its length. Id 0 is
  padding; ids at or above `vocabulary_size` share one out-of-vocabulary row.
  Positions older than `max_length - 1` share the oldest position's row.

  Both embeddings are multiplied by sqrt(embedding_dim), as "Attention Is All
  You Need" scales its embeddings: the encoder normalizes with Dynamic Tanh,
  which (unlike layer normalization) does not rescale small initial
  embeddings to unit size, and without the factor the `small` model learns
  about a point less in its benchmark's 300 steps.

  Args:
    vocabulary_size: number of item ids with their own row (including 0).
    max_length: number of distinct recency positions.
    embedding_dim: output width.
    **kwargs: passed to `tf.keras.layers.Layer`.

  Example:

  >>> layer = ItemHistoryEmbedding(vocabulary_size=100, max_length=8,
  ...                              embedding_dim=4)
  >>> layer(tf.constant([[0, 0, 7, 42]])).shape
  TensorShape([1, 4, 4])
  """

  def __init__(self, vocabulary_size, max_length, embedding_dim, **kwargs):
    super().__init__(**kwargs)
    self.vocabulary_size = vocabulary_size
    self.max_length = max_length
    self.embedding_dim = embedding_dim
    # The extra last row is the out-of-vocabulary bucket.
    self.item_embedding = tf.keras.layers.Embedding(
      vocabulary_size + 1, embedding_dim, name="item_embedding"
    )
    self.position_embedding = tf.keras.layers.Embedding(
      max_length, embedding_dim, name="position_embedding"
    )

  def build(self, input_shape):
    self.item_embedding.build(input_shape)
    self.position_embedding.build(input_shape)
    super().build(input_shape)

  def call(self, item_ids):
    item_ids = tf.cast(item_ids, tf.int32)
    valid = item_ids > 0
    ids = tf.where(valid, item_ids, tf.zeros_like(item_ids))
    ids = tf.minimum(ids, self.vocabulary_size)
    recency = tf.cumsum(tf.cast(valid, tf.int32), axis=1, reverse=True) - 1
    recency = tf.clip_by_value(recency, 0, self.max_length - 1)
    # Rows of the scaled tables rather than scaled rows: the same values and
    # gradients, but TFLite folds the scale into the constant tables, so the
    # converted model has no multiply per position.
    scale = math.sqrt(self.embedding_dim)
    return tf.gather(self.item_embedding.embeddings * scale, ids) + tf.gather(
      self.position_embedding.embeddings * scale, recency
    )

  def get_config(self):
    config = super().get_config()
    config.update(
      {
        "vocabulary_size": self.vocabulary_size,
        "max_length": self.max_length,
        "embedding_dim": self.embedding_dim,
      }
    )
    return config
