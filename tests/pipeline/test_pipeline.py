"""Tests of the pipeline's composition and its runners' argument handling."""

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from tfx import v1 as tfx

from components import version_signing
from pipeline import beam_runner
from pipeline import caching
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
    "ServingBaseline",
    "Evaluator",
    "InfraValidator",
    "Pusher",
  }
  # The Trainer runs only after AnomalyGate passed.
  assert {c.id for c in components["Trainer"].upstream_nodes} == {
    "ImportExampleGen",
    "ImportSchemaGen",
    "AnomalyGate",
  }
  assert {c.id for c in components["Pusher"].upstream_nodes} == {
    "Trainer",
    "Evaluator",
    "InfraValidator",
  }
  # The canary serves the model the Evaluator blessed, before the Pusher.
  assert {c.id for c in components["InfraValidator"].upstream_nodes} == {
    "ImportExampleGen",
    "Trainer",
    "Evaluator",
  }
  assert {c.id for c in components["Evaluator"].upstream_nodes} == {
    "ImportExampleGen",
    "Trainer",
    "ServingBaseline",
  }
  baseline = components["Evaluator"].inputs["baseline_model"]
  assert baseline.producer_component_id == "ServingBaseline"
  assert components["ServingBaseline"].exec_properties == {"serving_model_dir": "/tmp/s"}


def test_only_the_baseline_step_is_never_cached():
  pipeline = _create(enable_cache=True)
  assert caching.uncached_node_ids(pipeline) == ["ServingBaseline"]
  ir = caching.compile_ir(pipeline)
  enabled = {
    n.pipeline_node.node_info.id: n.pipeline_node.execution_options.caching_options.enable_cache
    for n in ir.nodes
  }
  assert enabled == {c.id: c.id != "ServingBaseline" for c in pipeline.components}


def test_tflite_conversion_follows_the_pusher_when_asked_for():
  assert "TFLiteConverter" not in {c.id for c in _create().components}
  components = {c.id: c for c in _create(tflite_push_base_directory="/tmp/t").components}
  assert {c.id for c in components["TFLiteConverter"].upstream_nodes} == {
    "ImportExampleGen",
    "Trainer",
    "Pusher",
  }


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match=r"^train_args.num_steps must be positive .*, got -1\.$"):
    _create(train_args=tfx.proto.TrainArgs(num_steps=-1))
  with pytest.raises(ValueError, match=r"^eval_args.num_steps must be positive .*, got 0\.$"):
    _create(eval_args=tfx.proto.EvalArgs(num_steps=0))
  # No train steps: the Trainer trains for its train_epochs.
  _create(train_args=tfx.proto.TrainArgs())
  with pytest.raises(ValueError, match="train_args.splits names test, which ImportExampleGen"):
    _create(train_args=tfx.proto.TrainArgs(num_steps=5, splits=["train", "test"]))
  with pytest.raises(ValueError, match="train_args must be a tfx.proto.TrainArgs or a Runtime"):
    _create(train_args=400)
  with pytest.raises(ValueError, match="eval_args must be a tfx.proto.EvalArgs or a Runtime"):
    _create(eval_args=tfx.proto.TrainArgs(num_steps=5))
  with pytest.raises(ValueError, match="runtime parameter 'steps' must have ptype str"):
    _create(train_args=tfx.dsl.experimental.RuntimeParameter(name="steps", ptype=int))
  with pytest.raises(ValueError, match="must contain {SPAN}"):
    _create(input_pattern="*.tfrecord")


def test_train_and_eval_args_reach_the_trainer():
  train_args = tfx.dsl.experimental.RuntimeParameter(name="train_args", ptype=str, default="{}")
  trainer = next(
    c
    for c in _create(train_args=train_args, eval_args=tfx.proto.EvalArgs(num_steps=3)).components
    if c.id == "Trainer"
  )
  # A runtime parameter is passed through; a proto is stored as JSON.
  assert trainer.exec_properties["train_args"] is train_args
  assert json.loads(trainer.exec_properties["eval_args"]) == {"num_steps": 3}


def test_training_budget_flags_default_to_epochs_and_reach_the_trainer(capsys):
  args, _ = runner_flags.parse_args([], "")
  assert (args.train_epochs, args.train_steps) == (configs.TRAIN_EPOCHS, None)
  settings = runner_flags.pipeline_settings(args)
  assert settings["trainer_custom_config"]["train_epochs"] == configs.TRAIN_EPOCHS == 4
  args, _ = runner_flags.parse_args(["--train_epochs=2", "--train_steps=50"], "")
  assert (args.train_epochs, args.train_steps) == (2, 50)
  with pytest.raises(SystemExit):
    runner_flags.parse_args(["--train_epochs=0"], "")
  assert "--train_epochs must be at least 1, got 0" in capsys.readouterr().err


def test_beam_args_default_and_override():
  _, beam_args = runner_flags.parse_args([], "")
  assert beam_args == list(configs.BEAM_PIPELINE_ARGS)
  _, beam_args = runner_flags.parse_args(["--runner=FlinkRunner", "--flink_master=h:8081"], "")
  assert beam_args == ["--runner=FlinkRunner", "--flink_master=h:8081"]


def test_missing_data_root_is_a_clear_error(tmp_path, capsys):
  code = beam_runner.main([f"--data_root={tmp_path}/none", f"--output_root={tmp_path}/out"])
  assert code == 2
  assert "does not exist; run `make data`" in capsys.readouterr().err


def test_model_signing_key_reaches_the_pusher_and_the_tflite_converter():
  key = "/secrets/model_signing_key.pem"
  components = {
    c.id: c for c in _create(tflite_push_base_directory="/tmp/t", model_signing_key=key).components
  }
  assert json.loads(components["Pusher"].exec_properties["custom_config"]) == {
    "model_signing_key": key
  }
  assert components["TFLiteConverter"].exec_properties["model_signing_key"] == key
  args, _ = runner_flags.parse_args([f"--model_signing_key={key}"], "")
  assert runner_flags.pipeline_settings(args)["model_signing_key"] == key


def test_a_missing_or_public_signing_key_is_a_clear_error(tmp_path, capsys):
  flags = [f"--data_root={tmp_path}", f"--output_root={tmp_path}/out"]
  assert beam_runner.main([*flags, f"--model_signing_key={tmp_path}/none.pem"]) == 2
  assert "none.pem does not exist; run `make keygen`" in capsys.readouterr().err
  _, public = version_signing.generate_key_pair(str(tmp_path / "keys"))
  assert beam_runner.main([*flags, f"--model_signing_key={public}"]) == 2
  assert "is not a PEM private key" in capsys.readouterr().err
  # The Ed25519 keys `make keygen` wrote before OpenSSF model signing: a clear error, no trace.
  ed25519_key = tmp_path / "ed25519.pem"
  ed25519_key.write_bytes(
    ed25519.Ed25519PrivateKey.generate().private_bytes(
      serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
  )
  assert beam_runner.main([*flags, f"--model_signing_key={ed25519_key}"]) == 2
  assert "is an Ed25519 key; OpenSSF model signing signs with ECDSA keys" in capsys.readouterr().err
