"""The HTTP/1.1 server of the REST API, on tornado: connections, deadlines, bodies, TLS.

Reads each request's method, path, headers and body and hands them to a
`RestApi` (handler.py), which answers; nothing here knows the API. As
TensorFlow Serving's own REST server (tensorflow_serving/model_servers/
http_server.cc, on libevent), it is event-driven: one event loop reads and
writes every connection, so a slow or idle client holds a socket, never a
thread. tornado's HTTP/1.1 connection (`tornado.http1connection`) parses the
requests. bench/rest_server_bench.py measures it beside aiohttp and the
hand-written server it replaced; docs/serving-production.md has the figures
and why tornado.

What a client cannot do here:
- hold the server with a slow header: the whole header must arrive within
  `header_timeout_seconds` of the connection opening or of the previous
  answer (tornado's `header_timeout`, one deadline for the whole header, not
  per read); so an idle keep-alive connection is closed after that long too;
- hold it with a slow body: the whole body within `body_timeout_seconds`;
- open more than `max_connections_per_client` connections from one address;
  beyond `max_connections` in all, the connection waiting longest for its
  next request is closed;
- make the server read a body before its credentials checked out: they are
  checked from the headers, and a refused request's body is never read (with
  access control on, a connection reads at most `max_body_bytes_before_auth`
  of a body until its request's credentials check out, then up to
  `max_body_bytes`).
"""

import asyncio
import concurrent.futures
import http
import json
import logging
import socket
import ssl
import threading
import time
from typing import Dict
from typing import Optional

import uvloop
from tornado import gen
from tornado import http1connection
from tornado import httputil
from tornado import iostream
from tornado import netutil
from tornado import tcpserver

from next_category.serving.apis.rest import handler

# A refused request's remaining body is read and dropped for at most this long
# and this much (a lingering close, as web servers do: closing with the body
# still arriving would reset the connection and the client could lose the
# answer).
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1024 * 1024
# With access control on, the most of a body a connection reads before its
# request's credentials checked out (tornado's max_body_size, raised per
# request once they have).
DEFAULT_MAX_BODY_BYTES_BEFORE_AUTH = 64 * 1024
_SERVER = "TensorFlowServingCompatible"
# http_rest_api_util.cc:40-44 (`AddCORSHeaders`).
_CORS_HEADERS = (
  ("Access-Control-Allow-Origin", "*"),
  ("Access-Control-Allow-Methods", "POST, GET"),
  ("Access-Control-Allow-Headers", "Content-Type"),
)


def ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
  """A server-side TLS context (TLS 1.2 and later) from PEM files.

  Raises:
    ValueError: if the certificate or key cannot be loaded.
  """
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.minimum_version = ssl.TLSVersion.TLSv1_2
  try:
    context.load_cert_chain(cert_file, key_file)
  except (OSError, ssl.SSLError) as e:
    raise ValueError(f"Cannot load the REST TLS certificate or key: {e}.") from None
  return context


def _error_body(message: str) -> bytes:
  return json.dumps({"error": message}).encode("utf-8")


class _Client:
  """One connection: its address, and since when it waits for a request's header (None: busy)."""

  __slots__ = ("address", "peer", "waiting_since", "connection", "lingering")

  def __init__(self, address):
    self.address = address[0] if isinstance(address, tuple) else str(address)
    self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
    self.waiting_since: Optional[float] = time.monotonic()
    self.connection: Optional[http1connection.HTTP1ServerConnection] = None
    self.lingering = False

  def __str__(self) -> str:  # tornado names the connection so in its log lines.
    return self.peer


class _Request(httputil.HTTPMessageDelegate):
  """One request on a connection: refused from its headers, or read and answered."""

  def __init__(self, server: "_TornadoServer", client: _Client, connection):
    self._server = server
    self._client = client
    self._connection = connection
    self._method = ""
    self._path = ""
    self._headers: Optional[httputil.HTTPHeaders] = None
    self._chunks = []
    self._refused = False

  def headers_received(self, start_line, headers):
    self._client.waiting_since = None
    self._method, self._path, self._headers = start_line.method, start_line.path, headers
    server = self._server
    has_body = "Content-Length" in headers or "Transfer-Encoding" in headers
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
      return self._refuse(
        http.HTTPStatus.LENGTH_REQUIRED,
        _error_body("Send a Content-Length; chunked bodies are not supported."),
      )
    length = 0
    if has_body:
      try:
        length = int(headers.get("Content-Length", "0"))
      except ValueError:
        length = -1
      if length < 0:
        return self._refuse(http.HTTPStatus.BAD_REQUEST, _error_body("Invalid Content-Length."))
      if length > server.max_body_bytes:
        # Refused before it is read: a large body costs no memory.
        return self._refuse(
          http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
          _error_body(
            f"The request body ({length} bytes) is larger than the server's limit of "
            f"{server.max_body_bytes} bytes (--max_request_bytes)."
          ),
        )
    # Credentials from the headers, before any of the body is read: a refused
    # request is answered (and audited) as the API answers it, unread.
    refusal = server.api.refusal(
      self._method,
      self._path,
      headers.get("Authorization"),
      self._client.peer,
      headers.get("Origin", ""),
    )
    if refusal is not None:
      code, content_type, body = refusal
      if length:
        return self._refuse(code, body, content_type)
      self._refused = True
      self._respond(code, content_type, body)
      return None
    if server.checks_credentials:
      self._connection.set_max_body_size(server.max_body_bytes)
    return None

  def data_received(self, chunk):
    if not self._refused:
      self._chunks.append(chunk)

  def finish(self):
    if self._refused:
      return
    body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
    self._chunks = []
    self._server.answer(self, body)

  def on_connection_close(self):
    self._chunks = []

  def answer(self, body: bytes) -> None:
    """On a pool thread: the API's answer, then back to the loop to send it."""
    response = self._server.api.handle(
      self._method,
      self._path,
      body,
      authorization=self._headers.get("Authorization"),
      peer=self._client.peer,
      origin=self._headers.get("Origin", ""),
    )
    self._server.loop.call_soon_threadsafe(self._respond, *response)

  def _respond(self, code: int, content_type: str, body: bytes) -> None:
    headers = httputil.HTTPHeaders()
    headers["Server"] = _SERVER
    if content_type:
      headers["Content-Type"] = content_type
    if self._server.cors and handler.is_api_path(self._path):
      for name, value in _CORS_HEADERS:
        headers[name] = value
    headers["Content-Length"] = str(len(body))
    try:
      self._connection.write_headers(
        httputil.ResponseStartLine("HTTP/1.1", code, http.HTTPStatus(code).phrase),
        headers,
        body if self._method != "HEAD" else None,  # A HEAD answer has headers only.
      )
      self._connection.finish()
    except (iostream.StreamClosedError, httputil.HTTPOutputError):  # The client went away.
      pass
    self._client.waiting_since = time.monotonic()

  def _refuse(self, code: int, body: bytes, content_type: str = "application/json") -> None:
    """Answers from the headers alone and closes, the body unread (lingering briefly)."""
    stream = self._connection.detach()
    self._client.lingering = True
    reason = http.HTTPStatus(code).phrase
    head = (
      f"HTTP/1.1 {code} {reason}\r\nServer: {_SERVER}\r\nContent-Type: {content_type}\r\n"
      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    self._server.loop.create_task(self._server.linger(self._client, stream, head + body))


class _TornadoServer(tcpserver.TCPServer, httputil.HTTPServerConnectionDelegate):
  """tornado's TCP server with HTTP/1.1 connections, capped per address and in all."""

  def __init__(self, owner: "RestServer", ssl_options):
    super().__init__(ssl_options=ssl_options, max_buffer_size=owner.max_body_bytes + 65536)
    self.api = owner.api
    self.cors = owner.cors
    self.max_body_bytes = owner.max_body_bytes
    self.checks_credentials = owner.api.checks_credentials
    self.loop = asyncio.get_running_loop()
    self._pool = owner.pool
    self._max_connections = owner.max_connections
    self._max_per_client = owner.max_connections_per_client
    self._params = http1connection.HTTP1ConnectionParameters(
      header_timeout=owner.header_timeout_seconds,
      body_timeout=owner.body_timeout_seconds,
      max_body_size=(
        min(owner.max_body_bytes_before_auth, owner.max_body_bytes)
        if self.checks_credentials
        else owner.max_body_bytes
      ),
      max_header_size=64 * 1024,
    )
    self.clients: Dict[_Client, None] = {}  # Insertion-ordered: oldest first.
    self._per_address: Dict[str, int] = {}

  def handle_stream(self, stream: iostream.IOStream, address) -> None:
    client = _Client(address)
    if self._max_per_client and self._per_address.get(client.address, 0) >= (self._max_per_client):
      logging.debug("REST: %s has too many connections; closing a new one.", client.address)
      stream.close()
      return
    if len(self.clients) >= self._max_connections and not self._close_longest_waiting():
      stream.close()
      return
    try:
      stream.set_nodelay(True)  # Small answers must not wait for the client's delayed ACK.
    except OSError:
      pass
    self.clients[client] = None
    self._per_address[client.address] = self._per_address.get(client.address, 0) + 1
    client.connection = http1connection.HTTP1ServerConnection(stream, self._params, client)
    client.connection.start_serving(self)

  def _close_longest_waiting(self) -> bool:
    """Closes the connection that has waited longest for a request's header; False if none waits."""
    waiting = [c for c in self.clients if c.waiting_since is not None and c.connection]
    if not waiting:
      return False
    oldest = min(waiting, key=lambda c: c.waiting_since)
    oldest.connection.stream.close()
    self._forget(oldest)
    return True

  def _forget(self, client: _Client) -> None:
    if self.clients.pop(client, 0) is None:
      left = self._per_address[client.address] - 1
      if left:
        self._per_address[client.address] = left
      else:
        del self._per_address[client.address]

  def start_request(self, server_conn, request_conn) -> httputil.HTTPMessageDelegate:
    client = request_conn.context
    if client.waiting_since is None:
      client.waiting_since = time.monotonic()
    return _Request(self, client, request_conn)

  def on_close(self, server_conn) -> None:
    client = server_conn.context
    if not client.lingering:
      self._forget(client)

  def answer(self, request: _Request, body: bytes) -> None:
    try:
      self._pool.submit(request.answer, body)
    except RuntimeError:  # Stopping: the pool takes no more.
      request._connection.stream.close()

  async def linger(self, client: _Client, stream: iostream.IOStream, answer: bytes) -> None:
    """Sends `answer`, stops sending, and drops what the client still sends, briefly; closes."""
    try:
      await stream.write(answer)
      stream.socket.shutdown(socket.SHUT_WR)
      deadline, drained = self.loop.time() + _LINGER_SECONDS, 0
      while drained < _LINGER_BYTES:
        chunk = await gen.with_timeout(
          deadline, stream.read_bytes(65536, partial=True), quiet_exceptions=(Exception,)
        )
        drained += len(chunk)
    except (iostream.StreamClosedError, OSError, gen.TimeoutError, AttributeError):
      pass
    finally:
      stream.close()
      self._forget(client)

  async def close_all(self) -> None:
    for client in list(self.clients):
      if client.connection is not None and client.connection.stream is not None:
        client.connection.stream.close()
      self._forget(client)


class RestServer:
  """Serves a `RestApi` over HTTP/1.1 (or HTTPS) on tornado, on an event loop of its own.

  The loop reads and writes every connection; `num_threads` threads run the
  API (`RestApi.handle` waits for the model). See the module docstring for the
  limits.

  Args:
    api: the API.
    host: the address to bind.
    port: the port to bind (0: any free one).
    num_threads: requests answered at once.
    header_timeout_seconds: a request's whole header must arrive within this
      of the connection opening or of the previous answer.
    body_timeout_seconds: a request's whole body must arrive within this.
    max_body_bytes: larger request bodies are refused (413) without being read.
    max_body_bytes_before_auth: with access control on, the most of a body
      read before the request's credentials checked out.
    max_connections: open connections kept at most.
    max_connections_per_client: open connections from one address at most (0:
      no cap).
    ssl_context: serve HTTPS with this server-side context.
    cors: add TensorFlow Serving's CORS headers to the answers of `/v1/`
      requests (`--rest_api_enable_cors_support`).
  """

  def __init__(
    self,
    api: handler.RestApi,
    host: str,
    port: int,
    num_threads: int = 64,
    header_timeout_seconds: float = 10.0,
    body_timeout_seconds: float = 30.0,
    max_body_bytes: int = 32 * 1024 * 1024,
    max_body_bytes_before_auth: int = DEFAULT_MAX_BODY_BYTES_BEFORE_AUTH,
    max_connections: int = 4096,
    max_connections_per_client: int = 256,
    ssl_context: Optional[ssl.SSLContext] = None,
    cors: bool = False,
  ):
    for what, flag, value in (
      ("header deadline", "--rest_header_timeout_seconds", header_timeout_seconds),
      ("body deadline", "--rest_body_timeout_seconds", body_timeout_seconds),
      (
        "body limit before authentication",
        "--max_request_bytes_before_auth",
        max_body_bytes_before_auth,
      ),
    ):
      if value <= 0:
        raise ValueError(f"The REST {what} ({flag}) must be positive; it is {value}.")
    if max_connections <= 0:
      raise ValueError(
        f"The REST server's max_connections must be positive; it is {max_connections}."
      )
    if max_connections_per_client < 0:
      raise ValueError(
        "The REST connections per client address (--rest_max_connections_per_client) must be "
        f"0 (no cap) or more; it is {max_connections_per_client}."
      )
    self.api = api
    self.cors = cors
    self.max_body_bytes = max_body_bytes
    self.max_body_bytes_before_auth = max_body_bytes_before_auth
    self.header_timeout_seconds = header_timeout_seconds
    self.body_timeout_seconds = body_timeout_seconds
    self.max_connections = max_connections
    self.max_connections_per_client = max_connections_per_client
    self._ssl_context = ssl_context
    # Bound here, so that a port in use fails the constructor (OSError).
    self._sockets = netutil.bind_sockets(port, address=host, backlog=1024)
    self.pool = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="rest")
    self._loop: Optional[asyncio.AbstractEventLoop] = None
    self._thread: Optional[threading.Thread] = None
    self._server: Optional[_TornadoServer] = None

  @property
  def port(self) -> int:
    return self._sockets[0].getsockname()[1]

  def start(self) -> None:
    # uvloop, as the gRPC server's loop: less CPU per request on the loop.
    self._loop = uvloop.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, name="rest-server", daemon=True)
    self._thread.start()
    asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()

  async def _start(self) -> None:
    self._server = _TornadoServer(self, self._ssl_context)
    self._server.add_sockets(self._sockets)

  async def _stop(self) -> None:
    self._server.stop()
    await self._server.close_all()

  def stop(self) -> None:
    if self._loop is None:
      for sock in self._sockets:
        sock.close()
      self.pool.shutdown(wait=False, cancel_futures=True)
      return
    try:
      asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
    except (concurrent.futures.TimeoutError, RuntimeError) as e:
      logging.warning("Stopping the REST server: %s", e)
    # Requests in progress end when their connections close under them.
    self.pool.shutdown(wait=True, cancel_futures=True)
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join()
    self._loop.close()
