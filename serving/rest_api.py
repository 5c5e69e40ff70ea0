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

import concurrent.futures
import http
import http.server
import json
import logging
import re
import socket
import socketserver
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
from tensorflow_serving.apis import regression_pb2

from serving import inference
from serving import json_examples
from serving import metrics as metrics_lib
from serving import status
from serving import tensors

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
# Request bodies above this are refused before they are read.
MAX_BODY_BYTES = 64 * 1024 * 1024
_API_NAMES = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}


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
      listed.context.CopyFrom(json_examples.example_from_json(body["context"]))
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
      listed.examples.add().CopyFrom(json_examples.example_from_json(value))
  except ValueError as e:
    raise status.invalid_argument(str(e)) from None


class RestApi:
  """Turns REST requests into calls of an `InferenceService`.

  Args:
    service: answers the APIs.
    metrics: optional metrics (also served at `prometheus_path`).
    prometheus_path: where metrics are served; empty disables them.
    timeout_seconds: the most a request waits for its result.
  """

  def __init__(
    self,
    service: inference.InferenceService,
    metrics: Optional[metrics_lib.ServingMetrics] = None,
    prometheus_path: str = "",
    timeout_seconds: float = 30.0,
  ):
    self._service = service
    self._metrics = metrics
    self._prometheus_path = prometheus_path
    self._timeout_seconds = timeout_seconds

  def handle(self, method: str, path: str, body: bytes) -> Tuple[int, str, bytes]:
    """Answers one request: `(HTTP status, content type, body)`."""
    path = urllib.parse.urlsplit(path).path
    if self._prometheus_path and path == self._prometheus_path and self._metrics:
      if method != "GET":
        return self._error(
          status.ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Metrics are read with GET.")
        )
      return http.HTTPStatus.OK, "text/plain; version=0.0.4", self._metrics.exposition()
    if not _API_PREFIX.fullmatch(path):
      return self._error(status.not_found(f"No handler for {method} {path}."))
    start = time.perf_counter()
    api, model_name, version = "", "", ""
    try:
      if method == "POST" and (match := _PREDICTION_PATH.fullmatch(path)):
        model_name, number, label, verb = match.groups()
        api = _API_NAMES[verb.lower()]
        spec = _model_spec(model_name, number, label)
        result, version = self._post(api, spec, _json_body(body))
      elif method == "GET" and (match := _STATUS_PATH.fullmatch(path)):
        model_name, number, label, metadata = match.groups()
        if not model_name:
          raise status.invalid_argument("Missing model name in request.")
        spec = _model_spec(model_name, number, label)
        if metadata:
          api = "GetModelMetadata"
          result, version = self._metadata(spec)
        else:
          api = "GetModelStatus"
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
      error = status.ServingError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
      code = error.code
      return self._error(error)
    finally:
      if self._metrics is not None and api:
        self._metrics.record_request(
          model_name or "", version, api, ENTRYPOINT, code.name, time.perf_counter() - start
        )

  @staticmethod
  def _error(error: status.ServingError) -> Tuple[int, str, bytes]:
    return (
      error.http_status,
      "application/json",
      json.dumps({"error": error.message}).encode("utf-8"),
    )

  def _wait(self, future):
    try:
      return future.result(timeout=self._timeout_seconds)
    except concurrent.futures.TimeoutError:
      future.cancel()
      raise status.ServingError(
        grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded waiting for the model."
      ) from None

  def _post(self, api: str, spec: model_pb2.ModelSpec, body: Dict[str, Any]) -> Tuple[bytes, str]:
    deadline = inference.deadline_after(self._timeout_seconds)
    if api == "Predict":
      return self._predict(spec, body, deadline)
    if api == "Classify":
      return self._classify(spec, body, deadline)
    return self._regress(spec, body, deadline)

  def _predict(self, spec, body, deadline) -> Tuple[bytes, str]:
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
    servable, _, future = self._service.run(spec, signature_name, arrays, (), deadline)
    outputs = self._wait(future)
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

  def _classify(self, spec, body, deadline) -> Tuple[bytes, str]:
    request = classification_pb2.ClassificationRequest(model_spec=spec)
    _examples_request(request, body)
    response = self._wait(self._service.classify(request, deadline))
    result = [
      [[c.label, c.score] for c in classifications.classes]
      for classifications in response.result.classifications
    ]
    return json.dumps({"result": result}).encode("utf-8"), str(response.model_spec.version.value)

  def _regress(self, spec, body, deadline) -> Tuple[bytes, str]:
    request = regression_pb2.RegressionRequest(model_spec=spec)
    _examples_request(request, body)
    response = self._wait(self._service.regress(request, deadline))
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


class _ThreadPoolHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
  """An HTTP server whose connections are served by a bounded thread pool."""

  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 128

  def __init__(self, address, handler, num_threads: int):
    self._pool = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="rest")
    self._connections = set()
    self._connections_lock = threading.Lock()
    super().__init__(address, handler)

  def process_request(self, request, client_address):
    with self._connections_lock:
      self._connections.add(request)
    self._pool.submit(self.process_request_thread, request, client_address)

  def shutdown_request(self, request):
    with self._connections_lock:
      self._connections.discard(request)
    super().shutdown_request(request)

  def server_close(self):
    super().server_close()
    # Idle keep-alive connections would hold their threads until they time out.
    with self._connections_lock:
      connections = list(self._connections)
    for connection in connections:
      try:
        connection.shutdown(socket.SHUT_RDWR)
      except OSError:
        pass
    self._pool.shutdown(wait=True, cancel_futures=True)


def _handler_class(api: RestApi, idle_timeout_seconds: float):

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # Keep-alive: clients reuse connections.
    # Buffered: headers and a small body leave in one packet when the request
    # handler flushes.
    wbufsize = -1
    timeout = idle_timeout_seconds
    server_version = "TensorFlowServingCompatible"

    def setup(self):
      super().setup()
      # Small responses must not wait for the client's delayed ACK (Nagle).
      self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _respond(self, code: int, content_type: str, body: bytes) -> None:
      self.send_response(code)
      self.send_header("Content-Type", content_type)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def _serve(self, method: str) -> None:
      body = b""
      if method == "POST":
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
          self.close_connection = True
          self._respond(
            http.HTTPStatus.LENGTH_REQUIRED,
            "application/json",
            b'{"error": "Send a Content-Length; chunked bodies are not supported."}',
          )
          return
        try:
          length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
          length = -1
        if length < 0 or length > MAX_BODY_BYTES:
          self.close_connection = True
          self._respond(
            http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > 0 else http.HTTPStatus.BAD_REQUEST,
            "application/json",
            b'{"error": "Invalid or too large Content-Length."}',
          )
          return
        body = self.rfile.read(length)
      self._respond(*api.handle(method, self.path, body))

    def do_GET(self):  # noqa: N802 (BaseHTTPRequestHandler's naming)
      self._serve("GET")

    def do_POST(self):  # noqa: N802
      self._serve("POST")

    def log_message(self, format, *args):  # noqa: A002
      logging.debug("REST %s - %s", self.address_string(), format % args)

  return Handler


class RestServer:
  """Serves a `RestApi` over HTTP/1.1 on a pool of threads.

  Args:
    api: the API.
    host: the address to bind.
    port: the port to bind.
    num_threads: connections served at once (each keep-alive connection holds
      a thread until it goes idle for `idle_timeout_seconds`).
    idle_timeout_seconds: idle keep-alive connections are closed after this.
  """

  def __init__(
    self,
    api: RestApi,
    host: str,
    port: int,
    num_threads: int = 64,
    idle_timeout_seconds: float = 30.0,
  ):
    self._server = _ThreadPoolHTTPServer(
      (host, port), _handler_class(api, idle_timeout_seconds), num_threads
    )
    self._thread = threading.Thread(
      target=self._server.serve_forever,
      kwargs={"poll_interval": 0.2},
      name="rest-server",
      daemon=True,
    )

  @property
  def port(self) -> int:
    return self._server.server_address[1]

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self._server.shutdown()
    self._server.server_close()
    self._thread.join()
