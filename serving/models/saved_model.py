"""SavedModels, TF1 and TF2 alike, served as TensorFlow Serving serves them: a SavedModelBundle.

TensorFlow Serving loads every SavedModel the same way, as a session on the
MetaGraphDef whose tags equal `--saved_model_tags` (`LoadSavedModel`, reached
from tensorflow_serving/servables/tensorflow/saved_model_bundle_factory.cc:117-196):
the graph imported, the variables restored, the asset paths fed to the init
op (`saved_model_main_op`, or the older `legacy_init_op`), and every request
run as `Session::Run(feeds, fetches)` with the tensor names of the signature.
So does this (`tf.compat.v1.saved_model.loader.load`, the same steps in
Python), and it runs requests through `TF_SessionRun`, the C API of that same
`Session::Run`: inputs are handed to TensorFlow with no check of their own,
shapes are TensorFlow's business (a [1]-shaped `x` feeds a [-1, 1]
placeholder), and a wrong dtype gets TensorFlow's own message
(`Expects arg[0] to be float but string is provided`). Python's
`Session.run` would add a shape check TensorFlow Serving does not have, so it
is not used.

TF2 SavedModels (those with an object graph) also get a faster path that
answers the same: each signature that can be frozen
(`convert_variables_to_constants_v2`: no variable handle or read per weight,
no function call) runs as its frozen graph in a session of its own, through
the same `TF_SessionRun`. A request whose feeds and fetches are one frozen
signature's runs there; anything else (TF1 models, signatures that cannot be
frozen, MultiInference across signatures) runs on the bundle's session.
"""

import logging
import os
import threading
from typing import Dict
from typing import FrozenSet
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import convert_to_constants

from next_category.serving import status
from next_category.serving.models import servables

SAVED_MODEL_FILENAMES = ("saved_model.pb", "saved_model.pbtxt")
SERVE_TAG = "serve"
# TF2 exports carry this pseudo-signature for their init op (no function).
INIT_OP_SIGNATURE_KEY = "__saved_model_init_op"


def _read_saved_model(path: str) -> saved_model_pb2.SavedModel:
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
  return saved_model


def find_meta_graph(
  saved_model: saved_model_pb2.SavedModel, tags: FrozenSet[str]
) -> meta_graph_pb2.MetaGraphDef:
  """The MetaGraphDef whose tag set equals `tags`, as TensorFlow's `FindMetaGraphDef`.

  Raises:
    ServingError: NOT_FOUND with TensorFlow's message (tensorflow/cc/saved_model/reader.cc).
  """
  for meta_graph in saved_model.meta_graphs:
    if set(meta_graph.meta_info_def.tags) == tags:
      return meta_graph
  raise status.not_found(
    f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(tags))} }}. "
    "To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
    "`saved_model_cli`"
  )


class _Session:
  """A session and its tensors by name, run through `TF_SessionRun` (no Python shape check)."""

  def __init__(self, session: tf.compat.v1.Session):
    self.session = session
    self._outputs: Dict[str, object] = {}
    self._lock = threading.Lock()

  def _output(self, name: str):
    output = self._outputs.get(name)
    if output is None:
      with self._lock:
        try:
          tensor = self.session.graph.get_tensor_by_name(name)
        except (KeyError, ValueError) as e:
          raise status.invalid_argument(str(e)) from None
        output = self._outputs[name] = tensor._as_tf_output()  # pylint: disable=protected-access
    return output

  def run(self, feeds: Dict[str, np.ndarray], fetches: Sequence[str]) -> List[np.ndarray]:
    """`Session::Run(feeds, fetches)`; TensorFlow's errors as ServingErrors."""
    feed_dict = {self._output(name): array for name, array in feeds.items()}
    fetch_list = [self._output(name) for name in fetches]
    try:
      return self.session._call_tf_sessionrun(  # pylint: disable=protected-access
        None, feed_dict, fetch_list, [], None
      )
    except tf.errors.OpError as e:
      raise status.from_tf_error(e) from None


class _FrozenSignature:
  """One TF2 signature frozen into constants, in a session of its own.

  Knows the signature's tensor names and the frozen graph's tensors they stand
  for. Grappler folds the frozen graph's constants, so outputs can differ from
  the bundle's in the last bit of a float32 (relative 1e-7).
  """

  def __init__(self, graph_def: tf.compat.v1.GraphDef, inputs: Dict[str, str], outputs):
    graph = tf.Graph()
    with graph.as_default():
      tf.graph_util.import_graph_def(graph_def, name="")
    self._session = _Session(tf.compat.v1.Session(graph=graph))
    self.inputs = inputs  # signature tensor name -> frozen tensor name
    self.outputs = outputs

  def accepts(self, feeds: FrozenSet[str], fetches: Sequence[str]) -> bool:
    return feeds == frozenset(self.inputs) and all(name in self.outputs for name in fetches)

  def run(self, feeds: Dict[str, np.ndarray], fetches: Sequence[str]) -> List[np.ndarray]:
    return self._session.run(
      {self.inputs[name]: array for name, array in feeds.items()},
      [self.outputs[name] for name in fetches],
    )


def _freeze_signatures(
  path: str, tags: FrozenSet[str], signature_defs: Dict[str, meta_graph_pb2.SignatureDef]
) -> List[_FrozenSignature]:
  """The signatures of a TF2 SavedModel that can be frozen, each as a `_FrozenSignature`."""
  loaded = tf.saved_model.load(path, tags=sorted(tags))
  frozen_signatures = []
  for key, function in loaded.signatures.items():
    signature = signature_defs.get(key)
    if signature is None:
      continue
    try:
      frozen = convert_to_constants.convert_variables_to_constants_v2(function)
    except Exception as e:  # Any failure leaves the signature on the bundle's session.
      logging.info("Serving signature %s on the session (not frozen): %s", key, e)
      continue
    aliases = [spec.name for spec in tf.nest.flatten(function.structured_input_signature)]
    output_aliases = list(function.structured_outputs)
    flat_outputs = tf.nest.flatten(function.structured_outputs)
    # A signature that keeps a resource (a lookup table, say) as an input after
    # freezing needs its init op: it stays on the bundle's session.
    if (
      sorted(aliases) != sorted(signature.inputs)
      or len(frozen.inputs) != len(aliases)
      or len(frozen.outputs) != len(flat_outputs)
      or sorted(output_aliases) != sorted(signature.outputs)
      or any(
        tensor.dtype.as_datatype_enum != signature.inputs[alias].dtype
        for alias, tensor in zip(aliases, frozen.inputs, strict=True)
      )
    ):
      logging.info("Serving signature %s on the session (not frozen).", key)
      continue
    inputs = {
      signature.inputs[alias].name: tensor.name
      for alias, tensor in zip(aliases, frozen.inputs, strict=True)
    }
    # Dictionaries flatten in sorted key order.
    outputs = {
      signature.outputs[alias].name: tensor.name
      for alias, tensor in zip(sorted(output_aliases), frozen.outputs, strict=True)
    }
    frozen_signatures.append(_FrozenSignature(frozen.graph.as_graph_def(), inputs, outputs))
  return frozen_signatures


class SavedModelServable(servables.Servable):
  """A SavedModel, loaded as TensorFlow Serving's SavedModelBundle (see the module docstring).

  Args:
    name: the model name.
    version: the version number.
    path: the version directory.
    tags: the MetaGraphDef's tag set (`--saved_model_tags`).
  """

  platform = "tensorflow"

  def __init__(self, name: str, version: int, path: str, tags: Sequence[str] = (SERVE_TAG,)):
    super().__init__(name, version, path)
    tags = frozenset(tags)
    meta_graph = find_meta_graph(_read_saved_model(path), tags)
    self.signature_defs = dict(meta_graph.signature_def)
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
      with graph.as_default():
        tf.compat.v1.saved_model.loader.load(session, sorted(tags), path)
    except BaseException:
      session.close()
      raise
    self._session = _Session(session)
    self._frozen: List[_FrozenSignature] = []
    if meta_graph.object_graph_def.nodes:
      self._frozen = _freeze_signatures(path, tags, self.signature_defs)
    # (feed names, fetches) -> the frozen signature that answers it, or None.
    self._routes: Dict[Tuple[FrozenSet[str], Tuple[str, ...]], Optional[_FrozenSignature]] = {}

  def _route(self, feeds: FrozenSet[str], fetches: Tuple[str, ...]) -> Optional[_FrozenSignature]:
    key = (feeds, fetches)
    if key not in self._routes:
      self._routes[key] = next((f for f in self._frozen if f.accepts(feeds, fetches)), None)
    return self._routes[key]

  def run(self, fetches, feeds):
    fetches = tuple(fetches)
    frozen = self._route(frozenset(feeds), fetches)
    try:
      arrays = (frozen or self._session).run(feeds, fetches)
    except (TypeError, ValueError) as e:  # A feed TensorFlow cannot even convert.
      raise status.ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    return dict(zip(fetches, arrays, strict=True))
