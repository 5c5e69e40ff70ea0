"""ModelManager version lifecycle with a fake loader (no TensorFlow models)."""

import os
import time

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.config import model_server_config_pb2

from next_category.serving import status
from next_category.serving.config import server_config
from next_category.serving.models import model_manager
from next_category.serving.models import servables

State = get_model_status_pb2.ModelVersionStatus.State


class _FakeServable(servables.Servable):
  closed = False

  def close(self):
    self.closed = True


class _Loader:
  """Loads fake servables; version directories holding a file named BROKEN fail."""

  def __init__(self):
    self.loads = []

  def __call__(self, name, version, path):
    self.loads.append(version)
    if os.path.exists(os.path.join(path, "BROKEN")):
      raise ValueError("cannot load")
    return _FakeServable(name, version, path)


def _config(base_path, policy="", labels=()):
  config = model_server_config_pb2.ModelServerConfig()
  model = config.model_config_list.config.add(
    name="m", base_path=str(base_path), model_platform="tensorflow"
  )
  if policy:
    server_config.parse_text_proto(policy, model.model_version_policy)
  for label, version in labels:
    model.version_labels[label] = version
  return config


def _push(base_path, version, broken=False):
  os.makedirs(base_path / str(version))
  if broken:
    (base_path / str(version) / "BROKEN").write_text("")


def _spec(**kwargs):
  return model_pb2.ModelSpec(name="m", **kwargs)


def _states(manager):
  return {v: State.Name(s) for v, s, _ in manager.version_statuses(_spec())}


def _manager(base_path, loader, **kwargs):
  kwargs.setdefault("poll_wait_seconds", 0)
  return model_manager.ModelManager(
    _config(base_path, **kwargs.pop("config", {})), loader, **kwargs
  )


def test_latest_version_serves_and_old_ones_unload(tmp_path):
  _push(tmp_path, 1)
  (tmp_path / "not-a-version").mkdir()
  loader = _Loader()
  manager = _manager(tmp_path, loader)
  manager.start()
  first = manager.servable(_spec())
  assert first.version == 1
  _push(tmp_path, 3)
  _push(tmp_path, 2)
  manager.poll_once()
  assert manager.servable(_spec()).version == 3
  assert _states(manager) == {3: "AVAILABLE", 1: "END"}
  assert first.closed
  assert loader.loads == [1, 3]  # Latest 1: version 2 is never wanted.
  manager.stop()


def test_failed_version_keeps_the_old_one_and_retries_a_bounded_number_of_times(tmp_path):
  _push(tmp_path, 1)
  loader = _Loader()
  manager = _manager(tmp_path, loader, max_num_load_retries=2, load_retry_interval_seconds=0)
  manager.start()
  _push(tmp_path, 2, broken=True)
  manager.poll_once()
  # One try and two retries at once, as TensorFlow Serving's Retry (util/retrier.cc:26-52);
  # later polls leave the failed version alone.
  assert loader.loads == [1, 2, 2, 2]
  for _ in range(3):
    manager.poll_once()
  assert loader.loads == [1, 2, 2, 2]
  assert manager.servable(_spec()).version == 1
  [(_, state, error)] = manager.version_statuses(_spec(version={"value": 2}))
  assert state == State.END
  assert error.message == ("Loading servable: {name: m version: 2} failed: ValueError: cannot load")


def test_retries_wait_the_retry_interval(tmp_path):
  _push(tmp_path, 1, broken=True)
  loader = _Loader()
  manager = _manager(tmp_path, loader, max_num_load_retries=2, load_retry_interval_seconds=0.2)
  start = time.monotonic()
  manager.start()
  assert loader.loads == [1, 1, 1]
  assert time.monotonic() - start >= 0.4


def test_a_negative_poll_wait_never_loads(tmp_path):
  # --file_system_poll_wait_seconds below 0: no poll at all (main.cc:172-180).
  _push(tmp_path, 1)
  loader = _Loader()
  manager = _manager(tmp_path, loader, poll_wait_seconds=-1)
  manager.start()
  assert loader.loads == [] and manager.models_without_versions() == ["m"]


def test_load_failures_lists_a_model_only_once_no_version_can_load(tmp_path):
  _push(tmp_path, 1, broken=True)
  manager = _manager(tmp_path, _Loader(), max_num_load_retries=1, load_retry_interval_seconds=0)
  manager.start()
  [(version, error)] = manager.load_failures()["m"]
  assert version == 1
  assert error.code == grpc.StatusCode.INVALID_ARGUMENT
  assert error.message == "Loading servable: {name: m version: 1} failed: ValueError: cannot load"
  # A new version is loading or loaded: the model can serve again.
  _push(tmp_path, 2)
  manager.poll_once()
  assert manager.load_failures() == {}
  assert manager.servable(_spec()).version == 2
  manager.stop()


def test_load_failures_leaves_out_models_without_versions(tmp_path):
  manager = _manager(tmp_path / "missing", _Loader(), max_num_load_retries=0)
  manager.start()
  assert manager.models_without_versions() == ["m"]
  assert manager.load_failures() == {}


def test_specific_and_all_policies(tmp_path):
  for version in (1, 2, 3):
    _push(tmp_path, version)
  manager = _manager(
    tmp_path, _Loader(), config={"policy": "specific { versions: 1 versions: 3 versions: 9 }"}
  )
  manager.start()
  assert _states(manager) == {3: "AVAILABLE", 1: "AVAILABLE"}
  manager.reload_config(_config(tmp_path, "all {}"))
  assert _states(manager) == {3: "AVAILABLE", 2: "AVAILABLE", 1: "AVAILABLE"}
  manager.reload_config(_config(tmp_path, "latest { num_versions: 2 }"))
  assert _states(manager) == {3: "AVAILABLE", 2: "AVAILABLE", 1: "END"}


def test_labels(tmp_path):
  _push(tmp_path, 1)
  _push(tmp_path, 2)
  manager = _manager(
    tmp_path,
    _Loader(),
    config={"policy": "all {}", "labels": [("stable", 1), ("canary", 2), ("next", 7)]},
  )
  manager.start()
  assert manager.servable(_spec(version_label="stable")).version == 1
  assert manager.servable(_spec(version_label="canary")).version == 2
  with pytest.raises(status.ServingError) as raised:
    manager.servable(_spec(version_label="next"))
  assert raised.value.code == grpc.StatusCode.NOT_FOUND
  with pytest.raises(status.ServingError) as raised:
    manager.servable(_spec(version_label="other"))
  assert (raised.value.code, raised.value.message) == (
    grpc.StatusCode.INVALID_ARGUMENT,
    "Unrecognized servable version label: other",
  )


def test_model_removed_from_config_is_unloaded(tmp_path):
  _push(tmp_path, 1)
  manager = _manager(tmp_path, _Loader())
  manager.start()
  servable = manager.servable(_spec())
  config = model_server_config_pb2.ModelServerConfig()
  config.model_config_list.SetInParent()
  manager.reload_config(config)
  assert servable.closed
  with pytest.raises(status.ServingError) as raised:
    manager.servable(_spec())
  assert raised.value.code == grpc.StatusCode.NOT_FOUND


def test_no_versions_yet(tmp_path):
  manager = _manager(tmp_path / "missing", _Loader())
  manager.start()
  with pytest.raises(status.ServingError) as raised:
    manager.servable(_spec())
  assert raised.value.message == "Servable not found for request: Latest(m)"
  with pytest.raises(status.ServingError) as raised:
    manager.version_statuses(_spec())
  assert raised.value.message == "Could not find any versions of model m"


@pytest.mark.parametrize(
  "text, message",
  [
    # model_servers/server_core.cc, TensorFlow Serving's messages.
    (
      'model_config_list { config { name: "m" model_platform: "tensorflow" } }',
      "Expected model m to have an absolute path or URI; got base_path()=",
    ),
    (
      'model_config_list { config { name: "m" base_path: "models/m" '
      'model_platform: "tensorflow" } }',
      "Expected model m to have an absolute path or URI; got base_path()=models/m",
    ),
    (
      'model_config_list { config { name: "m" base_path: "/x" model_platform: "tensorflow" } '
      'config { name: "m" base_path: "/y" model_platform: "tensorflow" } }',
      "Illegal to list model m multiple times in config list",
    ),
    (
      'model_config_list { config { name: "m" base_path: "/x" } }',
      "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
      "ModelServerConfig::model_platform, model name is m",
    ),
    (
      'model_config_list { config { name: "m" base_path: "/x" model_platform: "onnx" } }',
      "PlatformConfigMap has no entry for platform onnx",
    ),
    ("custom_model_config {}", "ModelServer does not yet support custom model config."),
    # This server's own.
    (
      'model_config_list { config { base_path: "/x" model_platform: "tensorflow" } }',
      "needs a name",
    ),
  ],
)
def test_invalid_configs(text, message):
  config = server_config.parse_text_proto(text, model_server_config_pb2.ModelServerConfig())
  with pytest.raises(server_config.ConfigError) as raised:
    server_config.validate_model_server_config(config)
  assert message in raised.value.message


def test_a_gcs_base_path_is_absolute_and_an_empty_config_is_valid():
  config = server_config.parse_text_proto(
    'model_config_list { config { name: "m" base_path: "gs://b/m" model_platform: "tensorflow" } }',
    model_server_config_pb2.ModelServerConfig(),
  )
  server_config.validate_model_server_config(config)
  server_config.validate_model_server_config(model_server_config_pb2.ModelServerConfig())
