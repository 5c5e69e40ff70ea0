"""Asks a TensorFlow Serving model server for next-category predictions.

    python -m serving.client --server=localhost:8500 \\
        --examples=data/default/span-1/eval/data.tfrecord.gz --num_examples=5

Examples come from a TFRecord file of tf.Examples (GZIP or uncompressed) or a
JSON lines file of raw features ({"item_history": [12, 7], "user_segment":
"new", "city_tier": "tier2"}). Only the standard Predict API is used, so the
client works the same against tensorflow_model_server and `serving.server`.
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
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from components.trainer import constants

# Every Predict call carries this deadline.
DEADLINE_SECONDS = 10.0
# Examples per Predict request; stays under a batching server's max_batch_size.
MAX_EXAMPLES_PER_REQUEST = 32
_GZIP_MAGIC = b"\x1f\x8b"

Example = Union[bytes, tf.train.Example, dict]


@dataclasses.dataclass(frozen=True)
class Prediction:
  """The model's answer for one example.

  Attributes:
    model_version: the version that answered.
    probabilities: one probability per category, in `CATEGORY_NAMES` order.
  """

  model_version: int
  probabilities: Tuple[float, ...]

  def top_k(self, k: int = 3) -> List[Tuple[str, float]]:
    """The `k` most likely categories with their probabilities, best first."""
    order = np.argsort(-np.asarray(self.probabilities), kind="stable")[:k]
    return [(constants.CATEGORY_NAMES[i], self.probabilities[i]) for i in order]


def raw_features_to_example(features: dict) -> tf.train.Example:
  """A tf.Example from raw features: item_history (ints), user_segment, city_tier.

  Raises:
    ValueError: if a feature is missing or has the wrong type.
  """
  try:
    history = [int(item) for item in features[constants.ITEM_HISTORY_KEY]]
    segment = str(features[constants.USER_SEGMENT_KEY])
    tier = str(features[constants.CITY_TIER_KEY])
  except KeyError as e:
    raise ValueError(f"Raw features need {e.args[0]!r}; got {sorted(features)}.") from None
  except (TypeError, ValueError):
    raise ValueError(
      f"{constants.ITEM_HISTORY_KEY} must be a list of integers; got "
      f"{features.get(constants.ITEM_HISTORY_KEY)!r}."
    ) from None
  example = tf.train.Example()
  feature = example.features.feature
  feature[constants.ITEM_HISTORY_KEY].int64_list.value.extend(history)
  feature[constants.USER_SEGMENT_KEY].bytes_list.value.append(segment.encode("utf-8"))
  feature[constants.CITY_TIER_KEY].bytes_list.value.append(tier.encode("utf-8"))
  return example


def _serialize(example: Example) -> bytes:
  if isinstance(example, bytes):
    return example
  if isinstance(example, dict):
    example = raw_features_to_example(example)
  if isinstance(example, tf.train.Example):
    # The server never needs the label; sending it would only cost bytes.
    if constants.LABEL_KEY in example.features.feature:
      example = tf.train.Example.FromString(example.SerializeToString())
      del example.features.feature[constants.LABEL_KEY]
    return example.SerializeToString()
  raise TypeError(f"Cannot send a {type(example).__name__} as an example.")


def read_examples(path: str, limit: Optional[int] = None) -> List[Example]:
  """Reads examples from a TFRecord file (GZIP or not) or a JSON lines file.

  Returns:
    Serialized tf.Examples (TFRecord) or raw feature dicts (JSON lines).
  """
  with tf.io.gfile.GFile(path, "rb") as f:
    head = f.read(2)
  if path.endswith((".json", ".jsonl")) or head[:1] in (b"{", b"["):
    examples: List[Any] = []
    with tf.io.gfile.GFile(path, "r") as f:
      for line in f:
        if line.strip():
          examples.append(json.loads(line))
          if limit is not None and len(examples) >= limit:
            break
    return examples
  compression = "GZIP" if head == _GZIP_MAGIC else ""
  dataset = tf.data.TFRecordDataset(path, compression_type=compression)
  if limit is not None:
    dataset = dataset.take(limit)
  return list(dataset.as_numpy_iterator())


def make_predict_request(
  serialized_examples: Sequence[bytes],
  model_name: str = "next_category",
  signature_name: str = "serving_default",
  version: Optional[int] = None,
  version_label: Optional[str] = None,
) -> predict_pb2.PredictRequest:
  """A PredictRequest for `serving_default`: the `examples` input, DT_STRING [n]."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if version is not None:
    request.model_spec.version.value = version
  elif version_label:
    request.model_spec.version_label = version_label
  request.inputs[constants.SERIALIZED_EXAMPLES_KEY].CopyFrom(
    tf.make_tensor_proto(list(serialized_examples), dtype=tf.string)
  )
  return request


def predict(
  hostport: str,
  examples: Iterable[Example],
  model_name: str = "next_category",
  signature_name: str = "serving_default",
  version: Optional[int] = None,
  version_label: Optional[str] = None,
  timeout: float = DEADLINE_SECONDS,
  credentials: Optional[grpc.ChannelCredentials] = None,
) -> List[Prediction]:
  """Sends examples to a model server and returns one Prediction per example.

  Args:
    hostport: the server's gRPC address, `host:port`.
    examples: serialized tf.Examples, tf.Example protos or raw feature dicts.
    model_name: the served model.
    signature_name: a signature taking `examples` and returning `probabilities`.
    version: ask for this version (default: the latest).
    version_label: ask for the version with this label (e.g. "stable").
    timeout: the deadline of each Predict call, in seconds.
    credentials: TLS credentials; None for a plaintext channel.

  Returns:
    Predictions in the order of `examples`.

  Raises:
    grpc.RpcError: if the server refuses a request (the status says why).
  """
  serialized = [_serialize(example) for example in examples]
  channel = (
    grpc.secure_channel(hostport, credentials) if credentials else grpc.insecure_channel(hostport)
  )
  predictions = []
  with channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for start in range(0, len(serialized), MAX_EXAMPLES_PER_REQUEST):
      request = make_predict_request(
        serialized[start : start + MAX_EXAMPLES_PER_REQUEST],
        model_name,
        signature_name,
        version,
        version_label,
      )
      response = stub.Predict(request, timeout=timeout)
      probabilities = tf.make_ndarray(response.outputs[constants.PROBABILITIES_KEY])
      model_version = response.model_spec.version.value
      predictions.extend(Prediction(model_version, tuple(row.tolist())) for row in probabilities)
  return predictions


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m serving.client",
    description="Print the top categories a model server predicts for examples.",
  )
  parser.add_argument(
    "--server",
    default="localhost:8500",
    help="gRPC address of the model server (default: %(default)s).",
  )
  parser.add_argument(
    "--examples",
    required=True,
    help="TFRecord file of tf.Examples (GZIP or not) or JSON lines of raw features.",
  )
  parser.add_argument(
    "--num_examples", type=int, default=10, help="Examples to send (default: %(default)s)."
  )
  parser.add_argument(
    "--model_name", default="next_category", help="Served model name (default: %(default)s)."
  )
  parser.add_argument(
    "--signature_name", default="serving_default", help="Signature (default: %(default)s)."
  )
  version = parser.add_mutually_exclusive_group()
  version.add_argument("--model_version", type=int, help="Version to ask for.")
  version.add_argument("--version_label", help="Version label to ask for.")
  parser.add_argument(
    "--top_k", type=int, default=3, help="Categories to print per example (default: %(default)s)."
  )
  args = parser.parse_args(argv)
  examples = read_examples(args.examples, limit=args.num_examples)
  try:
    predictions = predict(
      args.server,
      examples,
      args.model_name,
      args.signature_name,
      args.model_version,
      args.version_label,
    )
  except grpc.RpcError as e:
    print(f"Predict failed: {e.code().name}: {e.details()}", file=sys.stderr)
    return 1
  for index, prediction in enumerate(predictions):
    top = ", ".join(f"{name} {p:.3f}" for name, p in prediction.top_k(args.top_k))
    print(f"example {index} (model version {prediction.model_version}): {top}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
