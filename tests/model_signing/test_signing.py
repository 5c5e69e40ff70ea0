"""Tests for model_signing: sign, verify, and every way a version can be refused."""

import os
import stat
import subprocess
import sys

import pytest

from model_signing import MANIFEST_PATH
from model_signing import SIGNATURE_PATH
from model_signing import VerificationError
from model_signing import generate_key_pair
from model_signing import sign_directory
from model_signing import verify_directory


@pytest.fixture
def keys(tmp_path):
  return generate_key_pair(str(tmp_path / "keys"))


@pytest.fixture
def version_dir(tmp_path):
  version = tmp_path / "model" / "1"
  (version / "variables").mkdir(parents=True)
  (version / "saved_model.pb").write_bytes(b"graph")
  (version / "variables" / "variables.data-00000-of-00001").write_bytes(bytes(range(256)))
  (version / "variables" / "variables.index").write_bytes(b"index")
  return str(version)


def test_keygen_private_key_is_owner_only_and_never_overwritten(tmp_path):
  private_path, public_path = generate_key_pair(str(tmp_path / "k"))
  assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600
  assert open(public_path).read().startswith("-----BEGIN PUBLIC KEY-----")
  with pytest.raises(ValueError, match="already exists"):
    generate_key_pair(str(tmp_path / "k"))


def test_signed_version_verifies_with_relative_paths(version_dir, keys):
  sign_directory(version_dir, keys[0])
  files = verify_directory(version_dir, keys[1])
  assert sorted(files) == [
    "saved_model.pb",
    "variables/variables.data-00000-of-00001",
    "variables/variables.index",
  ]
  assert os.path.exists(os.path.join(version_dir, SIGNATURE_PATH))


def test_flipped_byte_is_refused(version_dir, keys):
  sign_directory(version_dir, keys[0])
  path = os.path.join(version_dir, "variables", "variables.data-00000-of-00001")
  data = bytearray(open(path, "rb").read())
  data[100] ^= 1
  open(path, "wb").write(bytes(data))
  with pytest.raises(VerificationError, match="changed: variables/variables.data-00000-of-00001"):
    verify_directory(version_dir, keys[1])


def test_added_and_removed_files_are_refused(version_dir, keys):
  sign_directory(version_dir, keys[0])
  open(os.path.join(version_dir, "assets.txt"), "w").write("x")
  with pytest.raises(VerificationError, match="not in the manifest: assets.txt"):
    verify_directory(version_dir, keys[1])
  os.remove(os.path.join(version_dir, "assets.txt"))
  os.remove(os.path.join(version_dir, "variables", "variables.index"))
  with pytest.raises(VerificationError, match="missing: variables/variables.index"):
    verify_directory(version_dir, keys[1])


def test_unsigned_and_removed_manifest_are_refused(version_dir, keys):
  with pytest.raises(VerificationError, match="unsigned"):
    verify_directory(version_dir, keys[1])
  sign_directory(version_dir, keys[0])
  os.remove(os.path.join(version_dir, MANIFEST_PATH))
  with pytest.raises(VerificationError, match="unsigned"):
    verify_directory(version_dir, keys[1])


def test_other_key_and_rewritten_manifest_are_refused(version_dir, keys, tmp_path):
  other_private, _ = generate_key_pair(str(tmp_path / "other"))
  sign_directory(version_dir, other_private)
  with pytest.raises(VerificationError, match="another key"):
    verify_directory(version_dir, keys[1])
  sign_directory(version_dir, keys[0])
  manifest_path = os.path.join(version_dir, MANIFEST_PATH)
  open(manifest_path, "a").write(" ")
  with pytest.raises(VerificationError, match="another key or its manifest was altered"):
    verify_directory(version_dir, keys[1])


def test_resigning_after_a_change_verifies_again(version_dir, keys):
  sign_directory(version_dir, keys[0])
  open(os.path.join(version_dir, "saved_model.pb"), "wb").write(b"new graph")
  with pytest.raises(VerificationError):
    verify_directory(version_dir, keys[1])
  sign_directory(version_dir, keys[0])
  verify_directory(version_dir, keys[1])


def test_bad_key_files_raise_value_error(version_dir, keys, tmp_path):
  with pytest.raises(ValueError, match="Cannot read the public key file"):
    verify_directory(version_dir, str(tmp_path / "nope.pem"))
  with pytest.raises(ValueError, match="not a PEM private key"):
    sign_directory(version_dir, keys[1])
  with pytest.raises(ValueError, match="does not exist"):
    sign_directory(str(tmp_path / "missing"), keys[0])


def test_command_lines(version_dir, tmp_path):
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  key_dir = str(tmp_path / "cli_keys")

  def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env)

  assert run("model_signing.keygen", f"--key_dir={key_dir}").returncode == 0
  private_key = os.path.join(key_dir, "model_signing_key.pem")
  public_key = os.path.join(key_dir, "model_signing_key.pub.pem")
  assert (
    run(
      "model_signing", "sign", f"--version_dir={version_dir}", f"--private_key_file={private_key}"
    ).returncode
    == 0
  )
  ok = run(
    "model_signing", "verify", f"--version_dir={version_dir}", f"--public_key_file={public_key}"
  )
  assert ok.returncode == 0 and "3 files" in ok.stdout
  os.remove(os.path.join(version_dir, "saved_model.pb"))
  refused = run(
    "model_signing", "verify", f"--version_dir={version_dir}", f"--public_key_file={public_key}"
  )
  assert refused.returncode == 1 and "missing: saved_model.pb" in refused.stderr
  assert "Traceback" not in refused.stderr
