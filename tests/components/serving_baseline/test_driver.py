"""Tests of the ServingBaseline driver on real SavedModels in a temporary push destination."""

import os

import pytest
from tfx.orchestration.portable import data_types

from next_category.components import serving_versions
from next_category.components.serving_baseline import driver
from next_category.components.serving_baseline import executor
from tests.testing import saved_models


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return saved_models.write(str(tmp_path_factory.mktemp("model") / "m"))


def _driver_fingerprint(base_path):
  info = data_types.ExecutionInfo(exec_properties={executor.SERVING_MODEL_DIR_KEY: str(base_path)})
  output = driver.Driver(None).run(info)
  assert list(output.exec_properties) == [executor.SERVING_FINGERPRINT_KEY]
  assert not output.output_artifacts
  return output.exec_properties[executor.SERVING_FINGERPRINT_KEY].string_value


def test_nothing_serving_has_its_own_fingerprint(tmp_path, model):
  assert _driver_fingerprint(tmp_path / "missing") == serving_versions.NOTHING_SERVING
  # An incomplete version is not serving.
  saved_models.copy(model, str(tmp_path / "s" / "3"), without=["variables/variables.index"])
  assert _driver_fingerprint(tmp_path / "s") == serving_versions.NOTHING_SERVING


def test_the_fingerprint_changes_with_the_serving_version_and_only_then(tmp_path, model):
  base = tmp_path / "serving"
  saved_models.copy(model, str(base / "7"))
  first = _driver_fingerprint(base)
  assert first.startswith(f"version:7,path:{base / '7'},model:")
  assert _driver_fingerprint(base) == first
  # An incomplete higher version (being pushed) serves nothing yet.
  saved_models.copy(model, str(base / "8"), without=["variables/variables.index"])
  assert _driver_fingerprint(base) == first
  saved_models.copy(model, str(base / "9"))
  model_part = first.split(",model:")[1]
  assert _driver_fingerprint(base) == f"version:9,path:{base / '9'},model:{model_part}"


def test_other_contents_under_the_same_version_change_the_fingerprint(tmp_path, model):
  other = saved_models.write(str(tmp_path / "other"), value=3.0)
  saved_models.copy(model, str(tmp_path / "a" / "5"))
  saved_models.copy(other, str(tmp_path / "b" / "5"))
  content = lambda base: _driver_fingerprint(base).split(",model:")[1]  # noqa: E731
  assert content(tmp_path / "a") != content(tmp_path / "b")


def test_a_saved_model_without_fingerprint_pb_is_fingerprinted_by_its_files(tmp_path, model):
  base = tmp_path / "serving"
  saved_models.copy(model, str(base / "4"), without=["fingerprint.pb"])
  fingerprint = serving_versions.serving_fingerprint(str(base))
  assert ",model:split:files,num_files:" in fingerprint and ";split:variables," in fingerprint
  with open(os.path.join(base, "4", "assets.extra"), "w") as f:
    f.write("x")
  assert serving_versions.serving_fingerprint(str(base)) != fingerprint
