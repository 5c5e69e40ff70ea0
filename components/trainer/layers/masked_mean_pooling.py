"""Mean over the unpadded positions of a sequence."""

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="next_category")
class MaskedMeanPooling(tf.keras.layers.Layer):
  """Averages a sequence over its real positions, ignoring padding.

  A row with no real position pools to zeros instead of NaN.

  The average is a product with weights 1/count (0 on padding), looked up in a
  constant row of reciprocals by an integer index: TFLite has no int8
  division, and this way an int8 model computes the mean with integer kernels
  and int32 accumulation.

  Args:
    **kwargs: passed to `tf.keras.layers.Layer`.

  Example:

  >>> x = tf.constant([[[1.0], [3.0], [100.0]]])
  >>> MaskedMeanPooling()(x, padding_mask=tf.constant([[True, True, False]]))
  <tf.Tensor: shape=(1, 1), dtype=float32, numpy=array([[2.]], dtype=float32)>
  """

  def call(self, inputs, padding_mask):
    valid = tf.cast(padding_mask, tf.int32)
    count = tf.reduce_sum(valid, axis=1, keepdims=True)
    # reciprocals[n] = 1/n, and reciprocals[0] = 0 for padding and for rows
    # without any real position.
    reciprocals = tf.math.reciprocal_no_nan(tf.cast(tf.range(tf.shape(valid)[1] + 1), inputs.dtype))
    weights = tf.gather(reciprocals, valid * count)
    return tf.squeeze(tf.matmul(weights[:, tf.newaxis, :], inputs), axis=1)
