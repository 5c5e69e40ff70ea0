"""TensorFlow 2 SavedModels, served through their signature functions.

Loaded with `tf.saved_model.load` (the MetaGraph of `--saved_model_tags`,
`serve` by default); each signature runs as a frozen graph when it can be
frozen (see `_SignatureRunner`).
"""

import logging
import os
from typing import Dict
from typing import Sequence

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import convert_to_constants

from serving import status
from serving.models import servables

SAVED_MODEL_FILENAMES = ("saved_model.pb", "saved_model.pbtxt")
SERVE_TAG = "serve"


def _read_signature_defs(
  path: str, tags: Sequence[str] = (SERVE_TAG,)
) -> Dict[str, meta_graph_pb2.SignatureDef]:
  # Read here rather than with TensorFlow's parse_saved_model, which turns a
  # corrupt file's DecodeError into an OSError: TF Serving answers DATA_LOSS
  # for it (model_manager._load_error), so the error type must survive.
  saved_model = saved_model_pb2.SavedModel()
  pb_path = os.path.join(path, SAVED_MODEL_FILENAMES[0])
  if tf.io.gfile.exists(pb_path):
    with tf.io.gfile.GFile(pb_path, "rb") as f:
      saved_model.ParseFromString(f.read())
  else:
    with tf.io.gfile.GFile(os.path.join(path, SAVED_MODEL_FILENAMES[1]), "r") as f:
      text_format.Parse(f.read(), saved_model)
  # The MetaGraph whose tag set is exactly `tags`, as TensorFlow's
  # ReadMetaGraphDefFromSavedModel (tensorflow/cc/saved_model/reader.cc) finds it.
  for meta_graph in saved_model.meta_graphs:
    if set(meta_graph.meta_info_def.tags) == set(tags):
      return dict(meta_graph.signature_def)
  raise status.ServingError(
    grpc.StatusCode.NOT_FOUND,
    f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(set(tags)))} }}. "
    "To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
    "`saved_model_cli`",
  )


class _SignatureRunner:
  """Runs one signature function on NumPy inputs.

  The function's variables are frozen into constants at load time when they
  can be (`convert_variables_to_constants_v2`): the frozen graph has no
  variable handle and read per weight, and it is run on flat tensors. For the
  next-category model that makes a batch call up to ~25% cheaper (batch 32),
  CPU that every request shares. Grappler folds the frozen
  graph's constants, so outputs can differ from the loaded function's in the
  last bit of a float32 (relative 1e-7). A function that cannot be frozen (one
  with lookup tables or other resources, say) is run as loaded.
  """

  def __init__(self, function):
    self._aliases = [spec.name for spec in tf.nest.flatten(function.structured_input_signature)]
    self._outputs = function.structured_outputs
    self._function = function
    self._frozen = None
    try:
      frozen = convert_to_constants.convert_variables_to_constants_v2(function)
    except Exception as e:  # Any failure leaves the function as loaded.
      logging.info("Serving signature %s as loaded (not frozen): %s", function.name, e)
      return
    if len(frozen.inputs) == len(self._aliases) and len(frozen.outputs) == len(
      tf.nest.flatten(self._outputs)
    ):
      self._frozen = frozen

  def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    if self._frozen is None:
      outputs = self._function(**{alias: tf.constant(array) for alias, array in inputs.items()})
      return {alias: tensor.numpy() for alias, tensor in outputs.items()}
    # A frozen function has no structured signature: its public call first
    # fails to bind one, formatting the whole batch into the error message,
    # then falls back to this flat call (~0.3 ms a batch here).
    flat = self._frozen._call_flat(  # pylint: disable=protected-access
      [tf.constant(inputs[alias]) for alias in self._aliases], self._frozen.captured_inputs
    )
    outputs = tf.nest.pack_sequence_as(self._outputs, flat)
    return {alias: tensor.numpy() for alias, tensor in outputs.items()}


class SavedModelServable(servables.Servable):
  """A TensorFlow SavedModel, run through its signature functions."""

  platform = "tensorflow"

  def __init__(self, name: str, version: int, path: str, tags: Sequence[str] = (SERVE_TAG,)):
    super().__init__(name, version, path)
    self.signature_defs = _read_signature_defs(path, tags)
    self._model = tf.saved_model.load(path, tags=list(tags))
    self._runners = {
      key: _SignatureRunner(function) for key, function in self._model.signatures.items()
    }

  def run(self, signature_name, inputs):
    runner = self._runners.get(signature_name)
    if runner is None:
      raise status.ServingError(
        grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.'
      )
    try:
      return runner(inputs)
    except tf.errors.OpError as e:
      raise status.from_tf_error(e) from None
    except (TypeError, ValueError) as e:
      raise status.invalid_argument(str(e)) from None
