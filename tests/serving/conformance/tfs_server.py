"""TensorFlow Serving's end-to-end test harness, driving `python -m next_category.serving.server`.

Mirrors tensorflow_serving/model_servers/test_util/tensorflow_model_server_test_base.py
(tag 2.16.1; "base:N" below): `RunServer` (base:148-241) builds the same
command line, `--port --rest_api_port --rest_api_timeout_in_ms=5000
--grpc_socket_path` then the model flags; `wait_for_server_ready` is its
`WaitForServerReady` (base:81-97, a Predict for a missing model until the
error names a Servable); `verify_predict` its `VerifyPredictRequest`
(base:243-278). Servers are started as processes, several at once, and
shared by the tests that use the same command line, as upstream caches them
by argument set (base:188-190, 240).
"""

import os
import subprocess
import sys
import time
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import grpc
import portpicker
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

REPO_ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)
RPC_TIMEOUT = 5.0  # base:43
HTTP_REST_TIMEOUT_MS = 5000  # base:44
READY_TIMEOUT_SECONDS = 120.0  # base:46 waits 60 s; this machine is shared.
MODEL_VERSION = 123  # Every upstream test model's version (00000123).
ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")


def server_command(
  port: int,
  rest_api_port: Optional[int],
  socket_path: str,
  model_name: Optional[str] = None,
  model_path: Optional[str] = None,
  model_config_file: Optional[str] = None,
  monitoring_config_file: Optional[str] = None,
  batching_parameters_file: Optional[str] = None,
  grpc_channel_arguments: str = "",
  model_config_file_poll_period: Optional[int] = None,
  model_type: str = "tf",
  extra_flags: Sequence[str] = (),
) -> List[str]:
  """The command line base:196-228 runs, with our `python -m ...serving.server` for the binary."""
  command = [sys.executable, "-m", "next_category.serving.server", f"--port={port}"]
  if rest_api_port is not None:
    command.append(f"--rest_api_port={rest_api_port}")
  command += [
    f"--rest_api_timeout_in_ms={HTTP_REST_TIMEOUT_MS}",
    f"--grpc_socket_path={socket_path}",
  ]
  if model_config_file:
    command.append(f"--model_config_file={model_config_file}")
  else:
    command += [f"--model_name={model_name}", f"--model_base_path={model_path}"]
  if model_type == "tflite":
    command.append("--prefer_tflite_model=true")
  if monitoring_config_file:
    command.append(f"--monitoring_config_file={monitoring_config_file}")
  if model_config_file_poll_period is not None:
    command.append(f"--model_config_file_poll_wait_seconds={model_config_file_poll_period}")
  if batching_parameters_file:
    command += ["--enable_batching", f"--batching_parameters_file={batching_parameters_file}"]
  if grpc_channel_arguments:
    command.append(f"--grpc_channel_arguments={grpc_channel_arguments}")
  return command + list(extra_flags)


class Server:
  """One `python -m next_category.serving.server` process started with an upstream command line.

  Attributes:
    grpc: `localhost:<port>`.
    rest: `localhost:<rest port>`.
    socket_path: its `--grpc_socket_path`.
    stdout_path: where its stdout goes.
    stderr_path: where its stderr goes.
  """

  def __init__(self, directory: str, name: str, rest: bool = True, **kwargs):
    self.port = portpicker.pick_unused_port()
    self.rest_port = portpicker.pick_unused_port() if rest else None
    self.grpc = f"localhost:{self.port}"
    self.rest = f"localhost:{self.rest_port}"
    self.socket_path = os.path.join(directory, f"{name}.sock")
    self.stdout_path = os.path.join(directory, f"{name}.stdout")
    self.stderr_path = os.path.join(directory, f"{name}.stderr")
    self.command = server_command(self.port, self.rest_port, self.socket_path, **kwargs)
    with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
      self.process = subprocess.Popen(
        self.command, cwd=REPO_ROOT, env=ENV, stdout=stdout, stderr=stderr
      )

  def stdout(self) -> str:
    with open(self.stdout_path) as f:
      return f.read()

  def stderr(self) -> str:
    with open(self.stderr_path) as f:
      return f.read()

  def wait_for_server_ready(self) -> "Server":
    """base:81-97: Predict for a missing model until the error details name a Servable."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "intentionally_missing_model"
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with grpc.insecure_channel(self.grpc) as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      while time.monotonic() < deadline:
        if self.process.poll() is not None:
          raise AssertionError(
            f"The server exited with {self.process.returncode}: {self.stdout()}{self.stderr()}"
          )
        try:
          stub.Predict(request, RPC_TIMEOUT)
        except grpc.RpcError as error:
          if "Servable" in (error.details() or ""):
            return self
        time.sleep(0.1)
    raise TimeoutError(f"Not ready in {READY_TIMEOUT_SECONDS} s: {self.stderr()[-2000:]}")

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(30)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()


class Servers:
  """Servers started together (their start-ups overlap) and stopped together."""

  def __init__(self, directory: str):
    self._directory = directory
    self._servers: Dict[str, Server] = {}

  def start(self, name: str, **kwargs) -> Server:
    self._servers[name] = Server(self._directory, name, **kwargs)
    return self._servers[name]

  def ready(self, name: str) -> Server:
    return self._servers[name].wait_for_server_ready()

  def __getitem__(self, name: str) -> Server:
    return self._servers[name]

  def stop_all(self) -> None:
    for server in self._servers.values():
      server.stop()


def verify_predict(
  address: str,
  expected_output: float,
  expected_version: int = MODEL_VERSION,
  model_name: str = "default",
  specify_output: bool = True,
  batch_input: bool = False,
  signature_name: str = "serving_default",
) -> None:
  """base:243-278 `VerifyPredictRequest`: x = [2.0] (shape [1], or [1, 1] with batch_input)."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  request.inputs["x"].dtype = types_pb2.DT_FLOAT
  request.inputs["x"].float_val.append(2.0)
  request.inputs["x"].tensor_shape.dim.add().size = 1
  if batch_input:
    request.inputs["x"].tensor_shape.dim.add().size = 1
  if specify_output:
    request.output_filter.append("y")
  with grpc.insecure_channel(address) as channel:
    result = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
      request, RPC_TIMEOUT
    )
  assert "y" in result.outputs
  assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
  assert list(result.outputs["y"].float_val) == [expected_output]
  # base:343-350 `_VerifyModelSpec`.
  assert result.model_spec.name == model_name
  assert result.model_spec.signature_name == signature_name
  assert result.model_spec.version.value == expected_version
