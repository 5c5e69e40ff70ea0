"""Tests of signed pushes: the Pusher's versions verify with the public key, tampering does not."""

import json
import os

import pytest
from tfx.types import standard_artifacts

import model_signing
from components import version_signing
from components.pusher import executor as pusher_executor
from components.tflite_converter import executor as tflite_executor
from tests import saved_models


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
  private, public = model_signing.generate_key_pair(str(tmp_path_factory.mktemp("keys")))
  other_private, other_public = model_signing.generate_key_pair(
    str(tmp_path_factory.mktemp("other_keys"))
  )
  return {"private": private, "public": public, "other_public": other_public}


def _push(tmp_path, base, signing_key):
  model = standard_artifacts.Model()
  model.uri = str(tmp_path / "model")
  saved_models.write(os.path.join(model.uri, "Format-Serving"))
  blessing = standard_artifacts.ModelBlessing()
  blessing.set_int_custom_property("blessed", 1)
  pushed = standard_artifacts.PushedModel()
  pushed.uri = str(tmp_path / "pushed")
  pusher_executor.Executor().Do(
    {"model": [model], "model_blessing": [blessing]},
    {"pushed_model": [pushed]},
    {
      "push_destination": json.dumps({"filesystem": {"base_directory": str(base)}}),
      "custom_config": json.dumps({version_signing.MODEL_SIGNING_KEY: signing_key}),
    },
  )
  return pushed.get_string_custom_property("pushed_destination")


def test_pushed_version_verifies_and_tampering_is_detected(tmp_path, keys):
  version_dir = _push(tmp_path, tmp_path / "serving", keys["private"])

  manifest = model_signing.verify_directory(version_dir, keys["public"])
  assert "saved_model.pb" in manifest and "variables/variables.index" in manifest
  with pytest.raises(model_signing.VerificationError, match="signed by another key"):
    model_signing.verify_directory(version_dir, keys["other_public"])

  data = os.path.join(version_dir, "variables", "variables.data-00000-of-00001")
  with open(data, "r+b") as f:
    byte = f.read(1)
    f.seek(0)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(model_signing.VerificationError, match="changed: variables/variables.data"):
    model_signing.verify_directory(version_dir, keys["public"])


def test_without_a_key_versions_are_unsigned(tmp_path, keys):
  version_dir = _push(tmp_path, tmp_path / "serving", None)
  with pytest.raises(model_signing.VerificationError, match="unsigned"):
    model_signing.verify_directory(version_dir, keys["public"])


def test_an_unreadable_key_fails_the_push_and_publishes_nothing(tmp_path, keys):
  base = tmp_path / "serving"
  with pytest.raises(ValueError, match="not a PEM private key"):
    _push(tmp_path, base, keys["public"])
  # Signing happens in staging, before the rename: nothing became visible.
  assert os.listdir(base) == []


def test_shipped_tflite_version_verifies_and_tampering_is_detected(tmp_path, keys):
  source = tmp_path / "source"
  source.mkdir()
  for name in (
    tflite_executor.MODEL_FILE,
    tflite_executor.LABELS_FILE,
    tflite_executor.CONTRACT_FILE,
    tflite_executor.METRICS_FILE,
  ):
    (source / name).write_bytes(b"contents of " + name.encode())
  version_dir = tflite_executor.push(str(source), str(tmp_path / "tflite"), "7", keys["private"])

  manifest = model_signing.verify_directory(version_dir, keys["public"])
  assert sorted(manifest) == sorted(
    [
      tflite_executor.CONTRACT_FILE,
      tflite_executor.LABELS_FILE,
      tflite_executor.METRICS_FILE,
      tflite_executor.MODEL_FILE,
    ]
  )
  with open(os.path.join(version_dir, "extra.tflite"), "wb") as f:
    f.write(b"added after signing")
  with pytest.raises(model_signing.VerificationError, match="not in the manifest: extra.tflite"):
    model_signing.verify_directory(version_dir, keys["public"])
  os.remove(os.path.join(version_dir, "extra.tflite"))
  os.remove(os.path.join(version_dir, model_signing.MANIFEST_PATH))
  with pytest.raises(model_signing.VerificationError, match="unsigned"):
    model_signing.verify_directory(version_dir, keys["public"])
