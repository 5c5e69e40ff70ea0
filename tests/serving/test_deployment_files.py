"""The TensorFlow Serving deployment files parse with TF Serving's own protos."""

import os

import pytest
import yaml
from tensorflow_serving.config import model_server_config_pb2

from next_category import serving
from next_category.serving.config import server_config
from next_category.serving.models import batching

_DEPLOY = os.path.join(os.path.dirname(serving.__file__), "deploy")


def _path(*parts):
  return os.path.join(_DEPLOY, *parts)


def test_models_config():
  config = server_config.load_model_server_config(_path("models.config"))
  [model] = config.model_config_list.config
  assert model.name == "next_category"
  assert model.base_path == "/models/next_category"
  assert model.model_platform == "tensorflow"
  assert model.model_version_policy.latest.num_versions == 2
  assert isinstance(config, model_server_config_pb2.ModelServerConfig)


def test_batching_parameters():
  proto = server_config.read_text_proto(
    _path("batching_parameters.txt"), server_config.BatchingParameters()
  )
  assert proto.max_batch_size.value == 64
  options = batching.BatchingOptions.from_proto(proto)  # Checks consistency.
  assert options.num_batch_threads >= 1


def test_monitoring_config():
  config = server_config.load_monitoring_config(_path("monitoring.config"))
  assert config.prometheus_config.enable
  assert config.prometheus_config.path == server_config.DEFAULT_PROMETHEUS_PATH


def _documents(*parts):
  with open(_path(*parts)) as f:
    return list(yaml.safe_load_all(f))


def test_kubernetes_manifests_serve_the_config_files():
  [deployment] = _documents("k8s", "deployment.yaml")
  [service] = _documents("k8s", "service.yaml")
  [kustomization] = _documents("kustomization.yaml")
  assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
  pod = deployment["spec"]["template"]["spec"]
  [container] = pod["containers"]
  assert container["image"].startswith("tensorflow/serving:")
  args = dict(arg.lstrip("-").split("=", 1) for arg in container["args"])
  mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
  volumes = {v["name"]: v for v in pod["volumes"]}

  # The config files come from the ConfigMap the kustomization generates.
  [generator] = kustomization["configMapGenerator"]
  assert volumes["config"]["configMap"]["name"] == generator["name"]
  for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
    directory, filename = os.path.split(args[flag])
    assert directory == mounts["config"] and filename in generator["files"]
    assert os.path.exists(_path(filename))
  for resource in kustomization["resources"]:
    assert os.path.exists(_path(resource))

  # The models.config base path lies on the pushed-models volume.
  base_path = (
    server_config.load_model_server_config(_path("models.config"))
    .model_config_list.config[0]
    .base_path
  )
  assert base_path.startswith(mounts["pushed-models"] + "/")
  assert "persistentVolumeClaim" in volumes["pushed-models"]

  ports = {p["name"]: p["containerPort"] for p in container["ports"]}
  assert ports == {"grpc": int(args["port"]), "http": int(args["rest_api_port"])}
  assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
  assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
  assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/next_category"


def test_ssl_config_parses(tmp_path):
  path = tmp_path / "ssl.config"
  path.write_text('server_key: "KEY" server_cert: "CERT" client_verify: true')
  config = server_config.load_ssl_config(str(path))
  assert (config.server_key, config.server_cert, config.client_verify) == ("KEY", "CERT", True)
  path.write_text("server_key: 1 2")
  with pytest.raises(ValueError, match="Invalid protobuf file"):
    server_config.load_ssl_config(str(path))
