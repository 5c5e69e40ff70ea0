"""Fixtures of the InfraValidator tests: small SavedModels (good, corrupted, wrong) and examples.

The canary knows signatures and tensors, never a particular model, so the
models here are a toy classifier written with TensorFlow alone (not the
Trainer's): it parses serialized tf.Examples, averages item embeddings and
returns class probabilities, with TensorFlow Serving's Predict and Classify
signatures and warmup requests, as the Trainer exports them.
"""

import os
import shutil
import types as pytypes

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tfx.types import artifact_utils
from tfx.types import standard_artifacts

NUM_EXAMPLES = 40
_NUM_ITEMS = 50
_NUM_CLASSES = 10
_CLASS_NAMES = [f"category_{i}" for i in range(_NUM_CLASSES)]
_SEGMENTS = ["new", "returning", "loyal"]


def _examples(num_examples: int, seed: int = 11):
  """Serialized tf.Examples: item_history (ints), user_segment, label."""
  rng = np.random.default_rng(seed)
  serialized = []
  for _ in range(num_examples):
    example = tf.train.Example()
    feature = example.features.feature
    length = int(rng.integers(1, 8))
    feature["item_history"].int64_list.value.extend(rng.integers(1, _NUM_ITEMS, length).tolist())
    feature["user_segment"].bytes_list.value.append(rng.choice(_SEGMENTS).encode())
    feature["label"].int64_list.value.append(int(rng.integers(0, _NUM_CLASSES)))
    serialized.append(example.SerializeToString())
  return serialized


class _ToyClassifier(tf.Module):
  """Mean item embedding -> dense -> softmax; `noise` is added even at serving (a bug).

  Noise seeded by the clock rather than dropout: two calls (in two
  processes) give equal answers with probability 0.
  """

  def __init__(self, noise: float = 0.0):
    super().__init__()
    rng = np.random.default_rng(3)
    self.embeddings = tf.Variable(rng.normal(size=(_NUM_ITEMS, 8)).astype(np.float32))
    self.kernel = tf.Variable(rng.normal(size=(8, _NUM_CLASSES)).astype(np.float32))
    self.noise = noise

  def probabilities(self, serialized):
    parsed = tf.io.parse_example(serialized, {"item_history": tf.io.VarLenFeature(tf.int64)})
    history = tf.sparse.to_dense(parsed["item_history"])
    mask = tf.cast(history > 0, tf.float32)[..., tf.newaxis]
    embedded = tf.gather(self.embeddings, history) * mask
    pooled = tf.reduce_sum(embedded, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)
    if self.noise:
      # Seeded by the clock: a stateful random op would carry the op seed
      # fixed at tracing, so two processes replay the same sequence.
      seed = tf.cast(tf.timestamp() * 1e9 % 2**31, tf.int64)
      pooled += tf.random.stateless_uniform(
        tf.shape(pooled), seed=tf.stack([seed, seed]), minval=0.0, maxval=self.noise
      )
    return tf.nn.softmax(tf.matmul(pooled, self.kernel))


def _save(path: str, noise: float, examples) -> str:
  module = _ToyClassifier(noise)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def predict(examples):
    return {"probabilities": module.probabilities(examples)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
  def classify(inputs):
    scores = module.probabilities(inputs)
    classes = tf.tile(tf.constant(_CLASS_NAMES)[tf.newaxis, :], [tf.shape(scores)[0], 1])
    return {"classes": classes, "scores": scores}

  tf.saved_model.save(
    module,
    path,
    signatures={
      "serving_default": predict.get_concrete_function(),
      "classification": classify.get_concrete_function(),
    },
  )
  _set_method_name(path, "classification", "tensorflow/serving/classify")
  _write_warmup_requests(path, examples[:4])
  return path


def _set_method_name(saved_model_dir: str, signature_name: str, method_name: str) -> None:
  # tf.saved_model.save writes every signature as a Predict signature;
  # TensorFlow Serving's Classify API needs the classify method.
  path = os.path.join(saved_model_dir, "saved_model.pb")
  saved_model = saved_model_pb2.SavedModel.FromString(tf.io.gfile.GFile(path, "rb").read())
  for meta_graph in saved_model.meta_graphs:
    meta_graph.signature_def[signature_name].method_name = method_name
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(saved_model.SerializeToString())


def _write_warmup_requests(saved_model_dir: str, examples) -> None:
  # TensorFlow Serving's format: PredictionLog records in assets.extra/.
  path = os.path.join(saved_model_dir, "assets.extra", "tf_serving_warmup_requests")
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path) as writer:
    for serialized in examples:
      request = predict_pb2.PredictRequest()
      request.model_spec.signature_name = "serving_default"
      request.inputs["examples"].CopyFrom(tf.make_tensor_proto([serialized], dtype=tf.string))
      log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
      )
      writer.write(log.SerializeToString())


@pytest.fixture(scope="session")
def models(tmp_path_factory):
  """SavedModel directories: `good` (Predict and Classify), `corrupted`, `noisy`.

  Returns a namespace with those paths and `examples_artifact` (an Examples
  artifact whose `eval` split holds `NUM_EXAMPLES` examples).
  """
  root = tmp_path_factory.mktemp("infra_validator")
  examples = _examples(NUM_EXAMPLES)
  good = _save(str(root / "good"), 0.0, examples)
  # Random answers at serving (like dropout left on): each call differs, a bug the
  # comparison with the in-process model must catch.
  noisy = _save(str(root / "noisy"), 0.5, examples)

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
  with tf.io.TFRecordWriter(
    os.path.join(eval_dir, "data_tfrecord-00000-of-00001.gz"), options="GZIP"
  ) as writer:
    for record in examples:
      writer.write(record)
  return pytypes.SimpleNamespace(
    good=good, corrupted=corrupted, noisy=noisy, examples_artifact=examples_artifact
  )


def model_artifact(saved_model_dir: str, root: str) -> standard_artifacts.Model:
  """A Trainer Model artifact whose Format-Serving is a copy of `saved_model_dir`."""
  artifact = standard_artifacts.Model()
  artifact.uri = root
  shutil.copytree(saved_model_dir, os.path.join(root, "Format-Serving"))
  return artifact
