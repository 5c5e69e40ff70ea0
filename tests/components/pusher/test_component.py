"""Tests of the Pusher component's construction."""

import json

import pytest
from tfx import v1 as tfx

from next_category.components.pusher import component
from next_category.components.pusher import executor


def _model_channels():
  return (
    tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
    tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
  )


def test_runs_the_idempotent_executor_under_tfxs_id():
  pusher = component.Pusher(
    *_model_channels(),
    push_destination=tfx.proto.PushDestination(
      filesystem=tfx.proto.PushDestination.Filesystem(base_directory="/s")
    ),
  )
  assert pusher.id == "Pusher"
  assert pusher.executor_spec.executor_class is executor.Executor


def test_a_destination_without_a_base_directory_is_refused():
  with pytest.raises(ValueError, match="must be a tfx.proto.PushDestination with a filesystem"):
    component.Pusher(*_model_channels(), push_destination=tfx.proto.PushDestination())


def test_infra_blessing_and_signing_key_reach_the_executor():
  destination = tfx.proto.PushDestination(
    filesystem=tfx.proto.PushDestination.Filesystem(base_directory="/s")
  )
  pusher = component.Pusher(
    *_model_channels(),
    push_destination=destination,
    infra_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.InfraBlessing),
    model_signing_key="/keys/model_signing_key.pem",
  )
  assert "infra_blessing" in pusher.inputs
  # TFX's Pusher passes custom_config as JSON.
  assert json.loads(pusher.exec_properties["custom_config"]) == {
    "model_signing_key": "/keys/model_signing_key.pem"
  }
  with pytest.raises(ValueError, match="model_signing_key is empty"):
    component.Pusher(*_model_channels(), push_destination=destination, model_signing_key=" ")
