"""Tests of the pipeline's composition and its runners' argument handling."""

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from tfx import v1 as tfx
from tfx.proto.orchestration import executable_spec_pb2
from tfx.proto.orchestration import pipeline_pb2

from next_category.components import version_signing
from next_category.pipeline import caching
from next_category.pipeline import configs
from next_category.pipeline.run import beam_runner
from next_category.pipeline.run import runner_flags
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


def test_the_baseline_step_is_cached_only_where_its_driver_runs():
  pipeline = _create(enable_cache=True)
  # Kubeflow runs no custom driver but ImportExampleGen's: never cached there.
  assert caching.uncached_node_ids(pipeline) == ["ServingBaseline"]
  # The Beam and local runners run its driver, which fingerprints what serves now.
  assert caching.uncached_node_ids(pipeline, drivers_run=True) == []
  ir = caching.compile_ir(pipeline)
  enabled = {
    n.pipeline_node.node_info.id: n.pipeline_node.execution_options.caching_options.enable_cache
    for n in ir.nodes
  }
  assert enabled == {c.id: True for c in pipeline.components}
  deployment = pipeline_pb2.IntermediateDeploymentConfig()
  ir.deployment_config.Unpack(deployment)
  driver_spec = executable_spec_pb2.PythonClassExecutableSpec()
  deployment.custom_driver_specs["ServingBaseline"].Unpack(driver_spec)
  assert driver_spec.class_path == "next_category.components.serving_baseline.driver.Driver"


def test_tflite_conversion_follows_the_pusher_when_asked_for():
  assert "TFLiteConverter" not in {c.id for c in _create().components}
  components = {c.id: c for c in _create(tflite_push_base_directory="/tmp/t").components}
  assert {c.id for c in components["TFLiteConverter"].upstream_nodes} == {
    "ImportExampleGen",
    "Trainer",
    "Pusher",
  }


def test_bad_settings_are_refused():
  with pytest.raises(
    ValueError, match=r"^training.train_steps must be a positive number .*, got 0\.$"
  ):
    _create(train_steps=0)
  with pytest.raises(ValueError, match=r"^training.eval_steps must be positive, got -1\.$"):
    _create(eval_steps=-1)
  with pytest.raises(
    ValueError, match="train_steps must be a positive number of steps, None or a Run"
  ):
    _create(train_steps="400")
  with pytest.raises(ValueError, match=r"^training.train_epochs must be positive, got 0\.$"):
    _create(train_epochs=0)
  # No train steps: the Trainer trains for its train_epochs.
  trainer = {c.id: c for c in _create(train_steps=None).components}["Trainer"]
  assert json.loads(trainer.exec_properties["train_args"]) == {}
  custom_config = json.loads(trainer.exec_properties["custom_config"])
  assert custom_config["train_epochs"] == configs.TRAIN_EPOCHS
  with pytest.raises(ValueError, match="runtime parameter 'steps' must have ptype str"):
    _create(train_steps=tfx.dsl.experimental.RuntimeParameter(name="steps", ptype=int))
  with pytest.raises(ValueError, match="must contain {SPAN}"):
    _create(input_pattern="*.tfrecord")


def test_train_and_eval_args_reach_the_trainer():
  train_args = tfx.dsl.experimental.RuntimeParameter(name="train_args", ptype=str, default="{}")
  trainer = next(
    c for c in _create(train_steps=train_args, eval_steps=3).components if c.id == "Trainer"
  )
  # A runtime parameter is passed through; a proto is stored as JSON.
  assert trainer.exec_properties["train_args"] is train_args
  assert json.loads(trainer.exec_properties["eval_args"]) == {"num_steps": 3}


def test_training_budget_flags_default_to_epochs_and_reach_the_trainer(capsys):
  args = runner_flags.parse_args([], "")
  assert (args.train_epochs, args.train_steps) == (configs.TRAIN_EPOCHS, None)
  training = runner_flags.pipeline_settings(args)["training"]
  assert (training.train_epochs, training.train_steps) == (configs.TRAIN_EPOCHS, None) == (2, None)
  args = runner_flags.parse_args(["--train_epochs=2", "--train_steps=50"], "")
  assert (args.train_epochs, args.train_steps) == (2, 50)
  with pytest.raises(SystemExit):
    runner_flags.parse_args(["--train_epochs=0"], "")
  assert "--train_epochs must be at least 1, got 0" in capsys.readouterr().err


def test_beam_args_default_and_override():
  args = runner_flags.parse_args([], "")
  assert args.beam_pipeline_args == list(configs.BEAM_PIPELINE_ARGS)
  args = runner_flags.parse_args(["--runner=FlinkRunner", "--flink_master=h:8081"], "")
  assert args.beam_pipeline_args == ["--runner=FlinkRunner", "--flink_master=h:8081"]


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
  args = runner_flags.parse_args([f"--model_signing_key={key}"], "")
  assert args.model_signing_key == key


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


def test_tune_puts_the_tuner_before_the_trainer_and_hands_it_the_best_hyperparameters():
  untuned = {c.id: c for c in _create().components}
  assert "Tuner" not in untuned
  assert "hyperparameters" not in untuned["Trainer"].inputs
  components = {
    c.id: c
    for c in _create(
      tune=True,
      tuner_fn=configs.TUNER_FN,
      tune_trials=3,
      tune_train_steps=7,
      custom_config={"preset": "tiny", "seed": 1},
    ).components
  }
  tuner = components["Tuner"]
  assert {c.id for c in tuner.upstream_nodes} == {
    "ImportExampleGen",
    "ImportSchemaGen",
    "AnomalyGate",
  }
  assert tuner.exec_properties["tuner_fn"] == "next_category.components.trainer.tuning.tuner_fn"
  assert json.loads(tuner.exec_properties["train_args"]) == {"num_steps": 7}
  assert json.loads(tuner.exec_properties["eval_args"]) == {"num_steps": 2}
  assert json.loads(tuner.exec_properties["custom_config"]) == {
    "preset": "tiny",
    "seed": 1,
    "train_epochs": configs.TRAIN_EPOCHS,
    "tune_trials": 3,
  }
  trainer = components["Trainer"]
  assert trainer.inputs["hyperparameters"].producer_component_id == "Tuner"
  assert trainer.inputs["hyperparameters"].output_key == "best_hyperparameters"
  assert "Tuner" in {c.id for c in trainer.upstream_nodes}
  # The Trainer's own settings are the untuned ones; the best values arrive at run time.
  assert json.loads(trainer.exec_properties["custom_config"]) == {
    "preset": "tiny",
    "seed": 1,
    "train_epochs": configs.TRAIN_EPOCHS,
  }


def test_tune_flags_and_bad_tune_settings():
  args = runner_flags.parse_args(["--tune", "--tune_trials=3", "--tune_steps=9"], "")
  training = runner_flags.pipeline_settings(args)["training"]
  assert {
    k: getattr(training, k) for k in ("tune", "tuner_fn", "tune_trials", "tune_train_steps")
  } == {
    "tune": True,
    "tuner_fn": configs.TUNER_FN,
    "tune_trials": 3,
    "tune_train_steps": 9,
  }
  args = runner_flags.parse_args([], "")
  assert runner_flags.pipeline_settings(args)["training"].tune is False
  with pytest.raises(SystemExit):
    runner_flags.parse_args(["--tune", "--tune_trials=0"], "")
  with pytest.raises(ValueError, match=r"^tune needs tuner_fn"):
    _create(tune=True, tuner_fn="")
  with pytest.raises(ValueError, match=r"^tune_trials must be at least 1, got 0\.$"):
    _create(tune=True, tuner_fn=configs.TUNER_FN, tune_trials=0)
  with pytest.raises(ValueError, match=r"^tune_train_steps must be at least 1, got -2\.$"):
    _create(tune=True, tuner_fn=configs.TUNER_FN, tune_train_steps=-2)
