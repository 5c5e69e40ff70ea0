"""Transformer encoder block: self-attention and feed-forward with residuals.

The block is written in operations that TensorFlow Lite runs fast in full
integer (int8) form as well as in float: every normalization and elementwise
step lowers to an op XNNPACK's int8 path accepts, and padding is masked with a
finite bias so the attention logits keep a range int8 can resolve (see
`MASKED_LOGIT_BIAS`). The float model computes the same function as a textbook
post-layer-norm encoder.
"""

import math

import numpy as np
import tensorflow as tf

# Added to the attention logits of padded keys. Large enough that a padded key
# gets a weight below e^-20 of a real key's (padding does not change
# predictions), small enough that int8 post-training quantization keeps ~0.15
# resolution on real logits. With -1e9 (what Keras' MultiHeadAttention adds),
# the calibrated int8 range of the masked logits is ~1e9 wide and every real
# logit rounds to the same value: attention degenerates to a plain average.
MASKED_LOGIT_BIAS = -30.0


def _mean_over_last_axis(x: tf.Tensor) -> tf.Tensor:
  """Mean over the last axis, keeping it, as a product with a constant column.

  `tf.reduce_mean(x, -1)` lowers to a TFLite MEAN over the innermost axis,
  which XNNPACK does not take and whose int8 kernel is slow reference code
  (~15 us per call here). A [width, 1] matmul lowers to a FULLY_CONNECTED that
  XNNPACK runs in int8 and float, and 1/width quantizes exactly.
  """
  width = x.shape[-1]
  return tf.matmul(x, tf.constant(np.full((width, 1), 1.0 / width), x.dtype))


class _LayerNormalization(tf.keras.layers.LayerNormalization):
  """`LayerNormalization` over the last axis, in ops that stay fast in int8 TFLite.

  Same weights, configuration and function as the Keras layer (for the
  last-axis, center-and-scale case the encoder uses), but the two means are
  matmuls with a constant column (see `_mean_over_last_axis`) and the variance
  is not a SQUARED_DIFFERENCE: TFLite 2.16 has no XNNPACK int8 path for MEAN
  over the last axis or SQUARED_DIFFERENCE, and their reference int8 kernels
  made one Keras layer norm cost ~30 us in int8 against ~4 us this way.
  """

  def call(self, inputs):
    centered = inputs - _mean_over_last_axis(inputs)
    variance = _mean_over_last_axis(centered * centered)
    return centered * tf.math.rsqrt(variance + self.epsilon) * self.gamma + self.beta


@tf.keras.utils.register_keras_serializable(package="next_category")
class TransformerEncoder(tf.keras.layers.Layer):
  """One Transformer encoder block (post-layer-norm, as in "Attention Is All You Need").

  Multi-head self-attention, then a two-layer feed-forward network; each
  sub-layer has dropout, a residual connection and layer normalization.
  Padded positions are never attended to: their keys get `MASKED_LOGIT_BIAS`.

  Args:
    intermediate_dim: width of the feed-forward network's hidden layer.
    num_heads: number of attention heads; must divide the input width.
    dropout: dropout rate for attention weights and sub-layer outputs.
    activation: activation of the feed-forward hidden layer.
    layer_norm_epsilon: epsilon of both layer normalizations.
    **kwargs: passed to `tf.keras.layers.Layer`.

  Example:

  >>> encoder = TransformerEncoder(intermediate_dim=16, num_heads=2)
  >>> x = tf.random.uniform((2, 5, 8))
  >>> mask = tf.constant([[True] * 5, [True] * 3 + [False] * 2])
  >>> encoder(x, padding_mask=mask).shape
  TensorShape([2, 5, 8])
  """

  def __init__(
    self,
    intermediate_dim,
    num_heads,
    dropout=0.0,
    activation="relu",
    layer_norm_epsilon=1e-5,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.intermediate_dim = intermediate_dim
    self.num_heads = num_heads
    self.dropout = dropout
    self.activation = activation
    self.layer_norm_epsilon = layer_norm_epsilon
    self.supports_masking = True

  def build(self, input_shape):
    hidden_dim = input_shape[-1]
    if hidden_dim % self.num_heads:
      raise ValueError(
        f"The input width ({hidden_dim}) must be divisible by num_heads ({self.num_heads})."
      )
    self._head_dim = hidden_dim // self.num_heads
    # Separate projections rather than one fused one: in int8 each gets its
    # own quantization range, and queries, keys and values differ in range.
    self.query_dense = tf.keras.layers.Dense(hidden_dim, name="query")
    self.key_dense = tf.keras.layers.Dense(hidden_dim, name="key")
    self.value_dense = tf.keras.layers.Dense(hidden_dim, name="value")
    self.attention_output_dense = tf.keras.layers.Dense(hidden_dim, name="attention_output")
    for dense in (self.query_dense, self.key_dense, self.value_dense, self.attention_output_dense):
      dense.build(input_shape)
    self.attention_weights_dropout = tf.keras.layers.Dropout(self.dropout)
    self.attention_dropout = tf.keras.layers.Dropout(self.dropout)
    self.attention_norm = _LayerNormalization(
      epsilon=self.layer_norm_epsilon, name="attention_norm"
    )
    self.attention_norm.build(input_shape)
    self.intermediate_dense = tf.keras.layers.Dense(
      self.intermediate_dim, activation=self.activation, name="intermediate_dense"
    )
    self.intermediate_dense.build(input_shape)
    self.output_dense = tf.keras.layers.Dense(hidden_dim, name="output_dense")
    self.output_dense.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
    self.output_dropout = tf.keras.layers.Dropout(self.dropout)
    self.output_norm = _LayerNormalization(epsilon=self.layer_norm_epsilon, name="output_norm")
    self.output_norm.build(input_shape)
    super().build(input_shape)

  def _split_heads(self, x):
    # [batch, length, hidden] -> [batch, heads, length, head_dim]
    shape = tf.shape(x)
    x = tf.reshape(x, [shape[0], shape[1], self.num_heads, self._head_dim])
    return tf.transpose(x, [0, 2, 1, 3])

  def _merge_heads(self, x):
    # [batch, heads, length, head_dim] -> [batch, length, hidden]
    x = tf.transpose(x, [0, 2, 1, 3])
    shape = tf.shape(x)
    return tf.reshape(x, [shape[0], shape[1], self.num_heads * self._head_dim])

  def _self_attention(self, inputs, padding_mask, training):
    # The 1/sqrt(head_dim) scale folds into the query kernel when converted.
    query = self._split_heads(self.query_dense(inputs) * (1.0 / math.sqrt(self._head_dim)))
    key = self._split_heads(self.key_dense(inputs))
    value = self._split_heads(self.value_dense(inputs))
    logits = tf.matmul(query, key, transpose_b=True)  # [batch, heads, query, key]
    if padding_mask is not None:
      # A lookup rather than a cast and multiply: in int8 TFLite the bias is a
      # quantized constant row, so no float tensor is left in the graph.
      key_bias = tf.gather(
        tf.constant([MASKED_LOGIT_BIAS, 0.0], logits.dtype), tf.cast(padding_mask, tf.int32)
      )
      logits += key_bias[:, tf.newaxis, tf.newaxis, :]
    weights = tf.nn.softmax(logits, axis=-1)
    weights = self.attention_weights_dropout(weights, training=training)
    attended = self._merge_heads(tf.matmul(weights, value))
    return self.attention_output_dense(attended)

  def call(self, inputs, padding_mask=None, training=None):
    attended = self._self_attention(inputs, padding_mask, training)
    attended = self.attention_dropout(attended, training=training)
    x = self.attention_norm(inputs + attended)
    feed_forward = self.output_dense(self.intermediate_dense(x))
    feed_forward = self.output_dropout(feed_forward, training=training)
    return self.output_norm(x + feed_forward)

  def get_config(self):
    config = super().get_config()
    config.update(
      {
        "intermediate_dim": self.intermediate_dim,
        "num_heads": self.num_heads,
        "dropout": self.dropout,
        "activation": self.activation,
        "layer_norm_epsilon": self.layer_norm_epsilon,
      }
    )
    return config
