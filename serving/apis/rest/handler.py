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

Transport-free, as TensorFlow Serving's `HttpRestApiHandler`
(tensorflow_serving/model_servers/http_rest_api_handler.cc): `RestApi.handle`
takes a request's method, path and body and returns the status, content type
and body. The JSON is json_tensor.py's; http_server.py carries the bytes.
"""

import concurrent.futures
import functools
import http
import json
import logging
import re
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

from next_category.serving import status
from next_category.serving.apis import inference
from next_category.serving.apis import json_tensor
from next_category.serving.apis import tensors
from next_category.serving.observability import request_policy

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
_ORIGIN = re.compile(r"https?://")
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


def is_api_path(path: str) -> bool:
  """Whether a request path is one of the REST API's (`/v1/...`, any case)."""
  return bool(_API_PREFIX.fullmatch(urllib.parse.urlsplit(path).path))


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
    # The model's part of the request this thread answers (the runtime metric).
    self._runtime = threading.local()

  @property
  def checks_credentials(self) -> bool:
    """Whether access control is on (requests need credentials)."""
    return self._policy.authenticator is not None

  def refusal(
    self,
    method: str,
    path: str,
    authorization: Optional[str] = None,
    peer: str = "",
    origin: str = "",
  ) -> Optional[Tuple[int, str, bytes]]:
    """The answer to a request whose credentials do not check out, from its headers alone.

    None when they check out (or access control is off): then read the body
    and call `handle`. Otherwise the request is answered as `handle` answers
    it with an empty body (401 for an API path, and audited there as refused,
    with the principal claimed), so that a body nobody vouched for is never
    read; a path that needs no credentials (404, metrics, a CORS preflight) is
    answered as always.
    """
    authenticator = self._policy.authenticator
    if authenticator is None:
      return None
    try:
      authenticator.authenticate(authorization)
    except status.ServingError:
      return self.handle(method, path, b"", authorization, peer, origin)
    return None

  def handle(
    self,
    method: str,
    path: str,
    body: bytes,
    authorization: Optional[str] = None,
    peer: str = "",
    origin: str = "",
  ) -> Tuple[int, str, bytes]:
    """Answers one request: `(HTTP status, content type, body)`.

    Args:
      authorization: the request's Authorization header, if any.
      peer: the client's address, for the audit log.
      origin: the request's Origin header (a CORS preflight's), if any.
    """
    path = urllib.parse.urlsplit(path).path
    if self._prometheus_path and path == self._prometheus_path and self._metrics:
      # Any method gets the page, as text/plain (http_server.cc:89-117).
      if self._protect_metrics:
        try:
          self._policy.authenticator.authenticate(authorization)
        except status.ServingError as e:
          return self._error(e)
      return http.HTTPStatus.OK, "text/plain", self._metrics.exposition()
    if not _API_PREFIX.fullmatch(path):
      return self._error(status.not_found(f"No handler for {method} {path}."))
    start, arrived = time.perf_counter(), time.time()
    api, model_name, version, principal, signature, examples = "", "", "", "", "", 0
    authenticated = False
    self._runtime.seconds = 0.0
    try:
      if method == "OPTIONS":
        # A CORS preflight: 200 with an empty body if it has an http(s)
        # Origin, else FAILED_PRECONDITION, still empty (http_server.cc:170-177).
        if not _ORIGIN.search(origin):
          code = grpc.StatusCode.FAILED_PRECONDITION
          return status.http_status(code), "", b""
        code = grpc.StatusCode.OK
        return http.HTTPStatus.OK, "", b""
      if method == "POST" and (match := _PREDICTION_PATH.fullmatch(path)):
        model_name, number, label, verb = match.groups()
        api = _API_NAMES[verb.lower()]
        spec = _model_spec(model_name, number, label)
        principal = self._policy.authorize(authorization, spec.name)
        authenticated = self._policy.authenticator is not None
        parsed = json_tensor.parse_body(body)
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
        authenticated = self._policy.authenticator is not None
        if metadata:
          result, version = self._metadata(spec)
        else:
          result = self._status(spec)
      else:
        raise status.invalid_argument(f"Malformed request: {method} {path}")
      code = grpc.StatusCode.OK
      return http.HTTPStatus.OK, "application/json", result
    except request_policy.AccessDenied as e:  # The audit line names who was refused.
      code, principal, authenticated = e.code, e.principal, e.authenticated
      return self._error(e)
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
      # Every /v1/ request is counted, a malformed one under model name ""
      # (http_server.cc:201); only a recognised API goes to the audit log.
      record = request_policy.RequestRecord(
        ENTRYPOINT,
        api,
        urllib.parse.unquote(model_name or ""),
        version,
        code,
        start,
        time.perf_counter(),
        arrived,
        lambda: peer,
        principal,
        signature if isinstance(signature, str) else "",
        examples,
      )
      record.runtime = self._runtime.seconds
      record.authenticated = authenticated
      if api:
        self._policy.finish(record)
      elif self._metrics is not None:
        self._policy.record_metrics(record)

  @staticmethod
  def _error(error: status.ServingError) -> Tuple[int, str, bytes]:
    return (
      error.http_status,
      "application/json",
      json.dumps({"error": status.client_message(error.message)}).encode("utf-8"),
    )

  def _wait(self, future):
    start = time.perf_counter()
    try:
      result = future.result(timeout=self._timeout_seconds)
      self._runtime.seconds = time.perf_counter() - start
      return result
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
      request = classification_pb2.ClassificationRequest(model_spec=spec)
      run, to_json = self._service.classify, json_tensor.classification_response
    else:
      request = regression_pb2.RegressionRequest(model_spec=spec)
      run, to_json = self._service.regress, json_tensor.regression_response
    return self._classify_or_regress(api, request, run, to_json, body, deadline, arrived)

  def _predict(self, spec, body, deadline, arrived) -> Tuple[bytes, str]:
    signature_name = json_tensor.signature_name(body)
    row_format = json_tensor.predict_row_format(body)
    # The JSON is read in the dtypes the signature expects (as TF Serving's
    # GetInfoMap).
    infos = self._service.signature_inputs(spec, signature_name)
    arrays = json_tensor.predict_inputs(body, row_format, infos)
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
    return json_tensor.predict_response(outputs, row_format), str(servable.version)

  def _classify_or_regress(
    self, api, request, run, to_json, body, deadline, arrived
  ) -> Tuple[bytes, str]:
    """`request` filled from `body`, answered by `run`, and the answer as `to_json` writes it."""
    json_tensor.fill_classify_regress_request(request, body)
    response = self._wait(run(request, deadline))
    self._policy.log_request(request.model_spec.name, api, request, response, arrived)
    return to_json(response), str(response.model_spec.version.value)

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
