"""Tests of the InfraValidator component's construction."""

import pytest
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from next_category.components.infra_validator import component
from next_category.components.infra_validator import executor


def _channels():
  return {
    "model": tfx.dsl.Channel(type=standard_artifacts.Model),
    "examples": tfx.dsl.Channel(type=standard_artifacts.Examples),
  }


def test_builds_with_defaults_and_an_infra_blessing_output():
  validator = component.InfraValidator(
    **_channels(), model_blessing=tfx.dsl.Channel(type=standard_artifacts.ModelBlessing)
  )
  params = validator.exec_properties
  assert params[executor.NUM_EXAMPLES_KEY] == 100
  assert params[executor.SPLIT_KEY] == "eval"
  assert params[executor.LOAD_TIMEOUT_SECONDS_KEY] == 300.0
  assert params[executor.MAX_ABS_DIFFERENCE_KEY] == 1e-5
  assert set(validator.inputs) == {"model", "examples", "model_blessing"}
  assert validator.outputs["blessing"].type is standard_artifacts.InfraBlessing
  # TFX's Pusher takes it as infra_blessing.
  tfx.components.Pusher(
    model=validator.inputs["model"],
    infra_blessing=validator.outputs["blessing"],
    push_destination=tfx.proto.PushDestination(
      filesystem=tfx.proto.PushDestination.Filesystem(base_directory="/serving")
    ),
  )


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"num_examples": 0}, "num_examples must be a positive integer"),
    ({"num_examples": 2.5}, "num_examples must be a positive integer"),
    ({"split": " "}, "split must name a split"),
    ({"load_timeout_seconds": 0}, "load_timeout_seconds must be a positive finite number"),
    ({"load_timeout_seconds": float("inf")}, "load_timeout_seconds must be a positive"),
    ({"max_abs_difference": -1e-6}, "max_abs_difference must be a non-negative finite number"),
    ({"max_abs_difference": "0.1"}, "max_abs_difference must be a non-negative"),
  ],
)
def test_rejects_settings_that_cannot_work(kwargs, message):
  with pytest.raises(ValueError, match=message):
    component.InfraValidator(**_channels(), **kwargs)
