"""TFLite models, served as TensorFlow Serving serves them (tflite_session.cc)."""

import os
import threading

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from serving import status
from serving.models import servables

TFLITE_FILENAME = "model.tflite"


def _tensor_info(name: str, dtype, shape) -> meta_graph_pb2.TensorInfo:
  info = meta_graph_pb2.TensorInfo(name=name, dtype=tf.as_dtype(dtype).as_datatype_enum)
  for size in shape:
    info.tensor_shape.dim.add().size = int(size)
  return info


def _tflite_key(tensor_name: str) -> str:
  # tflite_session.cc TfToTfLiteLegacyTensorName: the name up to its first ':'.
  return tensor_name.split(":", 1)[0]


class TfLiteServable(servables.Servable):
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
    key = (
      servables.DEFAULT_SIGNATURE_NAME
      if servables.DEFAULT_SIGNATURE_NAME in signatures
      else min(signatures)
    )
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
    self.signature_defs = {servables.DEFAULT_SIGNATURE_NAME: signature_def}

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
