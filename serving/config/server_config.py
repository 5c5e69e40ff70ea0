"""The model server's configuration files, in TensorFlow Serving's text formats.

`ModelServerConfig` comes from tensorflow-serving-api. `BatchingParameters`,
`MonitoringConfig`, `SSLConfig`, `PlatformConfigMap` and the SavedModel
platform's `SessionBundleConfig` are part of TensorFlow Serving but not of its
Python package, so they are declared here with the same package, message
names, field names and field numbers as `session_bundle_config.proto`,
`monitoring_config.proto`, `ssl_config.proto`, `platform_config.proto` and
`saved_model_bundle_source_adapter.proto`: a file written for
`tensorflow_model_server` parses here, and the other way round.

`parse_proto_text_file` reads a flag's file as tensorflow_model_server does
(`ParseProtoTextFile`, tensorflow_serving/util/proto_util.h:26-40), with its
error statuses; `validate_model_server_config` checks a ModelServerConfig as
`ServerCore::ReloadConfig` does (model_servers/server_core.cc), with its
messages first and this server's own checks after.
"""

import logging
import re
import sys
from typing import Dict
from typing import Iterable
from typing import Optional

import grpc
import tensorflow as tf
from google.protobuf import any_pb2
from google.protobuf import descriptor as descriptor_lib
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2
from tensorflow.core.protobuf import config_pb2
from tensorflow.core.protobuf import named_tensor_pb2
from tensorflow_serving.config import model_server_config_pb2

from next_category.serving import status

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
# The platform of TensorFlow models (SavedModels and, with --prefer_tflite_model, TFLite).
TENSORFLOW_PLATFORM = "tensorflow"
_SAVED_MODEL_ADAPTER_CONFIG = "tensorflow.serving.SavedModelBundleSourceAdapterConfig"


class ConfigError(status.ServingError, ValueError):
  """A configuration TensorFlow Serving refuses: its status code and message.

  A `ValueError` too, for callers that treat any bad config alike.
  """


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
    dependency=[
      "google/protobuf/wrappers.proto",
      "google/protobuf/any.proto",
      config_pb2.DESCRIPTOR.name,
      named_tensor_pb2.DESCRIPTOR.name,
    ],
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
      _field(
        "enable_large_batch_splitting",
        8,
        _F.TYPE_MESSAGE,
        type_name=".google.protobuf.BoolValue",
      ),
      _field("max_execution_batch_size", 9, _F.TYPE_MESSAGE, type_name=int64_value),
    ],
  )
  int32_value = ".google.protobuf.Int32Value"
  file.message_type.add(
    name="ModelWarmupOptions",
    field=[
      _field("num_request_iterations", 1, _F.TYPE_MESSAGE, type_name=int32_value),
      _field("num_model_warmup_threads", 2, _F.TYPE_MESSAGE, type_name=int32_value),
      _field("model_name", 3, _F.TYPE_STRING),
      _field("model_version", 4, _F.TYPE_INT64),
      _field("enable_all_batch_sizes_warmup", 5, _F.TYPE_BOOL),
    ],
  )
  file.message_type.add(
    name="SessionBundleConfig",
    field=[
      _field("session_target", 1, _F.TYPE_STRING),
      _field("session_config", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.ConfigProto"),
      _field(
        "batching_parameters",
        3,
        _F.TYPE_MESSAGE,
        type_name=".tensorflow.serving.BatchingParameters",
      ),
      _field("session_run_load_threadpool_index", 4, _F.TYPE_MESSAGE, type_name=int32_value),
      _field("experimental_transient_ram_bytes_during_load", 5, _F.TYPE_UINT64),
      _field("saved_model_tags", 6, _F.TYPE_STRING, label=_F.LABEL_REPEATED),
      _field(
        "experimental_fixed_input_tensors",
        778,
        _F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".tensorflow.NamedTensorProto",
      ),
      _field("enable_model_warmup", 779, _F.TYPE_BOOL),
      _field(
        "model_warmup_options",
        780,
        _F.TYPE_MESSAGE,
        type_name=".tensorflow.serving.ModelWarmupOptions",
      ),
      _field("enable_session_metadata", 781, _F.TYPE_BOOL),
      _field("remove_unused_fields_from_bundle_metagraph", 782, _F.TYPE_BOOL),
      _field("prefer_tflite_model", 783, _F.TYPE_BOOL),
      _field("resource_estimation_uses_validation_result", 784, _F.TYPE_BOOL),
      _field("num_tflite_interpreters", 785, _F.TYPE_INT32),
      _field("num_tflite_interpreters_per_pool", 786, _F.TYPE_INT32),
      _field("num_tflite_pools", 787, _F.TYPE_INT32),
      _field("wrap_session_with_no_threading_params", 788, _F.TYPE_BOOL),
      _field("enable_per_model_batching_params", 789, _F.TYPE_BOOL),
      _field("enable_saved_model_config", 790, _F.TYPE_BOOL),
      _field("mixed_precision", 791, _F.TYPE_STRING),
    ],
  )
  file.message_type.add(
    name="SavedModelBundleSourceAdapterConfig",
    field=[
      _field(
        "legacy_config",
        1000,
        _F.TYPE_MESSAGE,
        type_name=".tensorflow.serving.SessionBundleConfig",
      ),
    ],
  )
  file.message_type.add(
    name="PlatformConfig",
    field=[
      _field("source_adapter_config", 1, _F.TYPE_MESSAGE, type_name=".google.protobuf.Any"),
    ],
  )
  platform_configs = file.message_type.add(
    name="PlatformConfigMap",
    field=[
      _field(
        "platform_configs",
        1,
        _F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".tensorflow.serving.PlatformConfigMap.PlatformConfigsEntry",
      ),
    ],
  )
  platform_configs.nested_type.add(
    name="PlatformConfigsEntry",
    field=[
      _field("key", 1, _F.TYPE_STRING),
      _field("value", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.serving.PlatformConfig"),
    ],
    options=descriptor_pb2.MessageOptions(map_entry=True),
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


def _add_with_dependencies(
  pool: descriptor_pool.DescriptorPool, file: descriptor_lib.FileDescriptor, added: set
) -> None:
  if file.name in added:
    return
  for dependency in file.dependencies:
    _add_with_dependencies(pool, dependency, added)
  pool.Add(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb))
  added.add(file.name)


# A private pool, so these names cannot clash with a package that one day
# ships the real generated modules.
_POOL = descriptor_pool.DescriptorPool()
_added: set = set()
for _file in (
  wrappers_pb2.DESCRIPTOR,
  any_pb2.DESCRIPTOR,
  config_pb2.DESCRIPTOR,
  named_tensor_pb2.DESCRIPTOR,
):
  _add_with_dependencies(_POOL, _file, _added)
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
PlatformConfigMap = message_factory.GetMessageClass(
  _POOL.FindMessageTypeByName("tensorflow.serving.PlatformConfigMap")
)
SessionBundleConfig = message_factory.GetMessageClass(
  _POOL.FindMessageTypeByName("tensorflow.serving.SessionBundleConfig")
)
SavedModelBundleSourceAdapterConfig = message_factory.GetMessageClass(
  _POOL.FindMessageTypeByName(_SAVED_MODEL_ADAPTER_CONFIG)
)


def parse_text_proto(
  text: str, proto: message.Message, source: str = "<string>"
) -> message.Message:
  """Parses `text` into `proto` and returns it.

  Raises:
    ValueError: if the text is not a valid `proto` text format.
  """
  try:
    return text_format.Parse(text, proto, descriptor_pool=_POOL)
  except text_format.ParseError as e:
    raise ValueError(f"Invalid {proto.DESCRIPTOR.name} text proto in {source}: {e}") from None


def read_text_proto(path: str, proto: message.Message) -> message.Message:
  """Reads the text proto file at `path` (any tf.io.gfile path) into `proto`."""
  with tf.io.gfile.GFile(path, "r") as f:
    return parse_text_proto(f.read(), proto, source=path)


def parse_proto_text_file(path: str, proto: message.Message) -> message.Message:
  """Reads a flag's text proto file as tensorflow_model_server does (`ParseProtoTextFile`).

  A file that cannot be read fails with TensorFlow's file system status (for
  a missing file `NOT_FOUND: <path>; No such file or directory`). Text that
  does not parse is logged on stderr as protobuf's C++ parser logs it,
  `Error parsing text-format <message type>: <line>:<column>: <problem>`,
  and fails with `INVALID_ARGUMENT: Invalid protobuf file: '<path>'`
  (tensorflow_serving/util/proto_util.h:26-40). Protobuf's Python parser
  reports the column where the bad token starts; the C++ one may point just
  after it.

  Raises:
    ConfigError: as above.
  """
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except tf.errors.OpError as e:
    error = status.from_tf_error(e)
    raise ConfigError(error.code, error.message) from None
  try:
    text_format.Parse(data.decode("utf-8"), proto, descriptor_pool=_POOL)
  except (text_format.ParseError, UnicodeDecodeError) as e:
    where = ""
    if isinstance(e, text_format.ParseError) and e.GetLine() is not None:
      where = f"{e.GetLine()}:{e.GetColumn()}: "
    problem = str(e).split(" : ", 1)[-1] if where else str(e)
    print(
      f"[libprotobuf ERROR text_format.cc] Error parsing text-format "
      f"{proto.DESCRIPTOR.full_name}: {where}{problem}",
      file=sys.stderr,
      flush=True,
    )
    raise ConfigError(
      grpc.StatusCode.INVALID_ARGUMENT, f"Invalid protobuf file: '{path}'"
    ) from None
  return proto


def single_model_config(
  model_name: str, model_base_path: str
) -> model_server_config_pb2.ModelServerConfig:
  """The config that `--model_name` and `--model_base_path` stand for (server.cc:74-87)."""
  config = model_server_config_pb2.ModelServerConfig()
  model = config.model_config_list.config.add()
  model.name = model_name
  model.base_path = model_base_path
  model.model_platform = TENSORFLOW_PLATFORM
  return config


# tensorflow::io::ParseURI: a scheme is [a-zA-Z][0-9a-zA-Z.]* followed by "://".
_URI_SCHEME = re.compile(r"[a-zA-Z][0-9a-zA-Z.]*://")


def _is_relative_path(uri: str) -> bool:
  """server_core.cc `UriIsRelativePath`: no scheme, no host, not an absolute path."""
  return not _URI_SCHEME.match(uri) and not uri.startswith("/")


def model_platform(model: model_server_config_pb2.ModelConfig) -> str:
  """A model's platform, as server_core.cc's `GetPlatform` (48-76) decides it.

  Raises:
    ConfigError: INVALID_ARGUMENT when both or neither of model_type and
      model_platform are set, or model_type is OTHER.
  """
  model_type = model.model_type
  if model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
    logging.warning(
      "Deprecated ModelServerConfig::model_type field used. "
      "Prefer ModelServerConfig::model_platform."
    )
    if model.model_platform:
      raise ConfigError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "Illegal setting both ModelServerConfig::model_type (deprecated) and "
        f"ModelServerConfig::model_platform, model name is {model.name}",
      )
    if model_type == model_server_config_pb2.TENSORFLOW:
      return TENSORFLOW_PLATFORM
    raise ConfigError(
      grpc.StatusCode.INVALID_ARGUMENT,
      f"ModelServerConfig::model_type choice {model_type} not supported.",
    )
  if not model.model_platform:
    raise ConfigError(
      grpc.StatusCode.INVALID_ARGUMENT,
      "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
      f"ModelServerConfig::model_platform, model name is {model.name}",
    )
  return model.model_platform


def validate_model_server_config(
  config: model_server_config_pb2.ModelServerConfig,
  platforms: Iterable[str] = (TENSORFLOW_PLATFORM,),
) -> None:
  """Checks a ModelServerConfig as TensorFlow Serving's ServerCore does, then this server's limits.

  An empty config is valid: the server serves no model until a reload gives
  it some (server_core.cc:454-457, "Taking no action for empty config.").

  Args:
    config: the config.
    platforms: the platforms models may name (those of the platform config).

  Raises:
    ConfigError: with TensorFlow Serving's code and message for a custom
      model config (upstream aborts: `ModelServer does not yet support custom
      model config.`), a model listed twice, a relative base path
      (server_core.cc:88-122) or a bad platform (48-76; 571-580); then with
      INVALID_ARGUMENT for what this server adds: a model without a name, a
      negative `latest.num_versions` or label version.
  """
  choice = config.WhichOneof("config")
  if choice is None:
    return
  if choice != "model_config_list":
    raise ConfigError(
      grpc.StatusCode.UNIMPLEMENTED, "ModelServer does not yet support custom model config."
    )
  models = config.model_config_list.config
  names = set()
  for model in models:
    if model.name in names:
      raise ConfigError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Illegal to list model {model.name} multiple times in config list",
      )
    names.add(model.name)
  for model in models:
    if _is_relative_path(model.base_path):
      raise ConfigError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Expected model {model.name} to have an absolute path or URI; "
        f"got base_path()={model.base_path}",
      )
  platforms = frozenset(platforms)
  for model in models:
    platform = model_platform(model)
    if platform not in platforms:
      raise ConfigError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"PlatformConfigMap has no entry for platform {platform}",
      )
  for model in models:
    if not model.name:
      raise ConfigError(grpc.StatusCode.INVALID_ARGUMENT, "Every model config needs a name.")
    policy = model.model_version_policy
    if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
      raise ConfigError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Model {model.name!r}: latest.num_versions must be >= 0.",
      )
    for label, version in model.version_labels.items():
      if version < 0:
        raise ConfigError(
          grpc.StatusCode.INVALID_ARGUMENT,
          f"Model {model.name!r}: label {label!r} points at negative version {version}.",
        )


def load_model_server_config(path: str) -> model_server_config_pb2.ModelServerConfig:
  """Reads a ModelServerConfig file as tensorflow_model_server does (`parse_proto_text_file`)."""
  return parse_proto_text_file(path, model_server_config_pb2.ModelServerConfig())


def load_monitoring_config(path: Optional[str]):
  """Reads a MonitoringConfig file; an empty path gives monitoring disabled.

  As in TensorFlow Serving, an enabled Prometheus config with no path uses
  `DEFAULT_PROMETHEUS_PATH` (util/prometheus_exporter.cc:156-157).

  Raises:
    ConfigError: as `parse_proto_text_file`.
  """
  config = MonitoringConfig()
  if path:
    parse_proto_text_file(path, config)
  if config.prometheus_config.enable and not config.prometheus_config.path:
    config.prometheus_config.path = DEFAULT_PROMETHEUS_PATH
  return config


def load_ssl_config(path: str):
  """Reads an SSLConfig text proto file."""
  return parse_proto_text_file(path, SSLConfig())


def load_platform_configs(path: str) -> Dict[str, message.Message]:
  """`--platform_config_file`: each platform's `SessionBundleConfig`.

  A `PlatformConfigMap` maps a platform name to its source adapter's config,
  an `Any`. This server has one adapter, TensorFlow Serving's SavedModel one
  (`SavedModelBundleSourceAdapterConfig`, whose `legacy_config` is a
  `SessionBundleConfig`); the models of each platform listed are loaded with
  that platform's settings.

  Returns:
    `{platform: SessionBundleConfig}`.

  Raises:
    ConfigError: for a file that does not parse (as `parse_proto_text_file`),
      or an adapter config of another type (INVALID_ARGUMENT, naming it).
  """
  platform_config_map = parse_proto_text_file(path, PlatformConfigMap())
  configs = {}
  for platform, platform_config in sorted(platform_config_map.platform_configs.items()):
    adapter_config = platform_config.source_adapter_config
    type_name = adapter_config.type_url.rsplit("/", 1)[-1]
    if type_name != _SAVED_MODEL_ADAPTER_CONFIG:
      raise ConfigError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Platform {platform}: source adapter config {type_name or '(none)'} is not supported; "
        f"this server loads models with {_SAVED_MODEL_ADAPTER_CONFIG} only.",
      )
    adapter = SavedModelBundleSourceAdapterConfig.FromString(adapter_config.value)
    configs[platform] = adapter.legacy_config
  return configs
