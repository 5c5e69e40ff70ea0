"""Drift and skew measured with TFDV's comparators.

Drift compares the span being ingested with the previous span; skew compares
training data with logged serving requests. The comparators and their
thresholds live in the schema (`drift_comparator` and `skew_comparator` on each
feature): L-infinity distance for categorical features, approximate
Jensen-Shannon divergence for numeric ones.
"""

import dataclasses
from typing import List

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2

_MEASURE_NAMES = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name
_TYPE_NAMES = anomalies_pb2.AnomalyInfo.Type.Name


@dataclasses.dataclass(frozen=True)
class Measurement:
  """One comparator's distance between two datasets for one feature.

  Attributes:
    feature: the feature's name.
    measure: `L_INFTY` or `JENSEN_SHANNON_DIVERGENCE`.
    value: the distance measured.
    threshold: the schema's threshold; above it is an anomaly.
  """

  feature: str
  measure: str
  value: float
  threshold: float

  @property
  def over_threshold(self) -> bool:
    return self.value > self.threshold


def _comparator_findings(found: anomalies_pb2.Anomalies) -> anomalies_pb2.Anomalies:
  # validate_statistics also checks the statistics against the schema, which
  # ExampleValidator does already: keep the comparators' findings only.
  for feature in list(found.anomaly_info):
    info = found.anomaly_info[feature]
    reasons = [r for r in info.reason if _TYPE_NAMES(r.type).startswith("COMPARATOR_")]
    if not reasons:
      del found.anomaly_info[feature]
      continue
    del info.reason[:]
    info.reason.extend(reasons)
    info.short_description = reasons[0].short_description
    info.description = " ".join(r.description for r in reasons)
  found.ClearField("dataset_anomaly_info")
  return found


def drift(
  current: statistics_pb2.DatasetFeatureStatisticsList,
  previous: statistics_pb2.DatasetFeatureStatisticsList,
  schema: schema_pb2.Schema,
) -> anomalies_pb2.Anomalies:
  """Measures drift from `previous` to `current` with the schema's drift comparators.

  Args:
    current: statistics of the data being ingested.
    previous: statistics of the previous span.
    schema: the schema holding `drift_comparator`s and their thresholds.

  Returns:
    The drift anomalies only (comparators over their threshold), with the
    distance measured for every feature that has a comparator in
    `drift_skew_info`.
  """
  return _comparator_findings(
    tfdv.validate_statistics(current, schema, environment="TRAINING", previous_statistics=previous)
  )


def skew(
  training: statistics_pb2.DatasetFeatureStatisticsList,
  serving: statistics_pb2.DatasetFeatureStatisticsList,
  schema: schema_pb2.Schema,
) -> anomalies_pb2.Anomalies:
  """Measures training/serving skew with the schema's skew comparators.

  Args:
    training: statistics of the training data.
    serving: statistics of logged serving requests.
    schema: the schema holding `skew_comparator`s and their thresholds.

  Returns:
    The skew anomalies only (comparators over their threshold), with the
    distance measured for every feature that has a comparator in
    `drift_skew_info`.
  """
  return _comparator_findings(
    tfdv.validate_statistics(training, schema, environment="TRAINING", serving_statistics=serving)
  )


def measurements(found: anomalies_pb2.Anomalies) -> List[Measurement]:
  """Every comparator's measured distance, by feature, over its threshold or not.

  Args:
    found: what `drift` or `skew` returned.

  Returns:
    Drift and skew measurements, sorted by feature.
  """
  rows = []
  for info in found.drift_skew_info:
    for measurement in list(info.drift_measurements) + list(info.skew_measurements):
      rows.append(
        Measurement(
          feature=".".join(info.path.step),
          measure=_MEASURE_NAMES(measurement.type),
          value=measurement.value,
          threshold=measurement.threshold,
        )
      )
  return sorted(rows, key=lambda m: m.feature)
