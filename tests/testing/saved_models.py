"""Tiny real SavedModels, whole or cut short, for the tests of version directories and pushes."""

import os
import shutil

import tensorflow as tf


def write(path: str, value: float = 1.0) -> str:
  """Saves a one-variable SavedModel (with fingerprint.pb) to `path`; `value` makes models differ.

  Returns:
    `path`.
  """
  module = tf.Module()
  module.v = tf.Variable(value)
  module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([], tf.float32)])
  tf.saved_model.save(module, path)
  return path


def copy(source: str, destination: str, without=()) -> str:
  """Copies a SavedModel directory, leaving out the relative paths in `without` (a cut copy).

  Returns:
    `destination`.
  """
  shutil.copytree(source, destination)
  for relative in without:
    os.remove(os.path.join(destination, relative))
  return destination
