"""Parsing and encoding of the contract's tf.Examples into model inputs.

Training, every serving signature and the TFLite checks all go through these
functions, so there is one definition of how raw features become tensors and
no training/serving skew in the encoding. What the features are comes from
the data contract (`contract`), read from the schema.
"""

from typing import Dict
from typing import Mapping

import tensorflow as tf

from next_category.contract import DataContract


def feature_spec(data_contract: DataContract, with_label: bool) -> Dict[str, object]:
  """The `tf.io.parse_example` spec of the data contract.

  Args:
    data_contract: the features.
    with_label: include the label (TRAINING) or not (SERVING).
  """
  spec = {data_contract.sequence.name: tf.io.RaggedFeature(tf.int64)}
  for feature in data_contract.context:
    spec[feature.name] = tf.io.FixedLenFeature([], tf.string)
  if with_label:
    spec[data_contract.label.name] = tf.io.FixedLenFeature([], tf.int64)
  return spec


def vocabulary_index(values: tf.Tensor, vocabulary) -> tf.Tensor:
  """Maps strings to their index in `vocabulary`; unknown values map to len(vocabulary).

  Plain tensor ops rather than a lookup table, so the encoding needs no
  resources and saves and converts anywhere the model does.
  """
  matches = tf.equal(tf.expand_dims(values, -1), tf.constant(vocabulary))
  index = tf.argmax(tf.cast(matches, tf.int32), axis=-1)
  return tf.where(tf.reduce_any(matches, axis=-1), index, tf.cast(len(vocabulary), tf.int64))


def pad_sequence(ids: tf.RaggedTensor, max_length: int) -> tf.Tensor:
  """Keeps the most recent `max_length` ids of each row and right-pads with 0."""
  recent = ids[:, -max_length:]
  return recent.to_tensor(default_value=0, shape=[None, max_length])


def encode(
  data_contract: DataContract, raw: Mapping[str, tf.Tensor], pad: bool = True
) -> Dict[str, tf.Tensor]:
  """Turns raw features into the Keras model's numeric inputs.

  Args:
    data_contract: the features.
    raw: the sequence as [batch, (length)] ids, most recent last, and each
      context feature as [batch] strings.
    pad: return the sequence as a dense [batch, max_length] tensor; if False,
      keep it ragged (truncated to the most recent ids) so the input pipeline
      can batch sequences of similar length together.
  """
  sequence = data_contract.sequence
  ids = tf.cast(raw[sequence.name], tf.int64)
  if pad:
    ids = pad_sequence(ids, sequence.max_length)
  else:
    ids = ids[:, -sequence.max_length :]
  inputs = {sequence.name: ids}
  for feature in data_contract.context:
    inputs[feature.name] = vocabulary_index(raw[feature.name], feature.vocabulary)
  return inputs


def parse_and_encode(
  data_contract: DataContract, serialized: tf.Tensor, with_label: bool, pad: bool = True
):
  """Parses a batch of serialized tf.Examples into model inputs.

  Args:
    data_contract: the features.
    serialized: a [batch] string tensor of serialized tf.Examples.
    with_label: also return the labels.
    pad: see `encode`.

  Returns:
    The model inputs dict, or `(inputs, labels)` when `with_label` is True.
  """
  parsed = tf.io.parse_example(serialized, feature_spec(data_contract, with_label))
  inputs = encode(data_contract, parsed, pad=pad)
  if with_label:
    return inputs, parsed[data_contract.label.name]
  return inputs
