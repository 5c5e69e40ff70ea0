"""The last real position of a right-padded sequence."""

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="next_category")
class LastPositionPooling(tf.keras.layers.Layer):
  """Picks each sequence's last unpadded position (its most recent item).

  Rows are right-padded (real positions first). A row without any real
  position pools to zeros. The pick is a product with a one-hot row of
  weights rather than a gather at a computed index, so an int8 TFLite model
  runs it with integer kernels, as `MaskedMeanPooling` does.

  Args:
    **kwargs: passed to `tf.keras.layers.Layer`.

  Example:

  >>> x = tf.constant([[[1.0], [3.0], [100.0]]])
  >>> LastPositionPooling()(x, padding_mask=tf.constant([[True, True, False]]))
  <tf.Tensor: shape=(1, 1), dtype=float32, numpy=array([[3.]], dtype=float32)>
  """

  def call(self, inputs, padding_mask):
    valid = tf.cast(padding_mask, tf.int32)
    # 0 at the last real position, counting up towards the first.
    recency = tf.cumsum(valid, axis=1, reverse=True) - valid
    is_last = tf.cast(tf.logical_and(padding_mask, tf.equal(recency, 0)), tf.int32)
    # A lookup by an integer index rather than a cast of the mask to float:
    # the int8 TFLite model then has no float tensor here.
    weights = tf.gather(tf.constant([0.0, 1.0], inputs.dtype), is_last)
    return tf.squeeze(tf.matmul(weights[:, tf.newaxis, :], inputs), axis=1)
