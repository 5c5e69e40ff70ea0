"""Tests of the idempotent, atomic Pusher executor on real SavedModels."""

import json
import os
import time

import pytest
from tfx.types import standard_artifacts

from next_category.components import serving_versions
from next_category.components.pusher import executor
from tests.testing import saved_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("models")
  return {
    name: saved_models.write(str(root / name / "Format-Serving"), value=v)
    for name, v in (("a", 1.0), ("b", 2.0))
  }


def _push(models, name, base, out, blessed=True):
  model = standard_artifacts.Model()
  model.uri = os.path.dirname(models[name])
  blessing = standard_artifacts.ModelBlessing()
  blessing.uri = str(out / "blessing")
  blessing.set_int_custom_property("blessed", int(blessed))
  pushed = standard_artifacts.PushedModel()
  pushed.uri = str(out / "pushed")
  executor.Executor().Do(
    {"model": [model], "model_blessing": [blessing]},
    {"pushed_model": [pushed]},
    {"push_destination": json.dumps({"filesystem": {"base_directory": str(base)}})},
  )
  return pushed


def _props(pushed):
  return {
    k: pushed.get_custom_property(k)
    for k in ("pushed", "pushed_version", "pushed_destination", executor.ALREADY_PUSHED_PROPERTY)
    if pushed.has_custom_property(k)
  }


def test_a_clean_rerun_pushes_nothing_new(tmp_path, models):
  base = tmp_path / "serving"
  first = _push(models, "a", base, tmp_path / "1")
  (version,) = os.listdir(base)
  assert _props(first) == {
    "pushed": 1,
    "pushed_version": version,
    "pushed_destination": str(base / version),
    "already_pushed": 0,
  }
  second = _push(models, "a", base, tmp_path / "2")
  assert os.listdir(base) == [version]
  assert _props(second) == {**_props(first), "already_pushed": 1}
  # The archive copy in the output is made either way, as TFX's Pusher does.
  assert serving_versions.is_complete_saved_model(second.uri)


def test_a_different_model_gets_a_higher_version(tmp_path, models):
  base = tmp_path / "serving"
  # A version from the future (clock skew) still ends below the new push.
  future = str(int(time.time()) + 500)
  saved_models.copy(models["a"], str(base / future))
  pushed = _push(models, "b", base, tmp_path / "1")
  assert pushed.get_string_custom_property("pushed_version") == str(int(future) + 1)
  assert sorted(os.listdir(base)) == [future, str(int(future) + 1)]
  assert serving_versions.fingerprint(str(base / str(int(future) + 1))) == (
    serving_versions.fingerprint(models["b"])
  )


def test_a_killed_push_then_rerun_leaves_one_complete_version(tmp_path, models):
  base = tmp_path / "serving"
  # What a push killed mid-copy leaves: a half-written staging directory an
  # hour old, and (from TFX's own Pusher) a numeric one without saved_model.pb.
  stale = base / f"{serving_versions.STAGING_PREFIX}{int(time.time()) - 7200}-dead"
  saved_models.copy(models["a"], str(stale), without=["saved_model.pb"])
  pushed = _push(models, "a", base, tmp_path / "1")
  version = pushed.get_string_custom_property("pushed_version")
  assert os.listdir(base) == [version]
  assert serving_versions.is_complete_saved_model(str(base / version))
  # Killed after the rename, before the run recorded it: the re-run finds it.
  again = _push(models, "a", base, tmp_path / "2")
  assert again.get_int_custom_property(executor.ALREADY_PUSHED_PROPERTY) == 1
  assert os.listdir(base) == [version]


def test_an_unblessed_model_is_not_pushed(tmp_path, models):
  pushed = _push(models, "a", tmp_path / "serving", tmp_path / "1", blessed=False)
  assert _props(pushed) == {"pushed": 0}
  assert not os.path.exists(tmp_path / "serving")


def test_a_model_equal_to_an_older_version_is_pushed_to_serve_again(tmp_path, models):
  base = tmp_path / "serving"
  saved_models.copy(models["a"], str(base / "100"))
  saved_models.copy(models["b"], str(base / "200"))
  pushed = _push(models, "a", base, tmp_path / "1")
  assert pushed.get_int_custom_property(executor.ALREADY_PUSHED_PROPERTY) == 0
  assert serving_versions.serving_version(str(base))[0] > 200
