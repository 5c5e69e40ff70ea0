"""Transformer encoder block: self-attention and feed-forward with residuals.

The block is written in operations that TensorFlow Lite runs fast in full
integer (int8) form as well as in float. TFLite 2.16 has no XNNPACK int8
kernel for SOFTMAX or RSQRT, and its own int8 kernels for them are slower than
the float ones (measured: docs/tflite.md, "Why the encoder avoids SOFTMAX and
RSQRT"). So:

* attention weights are a sigmoid of the logits (LOGISTIC, which XNNPACK runs
  in int8) instead of a softmax, with a bias of -log(number of real keys)
  (Ramapuram et al., "Theory, Analysis, and Best Practices for Sigmoid
  Self-Attention", ICLR 2025);
* each layer normalization is a Dynamic Tanh, `gamma * tanh(alpha * x) +
  beta` (Zhu et al., "Transformers without Normalization", CVPR 2025): MUL,
  TANH and ADD, all XNNPACK int8 ops, instead of mean, variance and RSQRT.

Padding is masked with a finite bias so the attention logits keep a range
int8 can resolve (see `MASKED_LOGIT_BIAS`).
"""

import math

import tensorflow as tf

# Added to the attention logits of padded keys. Large enough that a padded key
# gets a weight of about e^(logit - 30) (padding does not change predictions), small
# enough that int8 post-training quantization keeps ~0.15 resolution on real
# logits. With -1e9 (what Keras' MultiHeadAttention adds), the calibrated int8
# range of the masked logits is ~1e9 wide and every real logit rounds to the
# same value: attention degenerates to a plain average.
MASKED_LOGIT_BIAS = -30.0


def _key_bias(padding_mask: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """[batch, length] bias of each key: -log(real keys in the row), or `MASKED_LOGIT_BIAS`.

  The -log(n) offset keeps the sigmoid weights of n keys summing to about 1
  while the logits are near 0 (n * sigmoid(-log(n)) = n / (n + 1)), as a
  softmax row does, whatever the history length. A lookup in a
  constant row by an integer index rather than arithmetic on the mask: in
  int8 TFLite the row is a quantized constant, so no float tensor is left in
  the graph and no elementwise op runs on the mask.
  """
  valid = tf.cast(padding_mask, tf.int32)
  count = tf.reduce_sum(valid, axis=1, keepdims=True)
  # biases[n] = -log(n), and biases[0] = MASKED_LOGIT_BIAS for padded keys.
  counts = tf.range(tf.shape(valid)[1] + 1)
  biases = tf.where(
    counts > 0,
    -tf.math.log(tf.cast(tf.maximum(counts, 1), dtype)),
    tf.constant(MASKED_LOGIT_BIAS, dtype),
  )
  return tf.gather(biases, valid * count)


class _DynamicTanh(tf.keras.layers.Layer):
  """Dynamic Tanh (DyT): `gamma * tanh(alpha * x) + beta`, in place of layer normalization.

  `alpha` is a learned scalar, `gamma` and `beta` learned per channel, as in
  "Transformers without Normalization". tanh squashes large activations the way
  normalization bounds them, without per-position statistics; in int8 TFLite
  it is four XNNPACK ops (MUL, TANH, MUL, ADD), where a layer normalization
  needs a mean, a variance and an RSQRT that XNNPACK does not run in int8.
  (XNNPACK declines the int8 ADD of `beta` when beta's quantization scale is
  below ~1/1000 of the output's, as in one block of the benchmarked model;
  that ADD then runs TFLite's own int8 kernel.)

  Args:
    alpha_init: initial value of `alpha`.
    **kwargs: passed to `tf.keras.layers.Layer`.
  """

  def __init__(self, alpha_init=1.0, **kwargs):
    super().__init__(**kwargs)
    self.alpha_init = alpha_init

  def build(self, input_shape):
    self.alpha = self.add_weight(
      name="alpha", shape=(), initializer=tf.keras.initializers.Constant(self.alpha_init)
    )
    self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],), initializer="ones")
    self.beta = self.add_weight(name="beta", shape=(input_shape[-1],), initializer="zeros")
    super().build(input_shape)

  def call(self, inputs):
    return tf.tanh(self.alpha * inputs) * self.gamma + self.beta

  def get_config(self):
    config = super().get_config()
    config.update({"alpha_init": self.alpha_init})
    return config


@tf.keras.utils.register_keras_serializable(package="next_category")
class TransformerEncoder(tf.keras.layers.Layer):
  """One Transformer encoder block, post-normalization as in "Attention Is All You Need".

  Multi-head self-attention, then a two-layer feed-forward network; each
  sub-layer has dropout and a residual connection followed by a Dynamic Tanh
  (DyT), the normalization-free stand-in for layer normalization. Attention
  weights are `sigmoid(q.k / sqrt(head_dim) - log(n))` over the n real keys
  (sigmoid attention) rather than a softmax; both choices keep the int8 TFLite
  model on XNNPACK's integer kernels (see the module docstring). Padded
  positions are never attended to: their keys get `MASKED_LOGIT_BIAS`.

  Args:
    intermediate_dim: width of the feed-forward network's hidden layer.
    num_heads: number of attention heads; must divide the input width.
    dropout: dropout rate for attention weights and sub-layer outputs.
    activation: activation of the feed-forward hidden layer.
    normalization_alpha_init: initial `alpha` of both Dynamic Tanh
      normalizations (`gamma * tanh(alpha * x) + beta`).
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
    normalization_alpha_init=1.0,
    **kwargs,
  ):
    super().__init__(**kwargs)
    self.intermediate_dim = intermediate_dim
    self.num_heads = num_heads
    self.dropout = dropout
    self.activation = activation
    self.normalization_alpha_init = normalization_alpha_init
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
    self.attention_norm = _DynamicTanh(self.normalization_alpha_init, name="attention_norm")
    self.attention_norm.build(input_shape)
    self.intermediate_dense = tf.keras.layers.Dense(
      self.intermediate_dim, activation=self.activation, name="intermediate_dense"
    )
    self.intermediate_dense.build(input_shape)
    self.output_dense = tf.keras.layers.Dense(hidden_dim, name="output_dense")
    self.output_dense.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
    self.output_dropout = tf.keras.layers.Dropout(self.dropout)
    self.output_norm = _DynamicTanh(self.normalization_alpha_init, name="output_norm")
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
    if padding_mask is None:
      padding_mask = tf.ones(tf.shape(inputs)[:2], tf.bool)
    logits = tf.matmul(query, key, transpose_b=True)  # [batch, heads, query, key]
    logits += _key_bias(padding_mask, logits.dtype)[:, tf.newaxis, tf.newaxis, :]
    weights = tf.sigmoid(logits)
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
        "normalization_alpha_init": self.normalization_alpha_init,
      }
    )
    return config
