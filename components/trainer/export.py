"""The serving SavedModel the Trainer exports: its signatures, warmup requests and contract.

Signatures (the API production clients depend on; `export_test` pins them):

* `serving_default` (`tensorflow/serving/predict`): `examples`, serialized
  tf.Examples without the label, as TensorFlow Serving's Predict and TFMA send
  them -> `probabilities` float [batch, num_classes];
* `serving_raw` (predict): the raw features, for callers that build no
  tf.Example: the sequence as a padded [batch, length] int64 tensor (0 pads,
  on either side; most recent id last), each context feature as [batch]
  strings -> `probabilities`;
* `classification` (`tensorflow/serving/classify`): `inputs`, serialized
  tf.Examples -> `classes` string [batch, num_classes] (the class names, from
  the schema) and `scores` float [batch, num_classes], the shape TensorFlow
  Serving's Classify API requires. A Classify request names it
  (`signature_name: "classification"`): an empty name means
  `serving_default`, which is a predict signature.

TensorFlow 2 saves every signature with the predict method name, so the
classification signature's method name is set in saved_model.pb after saving
(and the SavedModel fingerprint rewritten to match).

Beside them, in assets.extra/ (which TensorFlow Serving copies along and
otherwise ignores): `tf_serving_warmup_requests`, replayed by TensorFlow
Serving at load, and `data_contract.json`, the contract the model was trained
on, for the TFLite conversion.
"""

import os
from typing import Dict
from typing import Iterable

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import fingerprinting_utils
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from next_category.components.trainer import features
from next_category.contract import DataContract

PROBABILITIES_KEY = "probabilities"
SERIALIZED_EXAMPLES_KEY = "examples"
DEFAULT_SIGNATURE_NAME = "serving_default"
RAW_SIGNATURE_NAME = "serving_raw"
CLASSIFICATION_SIGNATURE_NAME = "classification"
# tensorflow/cc/saved_model/signature_constants.h.
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"

ASSETS_EXTRA = "assets.extra"
WARMUP_FILENAME = "tf_serving_warmup_requests"
CONTRACT_FILENAME = "data_contract.json"
# TensorFlow Serving refuses to load a model with more warmup records.
MAX_WARMUP_RECORDS = 1000


def serving_signatures(
  model: tf.keras.Model, data_contract: DataContract
) -> Dict[str, tf.types.experimental.ConcreteFunction]:
  """The SavedModel's signatures (see the module docstring), by signature key."""
  sequence = data_contract.sequence.name
  class_names = list(data_contract.label.class_names)

  def probabilities(serialized):
    inputs = features.parse_and_encode(data_contract, serialized, with_label=False)
    return model(inputs, training=False)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERIALIZED_EXAMPLES_KEY)])
  def serve_examples(examples):
    return {PROBABILITIES_KEY: probabilities(examples)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUTS)])
  def classify(inputs):
    scores = probabilities(inputs)
    classes = tf.tile(tf.constant([class_names]), [tf.shape(scores)[0], 1])
    return {CLASSIFY_OUTPUT_CLASSES: classes, CLASSIFY_OUTPUT_SCORES: scores}

  raw_specs = [tf.TensorSpec([None, None], tf.int64, name=sequence)] + [
    tf.TensorSpec([None], tf.string, name=f.name) for f in data_contract.context
  ]

  @tf.function(input_signature=raw_specs)
  def serve_raw(*raw):
    values = dict(zip([spec.name for spec in raw_specs], raw, strict=True))
    # Drop padding wherever it is, then pad the way the model was trained.
    values[sequence] = tf.ragged.boolean_mask(values[sequence], values[sequence] > 0)
    return {PROBABILITIES_KEY: model(features.encode(data_contract, values), training=False)}

  return {
    DEFAULT_SIGNATURE_NAME: serve_examples.get_concrete_function(),
    RAW_SIGNATURE_NAME: serve_raw.get_concrete_function(),
    CLASSIFICATION_SIGNATURE_NAME: classify.get_concrete_function(),
  }


def _set_classify_method_name(export_dir: str) -> None:
  path = os.path.join(export_dir, "saved_model.pb")
  saved_model = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(path, "rb") as f:
    saved_model.ParseFromString(f.read())
  for meta_graph in saved_model.meta_graphs:
    meta_graph.signature_def[CLASSIFICATION_SIGNATURE_NAME].method_name = CLASSIFY_METHOD_NAME
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(saved_model.SerializeToString(deterministic=True))
  # The fingerprint holds a checksum of saved_model.pb.
  fingerprinting_utils.write_fingerprint(export_dir)


def write_warmup_requests(saved_model_dir: str, serialized_examples: Iterable[bytes]) -> str:
  """Writes one `serving_default` PredictRequest per example, in TensorFlow Serving's format.

  TensorFlow Serving replays `assets.extra/tf_serving_warmup_requests` (a
  TFRecord file of `PredictionLog`s) when it loads a version, before the
  version serves, so the first real requests do not pay for graph
  initialisation. The model name is left out: the server runs warmup on the
  version it is loading, whatever it serves it as.

  Args:
    saved_model_dir: the exported SavedModel directory.
    serialized_examples: serialized tf.Examples, label absent, as clients send them.

  Returns:
    The path of the written file.

  Raises:
    ValueError: if there are no examples, or more than `MAX_WARMUP_RECORDS`.
  """
  examples = list(serialized_examples)
  if not examples or len(examples) > MAX_WARMUP_RECORDS:
    raise ValueError(
      f"Warmup needs between 1 and {MAX_WARMUP_RECORDS} examples (TensorFlow Serving's "
      f"limit); got {len(examples)}."
    )
  path = os.path.join(saved_model_dir, ASSETS_EXTRA, WARMUP_FILENAME)
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path) as writer:
    for example in examples:
      request = predict_pb2.PredictRequest()
      request.model_spec.signature_name = DEFAULT_SIGNATURE_NAME
      request.inputs[SERIALIZED_EXAMPLES_KEY].CopyFrom(
        tf.make_tensor_proto([example], dtype=tf.string)
      )
      log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
      )
      writer.write(log.SerializeToString())
  return path


def read_contract(saved_model_dir: str) -> DataContract:
  """The data contract an exported model was trained on.

  Raises:
    FileNotFoundError: if the model has no assets.extra/data_contract.json.
  """
  path = os.path.join(saved_model_dir, ASSETS_EXTRA, CONTRACT_FILENAME)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
      f"{path} does not exist: the model was not exported by this Trainer, which writes the "
      "data contract it was trained on there."
    )
  with tf.io.gfile.GFile(path) as f:
    return DataContract.from_json(f.read())


def export_saved_model(
  model: tf.keras.Model,
  data_contract: DataContract,
  export_dir: str,
  warmup_examples: Iterable[bytes] = (),
) -> None:
  """Saves `model` for serving: signatures, data contract and (if any) warmup requests.

  Args:
    model: the trained Keras model.
    data_contract: the contract it was trained on.
    export_dir: the SavedModel directory to write.
    warmup_examples: serialized tf.Examples without label; none writes no
      warmup file.
  """
  # No per-layer traces: the layers are registered and serializable, and tracing them
  # for the SavedModel doubled the export time. Signatures are traced as before.
  model.save(
    export_dir,
    save_format="tf",
    signatures=serving_signatures(model, data_contract),
    save_traces=False,
  )
  _set_classify_method_name(export_dir)
  contract_path = os.path.join(export_dir, ASSETS_EXTRA, CONTRACT_FILENAME)
  tf.io.gfile.makedirs(os.path.dirname(contract_path))
  with tf.io.gfile.GFile(contract_path, "w") as f:
    f.write(data_contract.to_json())
  examples = list(warmup_examples)
  if examples:
    write_warmup_requests(export_dir, examples)
