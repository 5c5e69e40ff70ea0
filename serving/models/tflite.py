"""TFLite models, served as TensorFlow Serving 2.16 serves them (`TfLiteSession`).

From tensorflow_serving/servables/tensorflow/tflite_session.cc:
- SignatureDefs come only from the model's `signature_defs_metadata` entry (a
  FlexBuffer map of key -> serialized `tensorflow.SignatureDef`, read as
  TensorFlow Lite's `GetSignatureDefMap` reads it); each TensorInfo name is
  fixed up to an existing tensor, as is or without its `:N` (453-485).
  TFLite's own (native) SignatureDefs are ignored, as there.
- Without that entry: one generated `serving_default` (method predict), every
  model input and output keyed by its tensor name up to the first ':', its
  TensorInfo the tensor's name, dtype and dims (486-500).
- A run feeds tensors by name (same fix-up) and resizes an input to the fed
  shape when it differs (187-229).

Two differences, both kept from before this emulation: a model converted for
batch 1 (every input's batch dimension fixed at 1, as the pipeline's int8
model is: its shapes are folded at conversion, so a resized batch would not
run) runs a batch one example at a time and reports -1 as the batch
dimension of its generated signature (TensorFlow Serving reports 1 and
resizes); and a fed dtype that differs from the tensor's is refused
(TensorFlow Serving copies the bytes unchecked).
"""

import os
import threading
from typing import Dict
from typing import Optional

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import message as protobuf_message
from tensorflow.core.protobuf import meta_graph_pb2

from next_category.serving import status
from next_category.serving.models import servables

TFLITE_FILENAME = "model.tflite"
# tensorflow/lite/tools/signature/signature_def_util.h kSignatureDefsMetadataName.
SIGNATURE_DEFS_METADATA = b"signature_defs_metadata"


def _tensor_info(name: str, dtype, shape) -> meta_graph_pb2.TensorInfo:
  info = meta_graph_pb2.TensorInfo(name=name, dtype=tf.as_dtype(dtype).as_datatype_enum)
  for size in shape:
    info.tensor_shape.dim.add().size = int(size)
  return info


def legacy_tensor_name(tensor_name: str) -> str:
  """`TfToTfLiteLegacyTensorName` (tflite_session.cc:87-95): the name up to its first ':'."""
  return tensor_name.split(":", 1)[0]


def _fix_tensor_name(names: Dict[str, int], name: str) -> str:
  """`FixTfLiteTensorName` (tflite_session.cc:97-113): `name`, or its legacy form.

  Raises:
    ServingError: INTERNAL `Unknown tensor '<name>'.` if neither exists.
  """
  if name in names:
    return name
  legacy = legacy_tensor_name(name)
  if legacy in names:
    return legacy
  raise status.ServingError(grpc.StatusCode.INTERNAL, f"Unknown tensor '{name}'.")


def _with_context(error: status.ServingError, context: str) -> status.ServingError:
  # TF_RETURN_WITH_CONTEXT_IF_ERROR: errors::AppendToMessage adds "\n\t<context>".
  return status.ServingError(error.code, f"{error.message}\n\t{context}")


def read_signature_defs_metadata(model_content: bytes) -> Dict[str, meta_graph_pb2.SignatureDef]:
  """The SignatureDefs of a TFLite model's `signature_defs_metadata` entry ({} if none).

  As TensorFlow Lite's `GetSignatureDefMap`
  (tensorflow/lite/tools/signature/signature_def_util.cc): keys and values
  are read as C strings, so a value ends at its first NUL byte.

  Raises:
    ServingError: INVALID_ARGUMENT as `TfLiteSession::Create` words it if a
      value is not a SignatureDef.
  """
  from flatbuffers import flexbuffers  # pylint: disable=g-import-not-at-top
  from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=g-import-not-at-top

  model = schema.Model.GetRootAsModel(model_content, 0)
  for index in range(model.MetadataLength()):
    metadata = model.Metadata(index)
    if metadata.Name() != SIGNATURE_DEFS_METADATA:
      continue
    data = model.Buffers(metadata.Buffer()).DataAsNumpy()
    entries = flexbuffers.GetRoot(bytes(data)).AsMap
    signature_defs = {}
    for key in entries.Keys:
      name = bytes(key.AsKeyBytes).split(b"\0", 1)[0].decode("utf-8", "replace")
      value = bytes(entries[key.AsKey].AsStringBytes).split(b"\0", 1)[0]
      signature_def = meta_graph_pb2.SignatureDef()
      try:
        signature_def.ParseFromString(value)
      except protobuf_message.DecodeError:
        raise status.invalid_argument(
          "Invalid SignatureDefs found in TfLite model: "
          "Cannot parse signature def found in flatbuffer."
        ) from None
      signature_defs[name] = signature_def
    return signature_defs
  return {}


class TfLiteServable(servables.Servable):
  """A TFLite model, served as TensorFlow Serving serves it (see the module docstring)."""

  platform = "tflite"

  def __init__(self, name: str, version: int, path: str):
    super().__init__(name, version, path)
    with tf.io.gfile.GFile(os.path.join(path, TFLITE_FILENAME), "rb") as f:
      model_content = f.read()
    interpreter = tf.lite.Interpreter(model_content=model_content)
    interpreter.allocate_tensors()
    self._interpreter = interpreter
    # An interpreter is not thread-safe; requests take turns (or batch).
    self._lock = threading.Lock()
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    self._inputs = {d["name"]: d for d in inputs}
    self._outputs = {d["name"]: d for d in outputs}
    # Each input's current dims (a run resizes an input to the shape it is fed).
    self._shapes = {d["name"]: list(d["shape"]) for d in inputs}
    self._one_at_a_time = bool(inputs) and all(
      len(d["shape_signature"]) and d["shape_signature"][0] == 1 for d in inputs
    )
    self.signature_defs = read_signature_defs_metadata(model_content)
    if self.signature_defs:
      for signature_def in self.signature_defs.values():
        for kind, infos, names in (
          ("input", signature_def.inputs, self._inputs),
          ("output", signature_def.outputs, self._outputs),
        ):
          for alias, info in infos.items():
            try:
              info.name = _fix_tensor_name(names, info.name)
            except status.ServingError as e:
              raise _with_context(
                e, f"Signature {kind} {alias} references an unknown tensor"
              ) from None
    else:
      signature_def = meta_graph_pb2.SignatureDef(method_name=tf.saved_model.PREDICT_METHOD_NAME)
      for infos, details in ((signature_def.inputs, inputs), (signature_def.outputs, outputs)):
        for detail in details:
          shape = list(detail["shape"])
          if self._one_at_a_time and shape:
            shape[0] = -1
          infos[legacy_tensor_name(detail["name"])].CopyFrom(
            _tensor_info(detail["name"], detail["dtype"], shape)
          )
      self.signature_defs = {servables.DEFAULT_SIGNATURE_NAME: signature_def}

  def _input(self, name: str, array: np.ndarray) -> dict:
    try:
      detail = self._inputs[_fix_tensor_name(self._inputs, name)]
    except status.ServingError as e:
      raise _with_context(e, f"Missing input TFLite tensor: {name}") from None
    if array.dtype != detail["dtype"] and not (
      array.dtype == object and detail["dtype"] in (np.bytes_, np.object_)
    ):
      raise status.invalid_argument(
        f"Input {legacy_tensor_name(detail['name'])} of this TFLite model is "
        f"{np.dtype(detail['dtype']).name}; got {array.dtype.name}."
      )
    return detail

  def _invoke(self, feeds: Dict[str, np.ndarray], fetches) -> Dict[str, np.ndarray]:
    interpreter = self._interpreter
    resized = False
    for name, array in feeds.items():
      if self._shapes[name] != list(array.shape):
        interpreter.resize_tensor_input(self._inputs[name]["index"], list(array.shape))
        self._shapes[name] = list(array.shape)
        resized = True
    if resized:
      interpreter.allocate_tensors()
    for name, array in feeds.items():
      interpreter.set_tensor(self._inputs[name]["index"], array)
    interpreter.invoke()
    outputs = self._outputs
    return {name: np.array(interpreter.get_tensor(outputs[name]["index"])) for name in fetches}

  def run(self, fetches, feeds):
    arrays = {self._input(name, array)["name"]: array for name, array in feeds.items()}
    output_names = []
    for name in fetches:
      try:
        output_names.append(_fix_tensor_name(self._outputs, name))
      except status.ServingError as e:
        raise status.ServingError(
          e.code, f"Missing output TFLite tensor: {name}: {e.message}"
        ) from None
    rows: Optional[int] = None
    if self._one_at_a_time and arrays and all(a.ndim for a in arrays.values()):
      rows = len(next(iter(arrays.values())))
    try:
      with self._lock:
        if rows is None or rows == 1:
          outputs = self._invoke(arrays, output_names)
        else:
          parts = [
            self._invoke({n: a[i : i + 1] for n, a in arrays.items()}, output_names)
            for i in range(rows)
          ]
          outputs = {n: np.concatenate([part[n] for part in parts]) for n in output_names}
    except (ValueError, RuntimeError) as e:
      raise status.invalid_argument(f"TFLite model {self.name} failed: {e}") from None
    return {name: outputs[fixed] for name, fixed in zip(fetches, output_names, strict=True)}
