"""The exported SavedModel's SignatureDefs: the API production clients depend on.

Read from saved_model.pb as TensorFlow Serving reads them, so a change to a
signature's method name, keys, dtypes or shapes fails here before it breaks a
client of the real server.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from next_category import contract
from next_category.components.trainer import export
from next_category.components.trainer import model as model_lib
from next_category.components.trainer import presets
from tests.testing import model_checks

_CONTRACT = contract.load()
_NUM_CLASSES = 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  tf.keras.utils.set_random_seed(0)
  model = model_lib._build_model(presets.get("tiny"), _CONTRACT)
  export_dir = str(tmp_path_factory.mktemp("export") / "model")
  export.export_saved_model(model, _CONTRACT, export_dir, model_checks.serialized_examples(2))
  return model, export_dir


def _signature_defs(export_dir):
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())
  (meta_graph,) = saved_model.meta_graphs
  return meta_graph.signature_def


def _tensors(tensor_infos):
  return {
    key: (types_pb2.DataType.Name(info.dtype), [d.size for d in info.tensor_shape.dim])
    for key, info in tensor_infos.items()
  }


def test_signature_defs_are_pinned(exported):
  _, export_dir = exported
  signatures = _signature_defs(export_dir)
  assert sorted(signatures) == [
    "__saved_model_init_op",
    "classification",
    "serving_default",
    "serving_raw",
  ]
  described = {
    name: (
      signatures[name].method_name,
      _tensors(signatures[name].inputs),
      _tensors(signatures[name].outputs),
    )
    for name in ("serving_default", "serving_raw", "classification")
  }
  assert described == {
    "serving_default": (
      "tensorflow/serving/predict",
      {"examples": ("DT_STRING", [-1])},
      {"probabilities": ("DT_FLOAT", [-1, _NUM_CLASSES])},
    ),
    "serving_raw": (
      "tensorflow/serving/predict",
      {
        "item_history": ("DT_INT64", [-1, -1]),
        "user_segment": ("DT_STRING", [-1]),
        "city_tier": ("DT_STRING", [-1]),
      },
      {"probabilities": ("DT_FLOAT", [-1, _NUM_CLASSES])},
    ),
    # What TensorFlow Serving's Classify requires
    # (tensorflow_serving/servables/tensorflow/classifier.cc,
    # PreProcessClassification and PostProcessClassificationResult): the
    # classify method, one DT_STRING input `inputs` of serialized
    # tf.Examples, `classes` DT_STRING and `scores` DT_FLOAT of
    # [batch, num_classes].
    "classification": (
      "tensorflow/serving/classify",
      {"inputs": ("DT_STRING", [-1])},
      {"classes": ("DT_STRING", [-1, _NUM_CLASSES]), "scores": ("DT_FLOAT", [-1, _NUM_CLASSES])},
    ),
  }


def test_classification_gives_class_names_and_the_predict_scores(exported):
  model, export_dir = exported
  loaded = tf.saved_model.load(export_dir)
  examples = tf.constant(model_checks.serialized_examples(3))
  classified = loaded.signatures["classification"](inputs=examples)
  predicted = loaded.signatures["serving_default"](examples=examples)["probabilities"]
  np.testing.assert_array_equal(classified["scores"].numpy(), predicted.numpy())
  names = [f"category_{i}".encode() for i in range(_NUM_CLASSES)]
  assert classified["classes"].numpy().tolist() == [names] * 3
  model_checks.assert_saved_model_matches(export_dir, model, examples.numpy().tolist())


def test_the_fingerprint_matches_the_rewritten_saved_model(exported):
  from tensorflow.python.saved_model import fingerprinting  # pylint: disable=g-import-not-at-top

  _, export_dir = exported
  before = fingerprinting.read_fingerprint(export_dir)
  export._set_classify_method_name(export_dir)  # Idempotent: same bytes, same fingerprint.
  assert fingerprinting.read_fingerprint(export_dir) == before
  # Keras reloads the model with its signatures.
  reloaded = tf.keras.models.load_model(export_dir)
  assert reloaded.signatures["classification"].structured_outputs.keys() == {"classes", "scores"}


def test_warmup_needs_one_to_a_thousand_examples(tmp_path):
  with pytest.raises(ValueError, match="between 1 and 1000 examples"):
    export.write_warmup_requests(str(tmp_path), [])
  with pytest.raises(ValueError, match="got 1001"):
    export.write_warmup_requests(str(tmp_path), [b"x"] * 1001)


def test_a_model_without_contract_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="data_contract.json does not exist"):
    export.read_contract(str(tmp_path))
