"""The server's command-line flags: tensorflow_model_server's, and this server's own.

`parse_flags` turns a command line into `ServerOptions`, the settings
`ModelServer` (serving/model_server.py) is built from; tests build
`ServerOptions` directly.
"""

import argparse
import dataclasses
from typing import Optional
from typing import Sequence

from serving.observability import audit as audit_lib
from serving.observability import request_log

# gRPC answers RESOURCE_EXHAUSTED beyond this many requests in progress.
_MAX_CONCURRENT_RPCS = 1024
# Requests (gRPC messages, REST bodies) above this are refused before they are
# decoded: a request costs the server a bounded amount of memory.
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024


@dataclasses.dataclass
class ServerOptions:
  """The server's settings; each field is the tensorflow_model_server flag of that name.

  Fields that tensorflow_model_server does not have: `host` (it always binds
  every interface; here the default is loopback, README "Serving in
  production"), `grpc_max_concurrent_rpcs`, `max_request_bytes`, and the
  production settings after `model_load_timeout_seconds` (access control,
  REST TLS, audit log, request log bounds, signature checks, reload switch).
  """

  port: int = 8500
  rest_api_port: int = 8501
  host: str = "127.0.0.1"
  model_name: str = "default"
  model_base_path: str = ""
  model_config_file: str = ""
  model_config_file_poll_wait_seconds: float = 0.0
  file_system_poll_wait_seconds: float = 1.0
  enable_batching: bool = False
  batching_parameters_file: str = ""
  monitoring_config_file: str = ""
  ssl_config_file: str = ""
  max_num_load_retries: int = 5
  load_retry_interval_micros: int = 60_000_000
  prefer_tflite_model: bool = False
  saved_model_tags: str = "serve"
  # TensorFlow Serving's default is true; off here: Profile writes files
  # where the client says (serving/apis/grpc/profiler.py).
  enable_profiler: bool = False
  enable_signature_method_name_check: bool = False
  rest_api_num_threads: int = 64
  rest_api_timeout_in_ms: int = 30_000
  tensorflow_intra_op_parallelism: int = 0
  tensorflow_inter_op_parallelism: int = 0
  grpc_channel_arguments: str = ""
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


def _bool(value: str) -> bool:
  if value.lower() in ("1", "true", "yes"):
    return True
  if value.lower() in ("0", "false", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_flags(argv: Optional[Sequence[str]] = None) -> ServerOptions:
  """Parses tensorflow_model_server's flags into ServerOptions."""
  defaults = ServerOptions()
  parser = argparse.ArgumentParser(
    prog="python -m serving.server",
    description="A model server with TensorFlow Serving's gRPC and REST APIs.",
  )

  def flag(name, kind, help_text):
    kwargs = dict(default=getattr(defaults, name), help=f"{help_text} (default: %(default)s)")
    if kind is bool:
      kwargs.update(type=_bool, nargs="?", const=True, metavar="true|false")
    else:
      kwargs.update(type=kind)
    parser.add_argument(f"--{name}", **kwargs)

  flag("port", int, "Port for the gRPC API.")
  flag("rest_api_port", int, "Port for the HTTP/REST API; 0 turns it off.")
  flag(
    "host",
    str,
    "Address to bind; 0.0.0.0 for every interface (tensorflow_model_server binds all).",
  )
  flag("model_name", str, "Name of the model (ignored with --model_config_file).")
  flag(
    "model_base_path",
    str,
    "Directory of numbered version directories (ignored with --model_config_file).",
  )
  flag(
    "model_config_file",
    str,
    "A ModelServerConfig text proto: several models, version policies, labels.",
  )
  flag(
    "model_config_file_poll_wait_seconds",
    float,
    "Re-read --model_config_file this often; 0 reads it once.",
  )
  flag(
    "file_system_poll_wait_seconds",
    float,
    "Poll the base paths for new versions this often; 0 polls once.",
  )
  flag("enable_batching", bool, "Batch requests together (see --batching_parameters_file).")
  flag("batching_parameters_file", str, "A BatchingParameters text proto.")
  flag(
    "monitoring_config_file",
    str,
    "A MonitoringConfig text proto; turns on Prometheus metrics on the REST port.",
  )
  flag("ssl_config_file", str, "An SSLConfig text proto for the gRPC port.")
  flag("max_num_load_retries", int, "Times a failed version load is retried.")
  flag("load_retry_interval_micros", int, "Wait before retrying a failed load.")
  flag(
    "prefer_tflite_model", bool, "Serve model.tflite when a version holds it next to a SavedModel."
  )
  flag("saved_model_tags", str, "Comma-separated tags of the MetaGraphDef to load.")
  flag(
    "enable_profiler",
    bool,
    "Serve tensorflow.ProfilerService on the gRPC port (off by default here; see README).",
  )
  flag(
    "enable_signature_method_name_check",
    bool,
    "Classify and Regress accept only signatures of their method name.",
  )
  flag("rest_api_num_threads", int, "Connections the REST API serves at once.")
  flag("rest_api_timeout_in_ms", int, "Timeout of a REST request.")
  flag("tensorflow_intra_op_parallelism", int, "TensorFlow intra-op threads; 0: auto.")
  flag("tensorflow_inter_op_parallelism", int, "TensorFlow inter-op threads; 0: auto.")
  flag("grpc_channel_arguments", str, "gRPC server arguments, as key=value,key=value.")
  flag("grpc_max_concurrent_rpcs", int, "Requests in progress before RESOURCE_EXHAUSTED.")
  flag(
    "max_request_bytes",
    int,
    "Largest gRPC request message and REST body; larger ones are refused unread.",
  )
  flag(
    "model_load_timeout_seconds",
    float,
    "Exit non-zero if a model has no servable version after this long (at once if none can load).",
  )
  flag(
    "enable_model_config_reload",
    bool,
    "Allow the HandleReloadConfigRequest RPC (behind access control when that is on).",
  )
  flag("auth_tokens_file", str, "Access control: lines of TOKEN PRINCIPAL [MODEL,...].")
  flag("jwt_public_key_file", str, "Access control: PEM key checking RS256/ES256 JWTs.")
  flag("jwt_secret_file", str, "Access control: file holding the HS256 JWT secret.")
  flag("jwt_audience", str, "The aud claim JWTs must carry.")
  flag("protect_metrics", bool, "With access control on, the metrics need credentials too.")
  flag("rest_ssl_cert_file", str, "PEM certificate chain: serve REST over HTTPS.")
  flag("rest_ssl_key_file", str, "PEM private key of --rest_ssl_cert_file.")
  flag("audit_log_file", str, "Append one JSON line per request to this file (rotated).")
  flag("audit_log_max_bytes", int, "Rotate the audit log at this size.")
  flag("audit_log_backup_count", int, "Rotated audit log files kept.")
  flag("request_log_max_file_bytes", int, "Request log: record bytes per file.")
  flag("request_log_max_files", int, "Request log: files kept per model.")
  flag(
    "model_verification_key_file",
    str,
    "Ed25519 public key: load only versions signed with it (model_signing).",
  )
  args = parser.parse_args(argv)
  options = ServerOptions(**vars(args))
  if not options.model_base_path and not options.model_config_file:
    parser.error("set --model_base_path (with --model_name) or --model_config_file.")
  return options
