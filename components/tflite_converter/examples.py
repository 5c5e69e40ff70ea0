"""Reads the contract's tf.Examples from TFRecord files into TFLite-ready arrays.

The TFLite model takes one example at a time, its sequence right-padded to
the contract's `max_length`; these arrays hold many such rows, encoded by
`features.parse_and_encode` exactly as the SavedModel's signatures encode them.
"""

import dataclasses
import os
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import numpy as np
import tensorflow as tf

from next_category.components.trainer import features
from next_category.contract import DataContract

_PARSE_BATCH = 1024


@dataclasses.dataclass
class EncodedExamples:
  """Examples as model inputs, with what is needed to score and slice them.

  Attributes:
    serialized: the serialized tf.Examples, in file order.
    inputs: model inputs, each an array with one row per example.
    labels: [n] int labels, or None when the examples carry none.
    slices: for each of the contract's slice features, [n] raw values (str).
  """

  serialized: List[bytes]
  inputs: Dict[str, np.ndarray]
  labels: Optional[np.ndarray]
  slices: Dict[str, np.ndarray]

  def __len__(self) -> int:
    return len(self.serialized)

  def row(self, i: int) -> Dict[str, np.ndarray]:
    """The inputs of example `i` alone, each with a batch dimension of 1."""
    return {name: values[i : i + 1] for name, values in self.inputs.items()}


def list_files(paths: Sequence[str]) -> List[str]:
  """Expands files, directories (their files) and glob patterns, sorted.

  Raises:
    FileNotFoundError: if nothing matches.
  """
  files = []
  for path in paths:
    if tf.io.gfile.isdir(path):
      files += [
        os.path.join(path, name)
        for name in tf.io.gfile.listdir(path)
        if not tf.io.gfile.isdir(os.path.join(path, name))
      ]
    else:
      files += tf.io.gfile.glob(path)
  if not files:
    raise FileNotFoundError(f"No TFRecord files match {list(paths)}.")
  return sorted(files)


def read_serialized(paths: Sequence[str], limit: Optional[int] = None) -> List[bytes]:
  """Reads up to `limit` serialized records, in file order.

  Files ending in `.gz` are read as GZIP (what ExampleGen and the dataset
  generator write), others as uncompressed TFRecords.
  """
  records = []
  for path in list_files(paths):
    compression = "GZIP" if path.endswith(".gz") else ""
    for record in tf.data.TFRecordDataset(path, compression_type=compression):
      if limit is not None and len(records) >= limit:
        return records
      records.append(record.numpy())
  return records


def encode(data_contract: DataContract, serialized: Sequence[bytes]) -> EncodedExamples:
  """Parses and encodes serialized tf.Examples; labels are read when every example has one.

  Raises:
    ValueError: if there are no examples.
  """
  if not serialized:
    raise ValueError("There are no examples to encode.")
  label = data_contract.label.name
  slice_features = data_contract.slice_features
  spec = {
    label: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    **{name: tf.io.FixedLenFeature([], tf.string) for name in slice_features},
  }
  chunks, labels, slices = [], [], {name: [] for name in slice_features}
  for start in range(0, len(serialized), _PARSE_BATCH):
    batch = tf.constant(serialized[start : start + _PARSE_BATCH])
    chunks.append(
      {
        k: v.numpy()
        for k, v in features.parse_and_encode(data_contract, batch, with_label=False).items()
      }
    )
    extra = tf.io.parse_example(batch, spec)
    labels.append(extra[label].numpy())
    for name in slice_features:
      slices[name].append(extra[name].numpy().astype(str))
  inputs = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
  all_labels = np.concatenate(labels)
  return EncodedExamples(
    serialized=list(serialized),
    inputs=inputs,
    labels=None if (all_labels < 0).any() else all_labels,
    slices={name: np.concatenate(values) for name, values in slices.items()},
  )


def read(
  data_contract: DataContract, paths: Sequence[str], limit: Optional[int] = None
) -> EncodedExamples:
  """Reads and encodes up to `limit` examples from TFRecord files."""
  return encode(data_contract, read_serialized(paths, limit))
