"""Checks shared by the model, pipeline and conversion tests."""

import numpy as np
import tensorflow as tf

from dataset import clickstream


def serialized_examples(num_examples: int, seed: int = 7, with_label: bool = False):
  """Serialized clickstream tf.Examples, without the label unless asked for."""
  serialized = []
  for example in clickstream.generate_examples(num_examples, seed=seed):
    if not with_label:
      del example.features.feature["label"]
    serialized.append(example.SerializeToString())
  return serialized


def assert_saved_model_matches(
  saved_model_dir: str, model: tf.keras.Model, examples, atol: float = 1e-6
) -> np.ndarray:
  """Loads a SavedModel and checks `serving_default` reproduces `model` on `examples`.

  Returns:
    The probabilities the SavedModel returned.
  """
  from components.trainer import features  # pylint: disable=g-import-not-at-top

  loaded = tf.saved_model.load(saved_model_dir)
  serving = loaded.signatures["serving_default"]
  served = serving(examples=tf.constant(examples))["probabilities"].numpy()
  expected = model(
    features.parse_and_encode(tf.constant(examples), with_label=False), training=False
  ).numpy()
  np.testing.assert_allclose(served, expected, atol=atol)
  return served
