"""Runs a TFLite next-category model on TFRecord tf.Examples.

Usage:
  python -m next_category.components.tflite_converter.predict --tflite PATH/model.tflite
      --examples PATH [PATH ...] [--labels PATH/labels.txt] [--top_k 3]
      [--max_examples 1000] [--show 10]

PATH may be a file, a directory of files or a glob; `.gz` files are read as
GZIP. The examples are encoded by the data contract shipped beside the model
(data_contract.json). Prints the top categories of the first examples and,
when the examples carry the label, the top-1 and top-k accuracy.
"""

import argparse
import dataclasses
import os
import sys
from typing import List
from typing import Optional
from typing import Sequence

import numpy as np
import tensorflow as tf

from next_category.components.tflite_converter import conversion
from next_category.components.tflite_converter import examples as examples_lib
from next_category.components.tflite_converter import executor
from next_category.contract import DataContract


@dataclasses.dataclass
class Predictions:
  """What `predict` returns.

  Attributes:
    probabilities: [n, num_classes].
    labels: [n] labels, or None when the examples carry none.
    category_names: names of the categories, by index.
  """

  probabilities: np.ndarray
  labels: Optional[np.ndarray]
  category_names: List[str]

  def top_k(self, k: int) -> np.ndarray:
    """[n, k] category indices, most probable first."""
    return np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]

  def accuracy(self, k: int = 1) -> Optional[float]:
    """Fraction of examples whose label is among the top `k`; None without labels."""
    if self.labels is None:
      return None
    return float((self.top_k(k) == self.labels[:, None]).any(axis=1).mean())


def read_labels(path: str, data_contract: DataContract) -> List[str]:
  """Category names, one per line; the contract's class names when `path` is missing."""
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      return [line.strip() for line in f if line.strip()]
  return list(data_contract.label.class_names)


def read_contract(tflite_path: str) -> DataContract:
  """The data contract shipped beside a TFLite model.

  Raises:
    FileNotFoundError: if there is none.
  """
  path = os.path.join(os.path.dirname(tflite_path), executor.CONTRACT_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
      f"{path} does not exist: TFLiteConverter ships the data contract beside the model."
    )
  with tf.io.gfile.GFile(path) as f:
    return DataContract.from_json(f.read())


def predict(
  tflite_path: str,
  examples: Sequence[str],
  labels_path: Optional[str] = None,
  max_examples: Optional[int] = None,
) -> Predictions:
  """Predicts the next category of each example with a TFLite model.

  Args:
    tflite_path: the .tflite model (float or int8; see `conversion`).
    examples: TFRecord files, directories or globs of tf.Examples.
    labels_path: category names; defaults to labels.txt beside the model.
    max_examples: read at most this many examples.

  Returns:
    The probabilities, labels (if present) and category names.
  """
  data_contract = read_contract(tflite_path)
  with tf.io.gfile.GFile(tflite_path, "rb") as f:
    runner = conversion.Runner(f.read())
  encoded = examples_lib.read(data_contract, examples, max_examples)
  if labels_path is None:
    labels_path = os.path.join(os.path.dirname(tflite_path), executor.LABELS_FILE)
  return Predictions(
    probabilities=runner.predict_all(encoded.row, len(encoded)),
    labels=encoded.labels,
    category_names=read_labels(labels_path, data_contract),
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tflite", required=True, help="The .tflite model.")
  parser.add_argument(
    "--examples", required=True, nargs="+", help="TFRecord files, directories or globs."
  )
  parser.add_argument("--labels", default=None, help="Category names (default: beside --tflite).")
  parser.add_argument("--top_k", type=int, default=3, help="Categories to print per example.")
  parser.add_argument("--max_examples", type=int, default=None, help="Read at most this many.")
  parser.add_argument("--show", type=int, default=10, help="Examples to print predictions of.")
  args = parser.parse_args(argv)
  try:
    result = predict(args.tflite, args.examples, args.labels, args.max_examples)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  top = result.top_k(args.top_k)
  for i in range(min(args.show, len(top))):
    ranked = ", ".join(
      f"{result.category_names[c]} {result.probabilities[i, c]:.3f}" for c in top[i]
    )
    label = "" if result.labels is None else f"  (label {result.category_names[result.labels[i]]})"
    print(f"example {i}: {ranked}{label}")
  print(f"{len(top)} examples")
  if result.labels is not None:
    print(f"top-1 accuracy {result.accuracy(1):.4f}")
    print(f"top-{args.top_k} accuracy {result.accuracy(args.top_k):.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
