"""Tests of the InfraValidator executor: real model server processes on loopback ports."""

import json
import os

import pytest
import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from next_category.components.infra_validator import executor
from next_category.components.pusher import executor as pusher_executor
from tests.components.infra_validator import conftest

pytestmark = pytest.mark.e2e


def _run(models, saved_model_dir, tmp_path, model_blessed=None, **options):
  blessing = standard_artifacts.InfraBlessing()
  blessing.uri = str(tmp_path / "blessing")
  input_dict = {
    executor.MODEL_KEY: [conftest.model_artifact(saved_model_dir, str(tmp_path / "model"))],
    executor.EXAMPLES_KEY: [models.examples_artifact],
  }
  if model_blessed is not None:
    model_blessing = standard_artifacts.ModelBlessing()
    model_blessing.set_int_custom_property("blessed", int(model_blessed))
    input_dict[executor.MODEL_BLESSING_KEY] = [model_blessing]
  executor.Executor().Do(input_dict, {executor.BLESSING_KEY: [blessing]}, options)
  with tf.io.gfile.GFile(os.path.join(blessing.uri, executor.MEASUREMENTS_FILE)) as f:
    return blessing, json.load(f)


def _push(tmp_path, model_dir, infra_blessing):
  """Pushes with the pipeline's Pusher, the Evaluator's blessing and this InfraBlessing."""
  model_blessing = standard_artifacts.ModelBlessing()
  model_blessing.set_int_custom_property("blessed", 1)
  pushed_model = standard_artifacts.PushedModel()
  pushed_model.uri = str(tmp_path / "pushed_model")
  destination = str(tmp_path / "serving")
  push_destination = tfx.proto.PushDestination(
    filesystem=tfx.proto.PushDestination.Filesystem(base_directory=destination)
  )
  pusher_executor.Executor().Do(
    {
      "model": [conftest.model_artifact(model_dir, str(tmp_path / "pusher_model"))],
      "model_blessing": [model_blessing],
      "infra_blessing": [infra_blessing],
    },
    {"pushed_model": [pushed_model]},
    {"push_destination": proto_utils.proto_to_json(push_destination)},
  )
  return pushed_model.get_int_custom_property("pushed"), destination


def test_good_model_is_blessed_after_predict_and_classify_match(models, tmp_path):
  blessing, measurements = _run(models, models.good, tmp_path)

  assert measurements["blessed"], measurements["reason"]
  assert blessing.get_int_custom_property("blessed") == 1
  assert os.path.exists(os.path.join(blessing.uri, "INFRA_BLESSED"))
  queried = measurements["queries"]
  assert queried["predict_signature"] == "serving_default"
  assert queried["classify_signature"] == "classification"
  assert queried["predict_requests"] == conftest.NUM_EXAMPLES
  assert queried["classify_requests"] == 2  # 40 examples in batches of 32.
  assert queried["examples_classified"] == conftest.NUM_EXAMPLES
  assert queried["mismatch_count"] == 0
  assert queried["max_abs_difference_seen"] <= 1e-5
  latency = measurements["latency_ms"]["predict"]
  assert 0 < latency["p50"] <= latency["p99"]
  assert blessing.get_float_custom_property("predict_p99_ms") == pytest.approx(latency["p99"])
  assert measurements["load_seconds"] > 0
  assert os.path.getsize(os.path.join(blessing.uri, "server.log")) > 0

  pushed, destination = _push(tmp_path, models.good, blessing)
  assert pushed == 1
  assert len(os.listdir(destination)) == 1


def test_corrupted_model_is_not_blessed_and_not_pushed(models, tmp_path):
  # The default load timeout (300 s): the server exits as soon as the version
  # fails its one load attempt, without waiting it out.
  blessing, measurements = _run(models, models.corrupted, tmp_path)

  assert not measurements["blessed"]
  assert blessing.get_int_custom_property("blessed") == 0
  assert os.path.exists(os.path.join(blessing.uri, "INFRA_NOT_BLESSED"))
  # The server's own error, without TensorFlow's start-up noise.
  assert (
    "Loading servable: {name: infra-validation-model version: 1} failed" in (measurements["reason"])
  )
  assert "external/local_xla" not in measurements["reason"]
  assert "1 servable(s) did not become available" in measurements["reason"]
  assert "queries" not in measurements

  pushed, destination = _push(tmp_path, models.good, blessing)
  assert pushed == 0
  assert not os.path.exists(destination) or not os.listdir(destination)


def test_model_with_random_answers_at_serving_is_not_blessed(models, tmp_path):
  _, measurements = _run(models, models.noisy, tmp_path, num_examples=5)

  assert not measurements["blessed"]
  # Every Predict answer and the Classify scores differ; the class labels do not.
  queried = measurements["queries"]
  assert (queried["predict_requests"], queried["classify_requests"]) == (5, 1)
  assert queried["mismatch_count"] == 6
  assert "differs from the in-process model" in measurements["reason"]


def test_model_the_evaluator_did_not_bless_is_not_served(models, tmp_path):
  blessing, measurements = _run(models, models.good, tmp_path, model_blessed=False)

  assert not measurements["blessed"] and measurements["skipped"]
  assert blessing.get_int_custom_property("blessed") == 0
  assert not os.path.exists(os.path.join(blessing.uri, "server.log"))
