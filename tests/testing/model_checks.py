"""Checks shared by the model, pipeline and conversion tests."""

import numpy as np
import tensorflow as tf

from next_category import contract
from next_category.dataset import clickstream


def serialized_examples(
  num_examples: int, seed: int = 7, with_label: bool = False, data_contract=None
):
  """Serialized clickstream tf.Examples, without the label unless asked for.

  `data_contract` defaults to the default schema's.
  """
  data_contract = data_contract or contract.load()
  serialized = []
  for example in clickstream.generate_examples(
    num_examples, seed=seed, data_contract=data_contract
  ):
    if not with_label:
      del example.features.feature[data_contract.label.name]
    serialized.append(example.SerializeToString())
  return serialized


def assert_saved_model_matches(
  saved_model_dir: str, model: tf.keras.Model, examples, atol: float = 1e-6, data_contract=None
) -> np.ndarray:
  """Loads a SavedModel and checks `serving_default` reproduces `model` on `examples`.

  `data_contract` (default: the default schema's) encodes `examples` for `model`.

  Returns:
    The probabilities the SavedModel returned.
  """
  from next_category.components.trainer import features  # pylint: disable=g-import-not-at-top

  loaded = tf.saved_model.load(saved_model_dir)
  serving = loaded.signatures["serving_default"]
  served = serving(examples=tf.constant(examples))["probabilities"].numpy()
  expected = model(
    features.parse_and_encode(
      data_contract or contract.load(), tf.constant(examples), with_label=False
    ),
    training=False,
  ).numpy()
  np.testing.assert_allclose(served, expected, atol=atol)
  return served


def assert_tflite_matches(
  tflite_model: bytes,
  model: tf.keras.Model,
  rows,
  atol: float,
  min_top1_agreement: float = 1.0,
) -> np.ndarray:
  """Runs a single-example TFLite model on `rows` and checks it against the Keras `model`.

  Args:
    tflite_model: a model from `next_category.components.tflite_converter.conversion.convert`.
    model: the Keras model it was converted from.
    rows: single-example input dicts (as `EncodedExamples.row` gives).
    atol: largest allowed difference of any probability (float: ~1e-5; int8
      carries quantization error, ~0.1).
    min_top1_agreement: smallest allowed fraction of examples on which both
      predict the same category.

  Returns:
    The TFLite probabilities, [len(rows), num_classes].
  """
  from next_category.components.tflite_converter import conversion  # pylint: disable=g-import-not-at-top

  runner = conversion.Runner(tflite_model)
  rows = list(rows)
  served = np.concatenate([runner(row) for row in rows])
  expected = np.concatenate([model(row, training=False).numpy() for row in rows])
  np.testing.assert_allclose(served, expected, atol=atol)
  agreement = float((served.argmax(axis=1) == expected.argmax(axis=1)).mean())
  assert agreement >= min_top1_agreement, (
    f"TFLite and Keras agree on the top category for {agreement:.1%} of examples, "
    f"below {min_top1_agreement:.1%}."
  )
  return served
