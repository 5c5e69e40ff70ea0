"""The server as an attacker meets it: bounded labels, connections, messages and memory."""

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import time

import grpc
import portpicker
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from next_category.serving.config import flags
from next_category.serving.models import loader
from next_category.serving.models import model_manager
from tests.serving import conftest
from tests.serving.conftest import DEADLINE_SECONDS
from tests.serving.conftest import MODEL_NAME

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _post(port, path, body: bytes, timeout=DEADLINE_SECONDS):
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
  try:
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read()
  finally:
    connection.close()


def _get(port, path, timeout=DEADLINE_SECONDS):
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
  try:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()
  finally:
    connection.close()


def test_unknown_model_names_never_become_metric_labels(server):
  before = len(server.metrics.exposition())
  for index in range(200):
    _post(server.rest_port, f"/v1/models/{'x' * 200}{index}:predict", b'{"instances": [1]}')
  text = server.metrics.exposition().decode()
  assert "x" * 200 not in text
  assert ':tensorflow:serving:request_count{model_name="<unknown>",status="NOT_FOUND"} 200' in (
    text.splitlines()
  )
  # Two new series (the counter and the latency histogram), not 200 of each.
  assert len(text) - before < 3000


def _bad_example_request():
  request = predict_pb2.PredictRequest()
  request.model_spec.name = MODEL_NAME
  request.inputs["examples"].CopyFrom(tf.make_tensor_proto([b"\x0a" * 4000], dtype=tf.string))
  return request


def test_error_messages_carry_no_stack_trace_path_or_payload(server):
  with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
      stub.Predict(_bad_example_request(), timeout=DEADLINE_SECONDS)
  details = raised.value.details()
  assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert details.startswith("Could not parse example input")
  # A 5 MB body with a bad example: the answer is a short excerpt, not an echo.
  bad = base64.b64encode(b"\x0a\x0b" * (2 * 1024 * 1024)).decode()
  code, answer = _post(
    server.rest_port,
    f"/v1/models/{MODEL_NAME}:predict",
    json.dumps({"instances": [{"b64": bad}]}).encode(),
  )
  assert code == 400
  message = json.loads(answer)["error"]
  for text in (details, message):
    assert 'File "' not in text and "Traceback" not in text and ".py" not in text
    assert "/work/" not in text and "/tmp/" not in text
    assert len(text) < 700
  # A bad JSON body is named, not echoed.
  code, answer = _post(server.rest_port, f"/v1/models/{MODEL_NAME}:predict", b"{" + b"A" * 100_000)
  assert code == 400 and len(answer) < 700 and b"JSON Parse error" in answer


def test_load_errors_keep_tensorflows_status_codes(canned, tmp_path):
  flipped = tmp_path / "flipped"
  tf.io.gfile.makedirs(str(flipped))
  os.system(f"cp -r {canned.version_1}/. {flipped}")
  data_file = next((flipped / "variables").glob("variables.data-*"))
  data = bytearray(data_file.read_bytes())
  data[len(data) // 2] ^= 1
  data_file.write_bytes(bytes(data))
  (tmp_path / "empty").mkdir()
  for path, code in (
    (canned.broken, grpc.StatusCode.DATA_LOSS),
    (str(flipped), grpc.StatusCode.DATA_LOSS),
    (str(tmp_path / "empty"), grpc.StatusCode.NOT_FOUND),
  ):
    with pytest.raises(Exception) as raised:
      loader.load_servable(MODEL_NAME, 1, path)
    assert model_manager._load_error(raised.value)[0] == code, path


@pytest.fixture(scope="module")
def process(canned, tmp_path_factory):
  """The server with default flags, in a process of its own (memory checks)."""
  grpc_port, rest_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
  log = open(tmp_path_factory.mktemp("process") / "server.log", "w")
  server = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "next_category.serving.server",
      f"--port={grpc_port}",
      f"--rest_api_port={rest_port}",
      "--rest_api_num_threads=8",
      f"--model_name={MODEL_NAME}",
      f"--model_base_path={canned.base_path}",
    ],
    cwd=_REPO_ROOT,
    env=dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2"),
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  try:
    conftest.wait_for_server_ready(f"127.0.0.1:{grpc_port}")
    yield server, grpc_port, rest_port
  finally:
    server.terminate()
    server.wait(30)


# 127.0.0.1 in /proc/net/tcp, the same mapped into IPv6, and ::1, as the kernel writes them.
_LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _listening_addresses(port):
  """Local addresses of the sockets listening on `port` (from /proc/net/tcp*)."""
  found = set()
  for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    if not os.path.exists(table):
      continue
    for line in open(table).readlines()[1:]:
      local, state = line.split()[1], line.split()[3]
      address, hex_port = local.rsplit(":", 1)
      if state == "0A" and int(hex_port, 16) == port:
        found.add(address)
  return found


def test_default_bind_is_loopback(process):
  _, grpc_port, rest_port = process
  assert flags.ServerOptions().host == "127.0.0.1"
  for port in (rest_port, grpc_port):
    addresses = _listening_addresses(port)
    assert addresses and addresses <= _LOOPBACK, addresses


def test_idle_connections_do_not_shut_out_a_request(process):
  _, _, rest_port = process  # 8 REST threads.
  idle = [socket.create_connection(("127.0.0.1", rest_port)) for _ in range(200)]
  try:
    # A client that started a request and stalls holds one thread, not all of them.
    stalled = socket.create_connection(("127.0.0.1", rest_port))
    stalled.sendall(b"GET /v1/models/next_category HTTP/1.1\r\nHost: x\r\n")
    start = time.monotonic()
    code, body = _get(rest_port, f"/v1/models/{MODEL_NAME}", timeout=5)
    assert code == 200 and b"AVAILABLE" in body
    assert time.monotonic() - start < 5
    stalled.close()
  finally:
    for connection in idle:
      connection.close()


def _peak_rss_bytes(pid):
  for line in open(f"/proc/{pid}/status"):
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) * 1024
  raise AssertionError("no VmHWM")


def _post_large(port, size):
  """Announces a `size`-byte body and reads the answer; then sends the first MB of the body.

  The server answers from the headers alone and drops what follows, briefly,
  before it closes: the answer is read before the body is sent, since a
  socket closed with data unread resets the connection and may discard the
  answer at the client. Returns the raw answer.
  """
  with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
    connection.sendall(
      f"POST /v1/models/{MODEL_NAME}:predict HTTP/1.1\r\nHost: x\r\n"
      f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    answer = b""
    while chunk := connection.recv(65536):
      answer += chunk
    try:
      connection.sendall(b'{"instances": ["' + b"A" * (1024 * 1024))
    except (BrokenPipeError, ConnectionResetError):
      pass  # The server has closed: the body is not read.
    return answer


def test_a_60_mb_body_costs_at_most_twice_its_size(process):
  server, _, rest_port = process
  size = 60 * 1024 * 1024
  before = _peak_rss_bytes(server.pid)
  for _ in range(3):
    answer = _post_large(rest_port, size)
    assert answer.startswith(b"HTTP/1.1 413") and b"--max_request_bytes" in answer
  assert _peak_rss_bytes(server.pid) - before < 2 * size
  # And the server still answers.
  assert _get(rest_port, f"/v1/models/{MODEL_NAME}")[0] == 200


def _server_that_does_not_start(*flags) -> str:
  """Runs the server expecting it to fail as tensorflow_model_server does.

  That is, exit status 255 and `Failed to start server. Error: ...` on stdout
  (model_servers/main.cc:333-337). Returns stdout.
  """
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "next_category.serving.server",
      f"--port={portpicker.pick_unused_port()}",
      "--rest_api_port=0",
      *flags,
    ],
    cwd=_REPO_ROOT,
    env=dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 255
  assert "Traceback" not in result.stderr
  return result.stdout


def test_no_servable_version_exits_non_zero(tmp_path):
  (tmp_path / "empty").mkdir()
  stdout = _server_that_does_not_start(
    f"--model_base_path={tmp_path / 'empty'}", "--model_load_timeout_seconds=1"
  )
  assert "Failed to start server. Error: DEADLINE_EXCEEDED: No servable version after 1 s" in stdout


def test_a_model_no_version_of_which_can_load_exits_without_waiting(tmp_path):
  # A version that fails to load with no retry left ends the start-up wait, as in
  # TensorFlow Serving: the long --model_load_timeout_seconds is never waited out.
  version = tmp_path / "m" / "1"
  version.mkdir(parents=True)
  (version / "saved_model.pb").write_bytes(b"this is not a SavedModel")
  stdout = _server_that_does_not_start(
    "--model_name=m",
    f"--model_base_path={tmp_path / 'm'}",
    "--max_num_load_retries=0",
    "--model_load_timeout_seconds=3600",
  )
  assert (
    "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
    "{{{name: m version: 1} due to error: DATA_LOSS: "
    "Can't parse the SavedModel as a binary proto" in stdout
  )


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--rest_header_timeout_seconds=0", "The REST header deadline (--rest_header_timeout_seconds)"),
    ("--rest_body_timeout_seconds=-1", "The REST body deadline (--rest_body_timeout_seconds)"),
    ("--rest_max_connections_per_client=-1", "(--rest_max_connections_per_client) must be 0"),
  ],
)
def test_a_bad_rest_limit_stops_the_server_naming_the_flag(canned, flag, message):
  stdout = _server_that_does_not_start(
    f"--rest_api_port={portpicker.pick_unused_port()}",
    f"--model_name={MODEL_NAME}",
    f"--model_base_path={canned.base_path}",
    flag,
  )
  assert message in stdout
