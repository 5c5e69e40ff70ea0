"""Asks a TensorFlow Serving model server to classify examples, or for its raw predictions.

    python -m next_category.serving.client --server=localhost:8500 \\
        --examples=data/default/span-1/eval/data.tfrecord.gz --num_examples=5 \\
        --exclude_features=label

Examples come from a TFRecord file of tf.Examples (GZIP or uncompressed) or a
JSON lines file of features ({"item_history": [12, 7], "user_segment": "new"},
read as TensorFlow Serving's REST API reads an example). The client knows no
model: it sends tf.Examples, leaving out the features `--exclude_features`
names (the label: a server never needs it), and prints what the model's
signature returns. `--api=classify` (the default) calls Classify on a
classification signature (default `classification`) and prints the labels of
its `classes` output; `--api=predict` calls Predict and prints the top indices
of the signature's output. Only the standard APIs are used, so the client
works the same against tensorflow_model_server and `next_category.serving.server`.
"""

import argparse
import dataclasses
import json
import sys
from typing import Any
from typing import Iterable
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from next_category.serving.apis import json_tensor

# Every call carries this deadline.
DEADLINE_SECONDS = 10.0
# Examples per request; stays under a batching server's max_batch_size.
MAX_EXAMPLES_PER_REQUEST = 32
# The Predict input of serialized tf.Examples, by TensorFlow Serving's convention.
EXAMPLES_INPUT = "examples"
CLASSIFICATION_SIGNATURE_NAME = "classification"
_GZIP_MAGIC = b"\x1f\x8b"

Example = Union[bytes, tf.train.Example, dict]


@dataclasses.dataclass(frozen=True)
class Prediction:
  """A Predict answer for one example.

  Attributes:
    model_version: the version that answered.
    probabilities: the example's row of the signature's output.
  """

  model_version: int
  probabilities: Tuple[float, ...]

  def top_k(self, k: int = 3) -> List[Tuple[int, float]]:
    """The `k` highest entries as `(index, value)`, highest first."""
    order = np.argsort(-np.asarray(self.probabilities), kind="stable")[:k]
    return [(int(i), self.probabilities[i]) for i in order]


@dataclasses.dataclass(frozen=True)
class Classification:
  """A Classify answer for one example.

  Attributes:
    model_version: the version that answered.
    classes: `(label, score)` per class, in the model's order.
  """

  model_version: int
  classes: Tuple[Tuple[str, float], ...]

  def top_k(self, k: int = 3) -> List[Tuple[str, float]]:
    """The `k` best-scored classes, best first (ties keep the model's order)."""
    return sorted(self.classes, key=lambda c: -c[1])[:k]


def serialize_example(example: Example, exclude_features: Sequence[str] = ()) -> bytes:
  """A serialized tf.Example without the features named in `exclude_features`.

  Args:
    example: serialized bytes, a tf.Example, or a JSON object of features.
    exclude_features: features to leave out (e.g. the label).

  Raises:
    ValueError: if a JSON object is not a valid example.
    TypeError: for another kind of value.
  """
  if isinstance(example, dict):
    example = json_tensor.example_from_json(example)
  elif isinstance(example, bytes):
    if not exclude_features:
      return example
    example = tf.train.Example.FromString(example)
  elif isinstance(example, tf.train.Example):
    example = tf.train.Example.FromString(example.SerializeToString())
  else:
    raise TypeError(f"Cannot send a {type(example).__name__} as an example.")
  for name in exclude_features:
    if name in example.features.feature:
      del example.features.feature[name]
  return example.SerializeToString()


def read_examples(path: str, limit: Optional[int] = None) -> List[Example]:
  """Reads examples from a TFRecord file (GZIP or not) or a JSON lines file.

  Returns:
    Serialized tf.Examples (TFRecord) or feature dicts (JSON lines).

  Raises:
    ValueError: if a JSON line is not valid JSON.
  """
  with tf.io.gfile.GFile(path, "rb") as f:
    head = f.read(2)
  if path.endswith((".json", ".jsonl")) or head[:1] in (b"{", b"["):
    examples: List[Any] = []
    with tf.io.gfile.GFile(path, "r") as f:
      for number, line in enumerate(f, start=1):
        if line.strip():
          try:
            examples.append(json.loads(line))
          except ValueError as e:
            raise ValueError(f"Line {number} of {path} is not valid JSON: {e}") from None
          if limit is not None and len(examples) >= limit:
            break
    return examples
  compression = "GZIP" if head == _GZIP_MAGIC else ""
  dataset = tf.data.TFRecordDataset(path, compression_type=compression)
  if limit is not None:
    dataset = dataset.take(limit)
  return list(dataset.as_numpy_iterator())


def _set_model_spec(request, model_name, signature_name, version, version_label) -> None:
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if version is not None:
    request.model_spec.version.value = version
  elif version_label:
    request.model_spec.version_label = version_label


def make_predict_request(
  serialized_examples: Sequence[bytes],
  model_name: str = "next_category",
  signature_name: str = "serving_default",
  version: Optional[int] = None,
  version_label: Optional[str] = None,
  input_name: str = EXAMPLES_INPUT,
) -> predict_pb2.PredictRequest:
  """A PredictRequest sending serialized tf.Examples as `input_name`, DT_STRING [n]."""
  request = predict_pb2.PredictRequest()
  _set_model_spec(request, model_name, signature_name, version, version_label)
  request.inputs[input_name].CopyFrom(
    tf.make_tensor_proto(list(serialized_examples), dtype=tf.string)
  )
  return request


def make_classification_request(
  serialized_examples: Sequence[bytes],
  model_name: str = "next_category",
  signature_name: str = CLASSIFICATION_SIGNATURE_NAME,
  version: Optional[int] = None,
  version_label: Optional[str] = None,
) -> classification_pb2.ClassificationRequest:
  """A ClassificationRequest for serialized tf.Examples."""
  request = classification_pb2.ClassificationRequest()
  _set_model_spec(request, model_name, signature_name, version, version_label)
  examples = request.input.example_list.examples
  for serialized in serialized_examples:
    examples.add().ParseFromString(serialized)
  return request


def _channel(hostport: str, credentials: Optional[grpc.ChannelCredentials]) -> grpc.Channel:
  if credentials:
    return grpc.secure_channel(hostport, credentials)
  return grpc.insecure_channel(hostport)


def _chunks(items: Sequence[bytes]) -> Iterable[Sequence[bytes]]:
  for start in range(0, len(items), MAX_EXAMPLES_PER_REQUEST):
    yield items[start : start + MAX_EXAMPLES_PER_REQUEST]


def predict(
  hostport: str,
  examples: Iterable[Example],
  model_name: str = "next_category",
  signature_name: str = "serving_default",
  version: Optional[int] = None,
  version_label: Optional[str] = None,
  timeout: float = DEADLINE_SECONDS,
  credentials: Optional[grpc.ChannelCredentials] = None,
  exclude_features: Sequence[str] = (),
  output_name: Optional[str] = None,
) -> List[Prediction]:
  """Sends examples to a Predict signature and returns one Prediction per example.

  Args:
    hostport: the server's gRPC address, `host:port`.
    examples: serialized tf.Examples, tf.Example protos or JSON feature dicts.
    model_name: the served model.
    signature_name: a signature taking serialized tf.Examples as `examples`.
    version: ask for this version (default: the latest).
    version_label: ask for the version with this label (e.g. "stable").
    timeout: the deadline of each call, in seconds.
    credentials: TLS credentials; None for a plaintext channel.
    exclude_features: features left out of every example (e.g. the label).
    output_name: the [batch, n] output to read; None reads the signature's
      only output.

  Returns:
    Predictions in the order of `examples`.

  Raises:
    grpc.RpcError: if the server refuses a request (the status says why).
    ValueError: if `output_name` is None and the signature has several outputs.
  """
  serialized = [serialize_example(example, exclude_features) for example in examples]
  predictions = []
  with _channel(hostport, credentials) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for chunk in _chunks(serialized):
      request = make_predict_request(chunk, model_name, signature_name, version, version_label)
      if output_name:
        request.output_filter.append(output_name)
      response = stub.Predict(request, timeout=timeout)
      if len(response.outputs) != 1:
        raise ValueError(
          f"Signature {signature_name} returns {sorted(response.outputs)}; name one with "
          "output_name."
        )
      values = tf.make_ndarray(next(iter(response.outputs.values())))
      model_version = response.model_spec.version.value
      predictions.extend(Prediction(model_version, tuple(row.tolist())) for row in values)
  return predictions


def classify(
  hostport: str,
  examples: Iterable[Example],
  model_name: str = "next_category",
  signature_name: str = CLASSIFICATION_SIGNATURE_NAME,
  version: Optional[int] = None,
  version_label: Optional[str] = None,
  timeout: float = DEADLINE_SECONDS,
  credentials: Optional[grpc.ChannelCredentials] = None,
  exclude_features: Sequence[str] = (),
) -> List[Classification]:
  """Sends examples to a classification signature; one Classification per example.

  Args are those of `predict`; `signature_name` names a classification
  signature (input `inputs`, outputs `classes` and/or `scores`).

  Returns:
    Classifications in the order of `examples`.

  Raises:
    grpc.RpcError: if the server refuses a request (the status says why).
  """
  serialized = [serialize_example(example, exclude_features) for example in examples]
  results = []
  with _channel(hostport, credentials) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for chunk in _chunks(serialized):
      request = make_classification_request(
        chunk, model_name, signature_name, version, version_label
      )
      response = stub.Classify(request, timeout=timeout)
      model_version = response.model_spec.version.value
      results.extend(
        Classification(model_version, tuple((c.label, c.score) for c in row.classes))
        for row in response.result.classifications
      )
  return results


def _feature_names(text: str) -> List[str]:
  return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m next_category.serving.client",
    description="Print the top classes a model server gives for examples.",
  )
  parser.add_argument(
    "--server",
    default="localhost:8500",
    help="gRPC address of the model server (default: %(default)s).",
  )
  parser.add_argument(
    "--examples",
    required=True,
    help="TFRecord file of tf.Examples (GZIP or not) or JSON lines of features.",
  )
  parser.add_argument(
    "--num_examples", type=int, default=10, help="Examples to send (default: %(default)s)."
  )
  parser.add_argument(
    "--exclude_features",
    type=_feature_names,
    default=[],
    help="Comma-separated features to leave out of each example, e.g. the label.",
  )
  parser.add_argument(
    "--model_name", default="next_category", help="Served model name (default: %(default)s)."
  )
  parser.add_argument(
    "--api",
    choices=("classify", "predict"),
    default="classify",
    help="classify: class labels and scores from a classification signature; predict: the "
    "top indices of a Predict signature's output (default: %(default)s).",
  )
  parser.add_argument(
    "--signature_name",
    help=f"Signature (default: {CLASSIFICATION_SIGNATURE_NAME} for classify, "
    "serving_default for predict).",
  )
  parser.add_argument("--output_name", help="Predict output to read (default: the only one).")
  version = parser.add_mutually_exclusive_group()
  version.add_argument("--model_version", type=int, help="Version to ask for.")
  version.add_argument("--version_label", help="Version label to ask for.")
  parser.add_argument(
    "--top_k", type=int, default=3, help="Classes to print per example (default: %(default)s)."
  )
  args = parser.parse_args(argv)
  try:
    examples = read_examples(args.examples, limit=args.num_examples)
    spec = dict(
      model_name=args.model_name,
      version=args.model_version,
      version_label=args.version_label,
      exclude_features=args.exclude_features,
    )
    if args.api == "classify":
      answers = classify(
        args.server,
        examples,
        signature_name=args.signature_name or CLASSIFICATION_SIGNATURE_NAME,
        **spec,
      )
    else:
      answers = predict(
        args.server,
        examples,
        signature_name=args.signature_name or "serving_default",
        output_name=args.output_name,
        **spec,
      )
  except grpc.RpcError as e:
    print(f"{args.api.capitalize()} failed: {e.code().name}: {e.details()}", file=sys.stderr)
    return 1
  except (OSError, ValueError, tf.errors.OpError) as e:
    print(f"Cannot query {args.server}: {e}", file=sys.stderr)
    return 1
  for index, answer in enumerate(answers):
    top = ", ".join(f"{name} {score:.3f}" for name, score in answer.top_k(args.top_k))
    print(f"example {index} (model version {answer.model_version}): {top}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
