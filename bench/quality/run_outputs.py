"""What one pipeline run left, read back through ML Metadata: its splits and its model.

The bench scores the model and the baselines on the eval split the run's
ImportExampleGen wrote (the very examples the Evaluator scored) and trains the
baselines on its train split, so every figure is on the same examples.
"""

import dataclasses
import glob
import os
from typing import Dict
from typing import List
from typing import Optional

import numpy as np

from bench.quality.baselines import Split
from next_category import contract

_ACCURACY = "sparse_categorical_accuracy"
# The Trainer's SavedModel inside its `model` artifact (TFX's path_utils).
_SERVING_MODEL_SUBDIR = "Format-Serving"
_SCORING_BATCH = 512


@dataclasses.dataclass(frozen=True)
class RunOutputs:
  """Where a run's examples and model are, and what it recorded about them.

  Attributes:
    examples_uri: ImportExampleGen's Examples artifact (Split-train/, Split-eval/).
    model_dir: the SavedModel scored: the pushed version, else the Trainer's.
    pushed: whether the run pushed a version (else the Trainer's model is scored).
    blessed: the Evaluator's verdict (None if it did not run).
    evaluator_accuracy: the Evaluator's overall top-1 accuracy on the eval split.
    component_seconds: each component's wall time.
  """

  examples_uri: str
  model_dir: str
  pushed: bool
  blessed: Optional[bool]
  evaluator_accuracy: Optional[float]
  component_seconds: Dict[str, float]


def read(output_root: str, pipeline_name: str) -> RunOutputs:
  """The latest run's outputs under `output_root` (as the runners lay it out).

  Raises:
    ValueError: the run has no examples or no trained model.
  """
  # pylint: disable=g-import-not-at-top
  from tfx import v1 as tfx

  from next_category.pipeline.reports import run_summary

  # pylint: enable=g-import-not-at-top
  connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
    os.path.join(output_root, "metadata.sqlite")
  )
  summary = run_summary.summarize(connection, pipeline_name)
  outputs = {c.node_id: c.outputs for c in summary.components}
  examples = outputs.get("ImportExampleGen", {}).get("examples", [])
  models = outputs.get("Trainer", {}).get("model", [])
  if not examples or not models:
    raise ValueError(
      f"the run under {output_root} has no ImportExampleGen examples or no Trainer model; "
      "see its log under logs/."
    )
  overall = dict(summary.slice_metrics).get("Overall", {})
  pushed = summary.pushed_path is not None
  return RunOutputs(
    examples_uri=examples[0].uri,
    model_dir=summary.pushed_path if pushed else os.path.join(models[0].uri, _SERVING_MODEL_SUBDIR),
    pushed=pushed,
    blessed=summary.blessed,
    evaluator_accuracy=overall.get(_ACCURACY),
    component_seconds={c.node_id: round(c.seconds, 1) for c in summary.components},
  )


def serialized_examples(examples_uri: str, split: str) -> List[bytes]:
  """Every serialized tf.Example of one split of an Examples artifact, in file order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
  if not files:
    raise ValueError(f"{examples_uri} has no Split-{split}/ files.")
  records = tf.data.TFRecordDataset(files, compression_type="GZIP")
  return [r.numpy() for r in records]


def parse_split(records: List[bytes], data_contract: contract.DataContract) -> Split:
  """The baselines' view of serialized examples: sequence ids, context values, labels."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  sequences, context, labels = [], [], []
  for record in records:
    feature = tf.train.Example.FromString(record).features.feature
    sequences.append(list(feature[data_contract.sequence.name].int64_list.value))
    context.append(
      tuple(feature[f.name].bytes_list.value[0].decode("utf-8") for f in data_contract.context)
    )
    labels.append(feature[data_contract.label.name].int64_list.value[0])
  return Split(sequences, context, np.asarray(labels, dtype=np.int64))


def model_scores(model_dir: str, records: List[bytes]) -> np.ndarray:
  """The SavedModel's class probabilities for serialized examples, via `serving_default`."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf

  from next_category.components.trainer import export

  # pylint: enable=g-import-not-at-top
  serve = tf.saved_model.load(model_dir).signatures[export.DEFAULT_SIGNATURE_NAME]
  batches = []
  for start in range(0, len(records), _SCORING_BATCH):
    batch = tf.constant(records[start : start + _SCORING_BATCH])
    outputs = serve(**{export.SERIALIZED_EXAMPLES_KEY: batch})
    batches.append(outputs[export.PROBABILITIES_KEY].numpy())
  return np.concatenate(batches)
