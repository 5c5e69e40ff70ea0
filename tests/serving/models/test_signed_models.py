"""--model_verification_key_file: only versions signed with the key, unaltered, are loaded."""

import glob
import os
import shutil

import grpc
import portpicker
import pytest

import model_signing
from serving import model_server
from serving.config import flags
from serving.models import loader
from tests.serving import conftest
from tests.serving.conftest import MODEL_NAME


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
  good = model_signing.generate_key_pair(str(tmp_path_factory.mktemp("keys")))
  other = model_signing.generate_key_pair(str(tmp_path_factory.mktemp("other_keys")))
  return good, other


def _push_signed(source, base_path, version, private_key, tamper=None):
  staging = os.path.join(base_path, f".staging-{version}")
  shutil.copytree(source, staging)
  model_signing.sign_directory(staging, private_key)
  if tamper:
    tamper(staging)
  os.rename(staging, os.path.join(base_path, str(version)))


def _flip_a_byte(path):
  data_file = glob.glob(os.path.join(path, "variables", "variables.data-*"))[0]
  data = bytearray(open(data_file, "rb").read())
  data[len(data) // 2] ^= 0x01
  open(data_file, "wb").write(bytes(data))


def _add_a_file(path):
  open(os.path.join(path, "assets.extra.txt"), "w").write("injected")


def _remove_the_manifest(path):
  os.remove(os.path.join(path, model_signing.MANIFEST_PATH))


def _status(hostport, version):
  response = conftest.model_status(hostport)
  for version_status in response.model_version_status:
    if version_status.version == version:
      return version_status
  return None


def test_tampered_unsigned_and_foreign_versions_are_refused(canned, keys, tmp_path, examples):
  (good_private, good_public), (other_private, _) = keys
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
  hostport = f"127.0.0.1:{server.grpc_port}"
  try:
    for version, key, tamper, reason in (
      (2, good_private, _flip_a_byte, "changed: variables/variables.data-"),
      (3, good_private, _add_a_file, "not in the manifest: assets.extra.txt"),
      (4, good_private, _remove_the_manifest, "unsigned: signature/manifest.json is missing"),
      (5, other_private, None, "signed by another key"),
    ):
      _push_signed(canned.version_2, base_path, version, key, tamper)
      conftest.wait_until(lambda v=version: conftest.version_states(hostport).get(v) == "END")
      refused = _status(hostport, version)
      assert refused.status.error_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
      assert "Model signature verification failed" in refused.status.error_message
      assert reason in refused.status.error_message
      # The signed version 1 keeps serving.
      assert conftest.version_states(hostport)[1] == "AVAILABLE"
    failures = (
      f':tensorflow:serving:model_verification_failure_count{{model_name="{MODEL_NAME}"}} 4'
    )
    assert failures in server.metrics.exposition().decode().splitlines()

    # The same model signed again, untouched: it loads and takes over.
    shutil.rmtree(os.path.join(base_path, "2"))
    for version in (3, 4, 5):
      shutil.rmtree(os.path.join(base_path, str(version)))
    _push_signed(canned.version_2, base_path, 6, good_private)
    conftest.wait_for_server_ready(hostport, version=6)
    conftest.wait_until(lambda: conftest.version_states(hostport).get(1) == "END")
  finally:
    server.stop()


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
      file_system_poll_wait_seconds=0,
      model_verification_key_file=good_public,
      model_load_timeout_seconds=0.5,
    )
  )
  with pytest.raises(loader.NoServableVersionError, match="unsigned"):
    server.start()
