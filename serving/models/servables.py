"""Loaded model versions (servables): SavedModels and TFLite models.

A servable knows its signatures (`SignatureDef`s, exactly as TensorFlow Serving
reports them) and runs them on NumPy inputs, either directly or through a
`BatchScheduler` when batching is on, as TensorFlow Serving wraps a session in
a BatchingSession at load time.
"""

import concurrent.futures
import logging
import os
import threading
from typing import Callable
from typing import Dict
from typing import Optional

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import convert_to_constants

from serving import status
from serving.models import batching

SAVED_MODEL_FILENAMES = ("saved_model.pb", "saved_model.pbtxt")
TFLITE_FILENAME = "model.tflite"
DEFAULT_SIGNATURE_NAME = "serving_default"
SERVE_TAG = "serve"

BatchObserverFactory = Callable[[str, int], Optional[batching.BatchObserver]]


class Servable:
  """One loaded version of a model.

  Attributes:
    name: the model name.
    version: the version number.
    path: the version directory.
    platform: "tensorflow" or "tflite".
    signature_defs: every SignatureDef of the model, by key.
  """

  platform = ""

  def __init__(self, name: str, version: int, path: str):
    self.name = name
    self.version = version
    self.path = path
    self.signature_defs: Dict[str, meta_graph_pb2.SignatureDef] = {}
    self._scheduler: Optional[batching.BatchScheduler] = None
    self._executor: Optional[concurrent.futures.Executor] = None

  def run(self, signature_name: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Runs a signature on validated inputs, on the calling thread.

    Raises:
      ServingError: with TensorFlow's status if the model fails.
    """
    raise NotImplementedError

  def attach(
    self,
    executor: concurrent.futures.Executor,
    batching_options: Optional[batching.BatchingOptions] = None,
    observer: Optional[batching.BatchObserver] = None,
  ) -> None:
    """Sets where `submit` runs requests: a batch scheduler, or `executor`."""
    self._executor = executor
    if batching_options is not None:
      self._scheduler = batching.BatchScheduler(
        self.run, batching_options, name=f"{self.name}-{self.version}", observer=observer
      )

  def submit(
    self,
    signature_name: str,
    inputs: Dict[str, np.ndarray],
    batch_size: int,
    deadline: Optional[float] = None,
  ) -> concurrent.futures.Future:
    """Runs a signature asynchronously, batched with other requests if batching is on.

    Raises:
      ServingError: if the batch queue refuses the request.
      SchedulerClosedError: if this servable is being unloaded.
    """
    if self._scheduler is not None:
      return self._scheduler.schedule(signature_name, inputs, batch_size, deadline)
    if self._executor is None:
      raise batching.SchedulerClosedError(self.name)
    try:
      return self._executor.submit(self.run, signature_name, inputs)
    except RuntimeError:  # The executor is shut down: the server is stopping.
      raise batching.SchedulerClosedError(self.name) from None

  def close(self) -> None:
    """Finishes queued requests and stops taking new ones."""
    if self._scheduler is not None:
      self._scheduler.close()
    self._executor = None


def _read_signature_defs(path: str) -> Dict[str, meta_graph_pb2.SignatureDef]:
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
  for meta_graph in saved_model.meta_graphs:
    if SERVE_TAG in meta_graph.meta_info_def.tags:
      return dict(meta_graph.signature_def)
  raise ValueError(f"The SavedModel at {path} has no MetaGraph tagged {SERVE_TAG!r}.")


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


class SavedModelServable(Servable):
  """A TensorFlow SavedModel, run through its signature functions."""

  platform = "tensorflow"

  def __init__(self, name: str, version: int, path: str):
    super().__init__(name, version, path)
    self.signature_defs = _read_signature_defs(path)
    self._model = tf.saved_model.load(path, tags=[SERVE_TAG])
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


def _tensor_info(name: str, dtype, shape) -> meta_graph_pb2.TensorInfo:
  info = meta_graph_pb2.TensorInfo(name=name, dtype=tf.as_dtype(dtype).as_datatype_enum)
  for size in shape:
    info.tensor_shape.dim.add().size = int(size)
  return info


def _tflite_key(tensor_name: str) -> str:
  # tflite_session.cc TfToTfLiteLegacyTensorName: the name up to its first ':'.
  return tensor_name.split(":", 1)[0]


class TfLiteServable(Servable):
  """A TFLite model, served as TensorFlow Serving serves it.

  TensorFlow Serving reads SignatureDefs only from a TFLite model's
  `signature_defs_metadata`, which TFLiteConverter does not write; for a
  converted model it generates `serving_default` (method predict) from the
  interpreter's input and output tensors, each keyed by its tensor name up to
  the first ':' (`TfLiteSession::Create`,
  tensorflow_serving/servables/tensorflow/tflite_session.cc). So does this:
  the pipeline's model takes `serving_default_item_history` etc. The tensors
  are those of the model's own signature (its `serving_default` if it has
  one). A model converted for batch 1 (as the pipeline's is) runs a batch one
  example at a time and reports -1 as its batch dimension (TF Serving reports
  1 but resizes the inputs to the request's batch).
  """

  platform = "tflite"

  def __init__(self, name: str, version: int, path: str):
    super().__init__(name, version, path)
    with tf.io.gfile.GFile(os.path.join(path, TFLITE_FILENAME), "rb") as f:
      model_content = f.read()
    interpreter = tf.lite.Interpreter(model_content=model_content)
    signatures = interpreter.get_signature_list()
    if not signatures:
      raise ValueError(f"The TFLite model in {path} has no signature to serve.")
    key = DEFAULT_SIGNATURE_NAME if DEFAULT_SIGNATURE_NAME in signatures else min(signatures)
    self._runner = interpreter.get_signature_runner(key)
    self._interpreter = interpreter  # Keeps the runner's interpreter alive.
    # An interpreter is not thread-safe; requests take turns (or batch).
    self._lock = threading.Lock()
    inputs = self._runner.get_input_details()
    outputs = self._runner.get_output_details()
    self._one_at_a_time = all(
      len(d["shape_signature"]) and d["shape_signature"][0] == 1 for d in inputs.values()
    )
    # Served key -> the runner's argument name, and the runner's output name -> served key.
    self._arguments = {_tflite_key(d["name"]): arg for arg, d in inputs.items()}
    self._output_keys = {arg: _tflite_key(d["name"]) for arg, d in outputs.items()}
    signature_def = meta_graph_pb2.SignatureDef(method_name=tf.saved_model.PREDICT_METHOD_NAME)
    for aliases, details in ((signature_def.inputs, inputs), (signature_def.outputs, outputs)):
      for detail in details.values():
        shape = list(detail["shape_signature"])
        if self._one_at_a_time and shape:
          shape[0] = -1
        aliases[_tflite_key(detail["name"])].CopyFrom(
          _tensor_info(detail["name"], detail["dtype"], shape)
        )
    self.signature_defs = {DEFAULT_SIGNATURE_NAME: signature_def}

  def run(self, signature_name, inputs):
    if signature_name not in self.signature_defs:
      raise status.ServingError(
        grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature_name}" not found.'
      )
    signature_inputs = self.signature_defs[signature_name].inputs
    arguments = {}
    for alias, array in inputs.items():
      if alias not in signature_inputs:
        raise status.invalid_argument(f"input tensor alias not found in signature: {alias}")
      dtype = tf.as_dtype(signature_inputs[alias].dtype).as_numpy_dtype
      arguments[self._arguments[alias]] = np.ascontiguousarray(array, dtype=dtype)
    try:
      with self._lock:
        if self._one_at_a_time:
          rows = [
            self._runner(**{arg: array[i : i + 1] for arg, array in arguments.items()})
            for i in range(len(next(iter(arguments.values()))))
          ]
          outputs = {arg: np.concatenate([row[arg] for row in rows]) for arg in rows[0]}
        else:
          outputs = {arg: np.array(value) for arg, value in self._runner(**arguments).items()}
    except (ValueError, RuntimeError) as e:
      raise status.invalid_argument(f"TFLite model {self.name} failed: {e}") from None
    return {self._output_keys[arg]: value for arg, value in outputs.items()}


def find_model_file(path: str, prefer_tflite: bool = False) -> Optional[str]:
  """Which kind of model a version directory holds: "tensorflow", "tflite" or None."""
  has_saved_model = any(
    tf.io.gfile.exists(os.path.join(path, name)) for name in SAVED_MODEL_FILENAMES
  )
  has_tflite = tf.io.gfile.exists(os.path.join(path, TFLITE_FILENAME))
  if has_tflite and (prefer_tflite or not has_saved_model):
    return "tflite"
  if has_saved_model:
    return "tensorflow"
  return None


def load_servable(name: str, version: int, path: str, prefer_tflite: bool = False) -> Servable:
  """Loads the model in a version directory.

  A directory with `model.tflite` and no SavedModel is served with TFLite, as
  is one with both when `prefer_tflite` (TensorFlow Serving's
  `--prefer_tflite_model`).

  Raises:
    FileNotFoundError: if the directory holds neither kind of model.
    Exception: whatever loading the model raises.
  """
  kind = find_model_file(path, prefer_tflite)
  if kind is None:
    raise FileNotFoundError(
      f"No {' or '.join(SAVED_MODEL_FILENAMES)} or {TFLITE_FILENAME} in {path}."
    )
  logging.info("Loading %s model %s version %d from %s", kind, name, version, path)
  if kind == "tflite":
    return TfLiteServable(name, version, path)
  return SavedModelServable(name, version, path)
