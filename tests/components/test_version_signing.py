"""Signed pushes: OpenSSF model signing's own CLI verifies them, and refuses them once tampered."""

import base64
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import tensorflow as tf
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa
from tfx.types import standard_artifacts

from next_category.components import version_signing
from next_category.components.pusher import executor as pusher_executor
from next_category.components.tflite_converter import executor as tflite_executor
from tests.testing import saved_models

# The console script the model-signing wheel installs beside this Python.
OPENSSF_CLI = os.path.join(os.path.dirname(sys.executable), "model_signing")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
  private, public = version_signing.generate_key_pair(str(tmp_path_factory.mktemp("keys")))
  _, other_public = version_signing.generate_key_pair(str(tmp_path_factory.mktemp("other")))
  return {"private": private, "public": public, "other_public": other_public}


def openssf_verify(version_dir, public_key):
  """`model_signing verify key`, exactly as docs/serving-production.md tells users to run it."""
  result = subprocess.run(
    [
      OPENSSF_CLI,
      "verify",
      "key",
      str(version_dir),
      "--signature",
      os.path.join(version_dir, "model.sig"),
      "--public_key",
      str(public_key),
      "--no-ignore-git-paths",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  return result.returncode, (result.stdout + result.stderr).strip()


def signed_statement(version_dir):
  with open(os.path.join(version_dir, "model.sig")) as f:
    bundle = json.load(f)
  return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


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


def test_pushed_version_verifies_with_the_openssf_cli_and_tampering_is_refused(tmp_path, keys):
  version_dir = _push(tmp_path, tmp_path / "serving" / "next_category", keys["private"])
  version = int(os.path.basename(version_dir))

  assert openssf_verify(version_dir, keys["public"]) == (0, "Verification succeeded")
  with open(os.path.join(version_dir, version_signing.IDENTITY_FILE)) as f:
    assert json.load(f) == {"model_name": "next_category", "version": version}
  statement = signed_statement(version_dir)
  assert statement["predicate"]["serialization"]["ignore_paths"] == ["model.sig"]
  assert sorted(r["name"] for r in statement["predicate"]["resources"]) == [
    "assets.extra/model_identity.json",
    "fingerprint.pb",
    "saved_model.pb",
    "variables/variables.data-00000-of-00001",
    "variables/variables.index",
  ]
  code, output = openssf_verify(version_dir, keys["other_public"])
  assert code == 1 and "Key mismatch" in output

  data = os.path.join(version_dir, "variables", "variables.data-00000-of-00001")
  with open(data, "r+b") as f:
    byte = f.read(1)
    f.seek(0)
    f.write(bytes([byte[0] ^ 0xFF]))
  code, output = openssf_verify(version_dir, keys["public"])
  assert code == 1
  assert "Verification failed" in output
  # The CLI prints the list of differences through repr(): quotes come escaped.
  assert "Hash mismatch for \\'variables/variables.data-00000-of-00001" in output


def test_without_a_key_versions_are_unsigned(tmp_path):
  version_dir = _push(tmp_path, tmp_path / "serving" / "next_category", None)
  assert not os.path.exists(os.path.join(version_dir, "model.sig"))
  assert not os.path.exists(os.path.join(version_dir, version_signing.IDENTITY_FILE))


def test_a_public_key_fails_the_push_and_publishes_nothing(tmp_path, keys):
  base = tmp_path / "serving" / "next_category"
  with pytest.raises(ValueError, match="is not a PEM private key"):
    _push(tmp_path, base, keys["public"])
  # The key is checked before anything is written: nothing became visible.
  assert not base.exists() or os.listdir(base) == []


def _write_pem(path, key):
  path.write_bytes(
    key.private_bytes(
      serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
  )
  return str(path)


@pytest.mark.parametrize(
  "make_key, kind",
  [
    (ed25519.Ed25519PrivateKey.generate, "an Ed25519 key"),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "an RSA key"),
  ],
)
def test_an_ed25519_or_rsa_key_is_refused_naming_the_problem(tmp_path, make_key, kind):
  key = _write_pem(tmp_path / "key.pem", make_key())
  with pytest.raises(ValueError) as error:
    version_signing.load_private_key(key)
  assert str(error.value) == (
    f"The model signing key {key} is {kind}; OpenSSF model signing signs with ECDSA keys on "
    "P-256, P-384 or P-521 only. Run `make keygen` for a P-256 pair."
  )
  base = tmp_path / "serving" / "next_category"
  with pytest.raises(ValueError, match=kind):
    _push(tmp_path, base, key)
  assert not base.exists() or os.listdir(base) == []


def test_shipped_tflite_version_verifies_and_an_added_file_is_refused(tmp_path, keys):
  source = tmp_path / "source"
  source.mkdir()
  for name in tflite_executor._SHIPPED_FILES:
    (source / name).write_bytes(b"contents of " + name.encode())
  base = tmp_path / "tflite" / "next_category"
  version_dir = tflite_executor.push(str(source), str(base), "7", keys["private"])

  assert openssf_verify(version_dir, keys["public"]) == (0, "Verification succeeded")
  with open(os.path.join(version_dir, version_signing.IDENTITY_FILE)) as f:
    assert json.load(f) == {"model_name": "next_category", "version": 7}
  assert sorted(r["name"] for r in signed_statement(version_dir)["predicate"]["resources"]) == (
    sorted([*tflite_executor._SHIPPED_FILES, version_signing.IDENTITY_FILE])
  )
  with open(os.path.join(version_dir, "extra.tflite"), "wb") as f:
    f.write(b"added after signing")
  code, output = openssf_verify(version_dir, keys["public"])
  assert code == 1 and "Extra files found in model '7': extra.tflite" in output


def test_a_remote_push_is_signed_in_a_local_directory_then_uploaded(tmp_path, keys):
  # TensorFlow's in-memory file system stands in for gs:// and s3://: the
  # OpenSSF library cannot read it, so signing must happen before the upload.
  staging = f"ram://{tmp_path.name}/next_category/.staging-1-ab"
  tf.io.gfile.makedirs(staging)
  model = saved_models.write(str(tmp_path / "model"))

  def write(directory):
    for root, _, files in os.walk(model):
      target = os.path.join(directory, os.path.relpath(root, model))
      tf.io.gfile.makedirs(target)
      for name in files:
        tf.io.gfile.copy(os.path.join(root, name), os.path.join(target, name))

  version_signing.signing_writer(write, keys["private"], "next_category", "12")(staging)

  downloaded = tmp_path / "downloaded" / "12"
  for root, _, files in tf.io.gfile.walk(staging):
    target = downloaded / root[len(staging) :].strip("/")
    target.mkdir(parents=True, exist_ok=True)
    for name in files:
      source = f"{root.rstrip('/')}/{name}"
      # The in-memory file system lists by name prefix: `assets/` also shows
      # `.extra` (from `assets.extra/...`), which is no file.
      if tf.io.gfile.exists(source):
        tf.io.gfile.copy(source, str(target / name))
  assert (downloaded / "model.sig").is_file()
  assert openssf_verify(downloaded, keys["public"]) == (0, "Verification succeeded")
  identity = json.loads((downloaded / version_signing.IDENTITY_FILE).read_text())
  assert identity == {"model_name": "next_category", "version": 12}


def test_keygen_and_sign_from_the_command_line(tmp_path, keys):
  key_dir = tmp_path / "keys"
  assert version_signing.main(["keygen", f"--key_dir={key_dir}"]) == 0
  private = key_dir / version_signing.PRIVATE_KEY_NAME
  public = key_dir / version_signing.PUBLIC_KEY_NAME
  assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
  key = version_signing.load_private_key(str(private))
  assert key.curve.name == "secp256r1"
  # An existing pair is never overwritten.
  assert version_signing.main(["keygen", f"--key_dir={key_dir}"]) == 2

  version_dir = tmp_path / "models" / "next_category" / "3"
  shutil.copytree(saved_models.write(str(tmp_path / "model")), version_dir)
  command = ["sign", f"--version_dir={version_dir}", f"--private_key_file={private}"]
  assert version_signing.main(command) == 0
  assert openssf_verify(version_dir, public) == (0, "Verification succeeded")
  identity = json.loads((version_dir / version_signing.IDENTITY_FILE).read_text())
  assert identity == {"model_name": "next_category", "version": 3}
  assert version_signing.main(["sign", f"--version_dir={version_dir}", "--private_key_file=x"])
