"""Tests of the AnomalyGate component's construction."""

import json

import pytest
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from next_category.components.anomaly_gate import component


def _gate(**overrides):
  settings = dict(
    examples=tfx.dsl.Channel(type=standard_artifacts.Examples),
    statistics=tfx.dsl.Channel(type=standard_artifacts.ExampleStatistics),
    schema=tfx.dsl.Channel(type=standard_artifacts.Schema),
    anomalies=tfx.dsl.Channel(type=standard_artifacts.ExampleAnomalies),
    input_base="/data",
  )
  settings.update(overrides)
  return component.AnomalyGate(**settings)


def test_parameters_and_output():
  gate = _gate(tolerated_anomalies=["INT_TYPE_BIG_INT", "label:INT_TYPE_SMALL_INT"])
  assert gate.id == "AnomalyGate"
  params = gate.exec_properties
  assert json.loads(params["tolerated_anomalies"]) == [
    "INT_TYPE_BIG_INT",
    "label:INT_TYPE_SMALL_INT",
  ]
  assert params["input_pattern"] == "span-{SPAN}/*"
  assert gate.outputs["validation"].type == standard_artifacts.ExampleAnomalies


def test_bad_arguments_are_refused_in_full_sentences():
  with pytest.raises(ValueError, match="Cannot tolerate 'INT_TOO_BIG'"):
    _gate(tolerated_anomalies=["INT_TOO_BIG"])
  with pytest.raises(ValueError, match="must hold it exactly once; got 'data/\\*'"):
    _gate(input_pattern="data/*")
