"""Fixtures of the TFLiteConverter tests: a tiny trained model and its examples as artifacts."""

import os
import types as pytypes

import pytest
import tensorflow as tf
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from next_category import contract
from next_category.components.tflite_converter import examples as examples_lib
from next_category.components.trainer import export
from next_category.components.trainer import model as model_lib
from next_category.components.trainer import presets
from next_category.dataset import clickstream

# Four shards of 150 examples: three for training, one for eval.
_NUM_EXAMPLES = 600
_TRAIN_STEPS = 60


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """A `tiny` Transformer trained for a few steps, as Trainer's Model and ExampleGen's Examples.

  Returns a namespace with `model` (Keras), `data_contract` (the default
  schema's), `model_artifact`, `examples_artifact`, `train_dir` and `eval_dir`.
  """
  root = tmp_path_factory.mktemp("tflite_converter")
  shards = clickstream.write_span(str(root / "data"), num_examples=_NUM_EXAMPLES, seed=5)

  examples_artifact = standard_artifacts.Examples()
  examples_artifact.uri = str(root / "examples")
  examples_artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
  split_dirs = {}
  for split, files in (("train", shards[:3]), ("eval", shards[3:])):
    split_dirs[split] = artifact_utils.get_split_uri([examples_artifact], split)
    tf.io.gfile.makedirs(split_dirs[split])
    for path in files:
      tf.io.gfile.copy(path, os.path.join(split_dirs[split], os.path.basename(path)))

  config = presets.get("tiny")
  data_contract = contract.load()
  tf.keras.utils.set_random_seed(0)
  model = model_lib._build_model(config, data_contract)
  # Recompiled without XLA: compiling the optimizer step takes longer than
  # the whole training of this model.
  model.compile(
    optimizer=tf.keras.optimizers.Adam(config.learning_rate, jit_compile=False),
    loss=model.loss,
    jit_compile=False,
  )
  train = examples_lib.read(data_contract, [split_dirs["train"]])
  dataset = tf.data.Dataset.from_tensor_slices((train.inputs, train.labels))
  dataset = dataset.shuffle(len(train), seed=0).repeat().batch(config.batch_size)
  model.fit(dataset, epochs=1, steps_per_epoch=_TRAIN_STEPS, verbose=0)

  model_artifact = standard_artifacts.Model()
  model_artifact.uri = str(root / "model")
  export.export_saved_model(
    model, data_contract, os.path.join(model_artifact.uri, "Format-Serving")
  )
  return pytypes.SimpleNamespace(
    model=model,
    data_contract=data_contract,
    model_artifact=model_artifact,
    examples_artifact=examples_artifact,
    train_dir=split_dirs["train"],
    eval_dir=split_dirs["eval"],
  )
