"""Tests of the TFLiteConverter component's construction."""

import pytest
from tfx import v1 as tfx
from tfx.types import standard_artifacts

from next_category.components.tflite_converter import component
from next_category.components.tflite_converter import executor


def _channels():
  return {
    "model": tfx.dsl.Channel(type=standard_artifacts.Model),
    "examples": tfx.dsl.Channel(type=standard_artifacts.Examples),
  }


def test_builds_with_defaults_and_optional_pushed_model():
  converter = component.TFLiteConverter(
    **_channels(),
    pushed_model=tfx.dsl.Channel(type=standard_artifacts.PushedModel),
    push_base_directory="/serving/tflite/next_category",
  )
  params = converter.exec_properties
  assert params[executor.MAX_ACCURACY_DROP_KEY] == 1.0
  assert params[executor.NUM_REPRESENTATIVE_EXAMPLES_KEY] == 500
  assert params[executor.PUSH_BASE_DIRECTORY_KEY] == "/serving/tflite/next_category"
  assert set(converter.inputs) == {"model", "examples", "pushed_model"}
  assert converter.outputs["tflite_model"].type is component.TFLiteModel
  assert (
    component.TFLiteConverter(**_channels()).exec_properties.get(executor.PUSH_BASE_DIRECTORY_KEY)
    is None
  )


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"max_accuracy_drop": float("nan")}, "max_accuracy_drop must be a finite number"),
    ({"max_accuracy_drop": "1"}, "max_accuracy_drop must be a finite number"),
    ({"num_representative_examples": 0}, "num_representative_examples must be a positive"),
    ({"max_eval_examples": 2.5}, "max_eval_examples must be a positive integer"),
    ({"num_latency_examples": True}, "num_latency_examples must be a positive integer"),
    ({"push_base_directory": " "}, "push_base_directory is empty"),
    ({"model_signing_key": ""}, "model_signing_key is empty"),
  ],
)
def test_rejects_settings_that_cannot_work(kwargs, message):
  with pytest.raises(ValueError, match=message):
    component.TFLiteConverter(**_channels(), **kwargs)
