"""Tests of the Tuner module (`tuning.tuner_fn`) and of the Trainer taking its best values."""

import json
import os

import pytest
import tensorflow as tf
from tfx import v1 as tfx
from tfx.components.tuner import executor as tuner_executor

from next_category import contract
from next_category.components.trainer import hyperparameters
from next_category.components.trainer import model as model_lib
from next_category.components.trainer import presets
from next_category.components.trainer import tuning
from next_category.dataset import clickstream


def _fn_args(tmp_path, paths, **custom_config):
  return tfx.components.FnArgs(
    train_files=paths[:3],
    eval_files=paths[3:],
    train_steps=3,
    eval_steps=1,
    schema_path=contract.DEFAULT_SCHEMA_PATH,
    working_dir=str(tmp_path / "tuner"),
    custom_config={"preset": "tiny", "hparams": {"batch_size": 8}, "seed": 1, **custom_config},
  )


def test_search_space_is_centred_on_the_preset():
  space = tuning._search_space(presets.get("small"))
  assert {p.name: list(p.values) for p in space.space} == {
    "learning_rate": [0.001, 0.003, 0.009],
    "dropout": [0.0, 0.1, 0.2],
    "hidden_dim": [16, 32, 64],
    # From 1 to one more than the preset's (1 block).
    "num_layers": [1, 2],
  }
  # Every default is the preset's value: the untuned model is a point of the space.
  assert space.values == {"learning_rate": 3e-3, "dropout": 0.2, "hidden_dim": 32, "num_layers": 1}
  # Widths the heads do not divide are left out.
  assert tuning._widths(presets.get("tiny", hidden_dim=6, num_heads=3)) == [3, 6, 12]
  assert tuning._widths(presets.get("tiny", hidden_dim=4, num_heads=4)) == [4, 8]


def test_tuner_fn_searches_trials_and_the_best_values_build_the_trainers_model(tmp_path):
  paths = clickstream.write_span(str(tmp_path / "data"), num_examples=60, seed=5)
  fn_args = _fn_args(tmp_path, paths, tune_trials=2)
  result = tuning.tuner_fn(fn_args)
  assert result.fit_kwargs["steps_per_epoch"] == 3
  assert result.fit_kwargs["validation_steps"] == 1
  result.tuner.search(**result.fit_kwargs)
  trials = result.tuner.oracle.get_best_trials(10)
  assert len(trials) == 2
  # The first trial is the preset itself; the other is drawn from the space.
  first = result.tuner.oracle.get_trial("0").hyperparameters.values
  tiny = presets.get("tiny", batch_size=8)
  assert first == {
    "learning_rate": tiny.learning_rate,
    "dropout": tiny.dropout,
    "hidden_dim": tiny.hidden_dim,
    "num_layers": tiny.num_layers,
  }
  assert all(0.0 <= t.score <= 1.0 for t in trials)
  best = result.tuner.get_best_hyperparameters()[0]
  assert set(best.values) == {"learning_rate", "dropout", "hidden_dim", "num_layers"}
  # The Trainer gets the config as TFX's Tuner writes it (JSON of get_config()).
  config = json.loads(json.dumps(best.get_config()))
  custom_config = hyperparameters.tuned_custom_config(
    {"preset": "tiny", "hparams": {"batch_size": 16, "dropout": 0.5}}, config
  )
  assert custom_config["hparams"] == {"batch_size": 16, **best.values}
  model = model_lib._build_model(presets.get("tiny", **custom_config["hparams"]), contract.load())
  assert model.get_layer("head").units == best.values["hidden_dim"]
  encoders = [layer for layer in model.layers if layer.name.startswith("transformer_encoder_")]
  assert len(encoders) == best.values["num_layers"]
  assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(best.values["learning_rate"])


def test_tfx_tuner_executor_writes_the_best_hyperparameters(tmp_path):
  """The whole component as TFX runs it: Executor.Do with real artifacts."""
  paths = clickstream.write_span(str(tmp_path / "data"), num_examples=40, seed=6)
  examples = tfx.types.standard_artifacts.Examples()
  examples.uri = str(tmp_path / "examples")
  examples.split_names = '["train", "eval"]'
  for split, files in (("train", paths[:3]), ("eval", paths[3:])):
    os.makedirs(os.path.join(examples.uri, f"Split-{split}"))
    for path in files:
      tf.io.gfile.copy(path, os.path.join(examples.uri, f"Split-{split}", os.path.basename(path)))
  schema = tfx.types.standard_artifacts.Schema()
  schema.uri = str(tmp_path / "schema")
  os.makedirs(schema.uri)
  tf.io.gfile.copy(contract.DEFAULT_SCHEMA_PATH, os.path.join(schema.uri, "schema.pbtxt"))
  outputs = {
    "best_hyperparameters": [tfx.types.standard_artifacts.HyperParameters()],
    "tuner_results": [tfx.types.standard_artifacts.TunerResults()],
  }
  for key, (artifact,) in outputs.items():
    artifact.uri = str(tmp_path / key)
    os.makedirs(artifact.uri)
  executor = tuner_executor.Executor(
    tuner_executor.base_executor.BaseExecutor.Context(tmp_dir=str(tmp_path / "tmp"), unique_id="1")
  )
  executor.Do(
    {"examples": [examples], "schema": [schema]},
    outputs,
    {
      "tuner_fn": "next_category.components.trainer.tuning.tuner_fn",
      "train_args": json.dumps({"num_steps": 2}),
      "eval_args": json.dumps({"num_steps": 1}),
      "custom_config": json.dumps(
        {"preset": "tiny", "hparams": {"batch_size": 8}, "seed": 1, "tune_trials": 1}
      ),
    },
  )
  with open(tmp_path / "best_hyperparameters" / "best_hyperparameters.txt") as f:
    best = json.load(f)
  # One trial: the preset's own values.
  assert best["values"] == tuning._search_space(presets.get("tiny")).values
  with open(tmp_path / "tuner_results" / "tuner_results.json") as f:
    (result,) = json.load(f)
  assert {k: result[k] for k in best["values"]} == best["values"]
  assert 0.0 <= result["score"] <= 1.0


def test_bad_tuner_settings_and_hyperparameters_are_refused(tmp_path):
  paths = clickstream.write_span(str(tmp_path / "data"), num_examples=20, seed=7)
  with pytest.raises(ValueError, match=r"^tune_trials must be at least 1, got 0\.$"):
    tuning.tuner_fn(_fn_args(tmp_path, paths, tune_trials=0))
  with pytest.raises(ValueError, match="Unknown model preset 'huge'"):
    tuning.tuner_fn(_fn_args(tmp_path, paths, preset="huge"))
  with pytest.raises(ValueError, match="must be a KerasTuner HyperParameters config"):
    hyperparameters.tuned_custom_config({}, {"learning_rate": 0.1})
  assert hyperparameters.tuned_custom_config(None, None) == {}
