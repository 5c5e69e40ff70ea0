"""Shared test helper: clickstream examples with one thing wrong, and TFRecord files of them."""

from typing import Iterable
from typing import Optional

import tensorflow as tf


def example(
  item_history=(5, 6, 7),
  user_segment=(b"returning",),
  city_tier=(b"tier1",),
  label=(3,),
) -> tf.train.Example:
  """A valid example by default; pass a value to change one feature, None to drop it.

  The Python type of the values picks the `tf.train.Feature` kind: ints give
  `int64_list`, floats `float_list`, bytes `bytes_list`; an empty tuple gives an
  `int64_list` with no values.
  """
  features = {}
  for name, values in (
    ("item_history", item_history),
    ("user_segment", user_segment),
    ("city_tier", city_tier),
    ("label", label),
  ):
    if values is None:
      continue
    values = list(values)
    if values and isinstance(values[0], bytes):
      features[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    elif values and isinstance(values[0], float):
      features[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    else:
      features[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  return tf.train.Example(features=tf.train.Features(feature=features))


def write(
  path: str, examples: Iterable[tf.train.Example], compression: Optional[str] = None
) -> str:
  """Writes examples to a TFRecord file (`compression`: None or "GZIP"); returns `path`."""
  options = tf.io.TFRecordOptions(compression_type=compression) if compression else None
  with tf.io.TFRecordWriter(path, options) as writer:
    for e in examples:
      writer.write(e.SerializeToString())
  return path
