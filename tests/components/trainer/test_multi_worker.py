"""Multi-worker training: a real two-process MultiWorkerMirroredStrategy cluster on loopback."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx

from next_category import contract
from next_category.components.trainer import features
from next_category.components.trainer import model as model_lib
from next_category.components.trainer import multi_worker
from next_category.dataset import clickstream
from tests.testing import model_checks

# Dropout off, so two runs differ only by the order of floating-point sums.
_CONFIG = {"preset": "tiny", "seed": 3, "hparams": {"dropout": 0.0}}
# Largest difference in predicted probabilities between 1 and 2 workers.
_TOLERANCE = 1e-3


def _fn_args(tmp_path, name, paths, **custom_config):
  return tfx.components.FnArgs(
    train_files=paths[:3],
    eval_files=paths[3:],
    train_steps=30,
    eval_steps=2,
    serving_model_dir=str(tmp_path / name / "serving"),
    model_run_dir=str(tmp_path / name / "run"),
    schema_path=contract.DEFAULT_SCHEMA_PATH,
    custom_config=dict(_CONFIG, **custom_config),
  )


def _weights(saved_model_dir):
  return [v.numpy() for v in tf.keras.models.load_model(saved_model_dir).weights]


def _predict(saved_model_dir, examples):
  serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
  return serve(examples=tf.constant(examples))["probabilities"].numpy()


@pytest.mark.e2e
def test_two_workers_agree_with_each_other_and_with_one_worker(tmp_path):
  paths = clickstream.write_span(str(tmp_path / "data"), num_examples=600, seed=5)
  two = _fn_args(tmp_path, "two", paths, num_workers=2)
  model_lib.run_fn(two)
  chief_dir = two.serving_model_dir
  other_dir = os.path.join(multi_worker.worker_dir(two.model_run_dir, 1), "model")
  # Both workers end with identical weights.
  for chief, other in zip(_weights(chief_dir), _weights(other_dir), strict=True):
    np.testing.assert_array_equal(chief, other)
  assert os.path.exists(os.path.join(two.model_run_dir, "history.json"))

  one = _fn_args(tmp_path, "one", paths)
  model_lib.run_fn(one)
  examples = model_checks.serialized_examples(64)
  np.testing.assert_allclose(
    _predict(chief_dir, examples), _predict(one.serving_model_dir, examples), atol=_TOLERANCE
  )
  # The models did learn something (not two equal untrained models).
  data_contract = contract.load()
  untrained = model_lib._build_model(model_lib.presets.get("tiny", dropout=0.0), data_contract)
  inputs = features.parse_and_encode(data_contract, tf.constant(examples), with_label=False)
  assert np.abs(untrained(inputs).numpy() - _predict(chief_dir, examples)).max() > 0.05


def test_a_failing_worker_is_a_clear_error(tmp_path):
  fn_args = _fn_args(tmp_path, "bad", [str(tmp_path / "missing-*")] * 4, num_workers=2)
  with pytest.raises(RuntimeError, match=r"Trainer worker \d of 2 failed") as error:
    model_lib.run_fn(fn_args)
  assert "No training data files match" in str(error.value)


def test_a_stuck_cluster_times_out(tmp_path):
  fn_args = _fn_args(tmp_path, "slow", ["unused"], num_workers=2, worker_timeout_seconds=0.5)
  with pytest.raises(TimeoutError, match="did not finish within 0 s; all were stopped"):
    model_lib.run_fn(fn_args)


def test_bad_settings_are_refused(tmp_path):
  with pytest.raises(ValueError, match="num_workers must be at least 1"):
    model_lib.run_fn(_fn_args(tmp_path, "zero", ["unused"], num_workers=0))
  with pytest.raises(ValueError, match="Unknown hyperparameters"):
    model_lib.presets.get("tiny", depth=3)
  no_schema = _fn_args(tmp_path, "no_schema", ["unused"])
  no_schema.schema_path = None
  with pytest.raises(ValueError, match="The Trainer was given no schema"):
    model_lib.run_fn(no_schema)


def test_the_worker_entry_point_runs_the_function_it_is_named(tmp_path, monkeypatch):
  # The worker process imports the training function by dotted path, so
  # multi_worker needs no import of the Trainer module.
  spec = tmp_path / "fn_args.json"
  spec.write_text('{"train_steps": 7}')
  calls = []
  monkeypatch.setattr(model_lib, "_train", calls.append, raising=True)
  assert multi_worker.main([f"--train_fn={model_lib._TRAIN_FN}", f"--fn_args={spec}"]) == 0
  assert [fn_args.train_steps for fn_args in calls] == [7]
