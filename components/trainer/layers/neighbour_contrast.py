"""An auxiliary training loss that pulls neighbouring items' embeddings together."""

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="next_category")
class NeighbourContrast(tf.keras.layers.Layer):
  """Adds a contrastive loss on neighbouring positions while training; passes inputs through.

  Neighbours in a history mostly share a category (a session stays in one,
  or moves to its successor), which is what the label depends on. An item
  that rarely ends a history gets little signal from the label alone; this
  loss (skip-gram with in-batch negatives, as item2vec) learns its embedding
  from every history it occurs in: each pair of neighbouring real positions
  should score higher, by the dot product of their embeddings over the
  width, than the same position paired with the next row's item there.

  At inference the layer is the identity, so serving, SavedModel and TFLite
  graphs are unchanged.

  Args:
    weight: the loss's weight against the model's own.
    **kwargs: passed to `tf.keras.layers.Layer`.

  Example:

  >>> layer = NeighbourContrast(weight=0.5)
  >>> x = tf.ones((2, 3, 4))
  >>> layer(x, padding_mask=tf.ones((2, 3), tf.bool)).shape
  TensorShape([2, 3, 4])
  """

  def __init__(self, weight, **kwargs):
    super().__init__(**kwargs)
    self.weight = weight

  def call(self, inputs, padding_mask, training=None):
    if not training or not self.weight:
      return inputs
    width = tf.cast(tf.shape(inputs)[-1], inputs.dtype)
    current, following = inputs[:, :-1], inputs[:, 1:]
    pairs = tf.cast(tf.logical_and(padding_mask[:, :-1], padding_mask[:, 1:]), inputs.dtype)
    # Negatives: the following position of the next row in the batch.
    other = tf.roll(following, shift=1, axis=0)
    other_valid = tf.cast(tf.roll(padding_mask[:, 1:], shift=1, axis=0), inputs.dtype)
    positive = tf.reduce_sum(current * following, axis=-1) / width
    negative = tf.reduce_sum(current * other, axis=-1) / width
    loss = tf.nn.softplus(-positive) * pairs + tf.nn.softplus(negative) * pairs * other_valid
    self.add_loss(self.weight * tf.reduce_sum(loss) / tf.maximum(tf.reduce_sum(pairs), 1.0))
    return inputs

  def get_config(self):
    config = super().get_config()
    config.update({"weight": self.weight})
    return config
