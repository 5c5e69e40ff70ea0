"""The conformance tier: TensorFlow Serving's test models, its command lines, its answers.

Each test mirrors an upstream test or document at tensorflow/serving tag 2.16.1
and cites it as `file:line` (paths under tensorflow_serving/ unless a full
path is given). Servers are started as TensorFlow Serving's own end-to-end
test starts the binary (model_servers/test_util/tensorflow_model_server_test_base.py:
`RunServer`, 197-230): from a command line, on free ports, one per distinct
command line, shared by every test that uses it (upstream caches them too,
188-190), and waited for by RPC (`WaitForServerReady`, 81-97). They run in
this process (`flags.parse_flags` then `ModelServer`), so one TensorFlow
import serves the whole tier.
"""

import json
import time
import urllib.error
import urllib.request
from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple

import grpc
import numpy as np
import portpicker
import pytest
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from next_category.serving import model_server
from next_category.serving.config import flags
from next_category.serving.testdata import make_tfs_testdata

# tensorflow_model_server_test_base.py:46 RPC_TIMEOUT (5 s); a loaded machine needs more.
RPC_TIMEOUT = 30.0
# tensorflow_model_server_test_base.py:81-97: up to 60 tries a second apart.
READY_TIMEOUT_SECONDS = 60.0
# tensorflow_model_server_test_base.py:211-214: every server gets these (and
# --grpc_socket_path, one per server here), then the model flags.
COMMON_FLAGS = ("--rest_api_timeout_in_ms=5000",)


@pytest.fixture(scope="session")
def tfs_testdata(tmp_path_factory):
  """The directory holding TensorFlow Serving's testdata models and configs, by upstream name."""
  root = tmp_path_factory.mktemp("tfs_testdata")
  make_tfs_testdata.generate(str(root))
  return root


class TfsServer:
  """A server started from a tensorflow_model_server command line, with its addresses."""

  def __init__(self, argv: Sequence[str], socket_path: str):
    grpc_port, rest_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    self.argv = [
      f"--port={grpc_port}",
      f"--rest_api_port={rest_port}",
      *COMMON_FLAGS,
      f"--grpc_socket_path={socket_path}",
      *argv,
    ]
    self.server = model_server.ModelServer(flags.parse_flags(self.argv))
    self.server.start()
    self.grpc_address = f"127.0.0.1:{self.server.grpc_port}"
    self.rest_address = f"127.0.0.1:{self.server.rest_port}"
    self.channel = grpc.insecure_channel(self.grpc_address)
    self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
    self._wait_for_server_ready()

  def _wait_for_server_ready(self) -> None:
    # tensorflow_model_server_test_base.py:81-97: a Predict for a model that
    # does not exist, until the error says "Servable".
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "intentionally_missing_model"
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
      try:
        self.stub.Predict(request, timeout=RPC_TIMEOUT)
      except grpc.RpcError as e:
        # With access control on, the probe is refused before the model lookup;
        # start() has already waited for the models then.
        if "Servable" in e.details() or e.code() == grpc.StatusCode.UNAUTHENTICATED:
          return
      time.sleep(0.1)
    raise TimeoutError(f"The server of {self.argv} was not ready.")

  def rest(self, method: str, path: str, body: Optional[str] = None) -> Tuple[int, dict]:
    """An HTTP request to the REST port: (status, parsed JSON body)."""
    request = urllib.request.Request(
      f"http://{self.rest_address}{path}",
      data=None if body is None else body.encode("utf-8"),
      method=method,
    )
    try:
      with urllib.request.urlopen(request, timeout=RPC_TIMEOUT) as response:
        return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
      return e.code, json.loads(e.read())

  def stop(self) -> None:
    self.channel.close()
    self.server.stop()


@pytest.fixture(scope="session")
def tfs_server(tfs_testdata, tmp_path_factory):
  """`tfs_server(*flags)`: a running server for that command line, shared by identical ones.

  `{testdata}` in a flag is replaced by the testdata directory.
  """
  servers: Dict[Tuple[str, ...], TfsServer] = {}

  def get(*argv: str) -> TfsServer:
    argv = tuple(a.replace("{testdata}", str(tfs_testdata)) for a in argv)
    if argv not in servers:
      socket_path = tmp_path_factory.mktemp("sockets") / f"{len(servers)}.sock"
      servers[argv] = TfsServer(argv, str(socket_path))
    return servers[argv]

  yield get
  for server in servers.values():
    server.stop()


@pytest.fixture(scope="session")
def handler_test_server(tfs_server, tfs_testdata, tmp_path_factory):
  """The server of http_rest_api_handler_test.cc:45-75.

  saved_model_half_plus_two_2_versions under that name, version policy
  specific {123}, label Version_Label -> 123.
  """
  config = tmp_path_factory.mktemp("handler_test") / "models.config"
  config.write_text(
    "model_config_list { config {"
    ' name: "saved_model_half_plus_two_2_versions"'
    f' base_path: "{tfs_testdata}/saved_model_half_plus_two_2_versions"'
    ' model_platform: "tensorflow"'
    " model_version_policy { specific { versions: 123 } }"
    ' version_labels { key: "Version_Label" value: 123 } } }'
  )
  return tfs_server(f"--model_config_file={config}")


# Upstream's end-to-end tests run Classify, Regress and MultiInference on both
# (tensorflow_model_server_test.py:165-171, 199-205, 244-250).
HALF_PLUS_TWO_MODELS = {
  "tf1": "saved_model_half_plus_two_cpu",
  "tf2": "saved_model_half_plus_two_tf2_cpu",
}


@pytest.fixture(scope="module", params=sorted(HALF_PLUS_TWO_MODELS))
def half_plus_two_tf1_tf2(request, tfs_server):
  """The server of `--model_name=default` on each half_plus_two, TF1 then TF2."""
  return tfs_server(*model_flags("default", HALF_PLUS_TWO_MODELS[request.param]))


def add_example(model_input, **features) -> None:
  """Adds a tf.Example of float features to a request's `input` (upstream's `x`: [2.0])."""
  example = model_input.example_list.examples.add()
  for name, value in features.items():
    example.features.feature[name].float_list.value.append(value)


def model_flags(name: str, testdata_model: str) -> Tuple[str, str]:
  """`--model_name=NAME --model_base_path=<testdata>/MODEL` (test_base.py:218-221)."""
  return f"--model_name={name}", f"--model_base_path={{testdata}}/{testdata_model}"


def predict_request(
  model_name: str = "default",
  x=(2.0,),
  shape: Optional[Sequence[int]] = (1,),
  signature_name: str = "serving_default",
  output_filter: Sequence[str] = ("y",),
  input_key: str = "x",
) -> predict_pb2.PredictRequest:
  """`VerifyPredictRequest`'s request (tensorflow_model_server_test_base.py:243-262).

  `x` as `float_val`s of a DT_FLOAT tensor of `shape` (None: no tensor_shape).
  """
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  tensor = request.inputs[input_key]
  tensor.dtype = 1  # DT_FLOAT
  tensor.float_val.extend(x)
  if shape is not None:
    for size in shape:
      tensor.tensor_shape.dim.add().size = size
  request.output_filter.extend(output_filter)
  return request


def rpc_error(call, request) -> Tuple[grpc.StatusCode, str]:
  """The (code, details) a call fails with; fails the test if it succeeds."""
  with pytest.raises(grpc.RpcError) as raised:
    call(request, timeout=RPC_TIMEOUT)
  return raised.value.code(), raised.value.details()


def values(tensor) -> np.ndarray:
  """A response TensorProto's float values in its shape."""
  return np.array(tensor.float_val, np.float32).reshape([d.size for d in tensor.tensor_shape.dim])
