"""--model_verification_key_file: only versions signed for their model and version, unaltered,
load, and what was verified is what loads.

Versions are signed as the Pusher signs them (next_category.components.version_signing, OpenSSF
model signing); each attack is refused with a status reason that names no path, while the
version before keeps serving.
"""

import logging
import os
import shutil
import stat
import tempfile

import grpc
import model_signing
import numpy as np
import portpicker
import pytest
import tensorflow as tf
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa
from tensorflow_serving.apis import model_pb2

from next_category.components import version_signing
from next_category.serving import client
from next_category.serving import model_server
from next_category.serving import status
from next_category.serving.config import flags
from next_category.serving.models import loader
from next_category.serving.models import model_manager
from tests.serving import conftest
from tests.serving.conftest import MODEL_NAME

DATA_FILE = "variables/variables.data-00000-of-00001"
INDEX_FILE = "variables/variables.index"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
  good = version_signing.generate_key_pair(str(tmp_path_factory.mktemp("keys")))
  other = version_signing.generate_key_pair(str(tmp_path_factory.mktemp("other_keys")))
  return good, other


def _push_signed(source, base_path, version, private_key, tamper=None, model_name=MODEL_NAME):
  """Signs `source` as `model_name` version `version` in staging, then renames it in place."""
  staging = os.path.join(base_path, f".staging-{version}")
  shutil.copytree(source, staging)
  version_signing.sign_version(staging, private_key, model_name, version)
  if tamper:
    tamper(staging)
  target = os.path.join(base_path, str(version))
  os.rename(staging, target)
  return target


def _flip_a_byte(path):
  with open(os.path.join(path, DATA_FILE), "r+b") as f:
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 0x01]))


def _add_a_file(path):
  with open(os.path.join(path, "assets.extra.txt"), "w") as f:
    f.write("injected")


def _add_a_file_under_the_old_signature_folder(path):
  # Today's signature is the one file model.sig; there is no folder whose files go unchecked.
  os.makedirs(os.path.join(path, "signature"))
  with open(os.path.join(path, "signature", "extra.bin"), "w") as f:
    f.write("injected")


def _remove_the_signature(path):
  os.remove(os.path.join(path, "model.sig"))


def _file_symlink_out_of_the_version(path):
  # The same bytes, outside the version: a digest check on the link's target passes.
  outside = f"{path}-outside.bin"
  shutil.move(os.path.join(path, DATA_FILE), outside)
  os.symlink(outside, os.path.join(path, DATA_FILE))


def _directory_symlink(path):
  outside = f"{path}-outside"
  os.makedirs(outside)
  with open(os.path.join(outside, "tf_serving_warmup_requests"), "wb") as f:
    f.write(b"never signed")
  os.symlink(outside, os.path.join(path, "assets.extra", "more"))


def _fifo(path):
  os.mkfifo(os.path.join(path, "assets.extra", "pipe"))


def _private_copies():
  return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("model-server-version-")}


def _status(hostport, version):
  for version_status in conftest.model_status(hostport).model_version_status:
    if version_status.version == version:
      return version_status
  return None


def _probabilities(hostport, examples, model_name=MODEL_NAME):
  predictions = client.predict(hostport, examples, model_name=model_name)
  return np.array([p.probabilities for p in predictions], np.float32)


def _assert_serves(hostport, examples, saved_model_dir):
  """The server answers as `saved_model_dir` does (run frozen: to the last float32 bit or so)."""
  np.testing.assert_allclose(
    _probabilities(hostport, examples),
    conftest.reference(saved_model_dir, examples=examples),
    rtol=1e-6,
    atol=1e-7,
  )


def _expect_refused(hostport, base_path, version, reason):
  conftest.wait_until(lambda: conftest.version_states(hostport).get(version) == "END")
  refused = _status(hostport, version)
  assert refused.status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
  message = refused.status.error_message
  assert message.startswith(
    f"Loading servable: {{name: {MODEL_NAME} version: {version}}} failed: "
    "Model signature verification failed: "
  ), message
  assert reason in message, message
  assert os.path.dirname(base_path) not in message  # No paths in a status.


@pytest.fixture
def signed_server(canned, keys, tmp_path):
  """A server with the key, serving version 1 signed; yields (server, hostport, base path)."""
  (good_private, good_public), _ = keys
  base_path = str(tmp_path / MODEL_NAME)
  os.makedirs(base_path)
  _push_signed(canned.version_1, base_path, 1, good_private)
  server = conftest.start_server(
    model_base_path=base_path,
    file_system_poll_wait_seconds=0.1,
    max_num_load_retries=0,
    model_verification_key_file=good_public,
    monitoring_config_file=conftest.MONITORING_CONFIG,
  )
  try:
    yield server, f"127.0.0.1:{server.grpc_port}", base_path
  finally:
    server.stop()


def test_tampered_unsigned_foreign_and_linked_versions_are_refused(
  canned, keys, signed_server, examples
):
  (good_private, _), (other_private, _) = keys
  server, hostport, base_path = signed_server
  serving_before = _probabilities(hostport, examples)
  copies_before = _private_copies()
  cases = [
    (_flip_a_byte, good_private, f"files changed since signing: {DATA_FILE}."),
    (_add_a_file, good_private, "files not in the signature: assets.extra.txt."),
    (
      _add_a_file_under_the_old_signature_folder,
      good_private,
      "files not in the signature: signature/extra.bin.",
    ),
    (_remove_the_signature, good_private, "The version is unsigned: it has no model.sig."),
    (None, other_private, "The version is signed with another key."),
    (
      _file_symlink_out_of_the_version,
      good_private,
      f"{DATA_FILE} is a symbolic link; a signed version holds only regular files.",
    ),
    (
      _directory_symlink,
      good_private,
      "assets.extra/more is a symbolic link; a signed version holds only regular files.",
    ),
    (_fifo, good_private, "assets.extra/pipe is not a regular file (a FIFO, socket or device)."),
  ]
  for version, (tamper, key, reason) in enumerate(cases, start=2):
    _push_signed(canned.version_2, base_path, version, key, tamper)
    _expect_refused(hostport, base_path, version, reason)
    # The signed version 1 keeps serving, unchanged.
    assert conftest.version_states(hostport)[1] == "AVAILABLE"
    np.testing.assert_array_equal(_probabilities(hostport, examples), serving_before)
  failures = (
    f':tensorflow:serving:model_verification_failure_count{{model_name="{MODEL_NAME}"}} '
    f"{len(cases)}"
  )
  assert failures in server.metrics.exposition().decode()
  # Refused versions leave no private copy behind.
  assert _private_copies() == copies_before


def _loaded_from(server, version):
  """The directory a loaded version was loaded from."""
  spec = model_pb2.ModelSpec(name=MODEL_NAME)
  spec.version.value = version
  return server.manager.servable(spec).path


def test_a_signed_version_replayed_under_another_number_or_model_is_refused(
  canned, keys, signed_server, tmp_path
):
  (good_private, _), _ = keys
  server, hostport, base_path = signed_server
  # Version 1, signed, copied as version 2: the signature still verifies, the identity does not.
  shutil.copytree(os.path.join(base_path, "1"), os.path.join(base_path, ".staging-2"))
  os.rename(os.path.join(base_path, ".staging-2"), os.path.join(base_path, "2"))
  _expect_refused(
    hostport,
    base_path,
    2,
    f"Signed for model '{MODEL_NAME}' version 1, found as model '{MODEL_NAME}' version 2: a "
    "signed version is served only under the name and number it was signed for.",
  )
  # A version signed for another model (say, pushed to its base path) copied in here.
  other = _push_signed(
    canned.version_2, str(tmp_path), 3, good_private, model_name="next_category_canary"
  )
  os.rename(other, os.path.join(base_path, "3"))
  _expect_refused(
    hostport,
    base_path,
    3,
    f"Signed for model 'next_category_canary' version 3, found as model '{MODEL_NAME}' version 3",
  )
  assert conftest.version_states(hostport)[1] == "AVAILABLE"


def test_a_file_swapped_after_verification_is_not_what_loads(
  canned, keys, signed_server, examples, monkeypatch, tmp_path
):
  (good_private, _), _ = keys
  server, hostport, base_path = signed_server
  source = os.path.join(base_path, "2")
  # A valid checkpoint nobody signed: version 1's weights, kept outside the version.
  evil = {name: str(tmp_path / name.replace("/", "_")) for name in (DATA_FILE, INDEX_FILE)}
  for name, path in evil.items():
    shutil.copy(os.path.join(canned.version_1, name), path)
  real_load_servable = loader.load_servable
  loaded_from = []

  def swap_then_load(name, version, path, **options):
    # The attacker's moment: the version was verified and is not loaded yet.
    if version == 2:
      for relative, swapped_in in evil.items():
        os.replace(swapped_in, os.path.join(source, relative))
      loaded_from.append(path)
    return real_load_servable(name, version, path, **options)

  monkeypatch.setattr(loader, "load_servable", swap_then_load)
  version_1_copy = _loaded_from(server, 1)
  _push_signed(canned.version_2, base_path, 2, good_private)
  conftest.wait_for_server_ready(hostport, version=2)

  # The source holds version 1's weights now; what serves is what was verified.
  _assert_serves(hostport, examples, canned.version_2)
  assert loaded_from and loaded_from[0] != source
  # The private copy: a directory only the server can write; later changes to the source
  # change nothing that serves.
  copy = _loaded_from(server, 2)
  assert copy != source and stat.S_IMODE(os.stat(copy).st_mode) == 0o700
  shutil.rmtree(os.path.join(source, "variables"))
  _assert_serves(hostport, examples, canned.version_2)
  # Version 1 unloads, and its copy goes with it.
  conftest.wait_until(lambda: conftest.version_states(hostport).get(1) == "END")
  assert not os.path.exists(version_1_copy)


def test_the_signature_must_leave_out_only_itself_and_name_its_version(canned, keys, signed_server):
  (good_private, _), _ = keys
  server, hostport, base_path = signed_server

  def sign_again(path, ignore_git_paths=False, without_identity=False):
    # Signed with OpenSSF's library directly, not as the Pusher signs.
    if without_identity:
      os.remove(os.path.join(path, version_signing.IDENTITY_FILE))
    hashing = model_signing.hashing.Config().set_ignored_paths(
      paths=["model.sig"], ignore_git_paths=ignore_git_paths
    )
    model_signing.signing.Config().use_elliptic_key_signer(
      private_key=good_private
    ).set_hashing_config(hashing).sign(path, os.path.join(path, "model.sig"))

  # As the OpenSSF CLI signs by default: .git, .github, .gitattributes, .gitignore unchecked.
  _push_signed(
    canned.version_2, base_path, 2, good_private, lambda p: sign_again(p, ignore_git_paths=True)
  )
  _expect_refused(
    hostport,
    base_path,
    2,
    "The signature leaves .git, .gitattributes, .github and 1 more unchecked; only model.sig "
    "may be (sign with --no-ignore-git-paths).",
  )
  _push_signed(
    canned.version_2, base_path, 3, good_private, lambda p: sign_again(p, without_identity=True)
  )
  _expect_refused(
    hostport,
    base_path,
    3,
    "The signed version has no assets.extra/model_identity.json naming its model and version.",
  )
  assert conftest.version_states(hostport)[1] == "AVAILABLE"


def test_a_signed_tflite_version_loads_from_its_private_copy(canned, keys, tmp_path):
  (good_private, good_public), _ = keys
  base_path = str(tmp_path / conftest.TFLITE_MODEL_NAME)
  os.makedirs(base_path)
  _push_signed(
    os.path.join(canned.tflite_base_path, "1"),
    base_path,
    1,
    good_private,
    model_name=conftest.TFLITE_MODEL_NAME,
  )
  version_loader = loader.VersionLoader(verification_key_file=good_public)
  servable = version_loader(conftest.TFLITE_MODEL_NAME, 1, os.path.join(base_path, "1"))
  try:
    assert servable.platform == "tflite"
    assert os.path.basename(servable.path).startswith("model-server-version-")
    assert os.path.exists(os.path.join(servable.path, "model.tflite"))
  finally:
    servable.close()
  assert not os.path.exists(servable.path)


def _upload(local, remote):
  for root, _, files in os.walk(local):
    target = remote + ("/" + os.path.relpath(root, local) if root != local else "")
    # Only folders with files: TensorFlow's in-memory file system lists by name prefix, so an
    # empty `assets/` beside `assets.extra/` would show a file `assets/.extra` that is not there.
    if files:
      tf.io.gfile.makedirs(target)
    for name in files:
      tf.io.gfile.copy(os.path.join(root, name), f"{target}/{name}")


def test_a_signed_version_on_a_remote_file_system_is_copied_down_and_verified(
  canned, keys, tmp_path
):
  # TensorFlow's ram:// file system stands in for gs:// and s3:// (tf.io.gfile, no links).
  (good_private, good_public), _ = keys
  local = _push_signed(canned.version_2, str(tmp_path), 1, good_private)
  remote = f"ram://{tmp_path.name}/{MODEL_NAME}"
  _upload(local, f"{remote}/1")
  version_loader = loader.VersionLoader(verification_key_file=good_public)
  servable = version_loader(MODEL_NAME, 1, f"{remote}/1")
  try:
    assert os.path.basename(servable.path).startswith("model-server-version-")
    assert "serving_default" in servable.signature_defs
  finally:
    servable.close()
  _flip_a_byte(local)
  _upload(local, f"{remote}/2")
  with pytest.raises(status.ServingError, match=f"files changed since signing: {DATA_FILE}"):
    version_loader(MODEL_NAME, 2, f"{remote}/2")


def test_without_a_key_a_version_loads_in_place_and_is_not_read_again(canned, tmp_path, examples):
  # Why the private copy is made only with a key: the loaders read what they serve at load.
  base_path = str(tmp_path / MODEL_NAME)
  os.makedirs(base_path)
  source = conftest.push_version(canned.version_2, base_path, 1)
  server = conftest.start_server(model_base_path=base_path, file_system_poll_wait_seconds=0)
  try:
    hostport = f"127.0.0.1:{server.grpc_port}"
    assert _loaded_from(server, 1) == source
    shutil.rmtree(source)
    _assert_serves(hostport, examples, canned.version_2)
  finally:
    server.stop()


def test_one_directory_per_version_number(canned, keys, tmp_path, examples, monkeypatch, caplog):
  # As TensorFlow Serving: the last name in sorted order, whatever order the listing has.
  for listing in (["42", "0042", "042"], ["0042", "042", "42"]):
    monkeypatch.setattr(model_manager.tf.io.gfile, "listdir", lambda path, names=listing: names)
    assert model_manager._versions_on_disk("/models/m") == {42: "/models/m/42"}

  monkeypatch.undo()
  (good_private, good_public), _ = keys
  base_path = str(tmp_path / MODEL_NAME)
  os.makedirs(base_path)
  _push_signed(canned.version_2, base_path, 42, good_private)
  # A zero-padded copy of version 1, signed as version 42 too: never a second version 42.
  staging = os.path.join(base_path, ".staging")
  shutil.copytree(canned.version_1, staging)
  version_signing.sign_version(staging, good_private, MODEL_NAME, 42)
  os.rename(staging, os.path.join(base_path, "0042"))
  with caplog.at_level(logging.WARNING):
    server = conftest.start_server(
      model_base_path=base_path,
      file_system_poll_wait_seconds=0,
      model_verification_key_file=good_public,
    )
  try:
    hostport = f"127.0.0.1:{server.grpc_port}"
    assert conftest.version_states(hostport) == {42: "AVAILABLE"}
    _assert_serves(hostport, examples, canned.version_2)
  finally:
    server.stop()
  assert (
    "Duplicate version directories detected. Version 42 will be loaded from 42, 0042 will be "
    "ignored." in caplog.text
  )


def _public_pem(path, key):
  path.write_bytes(
    key.public_key().public_bytes(
      serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
  )
  return str(path)


@pytest.mark.parametrize(
  "make_key, kind",
  [
    (ed25519.Ed25519PrivateKey.generate, "Ed25519"),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA"),
    (lambda: ec.generate_private_key(ec.SECP256K1()), "ECDSA key on secp256k1"),
  ],
)
def test_a_key_openssf_cannot_verify_with_stops_the_server_naming_the_problem(
  canned, tmp_path, make_key, kind
):
  key_file = _public_pem(tmp_path / "key.pub.pem", make_key())
  with pytest.raises(ValueError, match=f"--model_verification_key_file {key_file} is an {kind}"):
    model_server.ModelServer(
      flags.ServerOptions(
        model_name=MODEL_NAME,
        model_base_path=canned.base_path,
        port=portpicker.pick_unused_port(),
        rest_api_port=0,
        model_verification_key_file=key_file,
      )
    )


def test_a_server_with_no_verified_version_does_not_start(canned, keys, tmp_path):
  (_, good_public), _ = keys
  base_path = str(tmp_path / MODEL_NAME)
  os.makedirs(base_path)
  conftest.push_version(canned.version_1, base_path, 1)  # Unsigned.
  server = model_server.ModelServer(
    flags.ServerOptions(
      model_name=MODEL_NAME,
      model_base_path=base_path,
      port=portpicker.pick_unused_port(),
      rest_api_port=0,
      file_system_poll_wait_seconds=0,
      model_verification_key_file=good_public,
      model_load_timeout_seconds=0.5,
    )
  )
  with pytest.raises(loader.NoServableVersionError, match="unsigned"):
    server.start()
