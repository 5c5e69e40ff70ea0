"""Tests of version directories: which version serves, fingerprints, staging and publishing."""

import os
import time

import pytest

from next_category.components import serving_versions
from tests.testing import saved_models


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return saved_models.write(str(tmp_path_factory.mktemp("model") / "m"))


def test_no_base_path_or_no_versions_serves_nothing(tmp_path):
  assert serving_versions.serving_version(str(tmp_path / "missing")) is None
  assert serving_versions.serving_version(str(tmp_path)) is None
  assert serving_versions.version_dirs(str(tmp_path / "missing")) == {}


def test_version_names_are_plain_numbers():
  assert [serving_versions.parse_version(n) for n in ("7", "0012", "12/")] == [7, 12, 12]
  for name in ("v1", "-1", "+3", "1.5", "", ".staging-17-ab", "１２", str(2**63)):
    assert serving_versions.parse_version(name) is None, name


def test_highest_complete_numeric_version_serves(tmp_path, model):
  base = tmp_path / "serving"
  saved_models.copy(model, str(base / "9"))
  saved_models.copy(model, str(base / "10"))
  # Higher, but not versions: a non-numeric name and a staging directory.
  saved_models.copy(model, str(base / "v99"))
  saved_models.copy(model, str(base / ".staging-1-ab"))
  # Numeric order, not string order: 10 > 9.
  assert serving_versions.serving_version(str(base)) == (10, str(base / "10"))
  assert set(serving_versions.version_dirs(str(base))) == {9, 10}


@pytest.mark.parametrize(
  "cut",
  [
    ["saved_model.pb"],  # TFX's Pusher copies it last: a copy in progress.
    ["variables/variables.index"],
    ["variables/variables.data-00000-of-00001"],
  ],
)
def test_incomplete_versions_are_skipped(tmp_path, model, cut):
  base = tmp_path / "serving"
  saved_models.copy(model, str(base / "5"))
  saved_models.copy(model, str(base / "6"), without=cut)
  assert not serving_versions.is_complete_saved_model(str(base / "6"))
  assert serving_versions.serving_version(str(base)) == (5, str(base / "5"))


def test_a_missing_shard_of_several_makes_a_model_incomplete(tmp_path, model):
  path = saved_models.copy(model, str(tmp_path / "m"))
  variables = os.path.join(path, "variables")
  os.rename(
    os.path.join(variables, "variables.data-00000-of-00001"),
    os.path.join(variables, "variables.data-00000-of-00002"),
  )
  assert not serving_versions.is_complete_saved_model(path)
  with open(os.path.join(variables, "variables.data-00001-of-00002"), "wb"):
    pass
  assert serving_versions.is_complete_saved_model(path)


def test_an_empty_version_being_created_is_skipped(tmp_path, model):
  base = tmp_path / "serving"
  saved_models.copy(model, str(base / "1"))
  (base / "2" / "variables").mkdir(parents=True)
  assert serving_versions.serving_version(str(base)) == (1, str(base / "1"))


def test_fingerprint_identifies_copies_not_different_models(tmp_path, model):
  copy = saved_models.copy(model, str(tmp_path / "copy"))
  other = saved_models.write(str(tmp_path / "other"), value=2.0)
  assert serving_versions.fingerprint(copy) == serving_versions.fingerprint(model)
  assert serving_versions.fingerprint(other) != serving_versions.fingerprint(model)
  no_fingerprint = saved_models.copy(model, str(tmp_path / "old"), without=["fingerprint.pb"])
  assert serving_versions.fingerprint(no_fingerprint) is None


def test_next_version_is_the_time_or_above_every_numeric_directory(tmp_path):
  before = int(time.time())
  assert before <= serving_versions.next_version(str(tmp_path)) <= int(time.time())
  future = before + 1000
  (tmp_path / str(future)).mkdir()  # Even an incomplete one.
  assert serving_versions.next_version(str(tmp_path)) == future + 1


def test_publish_renames_a_complete_staging_directory_into_place(tmp_path):
  base = str(tmp_path / "base")

  def write(staging):
    assert os.path.basename(staging).startswith(serving_versions.STAGING_PREFIX)
    with open(os.path.join(staging, "a.txt"), "w") as f:
      f.write("a")

  assert serving_versions.publish(base, "3", write) == os.path.join(base, "3")
  assert os.listdir(base) == ["3"]
  assert os.listdir(os.path.join(base, "3")) == ["a.txt"]
  with pytest.raises(FileExistsError, match="already exists; a version is never overwritten"):
    serving_versions.publish(base, "3", write)


def test_a_failed_write_leaves_no_version_and_no_staging(tmp_path):
  def write(staging):
    with open(os.path.join(staging, "half"), "w") as f:
      f.write("x")
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    serving_versions.publish(str(tmp_path), "4", write)
  assert os.listdir(tmp_path) == []


def test_only_stale_staging_directories_are_removed(tmp_path):
  now = time.time()
  old = tmp_path / f"{serving_versions.STAGING_PREFIX}{int(now) - 7200}-0a1b"
  young = tmp_path / f"{serving_versions.STAGING_PREFIX}{int(now) - 60}-0a1c"
  for path in (old, young, tmp_path / "5", tmp_path / ".other"):
    path.mkdir()
  (old / "saved_model.pb").write_text("half")
  assert serving_versions.remove_stale_staging(str(tmp_path), now=now) == [str(old)]
  assert sorted(os.listdir(tmp_path)) == sorted([young.name, "5", ".other"])
  assert serving_versions.remove_stale_staging(str(tmp_path / "missing")) == []
