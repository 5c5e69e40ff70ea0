"""Conversion of the Keras model to TFLite (float and full-integer int8), and running it.

The TFLite model has one signature, `serving_default`, for a single example,
with the data contract's names: the sequence int64 [1, max_length]
(right-padded with 0, as `features.pad_sequence` pads), each context feature
int64 [1] vocabulary indices (`features.vocabulary_index`), and
`probabilities` float32 [1, num_classes].

In the int8 model every weight and every activation is int8 (biases int32).
The inputs stay int64: they are ids and indices, which select embedding rows
and are never scaled, so quantizing them would be meaningless. The output is
the int8 softmax dequantized once (one DEQUANTIZE of num_classes values) to float32, so
clients read probabilities exactly as they read the SavedModel's and the float
TFLite model's, without applying a scale and zero point themselves.
"""

from typing import Callable
from typing import Dict
from typing import Iterable
from typing import List
from typing import Optional

import numpy as np
import tensorflow as tf

from next_category.components.trainer import export
from next_category.contract import DataContract

SIGNATURE_KEY = "serving_default"
# TFLite tensor types allowed inside a full-integer model: int8 weights and
# activations, int32 biases and the integer index arithmetic on the inputs.
_INTEGER_TYPES = (np.int8, np.int32, np.int64, np.bool_)


def serving_function(
  model: tf.keras.Model, data_contract: DataContract
) -> tf.types.experimental.ConcreteFunction:
  """The single-example function the TFLite model is converted from.

  Shapes are fixed (batch 1, the contract's longest sequence), so the
  converter folds every shape computation and XNNPACK plans each op once.
  """
  sequence = data_contract.sequence
  specs = [tf.TensorSpec([1, sequence.max_length], tf.int64, name=sequence.name)] + [
    tf.TensorSpec([1], tf.int64, name=f.name) for f in data_contract.context
  ]

  @tf.function(input_signature=specs)
  def serve(*inputs):
    encoded = dict(zip([spec.name for spec in specs], inputs, strict=True))
    return {export.PROBABILITIES_KEY: model(encoded, training=False)}

  return serve.get_concrete_function()


def convert(
  model: tf.keras.Model,
  data_contract: DataContract,
  representative_inputs: Optional[Iterable[Dict[str, np.ndarray]]] = None,
) -> bytes:
  """Converts `model` to a TFLite flatbuffer.

  Args:
    model: the trained Keras model.
    data_contract: the contract it was trained on (input names and shapes).
    representative_inputs: single-example input dicts (as
      `EncodedExamples.row` gives) to calibrate activation ranges on. None
      converts to float32; otherwise the model is quantized to full integer
      (int8 weights and activations, see the module docstring).

  Returns:
    The TFLite model.
  """
  function = serving_function(model, data_contract)
  # The converter saves the function with this object before converting. A
  # bare module holding the variables saves in seconds; the Keras model
  # itself would also trace and save every layer's call (~20 s for `small`).
  # The TFLite models are identical.
  holder = tf.Module()
  holder.model_variables = list(model.variables)
  converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)
  if representative_inputs is not None:
    rows = list(representative_inputs)
    if not rows:
      raise ValueError("representative_inputs is empty; int8 calibration needs examples.")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(rows)
    # Fails the conversion instead of silently keeping float kernels for ops
    # that have no int8 one.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  return converter.convert()


def non_integer_tensors(model_content: bytes) -> List[str]:
  """Names of tensors that break full-integer quantization.

  Every tensor must be int8 or an integer index type, except the model's
  outputs (float32 probabilities, by design).
  """
  interpreter = tf.lite.Interpreter(model_content=model_content)
  outputs = {d["index"] for d in interpreter.get_output_details()}
  return [
    d["name"]
    for d in interpreter.get_tensor_details()
    if d["index"] not in outputs and not any(d["dtype"] == t for t in _INTEGER_TYPES)
  ]


class Runner:
  """Runs a TFLite model one example at a time, with as little overhead as the API allows.

  Args:
    model_content: the TFLite model.
    num_threads: interpreter threads; 1 measures single-example latency on
      one core, as a phone or a sidecar would run it.
    xnnpack: run with the interpreter's default XNNPACK delegate, as
      `tf.lite.Interpreter` does unless told otherwise (and as the model is
      served); False runs TFLite's builtin kernels only, for comparison.
  """

  def __init__(self, model_content: bytes, num_threads: int = 1, xnnpack: bool = True):
    resolver = tf.lite.experimental.OpResolverType
    self.interpreter = tf.lite.Interpreter(
      model_content=model_content,
      num_threads=num_threads,
      experimental_op_resolver_type=resolver.AUTO
      if xnnpack
      else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    self.interpreter.allocate_tensors()
    runner = self.interpreter.get_signature_runner(SIGNATURE_KEY)
    self._inputs = {
      name: (d["index"], d["dtype"]) for name, d in runner.get_input_details().items()
    }
    self._output = runner.get_output_details()[export.PROBABILITIES_KEY]["index"]

  def __call__(self, inputs: Dict[str, np.ndarray]) -> np.ndarray:
    """Returns the [1, num_classes] probabilities of one example."""
    for name, (index, dtype) in self._inputs.items():
      self.interpreter.set_tensor(index, inputs[name].astype(dtype, copy=False))
    self.interpreter.invoke()
    return self.interpreter.get_tensor(self._output)

  def predict_all(self, rows: Callable[[int], Dict[str, np.ndarray]], count: int) -> np.ndarray:
    """Probabilities of examples `rows(0)`..`rows(count - 1)`, as [count, num_classes]."""
    return np.concatenate([self(rows(i)) for i in range(count)])
