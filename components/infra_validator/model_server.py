"""Runs `python -m next_category.serving.server` as a child process on a loopback port, as a canary.

The model server is started the way TensorFlow Serving's binary would be, as a
separate process with its own flags, so the canary proves what a deployment
needs: the version loads in a fresh server, replays its warmup requests and
answers RPCs. TFX's InfraValidator does the same with the tensorflow/serving
image through Docker or Kubernetes
(tfx/components/infra_validator/model_server_runners/local_docker_runner.py);
here no container runtime is needed, so the step runs in any runner's
container, Kubeflow's included.
"""

import os
import re
import socket
import subprocess
import sys
import time
from typing import List
from typing import Optional

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc

# Each GetModelStatus poll waits this long for the server to answer; the whole
# wait is bounded by the caller's load timeout.
_POLL_RPC_SECONDS = 1.0
# gRPC retries a refused connection after this long (its default starts at
# 1 s and grows), so a server that has just bound its port is seen at once.
_RECONNECT_BACKOFF_MS = 100
# How much of the server's log an error quotes.
_LOG_TAIL_BYTES = 64 * 1024
_EXCERPT_LINES = 3
_LOG_EXCERPT_CHARS = 1000
# The server's own error lines (Python logging's ERROR, its start-up failure).
_SERVER_ERROR_LINE = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) |^Failed to start server|^\w*Error: ")
# State names of ModelVersionStatus (tensorflow_serving/apis/get_model_status.proto).
_STATE_NAMES = get_model_status_pb2.ModelVersionStatus.State.Name
_AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
_END = get_model_status_pb2.ModelVersionStatus.END


class ModelServerError(RuntimeError):
  """The model server did not start, did not load the model, or stopped."""


def _free_loopback_port() -> int:
  # The kernel's choice; the short race with another process taking it before
  # the server binds it shows up as a start failure, not a wrong answer.
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class ModelServer:
  """A `next_category.serving.server` child process serving one model base path on 127.0.0.1.

  Use as a context manager; the process is stopped (SIGTERM, then SIGKILL) on
  exit and its output is kept in `log_path`.

  Args:
    model_name: the name the model is served under.
    model_base_path: a directory of numbered version directories.
    log_path: file the server's stdout and stderr go to.
    extra_flags: more `next_category.serving.server` flags.
  """

  def __init__(
    self,
    model_name: str,
    model_base_path: str,
    log_path: str,
    extra_flags: Optional[List[str]] = None,
  ):
    self.model_name = model_name
    self.model_base_path = model_base_path
    self.log_path = log_path
    self.port = _free_loopback_port()
    self.hostport = f"127.0.0.1:{self.port}"
    self._flags = [
      f"--port={self.port}",
      "--rest_api_port=0",
      "--host=127.0.0.1",
      f"--model_name={model_name}",
      f"--model_base_path={model_base_path}",
      # One look at the base path, one load attempt: a canary reports a
      # failure at once instead of retrying for minutes.
      "--file_system_poll_wait_seconds=0",
      "--max_num_load_retries=0",
      *(extra_flags or []),
    ]
    self._process: Optional[subprocess.Popen] = None
    self._channel: Optional[grpc.Channel] = None

  @property
  def command(self) -> List[str]:
    return [sys.executable, "-m", "next_category.serving.server", *self._flags]

  def __enter__(self) -> "ModelServer":
    self.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self.stop()

  def start(self) -> None:
    os.makedirs(os.path.dirname(self.log_path) or ".", exist_ok=True)
    with open(self.log_path, "wb") as log:
      # The working directory is left alone: the child imports `serving`
      # from the same installation (or PYTHONPATH) as this process.
      self._process = subprocess.Popen(
        self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
      )
    self._channel = grpc.insecure_channel(
      self.hostport,
      options=[
        ("grpc.initial_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", _RECONNECT_BACKOFF_MS),
      ],
    )

  @property
  def channel(self) -> grpc.Channel:
    if self._channel is None:
      raise ModelServerError("The model server has not been started.")
    return self._channel

  def log_excerpt(self) -> str:
    """The server's error lines (else the end of its log), for error messages.

    TensorFlow's own start-up noise (lines like `2026-... E external/...`) is
    left out; the whole log stays in `log_path`.
    """
    try:
      with open(self.log_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
        lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
      return ""
    errors = [line for line in lines if _SERVER_ERROR_LINE.search(line)]
    return "\n".join(errors[-_EXCERPT_LINES:] or lines[-_EXCERPT_LINES:])[:_LOG_EXCERPT_CHARS]

  def wait_until_available(self, version: int, timeout_seconds: float) -> float:
    """Polls GetModelStatus until `version` is AVAILABLE (loaded and warmed up).

    The server binds its gRPC port only after loading (and warming up) the
    versions it found, so each poll blocks on the channel becoming ready
    (`wait_for_ready`) rather than sleeping; the loop also stops as soon as
    the process exits.

    Returns:
      Seconds from the start of the wait until the version was AVAILABLE.

    Raises:
      ModelServerError: if the process exits, the version fails to load
        (state END with an error), or `timeout_seconds` pass first.
    """
    start = time.monotonic()
    deadline = start + timeout_seconds
    stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = self.model_name
    request.model_spec.version.value = version
    last = "no answer"
    while True:
      code = self._process.poll()
      if code is not None:
        raise ModelServerError(
          f"The model server exited with code {code} before version {version} was available: "
          f"{self.log_excerpt()}"
        )
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        raise ModelServerError(
          f"Version {version} of model {self.model_name} was not available within "
          f"{timeout_seconds:g} s (last status: {last}); the server's log: {self.log_excerpt()}"
        )
      try:
        response = stub.GetModelStatus(
          request, timeout=min(_POLL_RPC_SECONDS, remaining), wait_for_ready=True
        )
      except grpc.RpcError as e:
        if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
          raise ModelServerError(f"GetModelStatus failed: {e.code().name}: {e.details()}") from None
        continue
      for status in response.model_version_status:
        if status.version != version:
          continue
        last = _STATE_NAMES(status.state)
        if status.state == _AVAILABLE:
          return time.monotonic() - start
        if status.state == _END and status.status.error_code:
          raise ModelServerError(
            f"Version {version} of model {self.model_name} failed to load: "
            f"{status.status.error_message}"
          )
      # Still loading: poll again. The server answers only once its port is
      # bound, after loading, so this is rare.
      self._process_wait(min(_POLL_RPC_SECONDS / 10, max(0.0, deadline - time.monotonic())))

  def _process_wait(self, seconds: float) -> None:
    # A bounded wait that ends early if the process exits.
    try:
      self._process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
      pass

  def stop(self) -> None:
    """Stops the server (SIGTERM, then SIGKILL after 10 s) and closes the channel."""
    if self._channel is not None:
      self._channel.close()
      self._channel = None
    if self._process is not None and self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()


def stage_model(model_dir: str, root: str, model_name: str, version: int = 1) -> str:
  """Copies `model_dir` (local or remote) to `root/model_name/version/`, a model base path.

  TFX's InfraValidator also serves a copy in TensorFlow Serving's layout
  (tfx/components/infra_validator/executor.py, `_PrepareModelPath`).

  Returns:
    The model base path, `root/model_name`.
  """
  base_path = os.path.join(root, model_name)
  destination = os.path.join(base_path, str(version))
  for directory, _, files in tf.io.gfile.walk(model_dir):
    target = os.path.join(destination, os.path.relpath(directory, model_dir))
    tf.io.gfile.makedirs(target)
    for name in files:
      tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target, name), overwrite=True)
  return base_path
