"""Tests of the pipeline's composition and its runners' argument handling."""

import pytest

from pipeline import beam_runner
from pipeline import configs
from pipeline import runner_flags
from tests.pipeline import pipelines


def _create(**overrides):
  return pipelines.create_test_pipeline(**overrides)


def test_pipeline_has_every_component_wired():
  pipeline = _create()
  components = {c.id: c for c in pipeline.components}
  assert set(components) == {
    "ImportExampleGen",
    "StatisticsGen",
    "ImportSchemaGen",
    "ExampleValidator",
    "AnomalyGate",
    "Trainer",
    "latest_blessed_model_resolver",
    "Evaluator",
    "Pusher",
  }
  # The Trainer runs only after AnomalyGate passed.
  assert {c.id for c in components["Trainer"].upstream_nodes} == {
    "ImportExampleGen",
    "ImportSchemaGen",
    "AnomalyGate",
  }
  assert {c.id for c in components["Pusher"].upstream_nodes} == {"Trainer", "Evaluator"}
  assert {c.id for c in components["Evaluator"].upstream_nodes} == {
    "ImportExampleGen",
    "Trainer",
    "latest_blessed_model_resolver",
  }


def test_tflite_conversion_follows_the_pusher_when_asked_for():
  assert "TFLiteConverter" not in {c.id for c in _create().components}
  components = {c.id: c for c in _create(tflite_push_base_directory="/tmp/t").components}
  assert {c.id for c in components["TFLiteConverter"].upstream_nodes} == {
    "ImportExampleGen",
    "Trainer",
    "Pusher",
  }


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="train_steps and eval_steps must be positive"):
    _create(train_steps=0)
  with pytest.raises(ValueError, match="must contain {SPAN}"):
    _create(input_pattern="*.tfrecord")


def test_beam_args_default_and_override():
  _, beam_args = runner_flags.parse_args([], "")
  assert beam_args == list(configs.BEAM_PIPELINE_ARGS)
  _, beam_args = runner_flags.parse_args(["--runner=FlinkRunner", "--flink_master=h:8081"], "")
  assert beam_args == ["--runner=FlinkRunner", "--flink_master=h:8081"]


def test_missing_data_root_is_a_clear_error(tmp_path, capsys):
  code = beam_runner.main([f"--data_root={tmp_path}/none", f"--output_root={tmp_path}/out"])
  assert code == 2
  assert "does not exist; run `make data`" in capsys.readouterr().err
