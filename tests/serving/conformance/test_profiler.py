"""tensorflow.ProfilerService on the gRPC port, traced with TensorFlow's own client.

Upstream: model_servers/tensorflow_model_server_test.py:736-773
(test_profiler_service_with_valid_trace_request): REST predicts while
`profiler_client.trace(grpc_addr, logdir, 1000, '', 10)` runs, which must not
raise. TensorFlow Serving serves the service by default (`--enable_profiler`,
model_servers/server.cc:385-389); this server only with `--enable_profiler`
(serving/apis/grpc/profiler.py says why).
"""

import os
import threading

import grpc
import pytest
import tensorflow as tf
from tensorflow.python.profiler import profiler_client
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from next_category.serving.apis.grpc import profiler
from tests.serving.conformance.conftest import RPC_TIMEOUT
from tests.serving.conformance.conftest import model_flags

HALF_PLUS_TWO = model_flags("default", "saved_model_half_plus_two_cpu")


@pytest.fixture(scope="module")
def server(tfs_server):
  return tfs_server(*HALF_PLUS_TWO, "--enable_profiler=true")


def test_profiler_service_with_valid_trace_request(server, tmp_path):
  # tensorflow_model_server_test.py:736-773.
  stop = threading.Event()

  def predicts():
    while not stop.is_set():
      status, _ = server.rest("POST", "/v1/models/default:predict", '{"instances": [2.0, 3.0]}')
      assert status == 200
      stop.wait(0.05)

  worker = threading.Thread(target=predicts)
  worker.start()
  logdir = tmp_path / "logs"
  logdir.mkdir()
  try:
    profiler_client.trace(server.grpc_address, str(logdir), 1000, "", 10)
  finally:
    stop.set()
    worker.join()
  # The client asked for <logdir>/plugins/profile/<run>/<host>.xplane.pb.
  [path] = [
    os.path.join(root, name)
    for root, _, names in os.walk(logdir)
    for name in names
    if name.endswith(".xplane.pb")
  ]
  assert os.path.relpath(path, logdir).startswith(os.path.join("plugins", "profile"))
  space = xplane_pb2.XSpace()
  with open(path, "rb") as f:
    space.ParseFromString(f.read())
  assert not profiler.is_empty(space)
  # The server's own session ran the model: its ops are in the trace.
  events = {
    plane.event_metadata[event.metadata_id].name
    for plane in space.planes
    for line in plane.lines
    for event in line.events
  }
  assert any("SessionRun" in name or "Session" in name for name in events), sorted(events)[:20]


def _call(server, method, request, response_class, metadata=None):
  call = server.channel.unary_unary(
    f"/{profiler.PROFILER_SERVICE}/{method}",
    request_serializer=lambda m: m.SerializeToString() if hasattr(m, "SerializeToString") else m,
    response_deserializer=response_class.FromString if response_class else None,
  )
  return call(request, timeout=RPC_TIMEOUT, metadata=metadata)


def test_profile_refuses_paths_outside_the_repository(server, tmp_path):
  request = profiler.ProfileRequest(
    repository_root=str(tmp_path), session_id="..", host_name="host"
  )
  request.opts.duration_ms = 10
  with pytest.raises(grpc.RpcError) as raised:
    _call(server, "Profile", request, profiler.ProfileResponse)
  assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert not os.listdir(tmp_path)


def test_terminate_ends_a_profile_early(server, tmp_path):
  # tsl/profiler/rpc/profiler_service_impl.cc: Terminate stops the session's Profile.
  request = profiler.ProfileRequest(
    repository_root=str(tmp_path), session_id="run", host_name="localhost:1"
  )
  request.opts.duration_ms = 60_000
  done = {}
  profile = threading.Thread(
    target=lambda: done.setdefault(
      "response", _call(server, "Profile", request, profiler.ProfileResponse)
    )
  )
  profile.start()
  while not profile.is_alive():
    pass
  for _ in range(100):  # Until the Profile call holds its session.
    _call(server, "Terminate", profiler.TerminateRequest(session_id="run"), None)
    profile.join(0.2)
    if not profile.is_alive():
      break
  assert "response" in done
  # ':' in the host name becomes '_' in the file name, as there.
  assert os.listdir(tmp_path / "run") == ["localhost_1.xplane.pb"]


def test_monitor_is_unimplemented(server):
  # tsl/profiler/rpc/profiler_service_impl.cc: Monitor answers UNIMPLEMENTED "unimplemented.".
  with pytest.raises(grpc.RpcError) as raised:
    _call(server, "Monitor", b"", None)
  assert (raised.value.code(), raised.value.details()) == (
    grpc.StatusCode.UNIMPLEMENTED,
    "unimplemented.",
  )


def test_profiler_is_off_without_the_flag(tfs_server, tmp_path):
  server = tfs_server(*HALF_PLUS_TWO)
  with pytest.raises(grpc.RpcError) as raised:
    _call(server, "Profile", profiler.ProfileRequest(), profiler.ProfileResponse)
  assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
  # TensorFlow's client reports no trace.
  with pytest.raises(tf.errors.UnavailableError):
    profiler_client.trace(server.grpc_address, str(tmp_path), 100, "", 1)


def test_profiler_needs_an_admin_with_access_control(tfs_server, tmp_path):
  tokens = tmp_path / "tokens"
  tokens.write_text("admin-token-0123456789 admin\nuser-token-0123456789 user default\n")
  server = tfs_server(*HALF_PLUS_TWO, "--enable_profiler=true", f"--auth_tokens_file={tokens}")
  request = profiler.ProfileRequest(
    repository_root=str(tmp_path / "profiles"), session_id="run", host_name="host"
  )
  request.opts.duration_ms = 10
  for metadata, code in (
    (None, grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization", "Bearer user-token-0123456789"),), grpc.StatusCode.PERMISSION_DENIED),
  ):
    with pytest.raises(grpc.RpcError) as raised:
      _call(server, "Profile", request, profiler.ProfileResponse, metadata)
    assert raised.value.code() == code
  admin = (("authorization", "Bearer admin-token-0123456789"),)
  _call(server, "Profile", request, profiler.ProfileResponse, admin)
  assert os.listdir(tmp_path / "profiles" / "run") == ["host.xplane.pb"]
