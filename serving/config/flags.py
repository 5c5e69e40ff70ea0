"""The command line: every tensorflow_model_server flag of TensorFlow Serving 2.16, and ours.

`parse_command_line` reads a command line as tensorflow_model_server reads
its own: TensorFlow's `Flags::Parse` (tensorflow/core/util/command_line_flags.cc,
now tsl/util/command_line_flags.cc) over the flag list of
tensorflow_serving/model_servers/main.cc:86-305 (tag 2.16.1), with the names,
types and defaults there (defaults from model_servers/server.h:39-108 and
server.cc:150-152). So:

- only `--name=value` sets an int, float or string flag; a bool flag takes
  `--name`, `--name=true` or `--name=false`, nothing else;
- a value that does not parse is an error (`Couldn't interpret value ...`),
  and so is `--help` as the first argument left over: then `main` prints
  the usage to stdout and exits with status 255 (main.cc:307-311);
- any other argument (`--port 9000` in two words, `-port=1`, `--nosuch=1`)
  is left over, reported on stdout as `unknown argument: ...` with the
  usage, and the server starts anyway (main.cc:324-326).

The flags that only the C++ binary can act on are accepted and logged once
as having no effect here (`NO_EFFECT`). This server's own flags come after
TensorFlow Serving's and follow the same rules. `ServerOptions` holds them
all; tests build it directly.
"""

import dataclasses
import logging
import os
import re
from typing import Dict
from typing import FrozenSet
from typing import List
from typing import Sequence
from typing import Tuple

from next_category.serving.observability import audit as audit_lib
from next_category.serving.observability import request_log

# The TensorFlow Serving release whose command line, APIs and metrics this server speaks.
TF_SERVING_VERSION = "2.16.1"
# What `--version` prints after it, in place of upstream's `+dev.sha.<git hash>`
# (model_servers/version.h:47-73): this is not a build of TensorFlow Serving.
_VERSION_SUFFIX = "+python"

# gRPC answers RESOURCE_EXHAUSTED beyond this many requests in progress.
_MAX_CONCURRENT_RPCS = 1024
# Requests (gRPC messages, REST bodies) above this are refused before they are
# decoded: a request costs the server a bounded amount of memory.
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
DEFAULT_SAVED_MODEL_TAGS = "serve"


def schedulable_cpus() -> int:
  """`port::NumSchedulableCPUs()`: the CPUs this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


@dataclasses.dataclass
class ServerOptions:
  """The server's settings; each field is the flag of that name (see `FLAGS`).

  The first group are tensorflow_model_server's flags with its defaults. The
  second are this server's own: `host` (tensorflow_model_server always binds
  every interface; here the default is loopback, README "Serving in
  production"), request limits, the start-up deadline, access control, REST
  TLS, the audit log, request log bounds, model signatures and the reload
  switch.

  The two `*_poll_wait_seconds` flags are int32 on the command line as
  upstream; in-process callers (tests) may poll faster with a fraction.
  """

  # tensorflow_model_server (model_servers/main.cc), in its order.
  port: int = 8500
  grpc_socket_path: str = ""
  rest_api_port: int = 0
  rest_api_num_threads: int = dataclasses.field(default_factory=lambda: 4 * schedulable_cpus())
  rest_api_timeout_in_ms: int = 30_000
  rest_api_enable_cors_support: bool = False
  enable_batching: bool = False
  allow_version_labels_for_unavailable_models: bool = False
  batching_parameters_file: str = ""
  enable_per_model_batching_parameters: bool = False
  model_config_file: str = ""
  model_config_file_poll_wait_seconds: float = 0
  model_name: str = "default"
  model_base_path: str = ""
  num_load_threads: int = 0
  num_unload_threads: int = 0
  max_num_load_retries: int = 5
  load_retry_interval_micros: int = 60_000_000
  file_system_poll_wait_seconds: float = 1
  flush_filesystem_caches: bool = True
  tensorflow_session_parallelism: int = 0
  tensorflow_session_config_file: str = ""
  tensorflow_intra_op_parallelism: int = 0
  tensorflow_inter_op_parallelism: int = 0
  use_alts_credentials: bool = False
  ssl_config_file: str = ""
  platform_config_file: str = ""
  per_process_gpu_memory_fraction: float = 0.0
  # Comma-separated as upstream; session_bundle.load_settings gives the loader its tuple.
  saved_model_tags: str = DEFAULT_SAVED_MODEL_TAGS
  grpc_channel_arguments: str = ""
  grpc_max_threads: int = dataclasses.field(default_factory=lambda: 4 * schedulable_cpus())
  enable_model_warmup: bool = True
  num_request_iterations_for_warmup: int = 0
  version: bool = False
  monitoring_config_file: str = ""
  remove_unused_fields_from_bundle_metagraph: bool = True
  prefer_tflite_model: bool = False
  num_tflite_pools: int = dataclasses.field(default_factory=schedulable_cpus)
  num_tflite_interpreters_per_pool: int = 1
  enable_signature_method_name_check: bool = False
  xla_cpu_compilation_enabled: bool = False
  # TensorFlow Serving's default is true; off here, deliberately: its Profile
  # RPC writes files where the client says (serving/apis/grpc/profiler.py).
  enable_profiler: bool = False
  thread_pool_factory_config_file: str = ""
  mixed_precision: str = ""
  skip_initialize_tpu: bool = False
  enable_grpc_healthcheck_service: bool = False
  # This server's own.
  host: str = "127.0.0.1"
  grpc_max_concurrent_rpcs: int = _MAX_CONCURRENT_RPCS
  max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
  model_load_timeout_seconds: float = 60.0
  enable_model_config_reload: bool = False
  auth_tokens_file: str = ""
  jwt_public_key_file: str = ""
  jwt_secret_file: str = ""
  jwt_audience: str = ""
  protect_metrics: bool = False
  rest_ssl_cert_file: str = ""
  rest_ssl_key_file: str = ""
  audit_log_file: str = ""
  audit_log_max_bytes: int = audit_lib.DEFAULT_MAX_BYTES
  audit_log_backup_count: int = audit_lib.DEFAULT_BACKUP_COUNT
  request_log_max_file_bytes: int = request_log.DEFAULT_MAX_FILE_BYTES
  request_log_max_files: int = request_log.DEFAULT_MAX_FILES
  model_verification_key_file: str = ""
  rest_header_timeout_seconds: float = 10.0
  rest_body_timeout_seconds: float = 30.0
  rest_max_connections_per_client: int = 256
  max_request_bytes_before_auth: int = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Flag:
  """One command-line flag.

  Attributes:
    name: the flag's name (and `ServerOptions`' field).
    kind: "int32", "int64", "float", "bool" or "string", as `Flags::Usage` names them.
    help: the usage text.
    upstream: a tensorflow_model_server flag (main.cc), not one of ours.
    no_effect: why setting it changes nothing here (a C++-only flag); empty
      when the flag is honoured.
  """

  name: str
  kind: str
  help: str
  upstream: bool = True
  no_effect: str = ""


def _ours(name: str, kind: str, help_text: str) -> Flag:
  return Flag(name, kind, help_text, upstream=False)


_CPP = "it configures the C++ binary's "

# tensorflow_model_server's flags in main.cc's order (86-305), then ours.
FLAGS: Tuple[Flag, ...] = (
  Flag("port", "int32", "TCP port for the gRPC API; 0 turns it off."),
  Flag("grpc_socket_path", "string", "If set, also serve gRPC on this UNIX socket path."),
  Flag(
    "rest_api_port",
    "int32",
    "Port for the HTTP/REST API; 0 (the default) turns it off. Must differ from --port.",
  ),
  Flag("rest_api_num_threads", "int32", "Threads answering HTTP/REST requests (4 x CPUs)."),
  Flag("rest_api_timeout_in_ms", "int32", "Timeout of an HTTP/REST call; 0 or less: none."),
  Flag(
    "rest_api_enable_cors_support",
    "bool",
    "Add CORS headers to HTTP/REST responses.",
  ),
  Flag("enable_batching", "bool", "Batch requests together."),
  Flag(
    "allow_version_labels_for_unavailable_models",
    "bool",
    "Allow version labels to point at versions not yet available.",
    no_effect="this server always allows it",
  ),
  Flag(
    "batching_parameters_file",
    "string",
    "A text BatchingParameters file (needs --enable_batching).",
  ),
  Flag(
    "enable_per_model_batching_parameters",
    "bool",
    "Read batching_params.pbtxt from each SavedModel directory.",
    no_effect="every model uses --batching_parameters_file here",
  ),
  Flag(
    "model_config_file",
    "string",
    "A text ModelServerConfig: the models to serve (then --model_name and "
    "--model_base_path are ignored).",
  ),
  Flag(
    "model_config_file_poll_wait_seconds",
    "int32",
    "Re-read --model_config_file this often; 0 reads it once.",
  ),
  Flag("model_name", "string", "Name of the model (ignored with --model_config_file)."),
  Flag(
    "model_base_path",
    "string",
    "Absolute path of the model's numbered version directories (ignored with --model_config_file).",
  ),
  Flag(
    "num_load_threads",
    "int32",
    "Threads loading servables; 0 loads them one at a time.",
    no_effect="versions load one at a time here, as with 0",
  ),
  Flag(
    "num_unload_threads",
    "int32",
    "Threads unloading servables.",
    no_effect="versions unload one at a time here",
  ),
  Flag("max_num_load_retries", "int32", "Retries of a failed load after the first try."),
  Flag(
    "load_retry_interval_micros",
    "int64",
    "Wait between load retries; negative: no wait.",
  ),
  Flag(
    "file_system_poll_wait_seconds",
    "int32",
    "Poll the base paths for new versions this often; 0 once; negative never.",
  ),
  Flag(
    "flush_filesystem_caches",
    "bool",
    "Flush file system caches after loads.",
    no_effect=_CPP + "TensorFlow file system caches",
  ),
  Flag(
    "tensorflow_session_parallelism",
    "int64",
    "Threads of TensorFlow's intra-op and inter-op pools; 0: auto.",
  ),
  Flag(
    "tensorflow_session_config_file",
    "string",
    "A text ConfigProto; its thread pool sizes are used.",
  ),
  Flag("tensorflow_intra_op_parallelism", "int64", "TensorFlow intra-op threads; 0: auto."),
  Flag("tensorflow_inter_op_parallelism", "int64", "TensorFlow inter-op threads; 0: auto."),
  Flag("use_alts_credentials", "bool", "Serve gRPC with Google ALTS credentials."),
  Flag("ssl_config_file", "string", "A text SSLConfig: TLS for the gRPC API."),
  Flag(
    "platform_config_file",
    "string",
    "A text PlatformConfigMap (then --enable_batching and the session flags are ignored).",
  ),
  Flag(
    "per_process_gpu_memory_fraction",
    "float",
    "Fraction of GPU memory to take.",
    no_effect=_CPP + "GPU allocator",
  ),
  Flag("saved_model_tags", "string", "Comma-separated tags of the MetaGraph to load."),
  Flag("grpc_channel_arguments", "string", "gRPC server arguments: key=value,key=value."),
  Flag(
    "grpc_max_threads",
    "int32",
    "Most gRPC server threads.",
    no_effect=_CPP + "gRPC ResourceQuota; gRPC runs on one event loop here",
  ),
  Flag("enable_model_warmup", "bool", "Replay assets.extra/tf_serving_warmup_requests at load."),
  Flag(
    "num_request_iterations_for_warmup",
    "int32",
    "Replay each warmup record this many times (used if > 0).",
  ),
  Flag("version", "bool", "Print the versions and exit."),
  Flag(
    "monitoring_config_file",
    "string",
    "A text MonitoringConfig: Prometheus metrics on the REST port.",
  ),
  Flag(
    "remove_unused_fields_from_bundle_metagraph",
    "bool",
    "Keep only the signatures of a loaded MetaGraph.",
    no_effect=_CPP + "SavedModelBundle memory",
  ),
  Flag("prefer_tflite_model", "bool", "Serve model.tflite where a version has one."),
  Flag(
    "num_tflite_pools",
    "int32",
    "TFLite interpreter pools per model.",
    no_effect=_CPP + "TfLiteSession",
  ),
  Flag(
    "num_tflite_interpreters_per_pool",
    "int32",
    "TFLite interpreters per pool.",
    no_effect=_CPP + "TfLiteSession",
  ),
  Flag(
    "enable_signature_method_name_check",
    "bool",
    "Classify and Regress accept only signatures of their method name.",
  ),
  Flag(
    "xla_cpu_compilation_enabled",
    "bool",
    "Enable XLA:CPU JIT compilation.",
    no_effect="TensorFlow's Python runtime compiles what a model asks it to",
  ),
  Flag(
    "enable_profiler",
    "bool",
    "Serve tensorflow.ProfilerService on the gRPC port (off by default here).",
  ),
  Flag(
    "thread_pool_factory_config_file",
    "string",
    "A text ThreadPoolConfig of custom thread pools.",
    no_effect=_CPP + "thread pool factories",
  ),
  Flag(
    "mixed_precision",
    "string",
    "Mixed precision mode (bfloat16).",
    no_effect=_CPP + "oneDNN graph rewrite",
  ),
  Flag(
    "skip_initialize_tpu",
    "bool",
    "Do not initialise the TPU system.",
    no_effect="there is no TPU support here",
  ),
  Flag(
    "enable_grpc_healthcheck_service",
    "bool",
    "Serve grpc.health.v1.Health on the gRPC port.",
  ),
  _ours("host", "string", "Address to bind; 0.0.0.0 for every interface (upstream binds all)."),
  _ours("grpc_max_concurrent_rpcs", "int32", "Requests in progress before RESOURCE_EXHAUSTED."),
  _ours(
    "max_request_bytes",
    "int64",
    "Largest gRPC request message and REST body; larger ones are refused unread.",
  ),
  _ours(
    "model_load_timeout_seconds",
    "float",
    "Exit if a model has no servable version after this long (at once if none can load).",
  ),
  _ours(
    "enable_model_config_reload",
    "bool",
    "Allow the HandleReloadConfigRequest RPC (behind access control when that is on).",
  ),
  _ours("auth_tokens_file", "string", "Access control: lines of TOKEN PRINCIPAL [MODEL,...]."),
  _ours("jwt_public_key_file", "string", "Access control: PEM key checking RS256/ES256 JWTs."),
  _ours("jwt_secret_file", "string", "Access control: file holding the HS256 JWT secret."),
  _ours("jwt_audience", "string", "The aud claim JWTs must carry."),
  _ours("protect_metrics", "bool", "With access control on, the metrics need credentials too."),
  _ours("rest_ssl_cert_file", "string", "PEM certificate chain: serve REST over HTTPS."),
  _ours("rest_ssl_key_file", "string", "PEM private key of --rest_ssl_cert_file."),
  _ours("audit_log_file", "string", "Append one JSON line per request to this file (rotated)."),
  _ours("audit_log_max_bytes", "int64", "Rotate the audit log at this size."),
  _ours("audit_log_backup_count", "int32", "Rotated audit log files kept."),
  _ours("request_log_max_file_bytes", "int64", "Request log: record bytes per file."),
  _ours("request_log_max_files", "int32", "Request log: files kept per model."),
  _ours(
    "model_verification_key_file",
    "string",
    "ECDSA public key (PEM, `make keygen`): load only versions signed with it for their model "
    "name and version (OpenSSF model signing), verified and loaded from a private copy.",
  ),
  _ours(
    "rest_header_timeout_seconds",
    "float",
    "REST: a request's whole header must arrive within this of the connection opening or "
    "the previous answer (also how long an idle keep-alive connection stays open).",
  ),
  _ours("rest_body_timeout_seconds", "float", "REST: a request's whole body within this."),
  _ours(
    "rest_max_connections_per_client",
    "int32",
    "REST: open connections from one client address at most; 0: no cap.",
  ),
  _ours(
    "max_request_bytes_before_auth",
    "int64",
    "With access control on: the most of a REST body read before the request's credentials "
    "checked out (they are checked from the headers; a refused body is never read).",
  ),
)
FLAGS_BY_NAME: Dict[str, Flag] = {flag.name: flag for flag in FLAGS}

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# sscanf("%d%c") / ("%lld%c"): optional white space, a sign, decimal digits, nothing after.
_INT_TEXT = re.compile(r"\s*[+-]?\d+")
# sscanf("%f%c"): a C float, hexadecimal, inf and nan included, nothing after.
_FLOAT_TEXT = re.compile(
  r"\s*[+-]?(?:inf(?:inity)?|nan(?:\([0-9a-z_]*\))?|0x[0-9a-f]*\.?[0-9a-f]*(?:p[+-]?\d+)?"
  r"|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)",
  re.IGNORECASE,
)


@dataclasses.dataclass
class CommandLine:
  """A parsed command line.

  Attributes:
    options: the settings, defaults where a flag was not given.
    ok: False if a value did not parse or `--help` came first among the
      arguments left over (main.cc then prints the usage and exits with 255).
    unknown: the arguments no flag took, in order (main.cc reports the first).
    given: the names of the flags the command line set.
    errors: `Couldn't interpret value ...` messages, as TensorFlow logs them.
  """

  options: ServerOptions
  ok: bool = True
  unknown: List[str] = dataclasses.field(default_factory=list)
  given: FrozenSet[str] = frozenset()
  errors: List[str] = dataclasses.field(default_factory=list)


def _parse_value(flag: Flag, arg: str) -> Tuple[bool, bool, object]:
  """One flag's reading of one argument, as `Flag::Parse` does it.

  Returns:
    `(matched, value_ok, value)`: whether the argument is this flag's, and if
    so whether its value parsed.
  """
  prefix = f"--{flag.name}"
  if not arg.startswith(prefix):
    return False, True, None
  rest = arg[len(prefix) :]
  if flag.kind == "bool":
    # ParseBoolFlag: the name alone, =true or =false; anything else after the
    # name (even "x" in --enable_batchingx) is this flag's bad value.
    if rest in ("", "=true"):
      return True, True, True
    if rest == "=false":
      return True, True, False
    return True, False, rest
  if not rest.startswith("="):
    return False, True, None
  value = rest[1:]
  if flag.kind == "string":
    return True, True, value
  if flag.kind in _INT_RANGES:
    low, high = _INT_RANGES[flag.kind]
    if _INT_TEXT.fullmatch(value) and low <= int(value) <= high:
      return True, True, int(value)
    return True, False, value
  if _FLOAT_TEXT.fullmatch(value):
    text = value.strip()
    return True, True, float.fromhex(text) if "0x" in text.lower() else float(text)
  return True, False, value


def parse_command_line(argv: Sequence[str]) -> CommandLine:
  """Reads `argv` (without the program name) as TensorFlow's `Flags::Parse` does.

  Each argument goes to the first flag of `FLAGS` that takes it; `--` and
  everything after it are left over. A bad value is logged and makes the
  result not ok; parsing goes on, as there.
  """
  values: Dict[str, object] = {}
  unknown: List[str] = []
  errors: List[str] = []
  ok = True
  args = list(argv)
  for i, arg in enumerate(args):
    if arg == "--":
      unknown.extend(args[i:])
      break
    for flag in FLAGS:
      matched, value_ok, value = _parse_value(flag, arg)
      if not matched:
        continue
      if value_ok:
        values[flag.name] = value
      else:
        ok = False
        errors.append(f"Couldn't interpret value {value} for flag {flag.name}.")
      break
    else:
      unknown.append(arg)
  if unknown and unknown[0] == "--help":
    ok = False
  return CommandLine(
    options=ServerOptions(**values),
    ok=ok,
    unknown=unknown,
    given=frozenset(values),
    errors=errors,
  )


class FlagError(ValueError):
  """A command line that tensorflow_model_server would refuse."""


def parse_flags(argv: Sequence[str]) -> ServerOptions:
  """The settings of a command line (for callers that only want the options).

  Raises:
    FlagError: for a value that does not parse, `--help`, or an argument no
      flag takes.
  """
  command_line = parse_command_line(argv)
  if command_line.errors:
    raise FlagError(" ".join(command_line.errors))
  if command_line.unknown:
    raise FlagError(f"unknown argument: {command_line.unknown[0]}")
  return command_line.options


def _default_text(flag: Flag) -> str:
  default = getattr(ServerOptions(), flag.name)
  if flag.kind == "bool":
    return "true" if default else "false"
  if flag.kind == "string":
    return f'"{default}"'
  if flag.kind == "float":
    return f"{default:f}"
  return str(int(default))


def usage(program: str) -> str:
  """The usage text, laid out as `Flags::Usage` lays it out."""
  lines = [f"usage: {program}\nFlags:\n"]
  for flag in FLAGS:
    text = f"--{flag.name}={_default_text(flag)}"
    lines.append(f"\t{text:<33}\t{flag.kind}\t{flag.help}\n")
  return "".join(lines)


def version_text() -> str:
  """What `--version` prints (main.cc:318-322): this server's version and TensorFlow's."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top (only --version needs it)

  return (
    f"TensorFlow ModelServer: {TF_SERVING_VERSION}{_VERSION_SUFFIX}\n"
    f"TensorFlow Library: {tf.__version__}\n"
  )


def log_flags_without_effect(options: ServerOptions) -> List[str]:
  """Logs, once each, the flags set to other than their default that change nothing here.

  Returns:
    the names of those flags.
  """
  defaults = ServerOptions()
  names = [
    flag.name
    for flag in FLAGS
    if flag.no_effect and getattr(options, flag.name) != getattr(defaults, flag.name)
  ]
  for name in names:
    logging.warning("--%s has no effect in this server: %s.", name, FLAGS_BY_NAME[name].no_effect)
  return names
