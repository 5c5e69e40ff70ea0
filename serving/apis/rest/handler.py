"""TensorFlow Serving's HTTP/REST API, with the same URLs, JSON and status codes.

    GET  /v1/models/{name}[/versions/{v} | /labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v} | /labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v} | /labels/{l}]:predict    Predict
    POST /v1/models/{name}[/versions/{v} | /labels/{l}]:classify   Classify
    POST /v1/models/{name}[/versions/{v} | /labels/{l}]:regress    Regress
    GET  {prometheus path}                                          metrics

Predict takes the row format (`instances`, answered with `predictions`) or the
columnar format (`inputs`, answered with `outputs`); bytes are `{"b64": ...}`.
Errors are `{"error": "<message>"}` with the HTTP status TensorFlow Serving
maps the gRPC status to.
"""

import collections
import concurrent.futures
import functools
import http
import http.server
import json
import logging
import re
import selectors
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any
from typing import Dict
from typing import Optional
from typing import Tuple

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import regression_pb2

from serving import status
from serving.apis import inference
from serving.apis import json_tensor
from serving.apis import tensors
from serving.observability import request_policy

ENTRYPOINT = "REST"
# tensorflow_serving/model_servers/http_rest_api_util.cc
_PREDICTION_PATH = re.compile(
  r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
  r":(classify|regress|predict)"
)
_STATUS_PATH = re.compile(
  r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
  r"(?:/(metadata))?"
)
_API_PREFIX = re.compile(r"(?i)/v1/.*")
_API_NAMES = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}
# A refused request's remaining body is read and dropped for at most this long and this much.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 16 * 1024 * 1024


def _model_spec(name: str, version: Optional[str], label: Optional[str]) -> model_pb2.ModelSpec:
  spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name))
  if version:
    try:
      spec.version.value = int(version)
    except ValueError:
      raise status.invalid_argument(f"Failed to convert version: {version} to numeric.") from None
  elif label:
    spec.version_label = urllib.parse.unquote(label)
  return spec


def _json_body(body: bytes) -> Dict[str, Any]:
  try:
    value = json.loads(body)
  except (ValueError, UnicodeDecodeError) as e:
    raise status.invalid_argument(f"JSON Parse error: {e}") from None
  if not isinstance(value, dict):
    raise status.invalid_argument("JSON Value: the request body must be a JSON object.")
  return value


def _signature_name(body: Dict[str, Any]) -> str:
  name = body.get("signature_name", "")
  if not isinstance(name, str):
    raise status.invalid_argument("'signature_name' key must be a string value.")
  return name


def _is_named(value: Any, aliases) -> bool:
  return isinstance(value, dict) and set(value) == set(aliases)


def _row_inputs(instances: Any, infos) -> Dict[str, Any]:
  if not isinstance(instances, list):
    raise status.invalid_argument("'instances' must be a JSON list.")
  if not instances:
    raise status.invalid_argument("'instances' is empty; send at least one instance.")
  aliases = sorted(infos)
  if len(aliases) == 1 and not all(_is_named(i, aliases) for i in instances):
    return {aliases[0]: instances}
  columns = {alias: [] for alias in aliases}
  for index, instance in enumerate(instances):
    if not _is_named(instance, aliases):
      keys = sorted(instance) if isinstance(instance, dict) else type(instance).__name__
      raise status.invalid_argument(
        f"Failed to process element: {index} of 'instances' list. Expected an object "
        f"with the keys {aliases} (the signature's inputs), got {keys}."
      )
    for alias in aliases:
      columns[alias].append(instance[alias])
  return columns


def _columnar_inputs(inputs: Any, infos) -> Dict[str, Any]:
  aliases = sorted(infos)
  if _is_named(inputs, aliases):
    return inputs
  if len(aliases) == 1:
    return {aliases[0]: inputs}
  keys = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
  raise status.invalid_argument(
    f"'inputs' must be an object with the keys {aliases} (the signature's inputs), got {keys}."
  )


def _examples_request(request, body: Dict[str, Any]) -> None:
  """Fills a Classify or Regress request from its JSON body.

  As `FillClassifyRegressRequestFromJson` (tensorflow_serving/util/json_tensor.cc).
  """
  request.model_spec.signature_name = _signature_name(body)
  try:
    if "context" in body:
      listed = request.input.example_list_with_context
      listed.context.CopyFrom(json_tensor.example_from_json(body["context"]))
    else:
      listed = request.input.example_list
    examples = body.get("examples")
    if "examples" not in body:
      raise ValueError("When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
      raise ValueError("Expecting 'examples' value to be an list/array")
    if not examples:
      raise ValueError("'examples' value is an empty array")
    for value in examples:
      listed.examples.add().CopyFrom(json_tensor.example_from_json(value))
  except ValueError as e:
    raise status.invalid_argument(str(e)) from None


def _body_examples(api: str, body: Dict[str, Any]) -> int:
  """Examples in a parsed Predict, Classify or Regress body, for the audit log (0 when unknown)."""
  if api in ("Classify", "Regress"):
    value = body.get("examples")
  elif "instances" in body:
    value = body["instances"]
  else:
    value = body.get("inputs")
    if isinstance(value, dict) and value:
      value = next(iter(value.values()))
  return len(value) if isinstance(value, list) else 0


def _predict_protos(spec, signature_name, inputs, servable, resolved_signature, outputs):
  """The PredictRequest and PredictResponse a REST Predict stands for, for the request log.

  As TensorFlow Serving's `ProcessPredictRequest` fills them from the JSON
  (tensorflow_serving/model_servers/http_rest_api_handler.cc), so the record
  is the one the same call over gRPC writes.
  """
  request = predict_pb2.PredictRequest(model_spec=spec)
  request.model_spec.signature_name = signature_name
  for alias, array in inputs.items():
    tensors.fill_tensor_proto(array, request.inputs[alias])
  response = predict_pb2.PredictResponse()
  response.model_spec.name = servable.name
  response.model_spec.version.value = servable.version
  response.model_spec.signature_name = resolved_signature
  for alias, array in outputs.items():
    tensors.fill_tensor_proto(array, response.outputs[alias])
  return request, response


class RestApi:
  """Turns REST requests into calls of an `InferenceService`.

  Args:
    service: answers the APIs.
    policy: access control, metrics (also served at `prometheus_path`), audit
      and request logs.
    prometheus_path: where metrics are served; empty disables them.
    timeout_seconds: the most a request waits for its result.
    protect_metrics: with access control on, the metrics need credentials too.
  """

  def __init__(
    self,
    service: inference.InferenceService,
    policy: Optional[request_policy.RequestPolicy] = None,
    prometheus_path: str = "",
    timeout_seconds: float = 30.0,
    protect_metrics: bool = False,
  ):
    self._service = service
    self._policy = policy or request_policy.RequestPolicy()
    self._metrics = self._policy.metrics
    self._prometheus_path = prometheus_path
    self._timeout_seconds = timeout_seconds
    self._protect_metrics = protect_metrics and self._policy.authenticator is not None

  def handle(
    self, method: str, path: str, body: bytes, authorization: Optional[str] = None, peer: str = ""
  ) -> Tuple[int, str, bytes]:
    """Answers one request: `(HTTP status, content type, body)`.

    Args:
      authorization: the request's Authorization header, if any.
      peer: the client's address, for the audit log.
    """
    path = urllib.parse.urlsplit(path).path
    if self._prometheus_path and path == self._prometheus_path and self._metrics:
      if method != "GET":
        return self._error(
          status.ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Metrics are read with GET.")
        )
      if self._protect_metrics:
        try:
          self._policy.authenticator.authenticate(authorization)
        except status.ServingError as e:
          return self._error(e)
      return http.HTTPStatus.OK, "text/plain; version=0.0.4", self._metrics.exposition()
    if not _API_PREFIX.fullmatch(path):
      return self._error(status.not_found(f"No handler for {method} {path}."))
    start, arrived = time.perf_counter(), time.time()
    api, model_name, version, principal, signature, examples = "", "", "", "", "", 0
    try:
      if method == "POST" and (match := _PREDICTION_PATH.fullmatch(path)):
        model_name, number, label, verb = match.groups()
        api = _API_NAMES[verb.lower()]
        spec = _model_spec(model_name, number, label)
        principal = self._policy.authorize(authorization, spec.name)
        parsed = _json_body(body)
        signature = parsed.get("signature_name", "")
        examples = _body_examples(api, parsed)
        result, version = self._post(api, spec, parsed, arrived)
      elif method == "GET" and (match := _STATUS_PATH.fullmatch(path)):
        model_name, number, label, metadata = match.groups()
        if not model_name:
          raise status.invalid_argument("Missing model name in request.")
        spec = _model_spec(model_name, number, label)
        api = "GetModelMetadata" if metadata else "GetModelStatus"
        principal = self._policy.authorize(authorization, spec.name)
        if metadata:
          result, version = self._metadata(spec)
        else:
          result = self._status(spec)
      else:
        raise status.invalid_argument(f"Malformed request: {method} {path}")
      code = grpc.StatusCode.OK
      return http.HTTPStatus.OK, "application/json", result
    except status.ServingError as e:
      code = e.code
      return self._error(e)
    except Exception as e:  # No request may take the server down.
      logging.exception("REST %s %s failed", method, path)
      error = status.ServingError(
        grpc.StatusCode.INTERNAL, f"{api or method} failed: {type(e).__name__}"
      )
      code = error.code
      return self._error(error)
    finally:
      if api:
        self._policy.finish(
          ENTRYPOINT,
          api,
          urllib.parse.unquote(model_name or ""),
          version,
          code,
          start,
          arrived,
          lambda: peer,
          principal,
          signature=signature if isinstance(signature, str) else "",
          examples=examples,
        )

  @staticmethod
  def _error(error: status.ServingError) -> Tuple[int, str, bytes]:
    return (
      error.http_status,
      "application/json",
      json.dumps({"error": status.client_message(error.message)}).encode("utf-8"),
    )

  def _wait(self, future):
    try:
      return future.result(timeout=self._timeout_seconds)
    except concurrent.futures.TimeoutError:
      future.cancel()
      raise status.ServingError(
        grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded waiting for the model."
      ) from None

  def _post(
    self, api: str, spec: model_pb2.ModelSpec, body: Dict[str, Any], arrived: float
  ) -> Tuple[bytes, str]:
    deadline = inference.deadline_after(self._timeout_seconds)
    if api == "Predict":
      return self._predict(spec, body, deadline, arrived)
    if api == "Classify":
      return self._classify(spec, body, deadline, arrived)
    return self._regress(spec, body, deadline, arrived)

  def _predict(self, spec, body, deadline, arrived) -> Tuple[bytes, str]:
    signature_name = _signature_name(body)
    if "instances" in body and "inputs" in body:
      raise status.invalid_argument("Only one of 'instances' or 'inputs' may be specified.")
    if "instances" not in body and "inputs" not in body:
      raise status.invalid_argument("Missing 'instances' or 'inputs' key.")
    row_format = "instances" in body
    # The JSON is read in the dtypes the signature expects (as TF Serving's
    # GetInfoMap).
    infos = self._service.signature_inputs(spec, signature_name)
    if row_format:
      values = _row_inputs(body["instances"], infos)
    else:
      values = _columnar_inputs(body["inputs"], infos)
    arrays = {
      alias: tensors.json_to_ndarray(value, infos[alias].dtype, alias)
      for alias, value in values.items()
    }
    servable, resolved_signature, future = self._service.run(
      spec, signature_name, arrays, (), deadline
    )
    outputs = self._wait(future)
    self._policy.log_request_lazily(
      spec.name,
      "Predict",
      functools.partial(
        _predict_protos, spec, signature_name, arrays, servable, resolved_signature, outputs
      ),
      arrived,
    )
    if row_format:
      aliases = sorted(outputs)
      batch = {outputs[a].shape[0] if outputs[a].ndim else -1 for a in aliases}
      if len(batch) != 1 or -1 in batch:
        raise status.invalid_argument(
          "The signature's outputs do not share a batch size; use the columnar 'inputs' format."
        )
      if len(aliases) == 1:
        predictions = tensors.ndarray_to_json(outputs[aliases[0]], aliases[0])
      else:
        columns = {a: tensors.ndarray_to_json(outputs[a], a) for a in aliases}
        predictions = [{a: columns[a][i] for a in aliases} for i in range(batch.pop())]
      result = {"predictions": predictions}
    else:
      if len(outputs) == 1:
        alias, array = next(iter(outputs.items()))
        result = {"outputs": tensors.ndarray_to_json(array, alias)}
      else:
        result = {"outputs": {a: tensors.ndarray_to_json(v, a) for a, v in outputs.items()}}
    return json.dumps(result).encode("utf-8"), str(servable.version)

  def _classify(self, spec, body, deadline, arrived) -> Tuple[bytes, str]:
    request = classification_pb2.ClassificationRequest(model_spec=spec)
    _examples_request(request, body)
    response = self._wait(self._service.classify(request, deadline))
    self._policy.log_request(spec.name, "Classify", request, response, arrived)
    result = [
      [[c.label, c.score] for c in classifications.classes]
      for classifications in response.result.classifications
    ]
    return json.dumps({"result": result}).encode("utf-8"), str(response.model_spec.version.value)

  def _regress(self, spec, body, deadline, arrived) -> Tuple[bytes, str]:
    request = regression_pb2.RegressionRequest(model_spec=spec)
    _examples_request(request, body)
    response = self._wait(self._service.regress(request, deadline))
    self._policy.log_request(spec.name, "Regress", request, response, arrived)
    result = [regression.value for regression in response.result.regressions]
    return json.dumps({"result": result}).encode("utf-8"), str(response.model_spec.version.value)

  def _status(self, spec) -> bytes:
    response = self._service.get_model_status(
      get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
    )
    return json_format.MessageToJson(
      response, preserving_proto_field_name=True, including_default_value_fields=True, indent=1
    ).encode("utf-8")

  def _metadata(self, spec) -> Tuple[bytes, str]:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
      model_spec=spec, metadata_field=[inference.SIGNATURE_DEF_FIELD]
    )
    response = self._service.get_model_metadata(request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[inference.SIGNATURE_DEF_FIELD].Unpack(signature_map)
    # As TF Serving writes it: the Any unpacked, proto field names kept.
    result = {
      "model_spec": json_format.MessageToDict(
        response.model_spec, preserving_proto_field_name=True, including_default_value_fields=True
      ),
      "metadata": {
        inference.SIGNATURE_DEF_FIELD: json_format.MessageToDict(
          signature_map, preserving_proto_field_name=True, including_default_value_fields=True
        )
      },
    }
    return json.dumps(result, indent=1).encode("utf-8"), str(response.model_spec.version.value)


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
  api: RestApi = None  # Set on the subclass RestServer makes.
  max_body_bytes = 0

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

  def _respond(self, code: int, content_type: str, body: bytes) -> None:
    self.send_response(code)
    self.send_header("Content-Type", content_type)
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
    if method == "POST":
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
    )
    self._respond(*response)

  def do_GET(self):  # noqa: N802 (BaseHTTPRequestHandler's naming)
    self._serve("GET")

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
  """

  def __init__(
    self,
    api: RestApi,
    host: str,
    port: int,
    num_threads: int = 64,
    idle_timeout_seconds: float = 30.0,
    request_timeout_seconds: float = 10.0,
    max_body_bytes: int = 32 * 1024 * 1024,
    max_connections: int = 4096,
    ssl_context: Optional[ssl.SSLContext] = None,
  ):
    self._handler = type(
      "Connection", (_Connection,), {"api": api, "max_body_bytes": max_body_bytes}
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
