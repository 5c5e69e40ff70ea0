"""Builds the tiny canned models the serving tests serve.

Like TensorFlow Serving's half_plus_two test models, but generated at test time
instead of checked in, and built here from TensorFlow alone: serving imports
nothing of the Trainer, so neither do its test models. They have the
SignatureDefs the Trainer exports (the same keys, method names, input and
output names, dtypes and shapes), over a small untrained network:

- `serving_default` (predict): `examples` DT_STRING [-1] -> `probabilities`
  DT_FLOAT [-1, 10];
- `serving_raw` (predict): `item_history` DT_INT64 [-1, -1], `user_segment`,
  `city_tier` DT_STRING [-1] -> `probabilities`;
- `classification` (classify): `inputs` DT_STRING [-1] -> `classes` DT_STRING
  [-1, 10], `scores` DT_FLOAT [-1, 10];
- `regression` (regress, which the Trainer does not export): `inputs` ->
  `outputs` DT_FLOAT [-1], the top score.

The TFLite model is the same network on encoded inputs, for one example, as
the pipeline's TFLite model is: `item_history` int64 [1, 50], `user_segment`
and `city_tier` int64 [1] (`encode_raw` gives them).

    python -m next_category.serving.testdata.make_canned_models --output_dir=/tmp/canned

writes

    <output_dir>/next_category/1/             SavedModel with warmup requests
    <output_dir>/staging/2/                   SavedModel, other weights (to push)
    <output_dir>/staging/broken/              a version directory that fails to load
    <output_dir>/tflite/next_category/1/model.tflite   the v1 weights in TFLite
"""

import argparse
import dataclasses
import os
import sys
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.saved_model import fingerprinting_utils
from tensorflow.python.saved_model import loader_impl
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from next_category.serving.models import warmup

MODEL_NAME = "next_category"
NUM_WARMUP_EXAMPLES = 4
MAX_HISTORY_LENGTH = 50
CLASS_NAMES = tuple(f"category_{i}" for i in range(10))
USER_SEGMENTS = ("new", "returning")
CITY_TIERS = ("tier1", "tier2", "tier3", "tier4")
LABEL = "label"
RAW_SIGNATURE_NAME = "serving_raw"
CLASSIFICATION_SIGNATURE_NAME = "classification"
REGRESSION_SIGNATURE_NAME = "regression"
# Item ids at or above this share the last embedding row; strings hash into buckets.
_NUM_ITEMS = 200
_NUM_BUCKETS = 8
_EMBEDDING_SIZE = 8
_SEED = 1


@dataclasses.dataclass(frozen=True)
class CannedModels:
  """Where `make_canned_models` wrote each model.

  Attributes:
    base_path: the model base path, holding version 1.
    version_1: the version 1 SavedModel directory.
    version_2: a SavedModel with different weights, outside the base path.
    broken: a version directory whose SavedModel cannot be loaded.
    tflite_base_path: base path of the TFLite model, holding version 1.
  """

  base_path: str
  version_1: str
  version_2: str
  broken: str
  tflite_base_path: str


def make_examples(num_examples: int, seed: int = 7, with_label: bool = False) -> List[bytes]:
  """Serialized tf.Examples with the features the canned models read."""
  rng = np.random.default_rng(seed)
  serialized = []
  for _ in range(num_examples):
    example = tf.train.Example()
    feature = example.features.feature
    length = int(rng.integers(1, MAX_HISTORY_LENGTH + 1))
    feature["item_history"].int64_list.value.extend(rng.integers(1, 300, length).tolist())
    feature["user_segment"].bytes_list.value.append(rng.choice(USER_SEGMENTS).encode())
    feature["city_tier"].bytes_list.value.append(rng.choice(CITY_TIERS).encode())
    label = int(rng.integers(len(CLASS_NAMES)))  # Drawn either way: same features.
    if with_label:
      feature[LABEL].int64_list.value.append(label)
    serialized.append(example.SerializeToString())
  return serialized


def encode_raw(item_history, user_segment, city_tier) -> Dict[str, tf.Tensor]:
  """Raw features as the network (and the TFLite model) takes them.

  Args:
    item_history: int64 [batch, length], 0 = padding.
    user_segment: string [batch].
    city_tier: string [batch].

  Returns:
    `item_history` int64 [batch, length] with ids clipped to the embedding;
    `user_segment`, `city_tier` int64 [batch] hash buckets.
  """
  history = tf.convert_to_tensor(item_history, tf.int64)
  return {
    "item_history": tf.minimum(history, _NUM_ITEMS - 1),
    "user_segment": tf.strings.to_hash_bucket_fast(user_segment, _NUM_BUCKETS),
    "city_tier": tf.strings.to_hash_bucket_fast(city_tier, _NUM_BUCKETS),
  }


class _Network(tf.Module):
  """Mean of the history's item embeddings plus segment and tier embeddings, then softmax."""

  def __init__(self, seed: int):
    super().__init__()
    rng = np.random.default_rng(seed)

    def weight(*shape):
      return tf.Variable(rng.normal(0.0, 0.5, shape).astype(np.float32))

    self.items = weight(_NUM_ITEMS, _EMBEDDING_SIZE)
    self.segments = weight(_NUM_BUCKETS, _EMBEDDING_SIZE)
    self.tiers = weight(_NUM_BUCKETS, _EMBEDDING_SIZE)
    self.kernel = weight(_EMBEDDING_SIZE, len(CLASS_NAMES))
    self.bias = weight(len(CLASS_NAMES))

  def __call__(self, item_history, user_segment, city_tier):
    mask = tf.cast(item_history > 0, tf.float32)[..., None]
    items = tf.gather(self.items, item_history) * mask
    history = tf.reduce_sum(items, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
    hidden = history + tf.gather(self.segments, user_segment) + tf.gather(self.tiers, city_tier)
    return tf.nn.softmax(tf.matmul(tf.tanh(hidden), self.kernel) + self.bias)


def _parse(examples):
  parsed = tf.io.parse_example(
    examples,
    {
      "item_history": tf.io.VarLenFeature(tf.int64),
      "user_segment": tf.io.FixedLenFeature([], tf.string),
      "city_tier": tf.io.FixedLenFeature([], tf.string),
    },
  )
  history = tf.sparse.to_dense(parsed["item_history"])
  return encode_raw(history, parsed["user_segment"], parsed["city_tier"])


def _signatures(network: _Network) -> Dict[str, tf.types.experimental.ConcreteFunction]:
  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def serve_examples(examples):
    return {"probabilities": network(**_parse(examples))}

  @tf.function(
    input_signature=[
      tf.TensorSpec([None, None], tf.int64, name="item_history"),
      tf.TensorSpec([None], tf.string, name="user_segment"),
      tf.TensorSpec([None], tf.string, name="city_tier"),
    ]
  )
  def serve_raw(item_history, user_segment, city_tier):
    return {"probabilities": network(**encode_raw(item_history, user_segment, city_tier))}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
  def classify(inputs):
    scores = network(**_parse(inputs))
    classes = tf.tile(tf.constant([CLASS_NAMES]), [tf.shape(scores)[0], 1])
    return {"classes": classes, "scores": scores}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
  def regress(inputs):
    return {"outputs": tf.reduce_max(network(**_parse(inputs)), axis=1)}

  return {
    "serving_default": serve_examples.get_concrete_function(),
    RAW_SIGNATURE_NAME: serve_raw.get_concrete_function(),
    CLASSIFICATION_SIGNATURE_NAME: classify.get_concrete_function(),
    REGRESSION_SIGNATURE_NAME: regress.get_concrete_function(),
  }


def _save(network: _Network, path: str) -> None:
  tf.saved_model.save(network, path, signatures=_signatures(network))
  # tf.saved_model.save writes every signature as predict; TF Serving reads
  # the method names, so set the ones the Trainer's SavedModel has.
  _set_method_names(
    path,
    {
      CLASSIFICATION_SIGNATURE_NAME: "tensorflow/serving/classify",
      REGRESSION_SIGNATURE_NAME: "tensorflow/serving/regress",
    },
  )


def _set_method_names(path: str, method_names: Dict[str, str]) -> None:
  saved_model = loader_impl.parse_saved_model(path)
  for meta_graph in saved_model.meta_graphs:
    for key, method_name in method_names.items():
      meta_graph.signature_def[key].method_name = method_name
  with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "wb") as f:
    f.write(saved_model.SerializeToString(deterministic=True))
  # The fingerprint holds a checksum of saved_model.pb.
  fingerprinting_utils.write_fingerprint(path)


def write_warmup_requests(
  saved_model_dir: str, examples: Sequence[bytes], with_classify: bool = True
) -> None:
  """Warmup records as the Trainer writes them: Predict requests, then one Classify."""
  path = warmup.warmup_file(saved_model_dir)
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path) as writer:
    for example in examples:
      predict = predict_pb2.PredictRequest()
      predict.model_spec.name = MODEL_NAME
      predict.inputs["examples"].CopyFrom(tf.make_tensor_proto([example], dtype=tf.string))
      log = prediction_log_pb2.PredictionLog()
      log.predict_log.request.CopyFrom(predict)
      writer.write(log.SerializeToString())
    if not with_classify:
      return
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = MODEL_NAME
    classify.model_spec.signature_name = CLASSIFICATION_SIGNATURE_NAME
    for example in examples:
      classify.input.example_list.examples.add().ParseFromString(example)
    log = prediction_log_pb2.PredictionLog()
    log.classify_log.request.CopyFrom(classify)
    writer.write(log.SerializeToString())


def _write_tflite(network: _Network, path: str) -> None:
  # One example per call, as the pipeline converts its model.
  @tf.function(
    input_signature=[
      tf.TensorSpec([1, MAX_HISTORY_LENGTH], tf.int64, name="item_history"),
      tf.TensorSpec([1], tf.int64, name="user_segment"),
      tf.TensorSpec([1], tf.int64, name="city_tier"),
    ]
  )
  def serve(item_history, user_segment, city_tier):
    return {"probabilities": network(item_history, user_segment, city_tier)}

  converter = tf.lite.TFLiteConverter.from_concrete_functions(
    [serve.get_concrete_function()], network
  )
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(converter.convert())


def make_canned_models(output_dir: str, with_tflite: bool = True) -> CannedModels:
  """Writes the canned models under `output_dir` (see the module docstring)."""
  network = _Network(_SEED)
  base_path = os.path.join(output_dir, MODEL_NAME)
  version_1 = os.path.join(base_path, "1")
  _save(network, version_1)
  write_warmup_requests(version_1, make_examples(NUM_WARMUP_EXAMPLES, seed=_SEED))

  tflite_base_path = os.path.join(output_dir, "tflite", MODEL_NAME)
  if with_tflite:
    _write_tflite(network, os.path.join(tflite_base_path, "1", "model.tflite"))

  # Version 2: the same graph with other weights, so answers tell versions apart.
  version_2 = os.path.join(output_dir, "staging", "2")
  _save(_Network(_SEED + 1), version_2)

  broken = os.path.join(output_dir, "staging", "broken")
  tf.io.gfile.makedirs(broken)
  with tf.io.gfile.GFile(os.path.join(broken, "saved_model.pb"), "wb") as f:
    f.write(b"this is not a SavedModel")
  return CannedModels(base_path, version_1, version_2, broken, tflite_base_path)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--output_dir", required=True, help="Where to write the models.")
  args = parser.parse_args(argv)
  canned = make_canned_models(args.output_dir)
  for field in dataclasses.fields(canned):
    print(f"{field.name}: {getattr(canned, field.name)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
