"""Fixtures of the InfraValidator tests: tiny SavedModels (good, corrupted, wrong) and examples.

The models are untrained `tiny` Transformers: the canary compares the server
with the same SavedModel called in-process, so weights need no training.
"""

import os
import shutil
import types as pytypes

import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

from components.trainer import constants
from components.trainer import features
from components.trainer import model as model_lib
from components.trainer import presets
from serving import warmup
from tests import model_checks

NUM_EXAMPLES = 40


def _set_method_name(saved_model_dir: str, signature_name: str, method_name: str) -> None:
  # tf.saved_model.save writes every signature as a Predict signature;
  # TensorFlow Serving's Classify API needs the classify method.
  path = os.path.join(saved_model_dir, "saved_model.pb")
  saved_model = saved_model_pb2.SavedModel.FromString(tf.io.gfile.GFile(path, "rb").read())
  for meta_graph in saved_model.meta_graphs:
    meta_graph.signature_def[signature_name].method_name = method_name
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(saved_model.SerializeToString())


def _save(model: tf.keras.Model, path: str, signatures, examples) -> str:
  model.save(path, save_format="tf", signatures=signatures, save_traces=False)
  warmup.write_warmup_requests(path, examples[:4])
  return path


@pytest.fixture(scope="session")
def models(tmp_path_factory):
  """SavedModel directories: `good` (Predict and Classify), `corrupted`, `dropout_on`.

  Returns a namespace with those paths and `examples_artifact` (an Examples
  artifact whose `eval` split holds `NUM_EXAMPLES` examples with labels).
  """
  root = tmp_path_factory.mktemp("infra_validator")
  examples = model_checks.serialized_examples(NUM_EXAMPLES, seed=11)
  tf.keras.utils.set_random_seed(3)
  model = model_lib.build_model(presets.get("tiny"))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
  def classify(inputs):
    probabilities = model(features.parse_and_encode(inputs, with_label=False), training=False)
    names = tf.constant(constants.CATEGORY_NAMES)
    classes = tf.tile(names[tf.newaxis, :], [tf.shape(probabilities)[0], 1])
    return {"classes": classes, "scores": probabilities}

  # Dropout left on at inference: each call answers differently, a bug the
  # in-process comparison must catch.
  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def serve_with_dropout(examples):
    encoded = features.parse_and_encode(examples, with_label=False)
    return {constants.PROBABILITIES_KEY: model(encoded, training=True)}

  signatures = model_lib.make_serving_signatures(model)
  good = _save(
    model,
    str(root / "good"),
    {**signatures, "classification": classify.get_concrete_function()},
    examples,
  )
  _set_method_name(good, "classification", "tensorflow/serving/classify")
  dropout_on = _save(
    model,
    str(root / "dropout_on"),
    {"serving_default": serve_with_dropout.get_concrete_function()},
    examples,
  )

  # A copy whose variables file lost its second half, as an interrupted copy leaves it.
  corrupted = str(root / "corrupted")
  shutil.copytree(good, corrupted)
  data = os.path.join(corrupted, "variables", "variables.data-00000-of-00001")
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)

  examples_artifact = standard_artifacts.Examples()
  examples_artifact.uri = str(root / "examples")
  examples_artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
  eval_dir = artifact_utils.get_split_uri([examples_artifact], "eval")
  tf.io.gfile.makedirs(eval_dir)
  labelled = model_checks.serialized_examples(NUM_EXAMPLES, seed=11, with_label=True)
  with tf.io.TFRecordWriter(
    os.path.join(eval_dir, "data_tfrecord-00000-of-00001.gz"), options="GZIP"
  ) as writer:
    for record in labelled:
      writer.write(record)
  return pytypes.SimpleNamespace(
    good=good,
    corrupted=corrupted,
    dropout_on=dropout_on,
    examples_artifact=examples_artifact,
    eval_dir=eval_dir,
  )


def model_artifact(saved_model_dir: str, root: str) -> standard_artifacts.Model:
  """A Trainer Model artifact whose Format-Serving is a copy of `saved_model_dir`."""
  artifact = standard_artifacts.Model()
  artifact.uri = root
  shutil.copytree(saved_model_dir, os.path.join(root, "Format-Serving"))
  return artifact
