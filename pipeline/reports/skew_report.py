"""Training/serving skew: logged serving requests against the training statistics.

Computes statistics of logged requests (the model server's request logs,
TFRecord files of `PredictionLog` from a model's `logging_config`, or TFRecord
files of serialized `tf.Example` without the label; GZIP-compressed when the
name ends in .gz), compares them with the statistics of the data the model was
trained on using the schema's `skew_comparator`s (L-infinity distance on the
default schema's categorical features), and validates them against the
schema's SERVING environment.
Prints a table, writes HTML reports, and exits 1 when a feature is skewed past
its threshold or the requests are anomalous.

Usage:
  next-category-skew-report --serving_data 'logs/next_category-*.tfrecord.gz'
      [--output_root artifacts | --training_statistics path/FeatureStats.pb]
"""

import argparse
import datetime
import os
import sys
import tempfile
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple

import tensorflow as tf
import tensorflow_data_validation as tfdv
from google.protobuf import message
from ml_metadata.metadata_store import metadata_store
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tfx import v1 as tfx

from next_category import contract
from next_category.components.anomaly_gate import anomalies as anomalies_lib
from next_category.components.anomaly_gate import comparators
from next_category.components.anomaly_gate import report
from next_category.pipeline import configs
from next_category.pipeline.run import preflight

# The split StatisticsGen computed the training data's statistics under.
TRAIN_SPLIT = "train"
SKEW_SPLIT = "skew"
SERVING_SPLIT = "serving"


class SkewInputError(ValueError):
  """The serving logs or the training statistics cannot be read."""


def training_statistics_from_metadata(
  output_root: str,
) -> Tuple[statistics_pb2.DatasetFeatureStatisticsList, str]:
  """The train split's statistics of the latest StatisticsGen run under `output_root`.

  Returns:
    `(statistics, path)`.

  Raises:
    SkewInputError: if ML Metadata holds no statistics.
  """
  metadata_path = os.path.join(output_root, "metadata.sqlite")
  if not os.path.isfile(metadata_path):
    raise SkewInputError(
      f"{metadata_path} does not exist: run the pipeline first (`make run`) or pass "
      "--training_statistics."
    )
  store = metadata_store.MetadataStore(
    tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
  )
  artifacts = [
    a
    for a in store.get_artifacts_by_type("ExampleStatistics")
    if a.state == a.LIVE and tf.io.gfile.exists(os.path.join(a.uri, f"Split-{TRAIN_SPLIT}"))
  ]
  if not artifacts:
    raise SkewInputError(f"ML Metadata in {metadata_path} holds no training statistics.")
  latest = max(artifacts, key=lambda a: (a.create_time_since_epoch, a.id))
  path = os.path.join(latest.uri, f"Split-{TRAIN_SPLIT}", "FeatureStats.pb")
  return tfdv.load_stats_binary(path), path


def load_statistics_file(path: str) -> statistics_pb2.DatasetFeatureStatisticsList:
  """Reads a statistics file: binary (`FeatureStats.pb`) or text (`.pbtxt`).

  Raises:
    SkewInputError: if the file does not exist.
  """
  if not tf.io.gfile.exists(path):
    raise SkewInputError(f"Training statistics file {path} does not exist.")
  if path.endswith((".pbtxt", ".txt")):
    return tfdv.load_stats_text(path)
  return tfdv.load_stats_binary(path)


def serving_statistics(
  serving_data: str, schema_path: str
) -> Tuple[statistics_pb2.DatasetFeatureStatisticsList, List[str]]:
  """Statistics of logged serving requests, after checking each file is readable.

  Args:
    serving_data: a file path or glob of TFRecord files of `PredictionLog`
      (the server's request logs) or of serialized `tf.Example`; compression
      is chosen by extension (.gz: GZIP).
    schema_path: the schema, for the expected feature types.

  Returns:
    `(statistics, files)`.

  Raises:
    SkewInputError: if no file matches or none holds a request.
    preflight.BadInputError: for an unreadable file, naming it.
  """
  files = sorted(p for p in tf.io.gfile.glob(serving_data) if not tf.io.gfile.isdir(p))
  if not files:
    raise SkewInputError(f"No serving log file matches {serving_data}.")
  kinds = contract.feature_kinds(schema_path)
  if not _are_prediction_logs(files[0]):
    if not sum(preflight.check_file(path, kinds) for path in files):
      raise SkewInputError(f"The serving logs {serving_data} hold no requests.")
    return tfdv.generate_statistics_from_tfrecord(data_location=serving_data), files
  with tempfile.TemporaryDirectory(prefix="skew-report-") as extracted:
    location = os.path.join(extracted, "requests.tfrecord.gz")
    if not _extract_examples(files, location):
      raise SkewInputError(f"The request logs {serving_data} hold no tf.Example.")
    preflight.check_file(location, kinds)
    return tfdv.generate_statistics_from_tfrecord(data_location=location), files


def _records(path: str):
  compression = "GZIP" if path.lower().endswith(".gz") else ""
  try:
    yield from tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator()
  except tf.errors.OpError as e:
    raise preflight.BadInputError(f"{path} is not a readable TFRecord file: {e.message}") from None


def _are_prediction_logs(path: str) -> bool:
  """Whether `path` holds PredictionLog records (serving/observability/request_log.py).

  A tf.Example parsed as a PredictionLog has no log type: its only field is
  number 1, PredictionLog's `log_metadata`.
  """
  for record in _records(path):
    try:
      return prediction_log_pb2.PredictionLog.FromString(record).WhichOneof("log_type") is not None
    except message.DecodeError:
      return False
  return False


def _extract_examples(files: List[str], location: str) -> int:
  """Writes the tf.Examples of logged Predict and Classify requests to `location`.

  Predict requests give the serialized examples of their string inputs,
  Classify requests their example list (with the context's features added).

  Returns:
    The number of examples written.
  """
  count = 0
  with tf.io.TFRecordWriter(location, options="GZIP") as writer:
    for path in files:
      for record in _records(path):
        try:
          log = prediction_log_pb2.PredictionLog.FromString(record)
        except message.DecodeError:
          raise preflight.BadInputError(
            f"{path} holds a record that is not a PredictionLog."
          ) from None
        for example in _logged_examples(log):
          writer.write(example)
          count += 1
  return count


def _logged_examples(log: prediction_log_pb2.PredictionLog):
  kind = log.WhichOneof("log_type")
  if kind == "predict_log":
    for tensor in log.predict_log.request.inputs.values():
      if tensor.dtype == types_pb2.DT_STRING:
        yield from tensor.string_val
  elif kind in ("classify_log", "regress_log"):
    model_input = getattr(log, kind).request.input
    if model_input.WhichOneof("kind") == "example_list_with_context":
      listed = model_input.example_list_with_context
      for example in listed.examples:
        merged = example_pb2.Example()
        merged.CopyFrom(listed.context)
        merged.MergeFrom(example)
        yield merged.SerializeToString()
    else:
      for example in model_input.example_list.examples:
        yield example.SerializeToString()


def compare(
  training: statistics_pb2.DatasetFeatureStatisticsList,
  serving: statistics_pb2.DatasetFeatureStatisticsList,
  schema,
) -> Tuple[List[anomalies_lib.Anomaly], List[comparators.Measurement], List[anomalies_lib.Anomaly]]:
  """Skew between training and serving statistics, and the requests' own anomalies.

  Returns:
    `(skew anomalies, skew measurements, serving anomalies)`.
  """
  skew = comparators.skew(training, serving, schema)
  serving_found = tfdv.validate_statistics(serving, schema, environment="SERVING")
  return (
    anomalies_lib.from_proto(skew, SKEW_SPLIT),
    comparators.measurements(skew),
    anomalies_lib.from_proto(serving_found, SERVING_SPLIT),
  )


def _write_reports(
  report_dir: str,
  training: Tuple[str, statistics_pb2.DatasetFeatureStatisticsList],
  serving: Tuple[str, statistics_pb2.DatasetFeatureStatisticsList],
  found: List[anomalies_lib.Anomaly],
  measurements: List[comparators.Measurement],
) -> List[str]:
  pages = {
    "skew_statistics.html": report.statistics_html(
      "Training against serving statistics", [training, serving]
    ),
    "skew_anomalies.html": report.anomalies_html(
      "Training/serving skew and serving anomalies",
      found,
      [],
      measurements,
      [f"Training: {training[0]}", f"Serving: {serving[0]}"],
    ),
  }
  return report.write_pages(pages, report_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--serving_data",
    required=True,
    help="File or glob of logged requests: the server's PredictionLog files, or TFRecords of "
    "serialized tf.Example (.gz: GZIP).",
  )
  parser.add_argument(
    "--output_root",
    default=configs.OUTPUT_ROOT,
    help="A pipeline's outputs: the training statistics are the latest StatisticsGen "
    "train split in its ML Metadata, and reports go to OUTPUT_ROOT/reports/.",
  )
  parser.add_argument(
    "--training_statistics",
    default=None,
    help="A statistics file (FeatureStats.pb, or text .pbtxt) instead of ML Metadata's.",
  )
  parser.add_argument("--schema_path", default=configs.SCHEMA_PATH)
  parser.add_argument(
    "--report_dir",
    default=None,
    help="Where to write the HTML reports (default: OUTPUT_ROOT/reports/skew-<UTC time>/).",
  )
  args = parser.parse_args(argv)
  try:
    if args.training_statistics:
      training = load_statistics_file(args.training_statistics)
      training_source = args.training_statistics
    else:
      training, training_source = training_statistics_from_metadata(args.output_root)
    serving, files = serving_statistics(args.serving_data, args.schema_path)
  except (SkewInputError, preflight.BadInputError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 2
  schema = tfdv.load_schema_text(args.schema_path)
  skew_found, measurements, serving_found = compare(training, serving, schema)
  report_dir = args.report_dir or os.path.join(
    args.output_root,
    "reports",
    "skew-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
  )
  reports = _write_reports(
    report_dir,
    (f"training ({training_source})", training),
    (f"serving ({len(files)} files)", serving),
    skew_found + serving_found,
    measurements,
  )

  print(f"Training statistics: {training_source} ({training.datasets[0].num_examples} examples)")
  print(f"Serving requests:    {args.serving_data} ({serving.datasets[0].num_examples} requests)")
  print("Skew (training against serving):")
  for m in measurements:
    verdict = "OVER" if m.over_threshold else "ok"
    print(f"  {m.feature:<14} {m.measure:<26} {m.value:9.6f}  threshold {m.threshold:g}  {verdict}")
  print(f"Serving anomalies: {len(serving_found)}")
  for anomaly in serving_found:
    print(f"  {anomaly.line()}")
  print("Reports:")
  for path in reports:
    print(f"  {path}")
  problems = skew_found + serving_found
  if problems:
    print(
      f"\nERROR: {len(skew_found)} skewed feature(s), {len(serving_found)} serving anomalies:",
      file=sys.stderr,
    )
    for anomaly in problems:
      print(f"  {anomaly.line()}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
