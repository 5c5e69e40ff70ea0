"""The model server: TensorFlow Serving's gRPC and REST APIs over the models of a ModelManager.

Builds the parts from `ServerOptions` (config/flags.py) and runs them: the
models (models/), the data plane and its two front ends (apis/), and what
is recorded of every request (observability/, security/), in the order and
with the checks of tensorflow_model_server's `Server::BuildAndStart`
(tensorflow_serving/model_servers/server.cc:179-455): what it refuses fails
here with its status and message. `python -m next_category.serving.server` runs one; tests
start it in-process on free loopback ports.
"""

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from typing import Optional

import grpc
import tensorflow as tf
import uvloop

from next_category.serving import status
from next_category.serving.apis import inference
from next_category.serving.apis.grpc import server as grpc_server
from next_category.serving.apis.rest import handler as rest_handler
from next_category.serving.apis.rest import http_server
from next_category.serving.config import flags
from next_category.serving.config import server_config
from next_category.serving.config import session_bundle
from next_category.serving.models import batching
from next_category.serving.models import loader
from next_category.serving.models import model_manager
from next_category.serving.observability import audit as audit_lib
from next_category.serving.observability import metrics as metrics_lib
from next_category.serving.observability import request_log
from next_category.serving.observability import request_policy
from next_category.serving.security import auth as auth_lib

# Threads that run unbatched requests; TensorFlow's own pools do the math.
_REQUEST_THREADS = 2 * (os.cpu_count() or 1)
# The audit log's entrypoint for reloads of --model_config_file found by polling.
CONFIG_FILE_ENTRYPOINT = "CONFIG_FILE"


class ModelServer:
  """The model server: gRPC and REST front ends over a `ModelManager`.

  Usable in-process (tests start it on free loopback ports) or through
  serving/server.py's `main`. Construction does what `BuildAndStart` checks
  before it loads models; `start` loads them and opens the ports.

  Args:
    options: the settings.

  Raises:
    ConfigError: for what tensorflow_model_server refuses (its status and
      message), and for a bad setting of this server's own.
    ValueError: for a bad request logging config.
  """

  def __init__(self, options: flags.ServerOptions):
    # server.cc:180-199, in its order.
    if options.port == 0 and not options.grpc_socket_path:
      raise _invalid(
        "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."
      )
    if options.use_alts_credentials and options.ssl_config_file:
      raise _invalid("Either use_alts_credentials must be false or ssl_config_file must be empty.")
    if not options.model_base_path and not options.model_config_file:
      raise _invalid(
        "Both server_options.model_base_path and server_options.model_config_file are empty!"
      )
    self._options = options
    flags.log_flags_without_effect(options)
    if options.model_config_file:
      # --model_config_file wins over --model_name/--model_base_path, silently.
      config = server_config.load_model_server_config(options.model_config_file)
    else:
      logging.info(
        "Building single TensorFlow model file config: model_name: %s model_base_path: %s",
        options.model_name,
        options.model_base_path,
      )
      config = server_config.single_model_config(options.model_name, options.model_base_path)
    self._settings = session_bundle.load_settings(options)
    # ServerCore::Create's checks of the config (server_core.cc).
    server_config.validate_model_server_config(config, self._settings.platforms)
    try:
      grpc_server.channel_arguments(options.grpc_channel_arguments)
    except ValueError as e:
      raise _invalid(str(e)) from None
    batching_options = None
    if self._settings.batching_parameters is not None:
      try:
        batching_options = batching.BatchingOptions.from_proto(self._settings.batching_parameters)
      except ValueError as e:
        raise _invalid(f"Invalid BatchingParameters: {e}") from None
    self.metrics = metrics_lib.ServingMetrics()
    self._stopped = threading.Event()
    self._stop_requested = threading.Event()
    self._loop: Optional[asyncio.AbstractEventLoop] = None
    self._loop_thread: Optional[threading.Thread] = None
    self._grpc_server: Optional[grpc.aio.Server] = None
    self._rest_server: Optional[http_server.RestServer] = None
    self._config_thread: Optional[threading.Thread] = None
    self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
    self.grpc_port = 0
    self.rest_port = 0
    self._ssl = (
      server_config.load_ssl_config(options.ssl_config_file) if options.ssl_config_file else None
    )
    if options.model_verification_key_file and not os.path.isfile(
      options.model_verification_key_file
    ):
      raise _invalid(
        f"--model_verification_key_file {options.model_verification_key_file} does not exist."
      )
    if bool(options.rest_ssl_cert_file) != bool(options.rest_ssl_key_file):
      raise _invalid("Set both --rest_ssl_cert_file and --rest_ssl_key_file, or neither.")
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
    self._loader = loader.VersionLoader(
      prefer_tflite=self._settings.prefer_tflite_model,
      verification_key_file=options.model_verification_key_file,
      batching_options=batching_options,
      batch_observer=self.metrics.batch_observer,
      on_verification_failure=self.metrics.record_verification_failure,
      saved_model_tags=self._settings.saved_model_tags,
      enable_warmup=self._settings.enable_model_warmup,
      num_request_iterations_for_warmup=self._settings.num_request_iterations_for_warmup,
      on_saved_model_load=self.metrics.record_saved_model_load,
      on_warmed_up=self.metrics.record_warmup,
    )
    self.manager = model_manager.ModelManager(
      config,
      self._loader,
      poll_wait_seconds=options.file_system_poll_wait_seconds,
      max_num_load_retries=options.max_num_load_retries,
      load_retry_interval_seconds=options.load_retry_interval_micros / 1e6,
      observer=self.metrics.observe_state,
      platforms=self._settings.platforms,
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
    self._loader.service = self.service

  def reload_config(self, config) -> dict:
    """Switches to a new ModelServerConfig: models, versions and request logs.

    As `ServerCore::ReloadConfig` (server_core.cc:437-507): the first config
    may be anything, later ones only a model_config_list after a
    model_config_list; an empty one leaves everything as it is.

    Returns:
      the models added, removed and changed (audit.config_changes), for the audit log.

    Raises:
      ConfigError: if the config is refused (nothing changes then).
      ValueError: for a bad request logging config (nothing changes then).
    """
    current = self.manager.config.WhichOneof("config")
    if current is not None and not (
      current == "model_config_list" and config.WhichOneof("config") == "model_config_list"
    ):
      raise server_config.ConfigError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "Cannot transition to requested config. It is only legal to transition from one "
        "ModelConfigList to another.",
      )
    if config.WhichOneof("config") is None:
      logging.info("Taking no action for empty config.")
      return {}
    server_config.validate_model_server_config(config, self._settings.platforms)
    for model in config.model_config_list.config:
      if model.HasField("logging_config"):
        request_log.validate_logging_config(model.name, model.logging_config)
    request_log.validate_prefixes(config)
    changes = audit_lib.config_changes(self.manager.config, config)
    names = frozenset(m.name for m in config.model_config_list.config)
    self.metrics.known_models = self.metrics.known_models | names
    self.manager.reload_config(config)
    self.metrics.known_models = names
    self.request_logs.configure(config)
    return changes

  def _configure_tensorflow(self) -> None:
    """TensorFlow's thread pools, as a SessionBundleConfig's session_config sizes them.

    TensorFlow Serving sizes each model's session; a Python process has one
    pair of pools, for every model.
    """
    try:
      if self._settings.intra_op_threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(self._settings.intra_op_threads)
      if self._settings.inter_op_threads > 0:
        tf.config.threading.set_inter_op_parallelism_threads(self._settings.inter_op_threads)
    except RuntimeError:
      logging.warning("TensorFlow is already initialised; its thread pools keep their size.")

  def start(self) -> None:
    """Loads the models, then starts serving; returns once the ports are bound.

    Raises:
      NoServableVersionError: if a model has no version to serve.
      StartCancelled: if `request_stop` was called while it waited for them.
      ConfigError: if the monitoring config does not parse.
      RuntimeError: if the gRPC port or socket cannot be bound.
    """
    self._configure_tensorflow()
    self._executor = concurrent.futures.ThreadPoolExecutor(
      _REQUEST_THREADS, thread_name_prefix="request"
    )
    self._loader.executor = self._executor
    # The first loads on the poller, so that --model_load_timeout_seconds can
    # end the wait even while a load is being retried.
    self.manager.start(background=True)
    loader.wait_for_versions(
      self.manager, self._options.model_load_timeout_seconds, self._stop_requested
    )
    if self._options.model_config_file and self._options.model_config_file_poll_wait_seconds > 0:
      # server.cc:330-343: after the first load, so that a reload never races it.
      self._config_thread = threading.Thread(
        target=self._poll_config, daemon=True, name="config-poller"
      )
      self._config_thread.start()
    # uvloop: the loop thread carries every gRPC request's Python work, and
    # with uvloop it spends about a third less CPU on each (README "Serving").
    self._loop = uvloop.new_event_loop()
    self._loop_thread = threading.Thread(
      target=self._loop.run_forever, name="grpc-server", daemon=True
    )
    self._loop_thread.start()
    self.grpc_port = asyncio.run_coroutine_threadsafe(self._start_grpc(), self._loop).result()
    if self._options.port:
      logging.info("Running gRPC ModelServer at %s:%d ...", self._options.host, self.grpc_port)
    if self._options.grpc_socket_path:
      logging.info("Running gRPC ModelServer at UNIX socket %s ...", self._options.grpc_socket_path)
    if self._options.rest_api_port:
      self._start_rest()

  def _start_rest(self) -> None:
    """The REST server, as server.cc:430-453 starts it: a failure to bind is only logged."""
    options = self._options
    if options.rest_api_port == options.port:
      logging.error(
        "server_options.http_port cannot be same as grpc_port. Please use a different port "
        "for HTTP/REST API. Skipped exporting HTTP/REST API."
      )
      return
    prometheus = server_config.load_monitoring_config(options.monitoring_config_file)
    prometheus = prometheus.prometheus_config
    api = rest_handler.RestApi(
      self.service,
      self.policy,
      prometheus_path=prometheus.path if prometheus.enable else "",
      # RunOptions' timeout is set only when positive (http_rest_api_handler.cc:56-61).
      timeout_seconds=(
        options.rest_api_timeout_in_ms / 1e3 if options.rest_api_timeout_in_ms > 0 else None
      ),
      protect_metrics=options.protect_metrics,
    )
    ssl_context = None
    if options.rest_ssl_cert_file:
      ssl_context = http_server.ssl_context(options.rest_ssl_cert_file, options.rest_ssl_key_file)
    try:
      self._rest_server = http_server.RestServer(
        api,
        options.host,
        options.rest_api_port,
        num_threads=options.rest_api_num_threads,
        header_timeout_seconds=options.rest_header_timeout_seconds,
        body_timeout_seconds=options.rest_body_timeout_seconds,
        max_body_bytes=options.max_request_bytes,
        max_body_bytes_before_auth=options.max_request_bytes_before_auth,
        max_connections_per_client=options.rest_max_connections_per_client,
        ssl_context=ssl_context,
        cors=options.rest_api_enable_cors_support,
      )
    except OSError as e:
      logging.error(
        "Failed to start HTTP Server at %s:%d: %s", options.host, options.rest_api_port, e
      )
      return
    self._rest_server.start()
    self.rest_port = self._rest_server.port
    logging.info("Exporting HTTP/REST API at:%s:%d ...", options.host, self.rest_port)

  async def _start_grpc(self) -> int:
    self._grpc_server = grpc_server.create(
      self.service,
      self.policy,
      max_request_bytes=self._options.max_request_bytes,
      max_concurrent_rpcs=self._options.grpc_max_concurrent_rpcs,
      grpc_channel_arguments=self._options.grpc_channel_arguments,
      health_check=self._options.enable_grpc_healthcheck_service,
      enable_profiler=self._options.enable_profiler,
    )
    return await grpc_server.bind_and_start(
      self._grpc_server,
      self._options.host,
      self._options.port,
      socket_path=self._options.grpc_socket_path,
      ssl_config=self._ssl,
      use_alts=self._options.use_alts_credentials,
    )

  def _poll_config(self) -> None:
    """Re-reads --model_config_file every poll period; errors are logged, never fatal.

    As `Server::PollFilesystemAndReloadConfig` (server.cc:160-177), with its
    messages; an unchanged file is not reloaded.
    """
    path = self._options.model_config_file
    last = self.manager.config
    while not self._stopped.wait(self._options.model_config_file_poll_wait_seconds):
      try:
        config = server_config.load_model_server_config(path)
      except server_config.ConfigError as e:
        logging.error("Failed to read ModelServerConfig file: %s", e.message)
        continue
      if config == last:
        continue
      # Audited as the RPC is: from the file (whoever wrote it), what changed, the result.
      start, arrived = time.perf_counter(), time.time()
      code, error, changes = grpc.StatusCode.OK, "", None
      try:
        changes = self.reload_config(config)
      except (server_config.ConfigError, ValueError) as e:
        code = e.code if isinstance(e, status.ServingError) else grpc.StatusCode.INVALID_ARGUMENT
        error = str(e)
        logging.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", e)
        continue
      except Exception as e:  # A bad edit must not stop the server.
        code, error = grpc.StatusCode.UNKNOWN, f"{type(e).__name__}: {e}"
        logging.exception("PollFilesystemAndReloadConfig failed to ReloadConfig")
        continue
      finally:
        self.policy.record_reload(
          CONFIG_FILE_ENTRYPOINT, f"file:{path}", "", False, code, start, arrived, changes, error
        )
      last = config
      logging.info("Reloaded the model config from %s", path)

  def request_stop(self) -> None:
    """Makes a `start` still waiting for the first versions give up at once.

    Safe in a signal handler: it only sets an event (serving/server.py calls
    it on SIGTERM, which must end the process promptly at any time).
    """
    self._stop_requested.set()

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


def _invalid(message: str) -> server_config.ConfigError:
  return server_config.ConfigError(grpc.StatusCode.INVALID_ARGUMENT, message)
