"""The AnomalyGate executor: fails the run when the data is anomalous, before training.

It gathers the anomalies ExampleValidator found in every split, adds drift from
the previous span (measured with the schema's `drift_comparator`s), sets aside
the kinds the user tolerates, writes HTML reports, and raises
`DataAnomaliesError` listing every anomaly that is left.

The previous span's statistics are computed here, with Beam, from the previous
span's files under the same data root. Looking them up in ML Metadata instead
would only work when an earlier run ingested exactly that span with the same
statistics options; reading the files works on a fresh metadata store and
after spans were written in any order, and costs one statistics pass over one
span (about 10 s for the default 50,000 examples on 2 cores).
"""

import dataclasses
import json
import os
import re
from typing import Any
from typing import Dict
from typing import List
from typing import Optional

import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx import types
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx_bsl.public import tfxio

from next_category.components.anomaly_gate import anomalies as anomalies_lib
from next_category.components.anomaly_gate import comparators
from next_category.components.anomaly_gate import report
from next_category.components.anomaly_gate import spans

# Keys of the component's inputs, outputs and parameters.
EXAMPLES_KEY = "examples"
STATISTICS_KEY = "statistics"
SCHEMA_KEY = "schema"
ANOMALIES_KEY = "anomalies"
VALIDATION_KEY = "validation"
INPUT_BASE_KEY = "input_base"
INPUT_PATTERN_KEY = "input_pattern"
TOLERATED_ANOMALIES_KEY = "tolerated_anomalies"
REPORT_DIR_KEY = "report_dir"

# The split whose statistics are compared with the previous span: the data
# the model trains on.
CURRENT_SPLIT = "train"
# File names TFX's own components use inside split directories.
ANOMALIES_FILE = "SchemaDiff.pb"
STATISTICS_FILE = "FeatureStats.pb"
_MOST_CHANGED = re.compile(r"The feature value with maximum difference is: (.*)$")


def _span_of(examples: types.Artifact) -> int:
  # ExampleGen records the span as a custom property, and StatisticsGen
  # copies the (unset) property: ask the examples.
  if examples.has_custom_property("span"):
    return examples.get_int_custom_property("span")
  return examples.span


def _described(
  anomaly: anomalies_lib.Anomaly, measurements: List[comparators.Measurement], compared: str
) -> anomalies_lib.Anomaly:
  """A drift anomaly whose description is its measurement, shorter than TFDV's."""
  for m in measurements:
    if m.feature == anomaly.feature and m.over_threshold:
      description = f"{m.measure} {m.value:.6g} is above the threshold {m.threshold:g} ({compared})"
      most_changed = _MOST_CHANGED.search(anomaly.description)
      if most_changed:
        description += f"; most changed value: {most_changed.group(1)}"
      return dataclasses.replace(anomaly, description=description)
  return anomaly


def _read_anomalies(artifact: types.Artifact) -> List[anomalies_lib.Anomaly]:
  found = []
  for split in artifact_utils.decode_split_names(artifact.split_names):
    path = os.path.join(artifact_utils.get_split_uri([artifact], split), ANOMALIES_FILE)
    with tf.io.gfile.GFile(path, "rb") as f:
      found += anomalies_lib.from_proto(anomalies_pb2.Anomalies.FromString(f.read()), split)
  return found


class Executor(base_beam_executor.BaseBeamExecutor):
  """Stops the pipeline when ExampleValidator or the drift check found anomalies."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    """Checks the anomalies and raises if any is not tolerated.

    Args:
      input_dict: `examples` (ImportExampleGen's, for their span),
        `statistics` (StatisticsGen's), `schema`, and `anomalies`
        (ExampleValidator's).
      output_dict: `validation`: an ExampleAnomalies artifact holding the drift
        anomalies as split `drift`, and the verdict as custom properties.
      exec_properties: `input_base` and `input_pattern` (where the spans are),
        `tolerated_anomalies` (a JSON list of anomaly kinds, or
        `feature:KIND`, that do not stop the run), `report_dir` (where HTML
        reports go, under a directory named after the pipeline run; optional).

    Raises:
      anomalies.DataAnomaliesError: listing every anomaly not tolerated.
    """
    self._log_startup(input_dict, output_dict, exec_properties)
    schema = io_utils.SchemaReader().read(
      io_utils.get_only_uri_in_dir(artifact_utils.get_single_uri(input_dict[SCHEMA_KEY]))
    )
    statistics = artifact_utils.get_single_instance(input_dict[STATISTICS_KEY])
    validation = artifact_utils.get_single_instance(output_dict[VALIDATION_KEY])
    tolerated = anomalies_lib.check_tolerated(
      json.loads(exec_properties.get(TOLERATED_ANOMALIES_KEY) or "[]")
    )
    found = _read_anomalies(artifact_utils.get_single_instance(input_dict[ANOMALIES_KEY]))

    split_names = artifact_utils.decode_split_names(statistics.split_names)
    by_split = {
      split: stats_artifact_utils.load_statistics(statistics, split).proto()
      for split in split_names
    }
    current_split = CURRENT_SPLIT if CURRENT_SPLIT in by_split else split_names[0]
    span = _span_of(artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY]))
    previous = spans.previous_span(
      exec_properties[INPUT_BASE_KEY], exec_properties[INPUT_PATTERN_KEY], span
    )
    measurements: List[comparators.Measurement] = []
    previous_stats = None
    if previous is None:
      validation.split_names = artifact_utils.encode_split_names([])
    else:
      previous_span, files = previous
      previous_stats = self._statistics_of(
        files, os.path.join(validation.uri, f"PreviousSpan-{previous_span}", STATISTICS_FILE)
      )
      drift = comparators.drift(by_split[current_split], previous_stats, schema)
      validation.split_names = artifact_utils.encode_split_names([anomalies_lib.DRIFT_SPLIT])
      drift_dir = artifact_utils.get_split_uri([validation], anomalies_lib.DRIFT_SPLIT)
      tf.io.gfile.makedirs(drift_dir)
      with tf.io.gfile.GFile(os.path.join(drift_dir, ANOMALIES_FILE), "wb") as f:
        f.write(drift.SerializeToString())
      measurements = comparators.measurements(drift)
      found += [
        _described(anomaly, measurements, f"span {span} against span {previous_span}")
        for anomaly in anomalies_lib.from_proto(drift, anomalies_lib.DRIFT_SPLIT)
      ]

    blocking, accepted = anomalies_lib.split_tolerated(found, tolerated)
    reports = self._write_reports(
      exec_properties.get(REPORT_DIR_KEY),
      by_split,
      (current_split, span, by_split[current_split]),
      (previous[0], previous_stats) if previous else None,
      blocking,
      accepted,
      measurements,
    )
    validation.span = span
    validation.set_int_custom_property("previous_span", previous[0] if previous else 0)
    validation.set_int_custom_property("blocking", len(blocking))
    validation.set_string_custom_property(TOLERATED_ANOMALIES_KEY, json.dumps(tolerated))
    validation.set_string_custom_property("tolerated", json.dumps([a.line() for a in accepted]))
    validation.set_string_custom_property(
      "drift",
      json.dumps(
        [[m.feature, m.measure, round(m.value, 6), m.threshold] for m in measurements],
      ),
    )
    validation.set_string_custom_property("reports", json.dumps(reports))
    if blocking:
      raise anomalies_lib.DataAnomaliesError(anomalies_lib.error_message(blocking, accepted))

  def _statistics_of(
    self, files: List[str], output_path: str
  ) -> statistics_pb2.DatasetFeatureStatisticsList:
    """Computes statistics of TFRecord files as StatisticsGen does (default options)."""
    # Beam picks each file's compression from its extension, as
    # ImportExampleGen does.
    with self._make_beam_pipeline() as pipeline:
      _ = (
        pipeline
        | "ReadPreviousSpan"
        >> tfxio.TFExampleRecord(
          file_pattern=files, telemetry_descriptors=["next_category", "AnomalyGate"]
        ).BeamSource()
        | "GenerateStatistics" >> tfdv.GenerateStatistics(tfdv.StatsOptions())
        | "WriteStatistics" >> tfdv.WriteStatisticsToBinaryFile(output_path)
      )
    return tfdv.load_stats_binary(output_path)

  def _write_reports(
    self,
    report_dir: Optional[str],
    by_split: Dict[str, statistics_pb2.DatasetFeatureStatisticsList],
    current,
    previous,
    blocking: List[anomalies_lib.Anomaly],
    accepted: List[anomalies_lib.Anomaly],
    measurements: List[comparators.Measurement],
  ) -> List[str]:
    """Writes the HTML reports of this run; returns their paths."""
    if not report_dir:
      return []
    run_id = getattr(self._context, "pipeline_run_id", None) or "latest"
    run_dir = os.path.join(report_dir, run_id)
    split, span, current_stats = current
    pages = {
      "statistics.html": report.statistics_html(
        f"Statistics of span {span} by split", sorted(by_split.items())
      )
    }
    notes = [f"Span {span}: ExampleValidator's anomalies of every split."]
    if previous is None:
      notes.append("Drift: not checked, no earlier span.")
    else:
      previous_span, previous_stats = previous
      notes.append(f"Drift: span {span} ({split} split) against span {previous_span}.")
      pages["drift.html"] = report.statistics_html(
        f"Drift: span {span} against span {previous_span}",
        [(f"span {span} ({split})", current_stats), (f"span {previous_span}", previous_stats)],
      )
    pages["anomalies.html"] = report.anomalies_html(
      f"Data anomalies of span {span}", blocking, accepted, measurements, notes
    )
    return report.write_pages(pages, run_dir)
