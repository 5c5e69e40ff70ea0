"""Tests of the ServingBaseline component's construction."""

import pytest

from next_category.components.serving_baseline import component


def test_builds_with_a_model_output_and_the_push_destination():
  baseline = component.ServingBaseline(serving_model_dir="gs://bucket/serving/m")
  assert baseline.id == "ServingBaseline"
  assert baseline.exec_properties == {"serving_model_dir": "gs://bucket/serving/m"}
  assert baseline.outputs["baseline_model"].type_name == "Model"
  assert baseline.inputs == {}
  assert component.ServingBaseline.READS_OUTSIDE_STATE


@pytest.mark.parametrize(
  "value, message",
  [
    ("", "serving_model_dir must be the Pusher's push destination, a path or URI; got ''."),
    (None, "serving_model_dir must be the Pusher's push destination, a path or URI; got None."),
    ("serving/m", "serving_model_dir 'serving/m' is a relative path; pass an absolute path"),
  ],
)
def test_bad_serving_model_dir_is_refused(value, message):
  with pytest.raises(ValueError) as error:
    component.ServingBaseline(serving_model_dir=value)
  assert str(error.value).startswith(message)
