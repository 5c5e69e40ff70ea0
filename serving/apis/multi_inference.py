"""MultiInference: several Classify and Regress tasks on one input, in one session run.

As TensorFlow Serving's tensorflow_serving/servables/tensorflow/multi_inference.cc
(`TensorFlowMultiInferenceRunner::Infer`, 33-125) and
multi_inference_helper.cc, with their messages: every task names the same
model and a different signature of a classify or regress method; the
serialized tf.Examples of the one `input` are fed to every task's input
tensor, the union of the tasks' outputs is fetched in one run, and each task
gets its result and model spec in the request's order. The data plane
(inference.py) runs the plan.
"""

import dataclasses
from typing import Dict
from typing import Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import model_pb2

from next_category.serving import status
from next_category.serving.apis import classify_regress
from next_category.serving.models import servables


@dataclasses.dataclass(frozen=True)
class Task:
  """One task of a MultiInferenceRequest, checked against its signature.

  Attributes:
    method_name: `tensorflow/serving/classify` or `tensorflow/serving/regress`.
    model_spec: the task's model spec, as the request gave it.
    signature_name: the signature run (empty in the request: `serving_default`).
    outputs: the outputs the task reads, alias -> tensor name.
  """

  method_name: str
  model_spec: model_pb2.ModelSpec
  signature_name: str
  outputs: Dict[str, str]


@dataclasses.dataclass(frozen=True)
class Plan:
  """A MultiInferenceRequest as one session run.

  Attributes:
    tasks: in the request's order.
    input_names: the tensor names the serialized examples feed (a set, sorted).
    output_names: every task's outputs, once each, sorted (`std::set` order).
  """

  tasks: Tuple[Task, ...]
  input_names: Tuple[str, ...]
  output_names: Tuple[str, ...]


def servable_spec(request: inference_pb2.MultiInferenceRequest) -> model_pb2.ModelSpec:
  """The spec the servable is looked up with: the first task's (multi_inference_helper.cc:28)."""
  if request.tasks and request.tasks[0].HasField("model_spec"):
    return request.tasks[0].model_spec
  return model_pb2.ModelSpec()


def plan(
  request: inference_pb2.MultiInferenceRequest,
  signature_defs: Dict[str, meta_graph_pb2.SignatureDef],
  method_name_check: bool,
) -> Plan:
  """Checks every task in order, as `Infer` does, and plans the one run.

  Raises:
    ServingError: INVALID_ARGUMENT (UNIMPLEMENTED for an unsupported
      method_name) with TensorFlow Serving's message for the first bad task.
  """
  model_name = ""
  seen = set()
  tasks = []
  input_names = set()
  output_names = set()
  for task in request.tasks:
    name = task.model_spec.name
    if not name:
      raise status.invalid_argument("Found ModelSpec with an empty model name.")
    if not model_name:
      model_name = name
    elif name != model_name:
      raise status.invalid_argument(
        "All ModelSpecs in a MultiInferenceRequest must access the same model name."
      )
    signature_name = task.model_spec.signature_name or servables.DEFAULT_SIGNATURE_NAME
    if signature_name in seen:
      raise status.invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
    seen.add(signature_name)
    signature = signature_defs.get(signature_name)
    if signature is None:
      raise status.invalid_argument(
        f"Requested signature not found in model graph: {signature_name}"
      )
    if task.method_name == tf.saved_model.CLASSIFY_METHOD_NAME:
      aliases = classify_regress.classification_outputs(signature, method_name_check)
    elif task.method_name == tf.saved_model.REGRESS_METHOD_NAME:
      aliases = classify_regress.regression_outputs(signature, method_name_check)
    else:
      raise status.ServingError(
        grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}"
      )
    input_names.add(signature.inputs[tf.saved_model.CLASSIFY_INPUTS].name)
    outputs = {alias: signature.outputs[alias].name for alias in aliases}
    output_names.update(outputs.values())
    tasks.append(Task(task.method_name, task.model_spec, signature_name, outputs))
  return Plan(tuple(tasks), tuple(sorted(input_names)), tuple(sorted(output_names)))


def fill_response(
  multi_plan: Plan,
  fetched: Dict[str, np.ndarray],
  num_examples: int,
  version: int,
  response: inference_pb2.MultiInferenceResponse,
) -> None:
  """Each task's result and model spec, in the request's order (multi_inference.cc:100-125).

  Raises:
    ServingError: INVALID_ARGUMENT as Classify or Regress would for outputs
      that do not fit.
  """
  for task in multi_plan.tasks:
    outputs = {alias: fetched[name] for alias, name in task.outputs.items()}
    result = response.results.add()
    if task.method_name == tf.saved_model.CLASSIFY_METHOD_NAME:
      classify_regress.classification_result(outputs, num_examples, result.classification_result)
    else:
      classify_regress.regression_result(outputs, num_examples, result.regression_result)
    result.model_spec.name = task.model_spec.name
    result.model_spec.signature_name = task.signature_name
    result.model_spec.version.value = version
