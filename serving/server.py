"""A model server that speaks TensorFlow Serving's gRPC and REST APIs.

    python -m serving.server --model_name=next_category \\
        --model_base_path=artifacts/serving/next_category

Flags carry tensorflow_model_server's names and defaults, and the config files
(--model_config_file, --batching_parameters_file, --monitoring_config_file,
--ssl_config_file) its text formats, so the same command line and files work
with the real server (see serving/deploy/). This one runs where the real binary
cannot be installed, and in tests.
"""

import argparse
import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
import ssl
import sys
import threading
import time
from typing import List
from typing import Optional
from typing import Sequence

import grpc
import tensorflow as tf
import uvloop
from tensorflow_serving.apis import model_pb2

import model_signing
from serving import status
from serving.apis import inference
from serving.apis.grpc import servicer as grpc_service
from serving.apis.rest import handler as rest_api
from serving.config import server_config
from serving.models import batching
from serving.models import model_manager
from serving.models import servables
from serving.models import warmup
from serving.observability import audit as audit_lib
from serving.observability import metrics as metrics_lib
from serving.observability import request_log
from serving.observability import request_policy
from serving.security import auth as auth_lib

# Threads that run unbatched requests; TensorFlow's own pools do the math.
_REQUEST_THREADS = 2 * (os.cpu_count() or 1)
# gRPC answers RESOURCE_EXHAUSTED beyond this many requests in progress.
_MAX_CONCURRENT_RPCS = 1024
# TensorFlow Serving sends messages up to 2 GiB.
_MAX_MESSAGE_BYTES = 2**31 - 1
# Requests (gRPC messages, REST bodies) above this are refused before they are
# decoded: a request costs the server a bounded amount of memory.
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024


class NoServableVersionError(RuntimeError):
  """A configured model has no version available: none can load, or none did in time."""


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


def _channel_arguments(text: str) -> List[tuple]:
  arguments = []
  for item in filter(None, (part.strip() for part in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value.")
    arguments.append((key, int(value) if value.lstrip("-").isdigit() else value))
  return arguments


class ModelServer:
  """The model server: gRPC and REST front ends over a `ModelManager`.

  Usable in-process (tests start it on free loopback ports) or through `main`.

  Args:
    options: the settings.
  """

  def __init__(self, options: ServerOptions):
    if not options.model_base_path and not options.model_config_file:
      raise ValueError("Set --model_base_path or --model_config_file; both are empty.")
    self._options = options
    self.metrics = metrics_lib.ServingMetrics()
    self._stopped = threading.Event()
    self._loop: Optional[asyncio.AbstractEventLoop] = None
    self._loop_thread: Optional[threading.Thread] = None
    self._grpc_server: Optional[grpc.aio.Server] = None
    self._rest_server: Optional[rest_api.RestServer] = None
    self._config_thread: Optional[threading.Thread] = None
    self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
    self._batching_options = None
    self.grpc_port = 0
    self.rest_port = 0
    if options.model_config_file:
      config = server_config.load_model_server_config(options.model_config_file)
    else:
      config = server_config.single_model_config(options.model_name, options.model_base_path)
    if options.enable_batching:
      self._batching_options = batching.load_batching_parameters(options.batching_parameters_file)
    self._monitoring = server_config.load_monitoring_config(options.monitoring_config_file)
    self._ssl = (
      server_config.load_ssl_config(options.ssl_config_file) if options.ssl_config_file else None
    )
    if options.model_verification_key_file and not os.path.isfile(
      options.model_verification_key_file
    ):
      raise ValueError(
        f"--model_verification_key_file {options.model_verification_key_file} does not exist."
      )
    if bool(options.rest_ssl_cert_file) != bool(options.rest_ssl_key_file):
      raise ValueError("Set both --rest_ssl_cert_file and --rest_ssl_key_file, or neither.")
    self.request_logs = request_log.RequestLogs(
      on_drop=lambda model, reason: self.metrics.record_dropped("request_log", reason),
      max_file_bytes=options.request_log_max_file_bytes,
      max_files=options.request_log_max_files,
    )
    self.request_logs.configure(config)
    authenticator = None
    if options.auth_tokens_file or options.jwt_public_key_file or options.jwt_secret_file:
      authenticator = auth_lib.Authenticator(
        tokens_file=options.auth_tokens_file,
        jwt_public_key_file=options.jwt_public_key_file,
        jwt_secret_file=options.jwt_secret_file,
        jwt_audience=options.jwt_audience,
      )
    audit = None
    if options.audit_log_file:
      audit = audit_lib.AuditLog(
        options.audit_log_file,
        max_bytes=options.audit_log_max_bytes,
        backup_count=options.audit_log_backup_count,
        on_drop=lambda reason: self.metrics.record_dropped("audit_log", reason),
      )
    self.manager = model_manager.ModelManager(
      config,
      self._load,
      poll_wait_seconds=options.file_system_poll_wait_seconds,
      max_num_load_retries=options.max_num_load_retries,
      load_retry_interval_seconds=options.load_retry_interval_micros / 1e6,
      observer=self.metrics.observe_state,
    )
    self.metrics.known_models = frozenset(m.name for m in config.model_config_list.config)
    self.policy = request_policy.RequestPolicy(
      self.metrics,
      authenticator=authenticator,
      audit=audit,
      request_logs=self.request_logs,
      reload_config=self.reload_config if options.enable_model_config_reload else None,
    )
    self.service = inference.InferenceService(
      self.manager, options.enable_signature_method_name_check
    )

  def reload_config(self, config) -> None:
    """Switches to a new ModelServerConfig: models, versions and request logs.

    Raises:
      ValueError: if the config is not supported (nothing changes then).
    """
    server_config.validate_model_server_config(config)
    for model in config.model_config_list.config:
      if model.HasField("logging_config"):
        request_log.validate_logging_config(model.name, model.logging_config)
    names = frozenset(m.name for m in config.model_config_list.config)
    self.metrics.known_models = self.metrics.known_models | names
    self.manager.reload_config(config)
    self.metrics.known_models = names
    self.request_logs.configure(config)

  def _verify(self, name: str, path: str) -> None:
    try:
      model_signing.verify_directory(path, self._options.model_verification_key_file)
    except (model_signing.VerificationError, ValueError) as e:
      self.metrics.record_verification_failure(name)
      raise status.ServingError(
        grpc.StatusCode.FAILED_PRECONDITION, f"Model signature verification failed: {e}"
      ) from None

  def _load(self, name: str, version: int, path: str) -> servables.Servable:
    if self._options.model_verification_key_file:
      self._verify(name, path)
    servable = servables.load_servable(
      name, version, path, prefer_tflite=self._options.prefer_tflite_model
    )
    servable.attach(
      self._executor, self._batching_options, self.metrics.batch_observer(name, version)
    )
    try:
      self._warm_up(servable)
    except BaseException:
      servable.close()
      raise
    return servable

  def _warm_up(self, servable: servables.Servable) -> None:
    """Replays assets.extra/tf_serving_warmup_requests, as TF Serving does at load."""
    logs = warmup.read_warmup_requests(servable.path)
    for log in logs:
      kind = log.WhichOneof("log_type")
      if kind == "predict_log":
        self.service.predict(log.predict_log.request, servable=servable).result()
      elif kind == "classify_log":
        self.service.classify(log.classify_log.request, servable=servable).result()
      elif kind == "regress_log":
        self.service.regress(log.regress_log.request, servable=servable).result()
      else:
        raise ValueError(f"Unsupported warmup record type {kind!r} in {servable.path}.")
    if logs:
      logging.info(
        "Finished reading warmup data for model %s version %d: %d records",
        servable.name,
        servable.version,
        len(logs),
      )

  def _wait_for_versions(self) -> None:
    """Waits until every model has a version, as TensorFlow Serving does before it serves.

    Gives up at once when every model still without a version has none that
    can load (each failed with no retry left), as TensorFlow Serving's
    start-up does (`ConnectSourcesWithFastInitialLoad`,
    tensorflow_serving/core/load_servables_fast.cc); a model still loading, or
    with retries left, is waited for up to --model_load_timeout_seconds.

    Raises:
      NoServableVersionError: if no version of a model can load, or one has
        none after --model_load_timeout_seconds.
    """
    deadline = time.monotonic() + self._options.model_load_timeout_seconds
    while missing := self.manager.models_without_versions():
      failures = self.manager.load_failures()
      if all(name in failures for name in missing):
        self.manager.stop()
        unavailable = [
          f"{{{{name: {name} version: {version}}} due to error: {error.message}}}"
          for name in missing
          for version, error in failures[name]
        ]
        # TensorFlow Serving's words (load_servables_fast.cc).
        raise NoServableVersionError(
          f"{len(unavailable)} servable(s) did not become available: {{"
          + "".join(f"{item}, " for item in unavailable)
          + "}"
        )
      if time.monotonic() >= deadline:
        self.manager.stop()
        errors = []
        for name in missing:
          try:
            statuses = self.manager.version_statuses(model_pb2.ModelSpec(name=name))
          except status.ServingError:
            statuses = []
          reasons = [e.message for _, _, e in statuses if e is not None]
          errors.append(f"{name}: " + (reasons[0] if reasons else "no version found"))
        raise NoServableVersionError(
          f"No servable version after {self._options.model_load_timeout_seconds:g} s "
          "(--model_load_timeout_seconds): " + "; ".join(errors)
        )
      time.sleep(0.1)

  def _configure_tensorflow(self) -> None:
    options = self._options
    try:
      if options.tensorflow_intra_op_parallelism:
        tf.config.threading.set_intra_op_parallelism_threads(
          options.tensorflow_intra_op_parallelism
        )
      if options.tensorflow_inter_op_parallelism:
        tf.config.threading.set_inter_op_parallelism_threads(
          options.tensorflow_inter_op_parallelism
        )
    except RuntimeError:
      logging.warning("TensorFlow is already initialised; its thread pools keep their size.")

  def start(self) -> None:
    """Loads the models, then starts serving; returns once the ports are bound.

    Raises:
      RuntimeError: if a port cannot be bound.
    """
    self._configure_tensorflow()
    self._executor = concurrent.futures.ThreadPoolExecutor(
      _REQUEST_THREADS, thread_name_prefix="request"
    )
    self.manager.start()
    self._wait_for_versions()
    # uvloop: the loop thread carries every gRPC request's Python work, and
    # with uvloop it spends about a third less CPU on each (README "Serving").
    self._loop = uvloop.new_event_loop()
    self._loop_thread = threading.Thread(
      target=self._loop.run_forever, name="grpc-server", daemon=True
    )
    self._loop_thread.start()
    self.grpc_port = asyncio.run_coroutine_threadsafe(self._start_grpc(), self._loop).result()
    logging.info("Running gRPC ModelServer at %s:%d ...", self._options.host, self.grpc_port)
    if self._options.rest_api_port:
      prometheus = self._monitoring.prometheus_config
      api = rest_api.RestApi(
        self.service,
        self.policy,
        prometheus_path=prometheus.path if prometheus.enable else "",
        timeout_seconds=self._options.rest_api_timeout_in_ms / 1e3,
        protect_metrics=self._options.protect_metrics,
      )
      self._rest_server = rest_api.RestServer(
        api,
        self._options.host,
        self._options.rest_api_port,
        num_threads=self._options.rest_api_num_threads,
        max_body_bytes=self._options.max_request_bytes,
        ssl_context=self._rest_ssl_context(),
      )
      self._rest_server.start()
      self.rest_port = self._rest_server.port
      logging.info("Exporting HTTP/REST API at %s:%d ...", self._options.host, self.rest_port)
    if self._options.model_config_file and self._options.model_config_file_poll_wait_seconds > 0:
      self._config_thread = threading.Thread(
        target=self._poll_config, daemon=True, name="config-poller"
      )
      self._config_thread.start()

  def _rest_ssl_context(self) -> Optional[ssl.SSLContext]:
    if not self._options.rest_ssl_cert_file:
      return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
      context.load_cert_chain(self._options.rest_ssl_cert_file, self._options.rest_ssl_key_file)
    except (OSError, ssl.SSLError) as e:
      raise ValueError(f"Cannot load the REST TLS certificate or key: {e}.") from None
    return context

  async def _start_grpc(self) -> int:
    options = [
      ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
      ("grpc.max_receive_message_length", self._options.max_request_bytes),
    ] + _channel_arguments(self._options.grpc_channel_arguments)
    self._grpc_server = grpc.aio.server(
      options=options, maximum_concurrent_rpcs=self._options.grpc_max_concurrent_rpcs
    )
    grpc_service.add_services(self._grpc_server, self.service, self.policy)
    address = f"{self._options.host}:{self._options.port}"
    if self._ssl is not None:
      credentials = grpc.ssl_server_credentials(
        [(self._ssl.server_key.encode(), self._ssl.server_cert.encode())],
        root_certificates=self._ssl.custom_ca.encode() or None,
        require_client_auth=self._ssl.client_verify,
      )
      port = self._grpc_server.add_secure_port(address, credentials)
    else:
      port = self._grpc_server.add_insecure_port(address)
    if not port:
      raise RuntimeError(f"Could not bind the gRPC port {address}.")
    await self._grpc_server.start()
    return port

  def _poll_config(self) -> None:
    path = self._options.model_config_file
    with tf.io.gfile.GFile(path, "r") as f:
      last = f.read()
    while not self._stopped.wait(self._options.model_config_file_poll_wait_seconds):
      try:
        with tf.io.gfile.GFile(path, "r") as f:
          text = f.read()
        if text != last:
          config = server_config.parse_text_proto(
            text, server_config.model_server_config_pb2.ModelServerConfig(), path
          )
          self.reload_config(config)
          last = text
          logging.info("Reloaded the model config from %s", path)
      except Exception:  # A bad edit must not stop the server.
        logging.exception("Reloading the model config from %s failed", path)

  def stop(self, grace_seconds: float = 5.0) -> None:
    """Stops taking requests, lets in-flight ones finish, and unloads the models."""
    if self._stopped.is_set():
      return
    self._stopped.set()
    if self._rest_server is not None:
      self._rest_server.stop()
    if self._grpc_server is not None:
      asyncio.run_coroutine_threadsafe(self._grpc_server.stop(grace_seconds), self._loop).result()
    if self._loop is not None:
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._loop_thread.join()
      self._loop.close()
    self.manager.stop()
    if self._executor is not None:
      self._executor.shutdown(wait=True)
    self.request_logs.close()
    if self.policy.audit is not None:
      self.policy.audit.close()
    if self._config_thread is not None:
      self._config_thread.join()

  def wait(self) -> None:
    """Blocks until `stop`."""
    self._stopped.wait()


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


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  options = parse_flags(argv)
  try:
    server = ModelServer(options)
    stop_requested = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
      signal.signal(sig, lambda *_: stop_requested.set())
    server.start()
  except (ValueError, NoServableVersionError, RuntimeError, OSError) as e:
    # As tensorflow_model_server: "Failed to start server", exit status 1.
    print(f"Failed to start server. Error: {e}", file=sys.stderr, flush=True)
    return 1
  print(
    f"Serving gRPC on {options.host}:{server.grpc_port}"
    + (f", REST on {options.host}:{server.rest_port}" if server.rest_port else ""),
    flush=True,
  )
  stop_requested.wait()
  logging.info("Shutting down")
  server.stop()
  return 0


if __name__ == "__main__":
  sys.exit(main())
