"""Tests of the ServingBaseline executor on real SavedModels in a temporary push destination."""

import os

import pytest
from tfx.types import standard_artifacts

from next_category.components import serving_versions
from next_category.components.serving_baseline import executor
from tests.testing import saved_models


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return saved_models.write(str(tmp_path_factory.mktemp("model") / "m"))


def _run(base_path, output_dir, **exec_properties):
  baseline = standard_artifacts.Model()
  baseline.uri = str(output_dir)
  executor.Executor().Do(
    {},
    {executor.BASELINE_MODEL_KEY: [baseline]},
    {executor.SERVING_MODEL_DIR_KEY: str(base_path), **exec_properties},
  )
  return baseline


def test_nothing_serving_gives_an_empty_baseline(tmp_path):
  for base in (tmp_path / "missing", tmp_path / "empty"):
    if base.name == "empty":
      base.mkdir()
    baseline = _run(base, tmp_path / f"out-{base.name}")
    assert baseline.get_int_custom_property(executor.HAS_MODEL_PROPERTY) == 0
    assert not baseline.has_custom_property(executor.SERVING_VERSION_PROPERTY)
    assert not executor.holds_model(baseline)


def test_only_non_numeric_or_incomplete_versions_give_an_empty_baseline(tmp_path, model):
  base = tmp_path / "serving"
  saved_models.copy(model, str(base / "latest"))
  saved_models.copy(model, str(base / f"{serving_versions.STAGING_PREFIX}1-ab"))
  saved_models.copy(model, str(base / "3"), without=["variables/variables.index"])
  baseline = _run(base, tmp_path / "out")
  assert baseline.get_int_custom_property(executor.HAS_MODEL_PROPERTY) == 0
  assert not executor.holds_model(baseline)


def test_highest_complete_version_is_copied_with_its_version_and_source(tmp_path, model):
  base = tmp_path / "serving"
  other = saved_models.write(str(tmp_path / "other"), value=3.0)
  saved_models.copy(model, str(base / "9"))
  saved_models.copy(other, str(base / "10"))
  # Being written: no variables shard yet.
  saved_models.copy(model, str(base / "11"), without=["variables/variables.data-00000-of-00001"])
  baseline = _run(base, tmp_path / "out")
  assert baseline.get_int_custom_property(executor.HAS_MODEL_PROPERTY) == 1
  assert baseline.get_int_custom_property(executor.SERVING_VERSION_PROPERTY) == 10
  assert baseline.get_string_custom_property(executor.SOURCE_PATH_PROPERTY) == str(base / "10")
  assert executor.holds_model(baseline)
  copied = os.path.join(str(tmp_path / "out"), "Format-Serving")
  assert serving_versions.fingerprint(copied) == serving_versions.fingerprint(other)


def test_a_version_pushed_after_the_driver_looked_is_refused(tmp_path, model):
  base = tmp_path / "serving"
  saved_models.copy(model, str(base / "9"))
  seen = serving_versions.serving_fingerprint(str(base))
  baseline = _run(base, tmp_path / "same", **{executor.SERVING_FINGERPRINT_KEY: seen})
  assert baseline.get_int_custom_property(executor.SERVING_VERSION_PROPERTY) == 9
  saved_models.copy(model, str(base / "10"))
  with pytest.raises(RuntimeError) as error:
    _run(base, tmp_path / "changed", **{executor.SERVING_FINGERPRINT_KEY: seen})
  assert f"changed after this step's driver looked (it saw {seen}; version 10 serves now)" in (
    str(error.value)
  )
