"""Parsing and encoding of clickstream tf.Examples into model inputs.

Training, every serving signature and the TFLite checks all go through these
functions, so there is one definition of how raw features become tensors and
no training/serving skew in the encoding.
"""

from typing import Dict

import tensorflow as tf

from components.trainer import constants


def feature_spec(with_label: bool) -> Dict[str, object]:
  """The `tf.io.parse_example` spec of the data contract.

  Args:
    with_label: include the label (TRAINING) or not (SERVING).
  """
  spec = {
    constants.ITEM_HISTORY_KEY: tf.io.RaggedFeature(tf.int64),
    constants.USER_SEGMENT_KEY: tf.io.FixedLenFeature([], tf.string),
    constants.CITY_TIER_KEY: tf.io.FixedLenFeature([], tf.string),
  }
  if with_label:
    spec[constants.LABEL_KEY] = tf.io.FixedLenFeature([], tf.int64)
  return spec


def vocabulary_index(values: tf.Tensor, vocabulary) -> tf.Tensor:
  """Maps strings to their index in `vocabulary`; unknown values map to len(vocabulary).

  Plain tensor ops rather than a lookup table, so the encoding needs no
  resources and saves and converts anywhere the model does.
  """
  matches = tf.equal(tf.expand_dims(values, -1), tf.constant(vocabulary))
  index = tf.argmax(tf.cast(matches, tf.int32), axis=-1)
  return tf.where(tf.reduce_any(matches, axis=-1), index, tf.cast(len(vocabulary), tf.int64))


def pad_item_history(
  item_history: tf.RaggedTensor, max_length: int = constants.MAX_HISTORY_LENGTH
) -> tf.Tensor:
  """Keeps the most recent `max_length` items of each row and right-pads with 0."""
  recent = item_history[:, -max_length:]
  return recent.to_tensor(default_value=0, shape=[None, max_length])


def encode(
  item_history: tf.RaggedTensor, user_segment: tf.Tensor, city_tier: tf.Tensor, pad: bool = True
) -> Dict[str, tf.Tensor]:
  """Turns raw features into the Keras model's numeric inputs.

  Args:
    item_history: [batch, (length)] item ids, most recent last.
    user_segment: [batch] strings.
    city_tier: [batch] strings.
    pad: return `item_history` as a dense [batch, MAX_HISTORY_LENGTH] tensor;
      if False, keep it ragged (truncated to the most recent items) so the
      input pipeline can batch histories of similar length together.
  """
  item_history = tf.cast(item_history, tf.int64)
  if pad:
    item_history = pad_item_history(item_history)
  else:
    item_history = item_history[:, -constants.MAX_HISTORY_LENGTH :]
  return {
    constants.ITEM_HISTORY_KEY: item_history,
    constants.USER_SEGMENT_KEY: vocabulary_index(user_segment, constants.USER_SEGMENTS),
    constants.CITY_TIER_KEY: vocabulary_index(city_tier, constants.CITY_TIERS),
  }


def parse_and_encode(serialized: tf.Tensor, with_label: bool, pad: bool = True):
  """Parses a batch of serialized tf.Examples into model inputs.

  Args:
    serialized: a [batch] string tensor of serialized tf.Examples.
    with_label: also return the labels.
    pad: see `encode`.

  Returns:
    The model inputs dict, or `(inputs, labels)` when `with_label` is True.
  """
  parsed = tf.io.parse_example(serialized, feature_spec(with_label))
  inputs = encode(
    parsed[constants.ITEM_HISTORY_KEY],
    parsed[constants.USER_SEGMENT_KEY],
    parsed[constants.CITY_TIER_KEY],
    pad=pad,
  )
  if with_label:
    return inputs, parsed[constants.LABEL_KEY]
  return inputs
