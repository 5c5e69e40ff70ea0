"""The model server: TensorFlow Serving's gRPC and REST APIs over the models of a ModelManager.

Builds the parts from `ServerOptions` (config/flags.py) and runs them: the
models (models/), the data plane and its two front ends (apis/), and what
is recorded of every request (observability/, security/). `python -m
serving.server` runs one; tests start it in-process on free loopback ports.
"""

import asyncio
import concurrent.futures
import logging
import os
import threading
from typing import Optional

import grpc
import tensorflow as tf
import uvloop

from serving.apis import inference
from serving.apis.grpc import server as grpc_server
from serving.apis.rest import handler as rest_handler
from serving.apis.rest import http_server
from serving.config import flags
from serving.config import server_config
from serving.models import batching
from serving.models import loader
from serving.models import model_manager
from serving.observability import audit as audit_lib
from serving.observability import metrics as metrics_lib
from serving.observability import request_log
from serving.observability import request_policy
from serving.security import auth as auth_lib

# Threads that run unbatched requests; TensorFlow's own pools do the math.
_REQUEST_THREADS = 2 * (os.cpu_count() or 1)


class ModelServer:
  """The model server: gRPC and REST front ends over a `ModelManager`.

  Usable in-process (tests start it on free loopback ports) or through
  serving/server.py's `main`.

  Args:
    options: the settings.
  """

  def __init__(self, options: flags.ServerOptions):
    if not options.model_base_path and not options.model_config_file:
      raise ValueError("Set --model_base_path or --model_config_file; both are empty.")
    self._options = options
    self.metrics = metrics_lib.ServingMetrics()
    self._stopped = threading.Event()
    self._loop: Optional[asyncio.AbstractEventLoop] = None
    self._loop_thread: Optional[threading.Thread] = None
    self._grpc_server: Optional[grpc.aio.Server] = None
    self._rest_server: Optional[http_server.RestServer] = None
    self._config_thread: Optional[threading.Thread] = None
    self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
    self.grpc_port = 0
    self.rest_port = 0
    if options.model_config_file:
      config = server_config.load_model_server_config(options.model_config_file)
    else:
      config = server_config.single_model_config(options.model_name, options.model_base_path)
    batching_options = None
    if options.enable_batching:
      batching_options = batching.load_batching_parameters(options.batching_parameters_file)
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
    self._loader = loader.VersionLoader(
      prefer_tflite=options.prefer_tflite_model,
      saved_model_tags=options.saved_model_tags,
      verification_key_file=options.model_verification_key_file,
      batching_options=batching_options,
      batch_observer=self.metrics.batch_observer,
      on_verification_failure=self.metrics.record_verification_failure,
    )
    self.manager = model_manager.ModelManager(
      config,
      self._loader,
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
    self._loader.service = self.service

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
      NoServableVersionError: if a model has no version to serve.
      RuntimeError: if a port cannot be bound.
    """
    self._configure_tensorflow()
    self._executor = concurrent.futures.ThreadPoolExecutor(
      _REQUEST_THREADS, thread_name_prefix="request"
    )
    self._loader.executor = self._executor
    self.manager.start()
    loader.wait_for_versions(self.manager, self._options.model_load_timeout_seconds)
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
      api = rest_handler.RestApi(
        self.service,
        self.policy,
        prometheus_path=prometheus.path if prometheus.enable else "",
        timeout_seconds=self._options.rest_api_timeout_in_ms / 1e3,
        protect_metrics=self._options.protect_metrics,
      )
      ssl_context = None
      if self._options.rest_ssl_cert_file:
        ssl_context = http_server.ssl_context(
          self._options.rest_ssl_cert_file, self._options.rest_ssl_key_file
        )
      self._rest_server = http_server.RestServer(
        api,
        self._options.host,
        self._options.rest_api_port,
        num_threads=self._options.rest_api_num_threads,
        max_body_bytes=self._options.max_request_bytes,
        ssl_context=ssl_context,
      )
      self._rest_server.start()
      self.rest_port = self._rest_server.port
      logging.info("Exporting HTTP/REST API at %s:%d ...", self._options.host, self.rest_port)
    if self._options.model_config_file and self._options.model_config_file_poll_wait_seconds > 0:
      self._config_thread = threading.Thread(
        target=self._poll_config, daemon=True, name="config-poller"
      )
      self._config_thread.start()

  async def _start_grpc(self) -> int:
    self._grpc_server = grpc_server.create(
      self.service,
      self.policy,
      max_request_bytes=self._options.max_request_bytes,
      max_concurrent_rpcs=self._options.grpc_max_concurrent_rpcs,
      grpc_channel_arguments=self._options.grpc_channel_arguments,
      enable_profiler=self._options.enable_profiler,
    )
    address = f"{self._options.host}:{self._options.port}"
    return await grpc_server.bind_and_start(self._grpc_server, address, self._ssl)

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
