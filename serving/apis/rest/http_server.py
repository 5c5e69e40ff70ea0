"""The HTTP/1.1 server of the REST API: connections, bodies, keep-alive, TLS.

Reads each request's method, path, headers and body and hands them to a
`RestApi` (handler.py), which answers; nothing here knows the API. As
TensorFlow Serving's own REST server (tensorflow_serving/model_servers/
http_server.cc, on libevent), it is event-driven between requests.
"""

import collections
import concurrent.futures
import http
import http.server
import json
import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Any
from typing import Dict
from typing import Optional
from typing import Tuple

from serving.apis.rest import handler

# A refused request's remaining body is read and dropped for at most this long and this much.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 16 * 1024 * 1024
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


class _Connection(http.server.BaseHTTPRequestHandler):
  """One keep-alive connection, served one request at a time by the pool.

  `BaseHTTPRequestHandler` serves a whole connection in its constructor; here
  the constructor only sets the connection up, and `serve_one` answers one
  request, so the thread goes back to the pool between requests.
  """

  protocol_version = "HTTP/1.1"  # Keep-alive: clients reuse connections.
  # Buffered: headers and a small body leave in one packet when the request
  # handler flushes.
  wbufsize = -1
  server_version = "TensorFlowServingCompatible"
  api: handler.RestApi = None  # Set on the subclass RestServer makes.
  max_body_bytes = 0
  cors = False

  def __init__(self, request, client_address, server, timeout_seconds: float):
    self.request = request
    self.client_address = client_address
    self.server = server
    self.timeout = timeout_seconds
    self.setup()
    # Small responses must not wait for the client's delayed ACK (Nagle).
    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

  def serve_one(self) -> bool:
    """Answers one request; True when the connection stays open for the next."""
    self.close_connection = True
    self.handle_one_request()
    return not self.close_connection

  def has_buffered_request(self) -> bool:
    """Whether the next request's bytes already arrived (pipelining, or read ahead)."""
    try:
      self.connection.setblocking(False)
      return bool(self.rfile.peek(1))
    except (OSError, ValueError):  # Nothing to read now (SSL raises its own WantRead).
      return False
    finally:
      try:
        self.connection.settimeout(self.timeout)
      except OSError:
        pass

  def close(self) -> None:
    try:
      self.finish()
    except OSError:
      pass
    try:
      self.connection.close()
    except OSError:
      pass

  def _respond(self, code: int, content_type: str, body: bytes, headers=()) -> None:
    self.send_response(code)
    if content_type:
      self.send_header("Content-Type", content_type)
    for name, value in headers:
      self.send_header(name, value)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _refuse(self, code: int, message: str) -> None:
    self.close_connection = True
    self._respond(code, "application/json", json.dumps({"error": message}).encode("utf-8"))
    # A lingering close, as web servers do: closing with the body still arriving
    # would reset the connection and the client could lose this answer. What
    # arrives is read and dropped, for a bounded time and size.
    try:
      self.wfile.flush()
      self.connection.shutdown(socket.SHUT_WR)
      self.connection.settimeout(_LINGER_SECONDS / 2)
      deadline, drained = time.monotonic() + _LINGER_SECONDS, 0
      while drained < _LINGER_BYTES and time.monotonic() < deadline:
        chunk = self.connection.recv(65536)
        if not chunk:
          break
        drained += len(chunk)
    except OSError:
      pass

  def _serve(self, method: str) -> None:
    body = b""
    if method in ("POST", "OPTIONS"):
      if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
        self._refuse(
          http.HTTPStatus.LENGTH_REQUIRED,
          "Send a Content-Length; chunked bodies are not supported.",
        )
        return
      try:
        length = int(self.headers.get("Content-Length", "0"))
      except ValueError:
        length = -1
      if length < 0:
        self._refuse(http.HTTPStatus.BAD_REQUEST, "Invalid Content-Length.")
        return
      if length > self.max_body_bytes:
        # Refused before it is read: a large body costs no memory.
        self._refuse(
          http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
          f"The request body ({length} bytes) is larger than the server's limit of "
          f"{self.max_body_bytes} bytes (--max_request_bytes).",
        )
        return
      body = self.rfile.read(length)
    response = self.api.handle(
      method,
      self.path,
      body,
      authorization=self.headers.get("Authorization"),
      peer=f"{self.client_address[0]}:{self.client_address[1]}",
      origin=self.headers.get("Origin", ""),
    )
    headers = ()
    if self.cors and handler.is_api_path(self.path):
      headers = _CORS_HEADERS
    self._respond(*response, headers=headers)

  def do_GET(self):  # noqa: N802 (BaseHTTPRequestHandler's naming)
    self._serve("GET")

  def do_OPTIONS(self):  # noqa: N802
    self._serve("OPTIONS")

  def do_POST(self):  # noqa: N802
    self._serve("POST")

  def log_message(self, format, *args):  # noqa: A002
    logging.debug("REST %s - %s", self.address_string(), format % args)


class RestServer:
  """Serves a `RestApi` over HTTP/1.1 (or HTTPS), event-driven between requests.

  One thread waits on every open connection with a selector; a connection
  with a request to read goes to a pool of `num_threads` threads for that one
  request, then back to the selector. So idle keep-alive connections hold no
  thread and cannot shut others out (TensorFlow Serving's REST server is
  event-driven too, on libevent). Idle connections are closed after
  `idle_timeout_seconds`; beyond `max_connections` the longest idle is closed.
  A client that stops in the middle of a request holds its thread for at most
  `request_timeout_seconds` per read.

  Args:
    api: the API.
    host: the address to bind.
    port: the port to bind.
    num_threads: requests read and answered at once.
    idle_timeout_seconds: idle keep-alive connections are closed after this.
    request_timeout_seconds: the most a read of a started request may wait.
    max_body_bytes: larger request bodies are refused (413) without being read.
    max_connections: open connections kept at most.
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
    idle_timeout_seconds: float = 30.0,
    request_timeout_seconds: float = 10.0,
    max_body_bytes: int = 32 * 1024 * 1024,
    max_connections: int = 4096,
    ssl_context: Optional[ssl.SSLContext] = None,
    cors: bool = False,
  ):
    self._handler = type(
      "Connection",
      (_Connection,),
      {"api": api, "max_body_bytes": max_body_bytes, "cors": cors},
    )
    self._idle_timeout_seconds = idle_timeout_seconds
    self._request_timeout_seconds = request_timeout_seconds
    self._max_connections = max_connections
    self._ssl_context = ssl_context
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    self._socket = socket.socket(family, socket.SOCK_STREAM)
    self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      self._socket.bind((host, port))
      self._socket.listen(1024)
    except OSError:
      self._socket.close()
      raise
    self._socket.setblocking(False)
    self._pool = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="rest")
    self._selector = selectors.DefaultSelector()
    self._wake_read, self._wake_write = socket.socketpair()
    self._wake_read.setblocking(False)
    self._returned = collections.deque()  # Connections the pool hands back.
    self._idle: Dict[socket.socket, Tuple[Any, float]] = {}  # socket -> (connection, since)
    self._open = set()  # Every connection, served or idle.
    self._open_lock = threading.Lock()
    self._stopping = threading.Event()
    self._thread = threading.Thread(target=self._run, name="rest-server", daemon=True)

  @property
  def port(self) -> int:
    return self._socket.getsockname()[1]

  def start(self) -> None:
    self._selector.register(self._socket, selectors.EVENT_READ, "accept")
    self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
    self._thread.start()

  def _run(self) -> None:
    while not self._stopping.is_set():
      for key, _ in self._selector.select(timeout=1.0):
        if key.data == "accept":
          self._accept()
        elif key.data == "wake":
          self._take_back()
        else:
          self._selector.unregister(key.fileobj)
          connection, _ = self._idle.pop(key.fileobj)
          self._pool.submit(self._serve, connection)
      self._close_idle()

  def _accept(self) -> None:
    while True:
      try:
        sock, address = self._socket.accept()
      except (BlockingIOError, InterruptedError):
        return
      except OSError as e:  # Out of file descriptors: keep serving the open ones.
        logging.warning("REST accept failed: %s", e)
        return
      if len(self._idle) >= self._max_connections:
        oldest = min(self._idle, key=lambda s: self._idle[s][1])
        self._selector.unregister(oldest)
        self._forget(self._idle.pop(oldest)[0])
      sock.setblocking(True)
      with self._open_lock:
        self._open.add(sock)
      self._watch(sock, (sock, address))

  def _watch(self, sock, connection) -> None:
    self._idle[sock] = (connection, time.monotonic())
    self._selector.register(sock, selectors.EVENT_READ, "connection")

  def _take_back(self) -> None:
    try:
      while self._wake_read.recv(4096):
        pass
    except (BlockingIOError, InterruptedError):
      pass
    while self._returned:
      connection = self._returned.popleft()
      if self._stopping.is_set():
        self._forget(connection)
      else:
        self._watch(connection.connection, connection)

  def _close_idle(self) -> None:
    deadline = time.monotonic() - self._idle_timeout_seconds
    for sock in [s for s, (_, since) in self._idle.items() if since < deadline]:
      self._selector.unregister(sock)
      self._forget(self._idle.pop(sock)[0])

  def _forget(self, connection) -> None:
    """Closes a connection: a new one, `(socket, address)`, or a `_Connection`."""
    sock = connection[0] if isinstance(connection, tuple) else connection.connection
    with self._open_lock:
      self._open.discard(sock)
    if isinstance(connection, tuple):
      try:
        sock.close()
      except OSError:
        pass
    else:
      connection.close()

  def _serve(self, connection) -> None:
    """On a pool thread: one request (more if already buffered), then back to the selector."""
    try:
      if isinstance(connection, tuple):  # New: TLS handshake, then the handler.
        sock, address = connection
        sock.settimeout(self._request_timeout_seconds)
        if self._ssl_context is not None:
          with self._open_lock:
            self._open.discard(sock)
            sock = self._ssl_context.wrap_socket(
              sock, server_side=True, do_handshake_on_connect=False
            )
            self._open.add(sock)
          connection = (sock, address)
          sock.do_handshake()
        connection = self._handler(sock, address, self, self._request_timeout_seconds)
      while connection.serve_one():
        if self._stopping.is_set():
          break
        if not connection.has_buffered_request():
          self._returned.append(connection)
          self._wake_write.send(b"x")
          return
    except (OSError, ValueError) as e:  # Handshake failed, client went away.
      logging.debug("REST connection ended: %s", e)
    except Exception:  # No connection may take the server down.
      logging.exception("REST connection failed")
    self._forget(connection)

  def stop(self) -> None:
    self._stopping.set()
    try:
      self._wake_write.send(b"x")
    except OSError:
      pass
    self._thread.join()
    for connection, _ in list(self._idle.values()):
      self._forget(connection)
    self._idle.clear()
    # Requests in progress end when their connections close under them.
    with self._open_lock:
      open_sockets = list(self._open)
    for sock in open_sockets:
      try:
        sock.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass
    self._pool.shutdown(wait=True, cancel_futures=True)
    self._selector.close()
    self._socket.close()
    self._wake_read.close()
    self._wake_write.close()
