"""Tests of the data-validation settings: span pinning, tolerated anomalies, reports."""

import json
import os

import pytest

from next_category.pipeline.reports import run_summary
from next_category.pipeline.run import runner_flags
from tests.pipeline import pipelines
from tests.testing import bad_examples


def _create(**overrides):
  return {c.id: c for c in pipelines.create_test_pipeline(**overrides).components}


def test_span_pins_import_example_gen_to_one_span():
  range_config = json.loads(_create(span=3)["ImportExampleGen"].exec_properties["range_config"])
  assert range_config == {"static_range": {"start_span_number": 3, "end_span_number": 3}}
  assert _create()["ImportExampleGen"].exec_properties["range_config"] is None
  with pytest.raises(ValueError, match="span must be a span number of at least 1, got 0"):
    _create(span=0)


def test_flags_reach_the_gate(tmp_path):
  data_root = tmp_path / "data"
  os.makedirs(data_root / "span-1")
  bad_examples.write(str(data_root / "span-1" / "a.tfrecord"), [bad_examples.example()])
  args = runner_flags.parse_args(
    [
      f"--data_root={data_root}",
      f"--output_root={tmp_path}/out",
      "--tolerate_anomalies=ENUM_TYPE_UNEXPECTED_STRING_VALUES,label:INT_TYPE_BIG_INT",
      "--span=1",
    ],
    "",
  )
  components = {c.id: c for c in runner_flags.build_pipeline(args).components}
  gate = components["AnomalyGate"].exec_properties
  assert json.loads(gate["tolerated_anomalies"]) == [
    "ENUM_TYPE_UNEXPECTED_STRING_VALUES",
    "label:INT_TYPE_BIG_INT",
  ]
  assert gate["report_dir"] == f"{tmp_path}/out/reports"
  assert gate["input_base"] == str(data_root)


def test_unknown_anomaly_kind_is_a_flag_error(capsys):
  with pytest.raises(SystemExit):
    runner_flags.parse_args(["--tolerate_anomalies=VIP_USERS"], "")
  assert "Cannot tolerate 'VIP_USERS'" in capsys.readouterr().err


def test_summary_shows_tolerated_anomalies_drift_and_reports():
  summary = run_summary.RunSummary(
    run_id="r1",
    components=[],
    anomalies={
      "train": [("user_segment", "ENUM_TYPE_UNEXPECTED_STRING_VALUES", "Unexpected string values")]
    },
    slice_metrics=[],
    blessed=None,
    pushed_path=None,
    pushed_version=None,
    tolerated_kinds=["ENUM_TYPE_UNEXPECTED_STRING_VALUES"],
    drift=(2, 1, [("user_segment", "L_INFTY", 0.0123, 0.1), ("label", "L_INFTY", 0.5, 0.1)]),
    reports=["/out/reports/r1/anomalies.html"],
  )
  text = run_summary.format_summary(summary)
  assert (
    "  [train] user_segment: ENUM_TYPE_UNEXPECTED_STRING_VALUES: Unexpected string values "
    "(tolerated)"
  ) in text
  assert "Tolerated anomaly kinds: ENUM_TYPE_UNEXPECTED_STRING_VALUES" in text
  assert "Drift: span 2 (train split) against span 1:" in text
  assert "  user_segment   L_INFTY                     0.012300  threshold 0.1  ok" in text
  assert "  label          L_INFTY                     0.500000  threshold 0.1  OVER" in text
  assert text.endswith("Reports:\n  /out/reports/r1/anomalies.html")
