"""How models load, from the flags or `--platform_config_file`: a SessionBundleConfig.

tensorflow_model_server turns its loading flags into a `SessionBundleConfig`
for the `tensorflow` platform (model_servers/server.cc:217-300), unless
`--platform_config_file` gives a `PlatformConfigMap` whose SavedModel
adapter configs carry one each (then the batching and session flags are
ignored). `load_settings` does the same and keeps what this server acts on:
batching, TensorFlow's thread pools, the MetaGraph tags, warmup and
`prefer_tflite_model`. What a platform config sets beyond that is logged as
having no effect here.
"""

import dataclasses
import logging
from typing import FrozenSet
from typing import Optional
from typing import Tuple

import grpc
from google.protobuf import message
from tensorflow.core.protobuf import config_pb2

from next_category.serving.config import flags
from next_category.serving.config import server_config

# The thread pool --enable_batching's default parameters name (server.cc:226-228).
DEFAULT_BATCH_THREAD_POOL = "model_server_batch_threads"
# SessionBundleConfig fields this server acts on; others are logged as having no effect.
_HONOURED_FIELDS = frozenset(
  (
    "session_config",
    "batching_parameters",
    "saved_model_tags",
    "enable_model_warmup",
    "model_warmup_options",
    "prefer_tflite_model",
  )
)


@dataclasses.dataclass(frozen=True)
class LoadSettings:
  """What the server loads models with.

  Attributes:
    platforms: the model platforms models may name.
    batching_parameters: a `BatchingParameters` proto; None: no batching.
    intra_op_threads: TensorFlow's intra-op pool size; 0: TensorFlow's choice.
    inter_op_threads: TensorFlow's inter-op pool size; 0: TensorFlow's choice.
    saved_model_tags: the tags of the MetaGraph to load.
    enable_model_warmup: replay each version's warmup requests.
    num_request_iterations_for_warmup: replay each record so often (if > 0).
    prefer_tflite_model: serve model.tflite where a version has one.
  """

  platforms: FrozenSet[str]
  batching_parameters: Optional[message.Message]
  intra_op_threads: int
  inter_op_threads: int
  saved_model_tags: Tuple[str, ...]
  enable_model_warmup: bool
  num_request_iterations_for_warmup: int
  prefer_tflite_model: bool


def _from_flags(options: flags.ServerOptions) -> message.Message:
  """The SessionBundleConfig server.cc:220-300 builds from the flags.

  Raises:
    ConfigError: with TensorFlow Serving's status for a batching file
      without --enable_batching, a file that does not parse, or all three
      parallelism flags set.
  """
  config = server_config.SessionBundleConfig()
  if options.enable_batching:
    if options.batching_parameters_file:
      server_config.parse_proto_text_file(
        options.batching_parameters_file, config.batching_parameters
      )
    else:
      config.batching_parameters.thread_pool_name.value = DEFAULT_BATCH_THREAD_POOL
  elif options.batching_parameters_file:
    raise server_config.ConfigError(
      grpc.StatusCode.INVALID_ARGUMENT,
      "server_options.batching_parameters_file is set without setting "
      "server_options.enable_batching to true.",
    )
  if options.tensorflow_session_config_file:
    session_config = config_pb2.ConfigProto()
    server_config.parse_proto_text_file(options.tensorflow_session_config_file, session_config)
    config.session_config.ParseFromString(session_config.SerializeToString())
    logging.warning(
      "--tensorflow_session_config_file has no effect in this server beyond its thread "
      "pool sizes, which the parallelism flags set (as in TensorFlow Serving)."
    )
  intra = options.tensorflow_intra_op_parallelism
  inter = options.tensorflow_inter_op_parallelism
  both = options.tensorflow_session_parallelism
  if intra > 0 and inter > 0 and both > 0:
    raise server_config.ConfigError(
      grpc.StatusCode.INVALID_ARGUMENT,
      "Either configure server_options.tensorflow_session_parallelism or "
      "(server_options.tensorflow_intra_op_parallelism, "
      "server_options.tensorflow_inter_op_parallelism) separately. You cannot configure all.",
    )
  if intra > 0 or inter > 0:
    config.session_config.intra_op_parallelism_threads = intra
    config.session_config.inter_op_parallelism_threads = inter
  else:
    config.session_config.intra_op_parallelism_threads = both
    config.session_config.inter_op_parallelism_threads = both
  config.saved_model_tags.extend(
    options.saved_model_tags.split(",") if options.saved_model_tags else []
  )
  config.enable_model_warmup = options.enable_model_warmup
  if options.num_request_iterations_for_warmup > 0:
    config.model_warmup_options.num_request_iterations.value = (
      options.num_request_iterations_for_warmup
    )
  config.prefer_tflite_model = options.prefer_tflite_model
  return config


def _from_platform_config_file(path: str) -> Tuple[FrozenSet[str], message.Message]:
  """The platforms of `--platform_config_file` and the SessionBundleConfig they share.

  Raises:
    ConfigError: for a file that does not parse, an adapter config of another
      type, or platforms with different SessionBundleConfigs (this server
      loads every model one way).
  """
  configs = server_config.load_platform_configs(path)
  if not configs:
    raise server_config.ConfigError(
      grpc.StatusCode.INVALID_ARGUMENT, f"--platform_config_file {path} lists no platform."
    )
  distinct = {config.SerializeToString(deterministic=True) for config in configs.values()}
  if len(distinct) > 1:
    raise server_config.ConfigError(
      grpc.StatusCode.INVALID_ARGUMENT,
      f"--platform_config_file {path}: platforms {', '.join(sorted(configs))} have different "
      "SessionBundleConfigs; this server loads every model with one.",
    )
  config = next(iter(configs.values()))
  for field, _ in config.ListFields():
    if field.name not in _HONOURED_FIELDS:
      logging.warning(
        "--platform_config_file: SessionBundleConfig.%s has no effect in this server.", field.name
      )
  return frozenset(configs), config


def load_settings(options: flags.ServerOptions) -> LoadSettings:
  """How models load under these options (see the module docstring).

  Raises:
    ConfigError: as `_from_flags` and `_from_platform_config_file`.
  """
  if options.platform_config_file:
    platforms, config = _from_platform_config_file(options.platform_config_file)
  else:
    platforms, config = frozenset((server_config.TENSORFLOW_PLATFORM,)), _from_flags(options)
  warmup_options = config.model_warmup_options
  return LoadSettings(
    platforms=platforms,
    batching_parameters=(
      config.batching_parameters if config.HasField("batching_parameters") else None
    ),
    intra_op_threads=config.session_config.intra_op_parallelism_threads,
    inter_op_threads=config.session_config.inter_op_parallelism_threads,
    saved_model_tags=tuple(config.saved_model_tags) or (flags.DEFAULT_SAVED_MODEL_TAGS,),
    enable_model_warmup=config.enable_model_warmup,
    num_request_iterations_for_warmup=(
      warmup_options.num_request_iterations.value
      if warmup_options.HasField("num_request_iterations")
      else 0
    ),
    prefer_tflite_model=config.prefer_tflite_model,
  )
