"""The HTTP/1.1 server of the REST API, on aiohttp: connections, deadlines, bodies, TLS.

Reads each request's method, path, headers and body and hands them to a
`RestApi` (handler.py), which answers; nothing here knows the API. As
TensorFlow Serving's own REST server (tensorflow_serving/model_servers/
http_server.cc, on libevent), it is event-driven: one event loop reads and
writes every connection, so a slow or idle client holds a socket, never a
thread. aiohttp's low-level server parses the requests (`aiohttp.web.Server`
and its HTTP/1.1 protocol `aiohttp.web.RequestHandler`, on llhttp's C
parser); this module accepts the connections itself, so that it counts them
per address before any TLS handshake, and adds the limits below.
bench/rest_server_bench.py measures it beside tornado, which served REST
before; docs/serving-production.md has the figures and why aiohttp.

What a client cannot do here:
- hold the server with a slow header: the whole header must arrive within
  `header_timeout_seconds` of the connection opening (its TLS handshake
  included) or of the previous answer, one deadline for the whole header, not
  per read; so an idle keep-alive connection is closed after that long too;
- hold it with a slow body: the whole body within `body_timeout_seconds`;
- open more than `max_connections_per_client` connections from one address;
  beyond `max_connections` in all, the connection waiting longest for its
  next request is closed;
- make the server read a body before its credentials checked out: they are
  checked from the headers, and a refused request's body is never read (with
  access control on, a connection reads at most `max_body_bytes_before_auth`
  of a body until its request's credentials check out, past which aiohttp
  stops reading the socket, keeping only the read that crossed it; then up
  to `max_body_bytes`);
- send a header of more than 64 KiB (a line at most 8190 bytes and at most
  128 lines, aiohttp's own limits).

One private part of aiohttp is used: `RequestHandler._request_count`
(aiohttp/web_protocol.py, the requests whose header its parser completed on
the connection), to tell a header still arriving from a body. The other
hooks are aiohttp's public ones: the request handler, `RequestHandler`'s
protocol methods and `handle_error`, and `StreamReader`'s read limits.
tests/serving/apis/test_http_server.py pins what each limit relies on.
"""

import asyncio
import concurrent.futures
import errno
import http
import json
import logging
import socket
import ssl
import threading
from typing import Dict
from typing import List
from typing import Optional
from typing import Set

import uvloop
from aiohttp import web

from next_category.serving.apis.rest import handler

# A refused request's remaining body is read and dropped for at most this long
# and this much (a lingering close, as web servers do: closing with the body
# still arriving would reset the connection and the client could lose the
# answer).
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1024 * 1024
# With access control on, the most of a body a connection reads before its
# request's credentials checked out (the high-water mark of aiohttp's body
# buffer, raised per request once they have).
DEFAULT_MAX_BODY_BYTES_BEFORE_AUTH = 64 * 1024
# The most of a header (request line and fields) read before it ends, as
# tornado's max_header_size bounded it here before.
_MAX_HEADER_BYTES = 64 * 1024
# aiohttp's body buffer once the credentials checked out: its default
# (helpers.DEFAULT_CHUNK_SIZE), pausing the socket past twice that.
_BODY_BUFFER_BYTES = 64 * 1024
_SERVER = "TensorFlowServingCompatible"
# http_rest_api_util.cc:40-44 (`AddCORSHeaders`).
_CORS_HEADERS = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Methods": "POST, GET",
  "Access-Control-Allow-Headers": "Content-Type",
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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


def _response(code: int, content_type: str, body: bytes, cors: bool = False) -> web.Response:
  headers = {"Server": _SERVER}
  if content_type:
    headers["Content-Type"] = content_type
  if cors:
    headers.update(_CORS_HEADERS)
  # aiohttp adds Content-Length and Date, and sends no body to a HEAD.
  return web.Response(status=code, body=body, headers=headers)


def _listening_sockets(host: str, port: int, backlog: int = 1024) -> List[socket.socket]:
  """Sockets listening on every address `host` stands for, all on one port.

  As tornado.netutil.bind_sockets (tornado 6.6) binds them: SO_REUSEADDR,
  IPv6 sockets IPv6 only, port 0 the port the first socket got.

  Raises:
    OSError: if an address cannot be bound (a port in use).
  """
  sockets: List[socket.socket] = []
  bound_port = None
  found = socket.getaddrinfo(host or None, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
  try:
    for family, kind, proto, _, address in sorted(set(found), key=lambda found: found[0]):
      sock = socket.socket(family, kind, proto)
      try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
          sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if port == 0 and bound_port is not None:
          address = (address[0], bound_port, *address[2:])
        sock.setblocking(False)
        sock.bind(address)
        sock.listen(backlog)
      except OSError as e:
        sock.close()
        if e.errno == errno.EADDRNOTAVAIL and host == "localhost":
          continue  # No ::1 on this host (tornado skips it too).
        raise
      bound_port = sock.getsockname()[1]
      sockets.append(sock)
  except OSError:
    for sock in sockets:
      sock.close()
    raise
  return sockets


class _Connection(web.RequestHandler):
  """One connection: aiohttp's HTTP/1.1 protocol, with its address and its header deadline.

  Made when the connection is accepted, before a TLS handshake. The deadline
  is one timer, armed then and after each answer: while a request is in
  progress it does nothing, and when it fires early it waits for the rest.
  """

  def __init__(self, server: "_Server", sock: socket.socket, address):
    super().__init__(server.manager, loop=server.loop, **server.protocol_options)
    self.server = server
    # Until the transport has it (connection_made, after any TLS handshake).
    self.sock = sock
    self.address = address[0] if isinstance(address, tuple) else str(address)
    self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
    # Since when it waits for a request's header (None: a request is in progress).
    self.waiting_since: Optional[float] = server.loop.time()
    self.open = True
    self._deadline: Optional[asyncio.TimerHandle] = None
    self._header_bytes = 0
    self._requests = 0
    self._arm()

  def _arm(self) -> None:
    if self._deadline is None and self.open:
      self._deadline = self.server.loop.call_at(
        self.waiting_since + self.server.header_timeout, self._header_due
      )

  def _header_due(self) -> None:
    self._deadline = None
    if self.waiting_since is None:  # A request in progress: armed again after its answer.
      return
    if self.server.loop.time() < self.waiting_since + self.server.header_timeout:
      self._arm()
      return
    logging.debug("REST: no complete header from %s in time; closing.", self.peer)
    self.server.close(self)

  def request_started(self) -> None:
    self.waiting_since = None
    self._requests += 1
    self._header_bytes = 0

  def answered(self) -> None:
    self.waiting_since = self.server.loop.time()
    self._arm()

  def data_received(self, data: bytes) -> None:
    super().data_received(data)
    # web_protocol.py: `_request_count` counts the headers aiohttp's parser
    # completed on this connection. While no request is in progress and it
    # has none that this server has not taken, the bytes are a header still
    # arriving (not a body read before its request starts).
    if self.waiting_since is not None and self._request_count == self._requests:
      self._header_bytes += len(data)
      if self._header_bytes > _MAX_HEADER_BYTES:
        logging.debug("REST: a header over %d bytes from %s.", _MAX_HEADER_BYTES, self.peer)
        self.server.close(self)

  def connection_lost(self, exc: Optional[BaseException]) -> None:
    super().connection_lost(exc)
    self.server.forget(self)

  def stop_waiting(self) -> None:
    self.open = False
    if self._deadline is not None:
      self._deadline.cancel()
      self._deadline = None

  def handle_error(self, request, status=500, exc=None, message=None) -> web.StreamResponse:
    """aiohttp's answer to a request it could not parse (or whose handler failed), as JSON."""
    if status >= 500:
      logging.error("REST: a request from %s failed", self.peer, exc_info=exc)
    else:  # Malformed: the client's problem, not the server's log's.
      logging.debug("REST: a malformed request from %s: %s", self.peer, exc)
    if request.writer.output_size > 0:  # As aiohttp's own: an answer is under way.
      raise ConnectionError("An answer was already under way.")
    phrase = http.HTTPStatus(status).phrase
    text = "Malformed HTTP request." if status == http.HTTPStatus.BAD_REQUEST else f"{phrase}."
    response = _response(status, "application/json", _error_body(text))
    response.force_close()
    return response


class _Server:
  """The connections of one `RestServer`, on its event loop: accepted, capped, answered."""

  def __init__(self, owner: "RestServer", loop: asyncio.AbstractEventLoop):
    self.loop = loop
    self.api = owner.api
    self.cors = owner.cors
    self.header_timeout = owner.header_timeout_seconds
    self._body_timeout = owner.body_timeout_seconds
    self._max_body_bytes = owner.max_body_bytes
    self._checks_credentials = owner.api.checks_credentials
    self._pool = owner.pool
    self._ssl_context = owner._ssl_context
    self._max_connections = owner.max_connections
    self._max_per_client = owner.max_connections_per_client
    # aiohttp's low-level server, for what its protocol needs of one.
    self.manager = web.Server(self._answer, loop=loop)
    self.protocol_options = dict(
      # A backstop: the header deadline (`_Connection`) closes idle connections first.
      keepalive_timeout=2 * owner.header_timeout_seconds,
      access_log=None,
      # A refused request lingers in `_refuse`; aiohttp's own lingering close
      # has no byte cap and does not stop sending first.
      lingering_time=0,
      # The body buffer's high-water mark is twice this; past it aiohttp stops
      # reading the socket until the body is read (streams.py StreamReader).
      read_bufsize=(
        max(1, min(owner.max_body_bytes_before_auth, owner.max_body_bytes) // 2)
        if self._checks_credentials
        else _BODY_BUFFER_BYTES
      ),
      # Bodies reach the API as sent, as TensorFlow Serving's (no inflating).
      auto_decompress=False,
    )
    self.connections: Dict[_Connection, None] = {}  # Insertion-ordered: oldest first.
    self._per_address: Dict[str, int] = {}
    self._accepting: List[asyncio.Task] = []
    self._opening: Set[asyncio.Task] = set()

  def serve(self, sockets: List[socket.socket]) -> None:
    self._accepting = [self.loop.create_task(self._accept(sock)) for sock in sockets]

  async def _accept(self, listening: socket.socket) -> None:
    while True:
      try:
        sock, address = await self.loop.sock_accept(listening)
      except OSError as e:  # Out of file descriptors, say: try again shortly.
        logging.warning("REST: accepting a connection failed: %s", e)
        await asyncio.sleep(0.1)
        continue
      self._admit(sock, address)

  def _admit(self, sock: socket.socket, address) -> None:
    client = address[0] if isinstance(address, tuple) else str(address)
    if self._max_per_client and self._per_address.get(client, 0) >= self._max_per_client:
      logging.debug("REST: %s has too many connections; closing a new one.", client)
      sock.close()
      return
    if len(self.connections) >= self._max_connections and not self._close_longest_waiting():
      sock.close()
      return
    sock.setblocking(False)
    connection = _Connection(self, sock, address)
    self.connections[connection] = None
    self._per_address[connection.address] = self._per_address.get(connection.address, 0) + 1
    # A task, so that a slow TLS handshake holds no other connection up.
    opening = self.loop.create_task(self._open(connection))
    self._opening.add(opening)
    opening.add_done_callback(self._opening.discard)

  async def _open(self, connection: _Connection) -> None:
    tls = (
      dict(ssl=self._ssl_context, ssl_handshake_timeout=self.header_timeout)
      if self._ssl_context is not None
      else {}
    )
    try:
      await self.loop.connect_accepted_socket(lambda: connection, connection.sock, **tls)
    except Exception as e:  # A failed TLS handshake (an OSError, mostly).
      logging.debug("REST: opening the connection of %s failed: %r", connection.peer, e)
      self.forget(connection)
    connection.sock = None

  def _close_longest_waiting(self) -> bool:
    """Closes the connection that has waited longest for a request's header; False if none waits."""
    waiting = [c for c in self.connections if c.waiting_since is not None]
    if not waiting:
      return False
    self.close(min(waiting, key=lambda c: c.waiting_since))
    return True

  def close(self, connection: _Connection) -> None:
    if connection.transport is not None:
      connection.force_close()
    elif connection.sock is not None:
      # Still in its TLS handshake (or not yet begun): the socket is the
      # loop's, to close; shut down, the handshake fails and closes it.
      try:
        connection.sock.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass
    self.forget(connection)

  def forget(self, connection: _Connection) -> None:
    connection.stop_waiting()
    if self.connections.pop(connection, 0) is None:
      left = self._per_address[connection.address] - 1
      if left:
        self._per_address[connection.address] = left
      else:
        del self._per_address[connection.address]

  async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
    """aiohttp calls this with each request once its header is read, none of its body."""
    connection: _Connection = request.protocol
    connection.request_started()
    try:
      return await self._handle(request, connection)
    finally:
      connection.answered()

  async def _handle(self, request: web.BaseRequest, connection: _Connection) -> web.StreamResponse:
    headers = request.headers
    method, path = request.method, request.raw_path
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
      return await self._refuse(
        request,
        http.HTTPStatus.LENGTH_REQUIRED,
        _error_body("Send a Content-Length; chunked bodies are not supported."),
      )
    # llhttp has answered an invalid Content-Length (400) before this.
    length = request.content_length or 0
    if length > self._max_body_bytes:
      # Refused before it is read: a large body costs no memory.
      return await self._refuse(
        request,
        http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        _error_body(
          f"The request body ({length} bytes) is larger than the server's limit of "
          f"{self._max_body_bytes} bytes (--max_request_bytes)."
        ),
      )
    # Credentials from the headers, before any of the body is read: a refused
    # request is answered (and audited) as the API answers it, unread.
    authorization, origin = headers.get("Authorization"), headers.get("Origin", "")
    refusal = self.api.refusal(method, path, authorization, connection.peer, origin)
    if refusal is not None:
      code, content_type, body = refusal
      if length:
        return await self._refuse(request, code, body, content_type)
      return _response(code, content_type, body, self.cors and handler.is_api_path(path))
    body = b""
    if length:
      if request.version >= (1, 1) and headers.get("Expect", "").lower() == "100-continue":
        # The client waits for this before it sends the body (aiohttp's
        # router sends it; its low-level server leaves it to the handler).
        await request.writer.write(_CONTINUE)
      try:
        async with asyncio.timeout(self._body_timeout):
          # read() lifts the buffer's limit for the rest of the body.
          body = await request.content.read()
      except (TimeoutError, ConnectionError, web.RequestPayloadError) as e:
        logging.debug("REST: no complete body from %s: %r", connection.peer, e)
        return self._closed(connection)
    try:
      code, content_type, answer = await self.loop.run_in_executor(
        self._pool, self.api.handle, method, path, body, authorization, connection.peer, origin
      )
    except RuntimeError:  # Stopping: the pool takes no more.
      return self._closed(connection)
    return _response(code, content_type, answer, self.cors and handler.is_api_path(path))

  def _closed(self, connection: _Connection) -> web.StreamResponse:
    """Closes the connection unanswered; aiohttp finds it closed and writes nothing."""
    self.close(connection)
    return web.Response()

  async def _refuse(
    self,
    request: web.BaseRequest,
    code: int,
    body: bytes,
    content_type: str = "application/json",
  ) -> web.StreamResponse:
    """Answers from the headers alone and closes, the body unread (lingering briefly)."""
    response = _response(code, content_type, body)
    response.force_close()
    try:
      await response.prepare(request)
      await response.write_eof()
    except ConnectionError:  # The client went away.
      return response
    transport = request.transport
    if transport is not None and transport.can_write_eof():
      transport.write_eof()  # Stop sending: the client sees the answer end at once.
    content = request.content
    content.set_read_chunk_size(_BODY_BUFFER_BYTES)  # Drain in reads of aiohttp's default.
    drained = 0
    try:
      async with asyncio.timeout(_LINGER_SECONDS):
        while drained < _LINGER_BYTES and (chunk := await content.readany()):
          drained += len(chunk)
    except (TimeoutError, ConnectionError, web.RequestPayloadError):
      pass
    # aiohttp closes the connection once this returns: the answer said so.
    return response

  async def close_all(self) -> None:
    for task in self._accepting:
      task.cancel()
    # Done before the listening sockets close: the loop no longer watches them.
    await asyncio.gather(*self._accepting, return_exceptions=True)
    for connection in list(self.connections):
      self.close(connection)


class RestServer:
  """Serves a `RestApi` over HTTP/1.1 (or HTTPS) on aiohttp, on an event loop of its own.

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
    self._sockets = _listening_sockets(host, port)
    self.pool = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="rest")
    self._loop: Optional[asyncio.AbstractEventLoop] = None
    self._thread: Optional[threading.Thread] = None
    self._server: Optional[_Server] = None

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
    self._server = _Server(self, asyncio.get_running_loop())
    self._server.serve(self._sockets)

  async def _stop(self) -> None:
    await self._server.close_all()
    for sock in self._sockets:
      sock.close()

  async def _end_tasks(self) -> None:
    """Ends what is left on the loop (requests whose connections closed under them)."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
      task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

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
    try:
      asyncio.run_coroutine_threadsafe(self._end_tasks(), self._loop).result(timeout=10)
    except (concurrent.futures.TimeoutError, RuntimeError) as e:
      logging.warning("Stopping the REST server: %s", e)
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join()
    self._loop.close()
    self._loop = None
