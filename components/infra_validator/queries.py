"""Queries a served model over gRPC and checks every answer against the model called in-process.

Requests are built from the SavedModel's own signatures, as TFX's
InfraValidator builds them (tfx/components/infra_validator/request_builder.py:
a Predict signature with one DT_STRING input of serialized tf.Examples, and a
Classify signature, method `tensorflow/serving/classify`): each example is sent
alone to Predict (the latency is measured on these), and in batches to Classify
when the model has a classification signature. An answer passes when it has
the version asked for, exactly the outputs (or classes) the in-process call
returns, with the same dtypes and shapes, labels equal and float values finite
and within `max_abs_difference` of the in-process values.
"""

import dataclasses
import os
import time
from typing import Any
from typing import Callable
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
# TensorFlow Serving's names (tensorflow/cc/saved_model/signature_constants.h).
DEFAULT_SIGNATURE_NAME = "serving_default"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
# Every RPC carries this deadline.
RPC_DEADLINE_SECONDS = 10.0
CLASSIFY_BATCH_SIZE = 32
# Mismatches quoted in the verdict; all are counted.
_MAX_QUOTED_MISMATCHES = 5


@dataclasses.dataclass
class QueryReport:
  """What the canary's queries found.

  Attributes:
    predict_signature: the signature Predict was sent to.
    classify_signature: the classification signature, or None if the model has none.
    predict_requests: single-example Predict requests sent.
    classify_requests: Classify requests sent.
    examples_classified: examples in the Classify requests.
    mismatches: answers that were not well-formed or differed from the
      in-process model (`mismatch_count` counts them all, the list quotes the
      first few).
    predict_latency_ms: wall time of each Predict RPC, in milliseconds.
    classify_latency_ms: wall time of each Classify RPC, in milliseconds.
    max_abs_difference_seen: the largest float difference from the in-process model.
  """

  predict_signature: str
  classify_signature: Optional[str]
  predict_requests: int = 0
  classify_requests: int = 0
  examples_classified: int = 0
  mismatch_count: int = 0
  mismatches: List[str] = dataclasses.field(default_factory=list)
  predict_latency_ms: List[float] = dataclasses.field(default_factory=list)
  classify_latency_ms: List[float] = dataclasses.field(default_factory=list)
  max_abs_difference_seen: float = 0.0

  def add_mismatch(self, text: str) -> None:
    self.mismatch_count += 1
    if len(self.mismatches) < _MAX_QUOTED_MISMATCHES:
      self.mismatches.append(text)


def read_signature_defs(saved_model_dir: str) -> Dict[str, meta_graph_pb2.SignatureDef]:
  """The signature_def map of the SavedModel's `serve` MetaGraph (methods included).

  Raises:
    ValueError: if the directory holds no SavedModel with a `serve` MetaGraph.
  """
  path = os.path.join(saved_model_dir, "saved_model.pb")
  if not tf.io.gfile.exists(path):
    raise ValueError(f"{saved_model_dir} holds no saved_model.pb.")
  saved_model = saved_model_pb2.SavedModel()
  try:
    saved_model.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
  except Exception as e:  # A corrupt file raises protobuf's DecodeError.
    raise ValueError(f"{path} is not a SavedModel: {type(e).__name__}.") from None
  for meta_graph in saved_model.meta_graphs:
    if "serve" in meta_graph.meta_info_def.tags:
      return dict(meta_graph.signature_def)
  raise ValueError(f"{path} has no MetaGraph tagged 'serve'.")


def _takes_serialized_examples(signature: meta_graph_pb2.SignatureDef) -> bool:
  return len(signature.inputs) == 1 and (
    next(iter(signature.inputs.values())).dtype == types_pb2.DT_STRING
  )


def choose_signatures(signatures: Dict[str, meta_graph_pb2.SignatureDef]):
  """The (Predict, Classify or None) signature names the canary queries.

  Predict: `serving_default` if it takes serialized tf.Examples, else the
  first (by name) Predict signature that does. Classify: `classification`,
  else the first signature with the classify method and the `inputs` input.

  Raises:
    ValueError: if no Predict signature takes serialized tf.Examples.
  """
  predict = [
    name
    for name, s in sorted(signatures.items())
    if s.method_name == PREDICT_METHOD and _takes_serialized_examples(s)
  ]
  if not predict:
    raise ValueError(
      f"The model has no Predict signature with one DT_STRING input of serialized tf.Examples "
      f"(signatures: {sorted(signatures)}); the canary cannot query it."
    )
  classify = [
    name
    for name, s in sorted(signatures.items())
    if s.method_name == CLASSIFY_METHOD and list(s.inputs) == [CLASSIFY_INPUTS]
  ]
  predict_name = DEFAULT_SIGNATURE_NAME if DEFAULT_SIGNATURE_NAME in predict else predict[0]
  classify_name = (
    ("classification" if "classification" in classify else classify[0]) if (classify) else None
  )
  return predict_name, classify_name


class _Reference:
  """The SavedModel's signatures called in this process."""

  def __init__(self, saved_model_dir: str, signatures: Dict[str, meta_graph_pb2.SignatureDef]):
    self._loaded = tf.saved_model.load(saved_model_dir)
    self._defs = signatures

  def input_alias(self, signature_name: str) -> str:
    return next(iter(self._defs[signature_name].inputs))

  def __call__(self, signature_name: str, serialized: Sequence[bytes]) -> Dict[str, np.ndarray]:
    outputs = self._loaded.signatures[signature_name](
      **{self.input_alias(signature_name): tf.constant(list(serialized), dtype=tf.string)}
    )
    return {name: value.numpy() for name, value in outputs.items()}


def _compare(
  where: str, served: np.ndarray, expected: np.ndarray, tolerance: float, report: QueryReport
) -> None:
  if served.dtype != expected.dtype and not (
    served.dtype.kind in "SOU" and expected.dtype.kind in "SOU"
  ):
    report.add_mismatch(f"{where}: dtype {served.dtype}, in-process {expected.dtype}.")
    return
  if served.shape != expected.shape:
    report.add_mismatch(f"{where}: shape {list(served.shape)}, in-process {list(expected.shape)}.")
    return
  if expected.dtype.kind == "f":
    if not np.all(np.isfinite(served)):
      report.add_mismatch(f"{where}: non-finite values.")
      return
    difference = float(np.max(np.abs(served.astype(np.float64) - expected), initial=0.0))
    report.max_abs_difference_seen = max(report.max_abs_difference_seen, difference)
    if difference > tolerance:
      report.add_mismatch(
        f"{where}: differs from the in-process model by up to {difference:.3g} "
        f"(tolerance {tolerance:g})."
      )
  elif not np.array_equal(served.astype(expected.dtype), expected):
    report.add_mismatch(f"{where}: values differ from the in-process model.")


def _timed(call: Callable[[], Any], latencies: List[float]):
  start = time.perf_counter()
  response = call()
  latencies.append((time.perf_counter() - start) * 1e3)
  return response


def _check_model_spec(where: str, model_spec, model_name: str, version: int, report) -> bool:
  if model_spec.name != model_name or model_spec.version.value != version:
    report.add_mismatch(
      f"{where}: answered as {model_spec.name!r} version {model_spec.version.value}, "
      f"asked {model_name!r} version {version}."
    )
    return False
  return True


def _predict(stub, reference, report, model_name, version, serialized, index, tolerance) -> None:
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.version.value = version
  request.model_spec.signature_name = report.predict_signature
  alias = reference.input_alias(report.predict_signature)
  request.inputs[alias].CopyFrom(tf.make_tensor_proto([serialized], dtype=tf.string))
  response = _timed(
    lambda: stub.Predict(request, timeout=RPC_DEADLINE_SECONDS), report.predict_latency_ms
  )
  report.predict_requests += 1
  where = f"Predict example {index}"
  if not _check_model_spec(where, response.model_spec, model_name, version, report):
    return
  expected = reference(report.predict_signature, [serialized])
  if set(response.outputs) != set(expected):
    report.add_mismatch(
      f"{where}: outputs {sorted(response.outputs)}, in-process {sorted(expected)}."
    )
    return
  for name, value in expected.items():
    _compare(
      f"{where}, output {name}", tf.make_ndarray(response.outputs[name]), value, tolerance, report
    )


def _classify(stub, reference, report, model_name, version, batch, first, tolerance) -> None:
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name = model_name
  request.model_spec.version.value = version
  request.model_spec.signature_name = report.classify_signature
  for serialized in batch:
    request.input.example_list.examples.add().ParseFromString(serialized)
  response = _timed(
    lambda: stub.Classify(request, timeout=RPC_DEADLINE_SECONDS), report.classify_latency_ms
  )
  report.classify_requests += 1
  report.examples_classified += len(batch)
  where = f"Classify examples {first}-{first + len(batch) - 1}"
  if not _check_model_spec(where, response.model_spec, model_name, version, report):
    return
  expected = reference(report.classify_signature, batch)
  classifications = response.result.classifications
  if len(classifications) != len(batch):
    report.add_mismatch(f"{where}: {len(classifications)} results for {len(batch)} examples.")
    return
  if CLASSIFY_OUTPUT_CLASSES in expected:
    labels = np.array([[c.label for c in row.classes] for row in classifications], dtype=object)
    _compare(
      f"{where}, classes",
      labels,
      expected[CLASSIFY_OUTPUT_CLASSES].astype(str).astype(object),
      tolerance,
      report,
    )
  if CLASSIFY_OUTPUT_SCORES in expected:
    scores = np.array([[c.score for c in row.classes] for row in classifications], dtype=np.float32)
    _compare(f"{where}, scores", scores, expected[CLASSIFY_OUTPUT_SCORES], tolerance, report)


def query_and_check(
  channel: grpc.Channel,
  model_name: str,
  version: int,
  saved_model_dir: str,
  serialized_examples: Sequence[bytes],
  max_abs_difference: float,
) -> QueryReport:
  """Sends every example to Predict (one per request) and, if the model has one, Classify.

  Args:
    channel: a channel to the model server.
    model_name: the name the model is served under.
    version: the version to ask for.
    saved_model_dir: the same SavedModel, called in-process for the expected answers.
    serialized_examples: serialized tf.Examples to send.
    max_abs_difference: the largest absolute difference allowed between a
      served float value and the in-process one.

  Returns:
    The report; an RPC that fails raises instead.

  Raises:
    ValueError: if the model has no signature the canary can query.
    grpc.RpcError: if an RPC fails.
  """
  signatures = read_signature_defs(saved_model_dir)
  predict_name, classify_name = choose_signatures(signatures)
  report = QueryReport(predict_signature=predict_name, classify_signature=classify_name)
  reference = _Reference(saved_model_dir, signatures)
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  for i, serialized in enumerate(serialized_examples):
    _predict(stub, reference, report, model_name, version, serialized, i, max_abs_difference)
  if classify_name is not None:
    for first in range(0, len(serialized_examples), CLASSIFY_BATCH_SIZE):
      batch = list(serialized_examples[first : first + CLASSIFY_BATCH_SIZE])
      _classify(stub, reference, report, model_name, version, batch, first, max_abs_difference)
  return report
