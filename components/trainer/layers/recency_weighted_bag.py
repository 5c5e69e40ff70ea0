"""A linear read-out of an item history: one vector per item, weighted by recency."""

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="next_category")
class RecencyWeightedBag(tf.keras.layers.Layer):
  """Sums one learned vector per item, each scaled by a learned weight of its recency.

  With `output_dim` the number of classes this is the "wide" half of a
  wide-and-deep model: a per-item table of class logits, read at every
  position, so an item's row learns from every history it occurs in, not
  only from the histories it ends. That is what a rare item needs (its
  neighbours in a history mostly share its category), and on documents it is
  a linear bag-of-words classifier whose position weights can stay even.

  Positions count back from the most recent item, as in
  `ItemHistoryEmbedding`: 0 is the last item; positions older than
  `max_length - 1` share the oldest weight. Id 0 is padding and adds nothing;
  ids at or above `vocabulary_size` share one out-of-vocabulary row.

  Args:
    vocabulary_size: number of item ids with their own row (including 0).
    max_length: number of distinct recency weights.
    output_dim: width of each item's vector (the number of classes for logits).
    **kwargs: passed to `tf.keras.layers.Layer`.

  Example:

  >>> layer = RecencyWeightedBag(vocabulary_size=100, max_length=8, output_dim=3)
  >>> layer(tf.constant([[7, 42, 0, 0]])).shape
  TensorShape([1, 3])
  """

  def __init__(self, vocabulary_size, max_length, output_dim, **kwargs):
    super().__init__(**kwargs)
    self.vocabulary_size = vocabulary_size
    self.max_length = max_length
    self.output_dim = output_dim
    # The extra last row is the out-of-vocabulary bucket; rows start at zero,
    # so the bag adds nothing until an item has been seen.
    self.item_vectors = tf.keras.layers.Embedding(
      vocabulary_size + 1, output_dim, embeddings_initializer="zeros", name="item_vectors"
    )
    self.recency_weights = tf.keras.layers.Embedding(
      max_length, 1, embeddings_initializer="ones", name="recency_weights"
    )

  def build(self, input_shape):
    self.item_vectors.build(input_shape)
    self.recency_weights.build(input_shape)
    super().build(input_shape)

  def call(self, item_ids):
    item_ids = tf.cast(item_ids, tf.int32)
    valid = item_ids > 0
    ids = tf.minimum(tf.where(valid, item_ids, tf.zeros_like(item_ids)), self.vocabulary_size)
    recency = tf.cumsum(tf.cast(valid, tf.int32), axis=1, reverse=True) - 1
    recency = tf.clip_by_value(recency, 0, self.max_length - 1)
    # Padding looks up a constant zero after the learned weights (an integer
    # index rather than a float mask, so the int8 TFLite model stays integer).
    recency = tf.where(valid, recency, tf.fill(tf.shape(recency), self.max_length))
    table = tf.concat([self.recency_weights.embeddings[:, 0], tf.zeros([1], self.compute_dtype)], 0)
    weights = tf.gather(table, recency)
    vectors = tf.gather(self.item_vectors.embeddings, ids)
    return tf.squeeze(tf.matmul(weights[:, tf.newaxis, :], vectors), axis=1)

  def get_config(self):
    config = super().get_config()
    config.update(
      {
        "vocabulary_size": self.vocabulary_size,
        "max_length": self.max_length,
        "output_dim": self.output_dim,
      }
    )
    return config
