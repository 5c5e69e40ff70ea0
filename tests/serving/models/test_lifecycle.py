"""Model version lifecycle on a real server: pushes, broken versions, policies and labels."""

import http.client
import json
import os
import shutil
import threading

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from next_category.serving import client
from next_category.serving.config import server_config
from next_category.serving.testdata import make_canned_models
from tests.serving import conftest
from tests.serving.conftest import DEADLINE_SECONDS
from tests.serving.conftest import MODEL_NAME


class _ClientLoop:
  """Clients that send Predict requests back to back until stopped."""

  def __init__(self, hostport, examples, num_threads=2):
    self.versions, self.failures = [], []
    self._stop = threading.Event()
    self._request = client.make_predict_request(examples[:2], MODEL_NAME)
    self._channel = grpc.insecure_channel(hostport)
    self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
    self._lock = threading.Lock()
    self._threads = [threading.Thread(target=self._run) for _ in range(num_threads)]
    for thread in self._threads:
      thread.start()

  def _run(self):
    while not self._stop.is_set():
      try:
        response = self._stub.Predict(self._request, timeout=DEADLINE_SECONDS)
        with self._lock:
          self.versions.append(response.model_spec.version.value)
      except grpc.RpcError as e:
        with self._lock:
          self.failures.append(f"{e.code()}: {e.details()}")

  def wait_for_requests(self, count):
    start = len(self.versions)
    conftest.wait_until(lambda: len(self.versions) >= start + count or self.failures)

  def stop(self):
    self._stop.set()
    for thread in self._threads:
      thread.join()
    self._channel.close()


@pytest.fixture
def base_path(canned, tmp_path):
  path = str(tmp_path / MODEL_NAME)
  os.makedirs(path)
  conftest.push_version(canned.version_1, path, 1)
  return path


def test_new_version_takes_over_without_a_failed_request(canned, base_path, examples):
  server = conftest.start_server(model_base_path=base_path, file_system_poll_wait_seconds=0.1)
  hostport = f"127.0.0.1:{server.grpc_port}"
  loop = _ClientLoop(hostport, examples)
  try:
    loop.wait_for_requests(5)
    conftest.push_version(canned.version_2, base_path, 2)
    conftest.wait_until(lambda: conftest.version_states(hostport) == {2: "AVAILABLE", 1: "END"})
    loop.wait_for_requests(5)
  finally:
    loop.stop()
    predictions = client.predict(hostport, examples)
    server.stop()

  assert loop.failures == []
  switch = loop.versions.index(2)
  assert set(loop.versions[:switch]) == {1} and loop.versions[switch:].count(1) <= 2
  assert loop.versions[-1] == 2
  assert [p.model_version for p in predictions] == [2] * len(examples)
  # The server runs the signature frozen (constants folded): equal to the
  # last float32 bit or so, not bit for bit.
  np.testing.assert_allclose(
    np.array([p.probabilities for p in predictions], np.float32),
    conftest.reference(canned.version_2, examples=examples),
    rtol=1e-6,
    atol=1e-7,
  )


def test_broken_version_never_replaces_the_serving_one(canned, base_path, examples):
  server = conftest.start_server(
    model_base_path=base_path,
    file_system_poll_wait_seconds=0.1,
    max_num_load_retries=1,
    load_retry_interval_micros=100_000,
  )
  hostport = f"127.0.0.1:{server.grpc_port}"
  loop = _ClientLoop(hostport, examples)
  try:
    conftest.push_version(canned.broken, base_path, 5)
    statuses = conftest.wait_until(
      lambda: [
        s
        for s in conftest.model_status(hostport).model_version_status
        if s.version == 5 and s.status.error_code
      ]
    )
    loop.wait_for_requests(5)
    metrics = server.metrics.exposition().decode()
  finally:
    loop.stop()
    server.stop()

  assert loop.failures == []
  assert set(loop.versions) == {1}
  assert "Loading servable: {name: next_category version: 5} failed" in (
    statuses[0].status.error_message
  )
  # TensorFlow's SavedModel loader counts the failed load (tensorflow/cc/saved_model/loader.cc).
  attempts = f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{base_path}/5",'
  assert attempts + 'status="fail"} 2' in metrics.splitlines()


def test_warmup_failure_fails_the_load(canned, base_path, examples, tmp_path):
  bad = str(tmp_path / "bad_warmup")
  shutil.copytree(canned.version_2, bad)
  # Warmup requests the model cannot answer: the version must not load.
  make_canned_models.write_warmup_requests(bad, [b"not a tf.Example"], with_classify=False)
  server = conftest.start_server(
    model_base_path=base_path, file_system_poll_wait_seconds=0.1, max_num_load_retries=0
  )
  hostport = f"127.0.0.1:{server.grpc_port}"
  try:
    conftest.push_version(bad, base_path, 2)
    [status] = conftest.wait_until(
      lambda: [
        s
        for s in conftest.model_status(hostport).model_version_status
        if s.version == 2 and s.status.error_code
      ]
    )
    assert "Could not parse example input" in status.status.error_message
    assert {p.model_version for p in client.predict(hostport, examples[:1])} == {1}
  finally:
    server.stop()


def _config(base_path, policy, labels=()):
  config = model_server_config_pb2.ModelServerConfig()
  model = config.model_config_list.config.add(
    name=MODEL_NAME, base_path=base_path, model_platform="tensorflow"
  )
  server_config.parse_text_proto(policy, model.model_version_policy)
  for label, version in labels:
    model.version_labels[label] = version
  return config


def test_version_policies_and_labels_from_config(canned, base_path, examples, tmp_path):
  conftest.push_version(canned.version_2, base_path, 2)
  config_file = tmp_path / "models.config"
  config_file.write_text(
    str(_config(base_path, "specific { versions: 1 versions: 2 }", [("stable", 1), ("canary", 2)]))
  )
  server = conftest.start_server(
    model_config_file=str(config_file),
    file_system_poll_wait_seconds=0,
    enable_model_config_reload=True,
  )
  hostport = f"127.0.0.1:{server.grpc_port}"
  try:
    conftest.wait_for_server_ready(hostport, version=1)
    conftest.wait_for_server_ready(hostport, version=2)

    def served_version(**spec):
      return client.predict(hostport, examples[:1], **spec)[0].model_version

    assert served_version() == 2  # Latest by default.
    assert served_version(version_label="stable") == 1
    assert served_version(version_label="canary") == 2
    assert served_version(version=1) == 1
    stable = client.predict(hostport, examples, version_label="stable")
    np.testing.assert_array_equal(
      np.array([p.probabilities for p in stable], np.float32),
      conftest.reference(canned.version_1, examples=examples),
    )

    # Move to "latest 1" over gRPC: version 1 is unloaded, its label is dangling.
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(hostport))
    request = model_management_pb2.ReloadConfigRequest(
      config=_config(base_path, "latest { num_versions: 1 }", [("stable", 1)])
    )
    response = stub.HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0
    assert conftest.version_states(hostport) == {2: "AVAILABLE", 1: "END"}
    with pytest.raises(grpc.RpcError) as raised:
      served_version(version=1)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as raised:
      served_version(version_label="stable")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as raised:
      served_version(version_label="canary")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # "all" loads every version again.
    stub.HandleReloadConfigRequest(
      model_management_pb2.ReloadConfigRequest(config=_config(base_path, "all {}")), timeout=60
    )
    assert conftest.version_states(hostport) == {2: "AVAILABLE", 1: "AVAILABLE"}
  finally:
    server.stop()


def test_reload_config_rejects_an_unsupported_config(base_path):
  server = conftest.start_server(
    model_base_path=base_path, file_system_poll_wait_seconds=0, enable_model_config_reload=True
  )
  hostport = f"127.0.0.1:{server.grpc_port}"
  try:
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(hostport))
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name=MODEL_NAME)  # No base path.
    with pytest.raises(grpc.RpcError) as raised:
      stub.HandleReloadConfigRequest(
        model_management_pb2.ReloadConfigRequest(config=config), timeout=DEADLINE_SECONDS
      )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert conftest.version_states(hostport) == {1: "AVAILABLE"}
  finally:
    server.stop()


def test_reference_of_versions_differ(canned, examples):
  # Guards the tests above: the two canned versions must answer differently.
  assert not np.allclose(
    conftest.reference(canned.version_1, examples=examples),
    conftest.reference(canned.version_2, examples=examples),
  )


def _rest_get(port, path):
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_SECONDS)
  try:
    connection.request("GET", path)
    response = connection.getresponse()
    assert response.status == 200
    return response.read()
  finally:
    connection.close()


@pytest.mark.parametrize("version", ["empty", "no_variables"])
def test_model_status_shows_no_file_path_of_the_server(canned, base_path, version, tmp_path):
  # Issue 21: GetModelStatus showed full file paths. TensorFlow Serving shows its
  # loader's message, paths and all; this server shows where under the base path.
  server = conftest.start_server(
    model_base_path=base_path, file_system_poll_wait_seconds=0.1, max_num_load_retries=0
  )
  hostport = f"127.0.0.1:{server.grpc_port}"
  try:
    if version == "empty":
      os.makedirs(os.path.join(base_path, "2"))
    else:  # TensorFlow's own error names the checkpoint's path.
      shutil.copytree(canned.version_1, tmp_path / "staging")
      shutil.rmtree(tmp_path / "staging" / "variables")
      os.rename(tmp_path / "staging", os.path.join(base_path, "2"))
    conftest.wait_until(lambda: conftest.version_states(hostport).get(2) == "END")
    [grpc_status] = [
      s for s in conftest.model_status(hostport).model_version_status if s.version == 2
    ]
    rest_status = _rest_get(server.rest_port, f"/v1/models/{MODEL_NAME}/versions/2")
  finally:
    server.stop()
  grpc_message = grpc_status.status.error_message
  [rest_version] = json.loads(rest_status)["model_version_status"]
  assert rest_version["status"]["error_message"] == grpc_message
  assert grpc_message.startswith("Loading servable: {name: next_category version: 2} failed: ")
  assert base_path not in grpc_message and str(tmp_path) not in grpc_message
  assert "/tmp/" not in grpc_message and "/work/" not in grpc_message
  if version == "empty":
    # TensorFlow's SavedModel loader text, as serving/models/loader.py words it.
    assert grpc_message.endswith("Specified file path: <base_path>/2")
  else:
    assert "not a valid checkpoint: <base_path>/2/variables/variables" in grpc_message
