"""The model server's configuration files, in TensorFlow Serving's text formats.

`ModelServerConfig` comes from tensorflow-serving-api. `BatchingParameters`,
`MonitoringConfig` and `SSLConfig` are part of TensorFlow Serving but not of
its Python package, so they are declared here with the same package, message
names, field names and field numbers as `session_bundle_config.proto`,
`monitoring_config.proto` and `ssl_config.proto`: a file written for
`tensorflow_model_server` parses here, and the other way round.
"""

from typing import Optional

import tensorflow as tf
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

_F = descriptor_pb2.FieldDescriptorProto


def _field(name, number, field_type, label=_F.LABEL_OPTIONAL, type_name=None):
  field = _F(name=name, number=number, type=field_type, label=label)
  if type_name:
    field.type_name = type_name
  return field


def _build_file() -> descriptor_pb2.FileDescriptorProto:
  file = descriptor_pb2.FileDescriptorProto(
    name="serving/server_config_protos.proto",
    package="tensorflow.serving",
    syntax="proto3",
    dependency=["google/protobuf/wrappers.proto"],
  )
  int64_value = ".google.protobuf.Int64Value"
  file.message_type.add(
    name="BatchingParameters",
    field=[
      _field("max_batch_size", 1, _F.TYPE_MESSAGE, type_name=int64_value),
      _field("batch_timeout_micros", 2, _F.TYPE_MESSAGE, type_name=int64_value),
      _field("max_enqueued_batches", 3, _F.TYPE_MESSAGE, type_name=int64_value),
      _field("num_batch_threads", 4, _F.TYPE_MESSAGE, type_name=int64_value),
      _field("thread_pool_name", 5, _F.TYPE_MESSAGE, type_name=".google.protobuf.StringValue"),
      _field("allowed_batch_sizes", 6, _F.TYPE_INT64, label=_F.LABEL_REPEATED),
      _field("pad_variable_length_inputs", 7, _F.TYPE_BOOL),
    ],
  )
  file.message_type.add(
    name="PrometheusConfig",
    field=[
      _field("enable", 1, _F.TYPE_BOOL),
      _field("path", 2, _F.TYPE_STRING),
    ],
  )
  file.message_type.add(
    name="MonitoringConfig",
    field=[
      _field(
        "prometheus_config", 1, _F.TYPE_MESSAGE, type_name=".tensorflow.serving.PrometheusConfig"
      ),
    ],
  )
  file.message_type.add(
    name="SSLConfig",
    field=[
      _field("server_key", 1, _F.TYPE_STRING),
      _field("server_cert", 2, _F.TYPE_STRING),
      _field("custom_ca", 3, _F.TYPE_STRING),
      _field("client_verify", 4, _F.TYPE_BOOL),
    ],
  )
  return file


# A private pool, so these names cannot clash with a package that one day
# ships the real generated modules.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
_POOL.Add(_build_file())

BatchingParameters = message_factory.GetMessageClass(
  _POOL.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
)
MonitoringConfig = message_factory.GetMessageClass(
  _POOL.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
)
SSLConfig = message_factory.GetMessageClass(
  _POOL.FindMessageTypeByName("tensorflow.serving.SSLConfig")
)


def parse_text_proto(
  text: str, proto: message.Message, source: str = "<string>"
) -> message.Message:
  """Parses `text` into `proto` and returns it.

  Raises:
    ValueError: if the text is not a valid `proto` text format.
  """
  try:
    return text_format.Parse(text, proto)
  except text_format.ParseError as e:
    raise ValueError(f"Invalid {proto.DESCRIPTOR.name} text proto in {source}: {e}") from None


def read_text_proto(path: str, proto: message.Message) -> message.Message:
  """Reads the text proto file at `path` (any tf.io.gfile path) into `proto`."""
  with tf.io.gfile.GFile(path, "r") as f:
    return parse_text_proto(f.read(), proto, source=path)


def single_model_config(
  model_name: str, model_base_path: str
) -> model_server_config_pb2.ModelServerConfig:
  """The config that `--model_name` and `--model_base_path` stand for."""
  config = model_server_config_pb2.ModelServerConfig()
  model = config.model_config_list.config.add()
  model.name = model_name
  model.base_path = model_base_path
  model.model_platform = "tensorflow"
  return config


def validate_model_server_config(config: model_server_config_pb2.ModelServerConfig) -> None:
  """Checks what this server supports of a ModelServerConfig.

  Raises:
    ValueError: on a custom model config, a model without a name or base path,
      a platform other than tensorflow, duplicate names, or a version label
      that is not a non-negative version.
  """
  if config.WhichOneof("config") != "model_config_list":
    raise ValueError(
      "Only model_config_list is supported in a ModelServerConfig; custom_model_config is not."
    )
  names = set()
  for model in config.model_config_list.config:
    if not model.name:
      raise ValueError("Every model config needs a name.")
    if not model.base_path:
      raise ValueError(f"Model {model.name!r} has no base_path.")
    if model.model_platform not in ("", "tensorflow"):
      raise ValueError(
        f"Model {model.name!r} has model_platform {model.model_platform!r}; "
        'only "tensorflow" is supported (TFLite models are served under '
        "the tensorflow platform, as TensorFlow Serving does)."
      )
    if model.name in names:
      raise ValueError(f"Model {model.name!r} is configured twice.")
    names.add(model.name)
    policy = model.model_version_policy
    if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
      raise ValueError(f"Model {model.name!r}: latest.num_versions must be >= 0.")
    for label, version in model.version_labels.items():
      if version < 0:
        raise ValueError(
          f"Model {model.name!r}: label {label!r} points at negative version {version}."
        )


def load_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
  """Reads and validates a ModelServerConfig text proto file."""
  config = read_text_proto(path, model_server_config_pb2.ModelServerConfig())
  validate_model_server_config(config)
  return config


def load_monitoring_config(path: Optional[str]):
  """Reads a MonitoringConfig file; an empty path gives monitoring disabled.

  As in TensorFlow Serving, an enabled Prometheus config with no path uses
  `DEFAULT_PROMETHEUS_PATH`.
  """
  config = MonitoringConfig()
  if path:
    read_text_proto(path, config)
  if config.prometheus_config.enable and not config.prometheus_config.path:
    config.prometheus_config.path = DEFAULT_PROMETHEUS_PATH
  return config


def load_ssl_config(path: str):
  """Reads an SSLConfig text proto file."""
  return read_text_proto(path, SSLConfig())
