"""The REST API's HTTP server alone (http_server.py), on a free loopback port, with a fake API.

Each limit the module docstring lists, and each part of aiohttp it relies on:
its low-level server and protocol, the body buffer's flow control
(streams.py `StreamReader`) and `RequestHandler._request_count`
(web_protocol.py). Deadlines are 1 s, so that a test takes a few seconds.
"""

import asyncio
import http.client
import json
import socket
import ssl
import time

import aiohttp
import pytest

from next_category.serving.apis.rest import http_server
from tests.testing import tls

DEADLINE_SECONDS = 1.0
GOOD = "Bearer good"
MIB = 1024 * 1024


class _Api:
  """Answers every request with what it got; with `checks_credentials`, wants `GOOD`."""

  def __init__(self, checks_credentials=False):
    self.checks_credentials = checks_credentials
    self.refused = 0
    self.bodies = []

  def refusal(self, method, path, authorization=None, peer="", origin=""):
    if not self.checks_credentials or authorization == GOOD:
      return None
    self.refused += 1
    return 401, "application/json", b'{"error": "No credentials."}'

  def handle(self, method, path, body, authorization=None, peer="", origin=""):
    self.bodies.append(body)
    answer = {"method": method, "path": path, "bytes": len(body), "peer": peer}
    return 200, "application/json", json.dumps(answer).encode()


@pytest.fixture
def serve():
  """Starts a `RestServer` (1 s deadlines unless told); stops them all after the test."""
  servers = []

  def start(api=None, **options):
    options.setdefault("header_timeout_seconds", DEADLINE_SECONDS)
    options.setdefault("body_timeout_seconds", DEADLINE_SECONDS)
    server = http_server.RestServer(api or _Api(), "127.0.0.1", 0, num_threads=4, **options)
    servers.append(server)
    server.start()
    return server

  yield start
  for server in servers:
    server.stop()


def _connect(port, source="127.0.0.1"):
  return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _until_closed(sock) -> bytes:
  """What the server sends until it closes."""
  answer = b""
  try:
    while chunk := sock.recv(65536):
      answer += chunk
  except ConnectionResetError:
    pass
  return answer


def _exchange(port, data: bytes, source="127.0.0.1") -> bytes:
  with _connect(port, source) as sock:
    sock.sendall(data)
    return _until_closed(sock)


def _closed_after(sock, give_up_seconds, send=b"", every_seconds=0.1) -> float:
  """Seconds until the server closes `sock`, sending `send` every `every_seconds` meanwhile."""
  start = time.monotonic()
  sock.settimeout(every_seconds)
  while time.monotonic() - start < give_up_seconds:
    try:
      if send:
        sock.sendall(send)
      if not sock.recv(65536):
        return time.monotonic() - start
    except (ConnectionResetError, BrokenPipeError):
      return time.monotonic() - start
    except TimeoutError:
      pass
  pytest.fail(f"The server still held the connection after {give_up_seconds} s.")


def _status(sock) -> int:
  """Reads one whole answer from `sock`; its status."""
  response = http.client.HTTPResponse(sock)
  response.begin()
  response.read()
  return response.status


def _get(port, path="/v1/models/m", method="GET"):
  return f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {GOOD}\r\n\r\n".encode()


def _post_head(length, authorization=GOOD, extra=""):
  return (
    f"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n"
    f"Content-Length: {length}\r\n{extra}\r\n"
  ).encode()


def test_keep_alive_answers_with_the_server_and_cors_headers(serve):
  server = serve(cors=True)
  connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
  try:
    connection.request("POST", "/v1/models/m:predict", body=b'{"instances": [1]}')
    response = connection.getresponse()
    assert json.loads(response.read())["bytes"] == 18
    assert response.getheader("Server") == "TensorFlowServingCompatible"
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("Access-Control-Allow-Origin") == "*"
    # The same connection, a path outside /v1/: no CORS headers.
    connection.request("GET", "/monitoring")
    response = connection.getresponse()
    assert json.loads(response.read()) == {
      "method": "GET",
      "path": "/monitoring",
      "bytes": 0,
      "peer": f"127.0.0.1:{connection.sock.getsockname()[1]}",
    }
    assert response.getheader("Access-Control-Allow-Origin") is None
    connection.request("HEAD", "/v1/models/m")
    response = connection.getresponse()
    assert response.read() == b"" and int(response.getheader("Content-Length")) > 0
  finally:
    connection.close()


def test_a_header_dribbled_a_byte_at_a_time_is_cut_at_the_header_deadline(serve):
  server = serve()
  with _connect(server.port) as sock:
    sock.sendall(b"GET /v1/models/m HTTP/1.1\r\n")
    # Each read is quick; the header never ends. A deadline per read would
    # never close it.
    seconds = _closed_after(sock, 10, send=b"X", every_seconds=0.1)
  assert 0.8 * DEADLINE_SECONDS < seconds < 3 * DEADLINE_SECONDS


def test_an_idle_connection_closes_a_header_deadline_after_opening_or_its_last_answer(serve):
  server = serve()
  with _connect(server.port) as sock:
    assert 0.8 * DEADLINE_SECONDS < _closed_after(sock, 10) < 3 * DEADLINE_SECONDS
  with _connect(server.port) as sock:
    time.sleep(0.6 * DEADLINE_SECONDS)  # Most of the deadline gone, then a request.
    sock.sendall(_get(server.port))
    assert sock.recv(12) == b"HTTP/1.1 200"
    # Counted again from the answer, not from the opening.
    assert 0.8 * DEADLINE_SECONDS < _closed_after(sock, 10) < 3 * DEADLINE_SECONDS


def test_the_whole_body_has_a_deadline(serve):
  server = serve()
  with _connect(server.port) as sock:
    sock.sendall(_post_head(1000))
    seconds = _closed_after(sock, 10, send=b" ", every_seconds=0.1)
  assert 0.8 * DEADLINE_SECONDS < seconds < 3 * DEADLINE_SECONDS


def test_a_refused_request_is_answered_from_its_headers_and_its_body_never_read(serve):
  api = _Api(checks_credentials=True)
  server = serve(api)
  # The headers of a 30 MB body and none of it; a client that waits for 100 Continue.
  answer = _exchange(server.port, _post_head(30 * MIB, "Bearer bad", "Expect: 100-continue\r\n"))
  assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and b"100 Continue" not in answer
  assert b"\r\nConnection: close\r\n" in answer and answer.endswith(b'{"error": "No credentials."}')
  assert api.refused == 1 and api.bodies == []
  # With good credentials the client is asked for the body, then answered.
  with _connect(server.port) as sock:
    sock.sendall(_post_head(5, GOOD, "Expect: 100-continue\r\n"))
    assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"hello")
    assert sock.recv(12) == b"HTTP/1.1 200"
  assert api.bodies == [b"hello"]


def test_a_refused_body_is_drained_briefly_then_the_connection_closes(serve):
  server = serve(_Api(checks_credentials=True))
  with _connect(server.port) as sock:
    sock.sendall(_post_head(30 * MIB, "Bearer bad"))
    head = sock.recv(12)
    # The server has stopped sending and drops at most 1 MiB of the body
    # before it closes: a client that keeps sending is cut off.
    sent, start = 0, time.monotonic()
    sock.settimeout(5)
    try:
      while sent < 30 * MIB:
        sent += sock.send(b"x" * 65536)
    except (ConnectionResetError, BrokenPipeError):
      pass
  assert head == b"HTTP/1.1 401"
  assert sent < 30 * MIB and time.monotonic() - start < 10


def test_an_oversized_body_is_refused_from_its_content_length(serve):
  api = _Api()
  server = serve(api, max_body_bytes=1000)
  answer = _exchange(server.port, _post_head(1001))
  assert answer.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
  assert b"(1001 bytes) is larger than the server's limit of 1000 bytes" in answer
  assert api.bodies == []


def test_chunked_and_malformed_requests_get_json_errors(serve):
  server = serve()
  chunked = (
    b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n"
  )
  answer = _exchange(server.port, chunked)
  assert answer.startswith(b"HTTP/1.1 411 Length Required\r\n")
  assert answer.endswith(b'{"error": "Send a Content-Length; chunked bodies are not supported."}')
  for malformed in (b"NOT HTTP\r\n\r\n", _post_head("twelve")):
    answer = _exchange(server.port, malformed)
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request")
    assert b"Server: TensorFlowServingCompatible" in answer
    assert answer.endswith(b'{"error": "Malformed HTTP request."}')


def test_a_header_over_64_kib_is_cut_and_a_large_one_under_it_is_not(serve):
  server = serve()
  line = b"X-Padding: " + b"p" * 1000 + b"\r\n"
  with _connect(server.port) as sock:
    sock.sendall(b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n" + line * 60 + b"\r\n")
    assert sock.recv(12) == b"HTTP/1.1 200"
  with _connect(server.port) as sock:
    sock.sendall(b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n")
    for _ in range(70):  # Under aiohttp's own limits (8190 bytes a line, 128 lines).
      try:
        sock.sendall(line)
      except (ConnectionResetError, BrokenPipeError):
        break
    assert _until_closed(sock) == b""


@pytest.mark.parametrize("checks_credentials", [False, True])
def test_a_body_sent_with_its_header_is_not_counted_as_header(serve, checks_credentials):
  # web_protocol.py's `_request_count` tells the header from the body that
  # arrives before the request starts; with access control on, the body
  # waits past 64 KiB (the buffer's limit) for the credentials, then is read.
  api = _Api(checks_credentials)
  server = serve(api)
  body = b"b" * (300 * 1024)
  with _connect(server.port) as sock:
    sock.sendall(_post_head(len(body)) + body)
    answer = sock.recv(65536)
  assert answer.startswith(b"HTTP/1.1 200") and api.bodies == [body]


def test_the_body_buffer_stops_reading_at_its_limit_until_read():
  # streams.py: past twice its limit a StreamReader pauses its protocol
  # (the socket), and reading resumes it. The limit before authentication.
  class Protocol:
    _reading_paused = False
    connected = True

    def pause_reading(self):
      self._reading_paused = True

    def resume_reading(self, resume_parser=True):
      self._reading_paused = False

  async def scenario():
    protocol = Protocol()
    content = aiohttp.StreamReader(protocol, limit=32 * 1024, loop=asyncio.get_running_loop())
    content.feed_data(b"x" * (64 * 1024))
    paused_at_limit = protocol._reading_paused
    content.feed_data(b"x")
    paused_past_limit = protocol._reading_paused
    content.set_read_chunk_size(64 * 1024)  # The credentials checked out.
    await content.readany()
    return paused_at_limit, paused_past_limit, protocol._reading_paused

  assert asyncio.run(scenario()) == (False, True, False)


def test_connections_are_capped_per_client_address(serve):
  server = serve(max_connections_per_client=3)
  held = [_connect(server.port, "127.0.0.2") for _ in range(3)]
  try:
    held[-1].sendall(_get(server.port))
    assert held[-1].recv(12) == b"HTTP/1.1 200"  # All three are counted by now.
    with _connect(server.port, "127.0.0.2") as over:
      over.sendall(_get(server.port))
      assert _until_closed(over) == b""
    assert _exchange(server.port, _get(server.port)).startswith(b"HTTP/1.1 200")
  finally:
    for sock in held:
      sock.close()


def test_beyond_max_connections_the_one_waiting_longest_is_closed(serve):
  server = serve(max_connections=2, max_connections_per_client=0, header_timeout_seconds=30)
  oldest, busy = _connect(server.port), _connect(server.port)
  try:
    busy.sendall(_get(server.port))  # Answered: it waits since then, the other since opening.
    assert _status(busy) == 200
    with _connect(server.port) as newest:
      newest.sendall(_get(server.port))
      assert newest.recv(12) == b"HTTP/1.1 200"
    assert _closed_after(oldest, 5) < 5
    busy.sendall(_get(server.port))
    assert _status(busy) == 200
  finally:
    oldest.close()
    busy.close()


def test_tls_and_its_handshake_within_the_header_deadline(serve, tmp_path):
  cert_file, key_file = tls.self_signed(tmp_path)
  server = serve(ssl_context=http_server.ssl_context(cert_file, key_file))
  context = ssl.create_default_context(cafile=cert_file)
  connection = http.client.HTTPSConnection("localhost", server.port, timeout=10, context=context)
  try:
    connection.request("GET", "/v1/models/m")
    assert connection.getresponse().status == 200
  finally:
    connection.close()
  with _connect(server.port) as sock:  # A client that never says hello.
    assert 0.8 * DEADLINE_SECONDS < _closed_after(sock, 10) < 3 * DEADLINE_SECONDS


def test_the_port_is_bound_in_the_constructor_and_bad_limits_are_refused(serve):
  server = serve()
  with pytest.raises(OSError):
    http_server.RestServer(_Api(), "127.0.0.1", server.port)
  with pytest.raises(ValueError, match=r"The REST header deadline .* must be positive; it is 0"):
    http_server.RestServer(_Api(), "127.0.0.1", 0, header_timeout_seconds=0)
  with pytest.raises(ValueError, match=r"max_connections must be positive; it is 0"):
    http_server.RestServer(_Api(), "127.0.0.1", 0, max_connections=0)


def test_stop_ends_connections_and_requests_in_progress(serve):
  class SlowApi(_Api):
    def handle(self, *args, **kwargs):
      time.sleep(0.5)
      return super().handle(*args, **kwargs)

  server = serve(SlowApi())
  idle, busy = _connect(server.port), _connect(server.port)
  try:
    busy.sendall(_get(server.port))
    time.sleep(0.1)
    server.stop()
    assert _until_closed(idle) == b""
    assert _until_closed(busy) == b""  # Closed under it, unanswered.
  finally:
    idle.close()
    busy.close()
