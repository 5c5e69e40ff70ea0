"""Tests of the AnomalyGate executor on statistics TFDV computes in-process.

Each bad input of the data contract is one small TFRecord file; its statistics
and ExampleValidator's anomalies are computed here as the pipeline computes
them, and the gate must stop the run naming the feature and the kind.
"""

import json
import os
import shutil

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics import stats_impl
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx_bsl.coders import example_coder

from next_category.components.anomaly_gate import anomalies
from next_category.components.anomaly_gate import executor
from next_category.dataset import clickstream
from next_category.pipeline import configs
from tests.testing import bad_examples

_RUN_ID = "test-run"


def _statistics(path):
  """TFDV statistics of a TFRecord file, computed in-process without Beam."""
  records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(records)
  return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions())


def _artifact(cls, uri, splits=None):
  artifact = cls()
  artifact.uri = str(uri)
  if splits is not None:
    artifact.split_names = artifact_utils.encode_split_names(splits)
  return artifact


def _run_gate(tmp_path, examples_by_split, span=1, tolerated=(), data_root=None):
  """Runs the executor as the pipeline would after StatisticsGen and ExampleValidator.

  Returns:
    The gate's `validation` output artifact.
  """
  splits = sorted(examples_by_split)
  examples = _artifact(standard_artifacts.Examples, tmp_path / "examples", splits)
  examples.set_int_custom_property("span", span)
  statistics = _artifact(standard_artifacts.ExampleStatistics, tmp_path / "statistics", splits)
  validator = _artifact(standard_artifacts.ExampleAnomalies, tmp_path / "anomalies", splits)
  schema = _artifact(standard_artifacts.Schema, tmp_path / "schema")
  os.makedirs(schema.uri)
  shutil.copy(configs.SCHEMA_PATH, os.path.join(schema.uri, "schema.pbtxt"))
  schema_proto = tfdv.load_schema_text(configs.SCHEMA_PATH)
  for split, split_examples in examples_by_split.items():
    path = bad_examples.write(str(tmp_path / f"{split}.tfrecord"), split_examples)
    stats = _statistics(path)
    stats_dir = artifact_utils.get_split_uri([statistics], split)
    os.makedirs(stats_dir)
    with open(os.path.join(stats_dir, executor.STATISTICS_FILE), "wb") as f:
      f.write(stats.SerializeToString())
    # What ExampleValidator does with each split.
    found = tfdv.validate_statistics(stats, schema_proto)
    anomalies_dir = artifact_utils.get_split_uri([validator], split)
    os.makedirs(anomalies_dir)
    with open(os.path.join(anomalies_dir, executor.ANOMALIES_FILE), "wb") as f:
      f.write(found.SerializeToString())
  validation = _artifact(standard_artifacts.ExampleAnomalies, tmp_path / "validation")
  os.makedirs(validation.uri)
  gate = executor.Executor(base_beam_executor.BaseBeamExecutor.Context(pipeline_run_id=_RUN_ID))
  try:
    gate.Do(
      {
        executor.EXAMPLES_KEY: [examples],
        executor.STATISTICS_KEY: [statistics],
        executor.SCHEMA_KEY: [schema],
        executor.ANOMALIES_KEY: [validator],
      },
      {executor.VALIDATION_KEY: [validation]},
      {
        executor.INPUT_BASE_KEY: str(data_root or tmp_path / "data"),
        executor.INPUT_PATTERN_KEY: "span-{SPAN}/*",
        executor.TOLERATED_ANOMALIES_KEY: json.dumps(list(tolerated)),
        executor.REPORT_DIR_KEY: str(tmp_path / "reports"),
      },
    )
  finally:
    # The reports are written before the gate raises.
    assert os.path.isfile(tmp_path / "reports" / _RUN_ID / "anomalies.html")
  return validation


def _good(count=40, seed=2):
  return list(clickstream.generate_examples(count, seed=seed))


def test_clean_first_span_passes_and_records_the_verdict(tmp_path):
  validation = _run_gate(tmp_path, {"train": _good(), "eval": _good(10, seed=3)})
  props = validation.mlmd_artifact.custom_properties
  assert props["blocking"].int_value == 0
  assert props["previous_span"].int_value == 0
  assert json.loads(props["tolerated_anomalies"].string_value) == []
  assert json.loads(props["drift"].string_value) == []
  assert sorted(os.path.basename(p) for p in json.loads(props["reports"].string_value)) == [
    "anomalies.html",
    "statistics.html",
  ]
  assert artifact_utils.decode_split_names(validation.split_names) == []
  with open(tmp_path / "reports" / _RUN_ID / "statistics.html") as f:
    page = f.read()
  assert "<th>train</th>" in page and "<th>eval</th>" in page and "user_segment" in page


# One bad example among good ones; (feature, kind) the gate must name.
_BAD_INPUTS = {
  "missing_label": (
    bad_examples.example(label=None),
    {("label", "FEATURE_TYPE_LOW_FRACTION_PRESENT")},
  ),
  "label_out_of_range": (bad_examples.example(label=(12,)), {("label", "INT_TYPE_BIG_INT")}),
  "negative_label": (bad_examples.example(label=(-1,)), {("label", "INT_TYPE_SMALL_INT")}),
  "user_segment_outside_domain": (
    bad_examples.example(user_segment=(b"vip",)),
    {("user_segment", "ENUM_TYPE_UNEXPECTED_STRING_VALUES")},
  ),
  "empty_item_history": (
    bad_examples.example(item_history=()),
    {("item_history", "FEATURE_TYPE_LOW_NUMBER_VALUES")},
  ),
  "too_long_item_history": (
    bad_examples.example(item_history=tuple(range(1, 52))),
    {("item_history", "FEATURE_TYPE_HIGH_NUMBER_VALUES")},
  ),
  "item_ids_outside_1_to_9999": (
    bad_examples.example(item_history=(0, 10000)),
    {("item_history", "INT_TYPE_SMALL_INT"), ("item_history", "INT_TYPE_BIG_INT")},
  ),
  "missing_user_segment": (
    bad_examples.example(user_segment=None),
    {("user_segment", "FEATURE_TYPE_LOW_FRACTION_PRESENT")},
  ),
}


@pytest.mark.parametrize("case", sorted(_BAD_INPUTS))
def test_bad_feature_values_stop_the_run_naming_feature_and_kind(tmp_path, case):
  bad, expected = _BAD_INPUTS[case]
  with pytest.raises(anomalies.DataAnomaliesError) as raised:
    _run_gate(tmp_path, {"train": _good() + [bad], "eval": _good(10, seed=3)})
  lines = str(raised.value).splitlines()
  assert lines[0].startswith(f"{len(expected)} data anomal")
  named = {tuple(line.split(": ")[0:2]) for line in lines[1:]}
  assert named == {(f"  [train] {feature}", kind) for feature, kind in expected}


@pytest.mark.parametrize(
  "bad, feature, got",
  [
    (bad_examples.example(item_history=(5.0, 6.0)), "item_history", "FLOAT"),
    (bad_examples.example(label=(b"3",)), "label", "STRING"),
  ],
  ids=["float_item_ids", "bytes_label"],
)
def test_wrong_typed_feature_stops_the_run(tmp_path, bad, feature, got):
  # A feature has one type per file: TFDV cannot decode a mix (StatisticsGen
  # then fails naming the feature), so the whole split is wrong-typed here.
  with pytest.raises(anomalies.DataAnomaliesError) as raised:
    _run_gate(tmp_path, {"train": [bad] * 20, "eval": _good(10, seed=3)})
  assert (
    f"[train] {feature}: UNEXPECTED_DATA_TYPE: Unexpected data type: "
    f"Expected data of type: INT but got {got}"
  ) in str(raised.value)


def test_every_anomaly_is_listed_once_per_split(tmp_path):
  bad = [bad_examples.example(user_segment=(b"vip",)), bad_examples.example(label=(12,))]
  with pytest.raises(anomalies.DataAnomaliesError) as raised:
    _run_gate(tmp_path, {"train": _good() + bad, "eval": _good(10, seed=3) + bad[:1]})
  assert str(raised.value).splitlines()[1:] == [
    "  [eval] user_segment: ENUM_TYPE_UNEXPECTED_STRING_VALUES: Unexpected string values: "
    "Examples contain values missing from the schema: vip (~9%).",
    "  [train] label: INT_TYPE_BIG_INT: Out-of-range values: Unexpectedly large value: 12.",
    "  [train] user_segment: ENUM_TYPE_UNEXPECTED_STRING_VALUES: Unexpected string values: "
    "Examples contain values missing from the schema: vip (~2%).",
  ]


def test_tolerated_kinds_pass_and_are_recorded(tmp_path):
  bad = [bad_examples.example(user_segment=(b"vip",)), bad_examples.example(label=(12,))]
  tolerated = ["ENUM_TYPE_UNEXPECTED_STRING_VALUES", "label:INT_TYPE_BIG_INT"]
  validation = _run_gate(tmp_path, {"train": _good() + bad}, tolerated=tolerated)
  props = validation.mlmd_artifact.custom_properties
  assert props["blocking"].int_value == 0
  assert json.loads(props["tolerated_anomalies"].string_value) == tolerated
  assert [line.split(": ")[:2] for line in json.loads(props["tolerated"].string_value)] == [
    ["[train] label", "INT_TYPE_BIG_INT"],
    ["[train] user_segment", "ENUM_TYPE_UNEXPECTED_STRING_VALUES"],
  ]


def test_tolerating_a_kind_for_one_feature_leaves_the_others_blocking(tmp_path):
  bad = [bad_examples.example(item_history=(10000,)), bad_examples.example(label=(12,))]
  with pytest.raises(anomalies.DataAnomaliesError) as raised:
    _run_gate(tmp_path, {"train": _good() + bad}, tolerated=["label:INT_TYPE_BIG_INT"])
  message = str(raised.value)
  assert message.splitlines()[0].startswith("1 data anomaly stop the run before training (1 more")
  assert "[train] item_history: INT_TYPE_BIG_INT" in message
  assert "[train] label" not in message


def test_drift_from_the_previous_span_stops_the_run_and_no_drift_passes(tmp_path):
  # Between undrifted spans of 2,000 examples every distance stays under half
  # its threshold (measured: label JSD ~0.001 against 0.01).
  data_root = str(tmp_path / "data")
  clickstream.write_span(data_root, span=1, num_examples=2000, seed=21, num_shards=2)
  same = list(clickstream.generate_examples(2000, seed=22))
  validation = _run_gate(tmp_path / "same", {"train": same}, span=2, data_root=data_root)
  props = validation.mlmd_artifact.custom_properties
  assert props["previous_span"].int_value == 1
  measured = {m[0]: m for m in json.loads(props["drift"].string_value)}
  assert sorted(measured) == ["city_tier", "item_history", "label", "user_segment"]
  assert measured["user_segment"][1:2] == ["L_INFTY"] and measured["label"][1] == (
    "JENSEN_SHANNON_DIVERGENCE"
  )
  assert all(value <= threshold / 2 for _, _, value, threshold in measured.values()), measured
  assert artifact_utils.decode_split_names(validation.split_names) == ["drift"]

  drifted = list(clickstream.generate_examples(2000, seed=22, drift=clickstream.Drift(0.8, 0.8)))
  with pytest.raises(anomalies.DataAnomaliesError) as raised:
    _run_gate(tmp_path / "drifted", {"train": drifted}, span=2, data_root=data_root)
  lines = str(raised.value).splitlines()[1:]
  assert [line.split(": ")[:2] for line in lines] == [
    ["  [drift] label", "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH"],
    ["  [drift] user_segment", "COMPARATOR_L_INFTY_HIGH"],
  ]
  assert "is above the threshold 0.1 (span 2 against span 1)" in lines[1]
  assert os.path.isfile(tmp_path / "drifted" / "reports" / _RUN_ID / "drift.html")
