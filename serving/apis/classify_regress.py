"""Classify and Regress signatures: which they accept, and how their outputs become results.

As TensorFlow Serving's classifier.cc and regressor.cc (in
tensorflow_serving/servables/tensorflow/), with their messages: the checks of
a signature before it runs (`Get{Classification,Regression}SignatureDef`,
`PreProcess{Classification,Regression}`), the result read from its outputs
(`PostProcess{Classification,Regression}Result`), and the serialized
tf.Examples of a request's `Input` (util.cc, `InputToSerializedExampleTensor`).
The data plane (inference.py) runs them in TensorFlow Serving's order.
"""

from typing import Dict
from typing import List
from typing import Tuple

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import input_pb2
from tensorflow_serving.apis import regression_pb2

from next_category.serving import status
from next_category.serving.apis import tensors


def serialized_examples(model_input: input_pb2.Input) -> List[bytes]:
  """The serialized tf.Examples of a tensorflow.serving.Input.

  As `InputToSerializedExampleTensor` (util.cc): with a context, each example
  is the context's bytes followed by its own, which parses as the two merged
  (the example's value wins for a feature both have).
  """
  kind = model_input.WhichOneof("kind")
  if kind == "example_list":
    return [e.SerializeToString() for e in model_input.example_list.examples]
  if kind == "example_list_with_context":
    listed = model_input.example_list_with_context
    context = listed.context.SerializeToString()
    return [context + e.SerializeToString() for e in listed.examples]
  return []


def _debug_string(signature: meta_graph_pb2.SignatureDef) -> str:
  return text_format.MessageToString(signature)


def _check_method_and_input(
  signature: meta_graph_pb2.SignatureDef, method_name_check: bool, kind: str, method_name: str
) -> None:
  """The checks classifier.cc and regressor.cc share: method name (if on), one input."""
  if method_name_check and signature.method_name != method_name:
    raise status.invalid_argument(
      f"Expected {kind} signature method_name to be {method_name}. Was: {signature.method_name}"
    )
  if len(signature.inputs) != 1:
    raise status.invalid_argument("Expected one input Tensor.")


def classification_outputs(
  signature: meta_graph_pb2.SignatureDef, method_name_check: bool
) -> Tuple[str, ...]:
  """The outputs Classify reads, or TensorFlow Serving's error for the signature.

  tensorflow_serving/servables/tensorflow/classifier.cc,
  `GetClassificationSignatureDef` and `PreProcessClassification`.
  """
  _check_method_and_input(
    signature, method_name_check, "classification", tf.saved_model.CLASSIFY_METHOD_NAME
  )
  if len(signature.outputs) not in (1, 2):
    raise status.invalid_argument(
      f"Expected one or two output Tensors, found {len(signature.outputs)}"
    )
  if tf.saved_model.CLASSIFY_INPUTS not in signature.inputs:
    raise status.invalid_argument(
      f"No classification inputs found in SignatureDef: {_debug_string(signature)}"
    )
  names = tuple(
    name
    for name in (tf.saved_model.CLASSIFY_OUTPUT_CLASSES, tf.saved_model.CLASSIFY_OUTPUT_SCORES)
    if name in signature.outputs
  )
  if not names:
    raise status.invalid_argument(
      "Expected classification signature outputs to contain at least one of "
      f'"{tf.saved_model.CLASSIFY_OUTPUT_CLASSES}" or '
      f'"{tf.saved_model.CLASSIFY_OUTPUT_SCORES}". Signature was: {_debug_string(signature)}'
    )
  return names


def _shape_debug_string(array: np.ndarray) -> str:
  return "[" + ",".join(str(size) for size in array.shape) + "]"


def _check_class_output(array, name: str, dtype: int, num_examples: int) -> None:
  if array.ndim != 2:
    raise status.invalid_argument(
      f"Expected Tensor shape: [batch_size num_classes] but got {_shape_debug_string(array)}"
    )
  got = tensors.dtype_of(array)
  if got != dtype:
    raise status.invalid_argument(
      f"Expected {name} Tensor of {types_pb2.DataType.Name(dtype)}. Got: "
      f"{types_pb2.DataType.Name(got)}"
    )
  if array.shape[0] != num_examples:
    raise status.invalid_argument(
      f"Expected {name} output batch size of {num_examples}. Got: {array.shape[0]}"
    )


def classification_result(
  outputs: Dict[str, np.ndarray], num_examples: int, result: classification_pb2.ClassificationResult
) -> None:
  """Fills `result` from `classes` and `scores`.

  classifier.cc, `PostProcessClassificationResult`.
  """
  classes = outputs.get(tf.saved_model.CLASSIFY_OUTPUT_CLASSES)
  scores = outputs.get(tf.saved_model.CLASSIFY_OUTPUT_SCORES)
  if classes is not None:
    _check_class_output(classes, "classes", types_pb2.DT_STRING, num_examples)
  if scores is not None:
    _check_class_output(scores, "scores", types_pb2.DT_FLOAT, num_examples)
  if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
    raise status.invalid_argument(
      "Tensors class and score should match in dim_size(1). Got "
      f"{classes.shape[1]} vs. {scores.shape[1]}"
    )
  num_classes = (classes if classes is not None else scores).shape[1]
  labels = [[""] * num_classes] * num_examples
  if classes is not None:
    labels = [
      [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in row]
      for row in classes.tolist()
    ]
  rows = scores.tolist() if scores is not None else [[0.0] * num_classes] * num_examples
  for row_labels, row_scores in zip(labels, rows, strict=True):
    classes_out = result.classifications.add().classes
    for label, score in zip(row_labels, row_scores, strict=True):
      classes_out.add(label=label, score=score)


def regression_outputs(
  signature: meta_graph_pb2.SignatureDef, method_name_check: bool
) -> Tuple[str, ...]:
  """The output Regress reads, or TensorFlow Serving's error for the signature.

  tensorflow_serving/servables/tensorflow/regressor.cc,
  `GetRegressionSignatureDef` and `PreProcessRegression`.
  """
  _check_method_and_input(
    signature, method_name_check, "regression", tf.saved_model.REGRESS_METHOD_NAME
  )
  if len(signature.outputs) != 1:
    raise status.invalid_argument("Expected one output Tensor.")
  if tf.saved_model.REGRESS_INPUTS not in signature.inputs:
    raise status.invalid_argument(
      f"No regression inputs found in SignatureDef: {_debug_string(signature)}"
    )
  if tf.saved_model.REGRESS_OUTPUTS not in signature.outputs:
    raise status.invalid_argument(
      f"No regression outputs found in SignatureDef: {_debug_string(signature)}"
    )
  return (tf.saved_model.REGRESS_OUTPUTS,)


def regression_result(
  outputs: Dict[str, np.ndarray], num_examples: int, result: regression_pb2.RegressionResult
) -> None:
  """Fills `result` from `outputs` (regressor.cc, `PostProcessRegressionResult`)."""
  values = outputs[tf.saved_model.REGRESS_OUTPUTS]
  if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
    raise status.invalid_argument(
      "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
      f"{_shape_debug_string(values)}"
    )
  if values.shape[0] != num_examples:
    raise status.invalid_argument(
      f"Input batch size did not match output batch size: {num_examples} vs. {values.shape[0]}"
    )
  got = tensors.dtype_of(values)
  if got != types_pb2.DT_FLOAT:
    raise status.invalid_argument(
      f"Expected output Tensor of DT_FLOAT.  Got: {types_pb2.DataType.Name(got)}"
    )
  for value in values.ravel().tolist():
    result.regressions.add(value=value)
