"""What happens around every request, for gRPC and REST alike.

Before the call: access control (serving/security/auth.py), when configured.
After it, from the call's `RequestRecord`: the metrics, the audit line
(audit.py) and the sampled request log (request_log.py), each queued for a
background thread where it writes to disk. All of it is optional; with none
configured a request pays a few attribute checks.
"""

import dataclasses
import time
from typing import Callable
from typing import Optional

import grpc
from tensorflow_serving.config import model_server_config_pb2

from next_category.serving.observability import audit as audit_lib
from next_category.serving.observability import metrics as metrics_lib
from next_category.serving.observability import request_log as request_log_lib
from next_category.serving.security import auth as auth_lib

AUTHORIZATION = "authorization"
# What `RequestPolicy.authorize` raises: a ServingError naming the refused principal.
AccessDenied = auth_lib.AccessDenied
# The API name of config reloads in the audit log (the RPC's, also for the file polled).
RELOAD_API = "HandleReloadConfigRequest"


@dataclasses.dataclass(slots=True)
class RequestRecord:
  """One finished call, as a front end hands it to `RequestPolicy.finish`.

  Built once per request on the serving path, so positionally, with slots,
  and not frozen: under timeit a finished call's bookkeeping (record, metrics)
  takes 1.8 us against 1.6 for the 12-field tuple and 12-parameter call this
  replaced; a frozen dataclass's __init__ takes 4-6 times as long as this
  one's, keyword arguments twice.

  Attributes:
    entrypoint: "GRPC" or "REST".
    api: "Predict", "Classify", "Regress", "GetModelMetadata" or "GetModelStatus".
    model: the model name the request asked for.
    version: the version that answered ('' if none did).
    code: the `grpc.StatusCode` it ended with.
    start: `time.perf_counter()` when the request arrived.
    end: `time.perf_counter()` when the response was ready.
    arrived: `time.time()` when the request arrived.
    peer: returns the client's address (called only when auditing).
    principal: who called ('' with access control off); on a refusal, who the
      caller claimed to be (`auth.AccessDenied.principal`).
    signature: the signature the request named.
    examples: examples in the request (0 when unknown).
    logged: `(request bytes, response, response bytes)` for the request log
      (gRPC; REST logs its requests itself), or None.
    runtime: seconds from handing the request to the model to its outputs
      (0 if the model did not run); set after construction.
    authenticated: whether `principal` checked out; set after construction.
  """

  entrypoint: str
  api: str
  model: str
  version: str
  code: grpc.StatusCode
  start: float
  end: float
  arrived: float
  peer: Callable[[], str]
  principal: str
  signature: str = ""
  examples: int = 0
  logged: Optional[tuple] = None
  runtime: float = 0.0
  authenticated: bool = False


class RequestPolicy:
  """Access control, metrics, audit and request logs of one server.

  Args:
    metrics: the server's metrics.
    authenticator: checks credentials; None: access is open.
    audit: the audit log, or None.
    request_logs: the models' request logs, or None.
    reload_config: switches the server to a new ModelServerConfig and returns
      the models it added, removed and changed (audit.config_changes); None:
      the reload RPC is refused.
  """

  def __init__(
    self,
    metrics: Optional[metrics_lib.ServingMetrics] = None,
    authenticator: Optional[auth_lib.Authenticator] = None,
    audit: Optional[audit_lib.AuditLog] = None,
    request_logs: Optional[request_log_lib.RequestLogs] = None,
    reload_config: Optional[
      Callable[[model_server_config_pb2.ModelServerConfig], Optional[dict]]
    ] = None,
  ):
    self.metrics = metrics
    self.authenticator = authenticator
    self.audit = audit
    self.request_logs = request_logs
    self.reload_config = reload_config

  def authorize(self, authorization: Optional[str], model_name: str) -> str:
    """The principal's name ('' with access control off).

    Raises:
      AccessDenied: UNAUTHENTICATED or PERMISSION_DENIED, with the principal
        refused (or claimed) for the audit line.
    """
    if self.authenticator is None:
      return ""
    return self.authenticator.authorize(authorization, model_name).name

  def authorize_admin(
    self, authorization: Optional[str], operation: str = "reload the model config"
  ) -> str:
    if self.authenticator is None:
      return ""
    return self.authenticator.authorize_admin(authorization, operation).name

  def log_request(
    self, model_name: str, api: str, request, response, arrived: float, response_bytes=None
  ) -> None:
    """Hands an answered request to its model's request log, if it has one (see RequestLogs.log)."""
    if self.request_logs is not None and request is not None:
      self.request_logs.log(model_name, api, request, response, arrived, response_bytes)

  def log_request_lazily(
    self, model_name: str, api: str, protos: Callable[[], tuple], arrived: float
  ) -> None:
    """As `log_request`; `protos()` builds (request, response), only if the request is sampled."""
    if self.request_logs is not None:
      self.request_logs.log_lazily(model_name, api, protos, arrived)

  def record_metrics(self, record: RequestRecord) -> None:
    """Counts a request in the metrics only (a malformed REST request: no API, no audit line)."""
    if self.metrics is not None:
      self.metrics.record_request(
        record.model,
        record.api,
        record.entrypoint,
        record.code.name,
        record.end - record.start,
        record.runtime,
      )

  def finish(self, record: RequestRecord) -> None:
    """Records a finished request: its request log (if `record.logged`), metrics and audit line."""
    if record.logged is not None:
      request_bytes, response, response_bytes = record.logged
      self.log_request(
        record.model,
        record.api,
        request_bytes,
        response,
        record.arrived,
        response_bytes=response_bytes,
      )
    latency = record.end - record.start
    status = record.code.name
    if self.metrics is not None:
      self.metrics.record_request(
        record.model, record.api, record.entrypoint, status, latency, record.runtime
      )
    if self.audit is not None:
      # What a caller sends is capped here, before it is queued: the log
      # writer caps every field again, but a 1 MB model name should not wait
      # in the queue or cross the pipe.
      model, signature, principal = record.model, record.signature, record.principal
      if len(model) > audit_lib.MAX_FIELD_CHARS:
        model = audit_lib.cap(model)
      if len(signature) > audit_lib.MAX_FIELD_CHARS:
        signature = audit_lib.cap(signature)
      if len(principal) > audit_lib.MAX_FIELD_CHARS:
        principal = audit_lib.cap(principal)
      # A plain tuple in AuditRecord's field order: the cheapest thing to build here.
      self.audit.submit(
        (
          record.arrived,
          record.peer(),
          principal,
          record.authenticated,
          model,
          record.version,
          record.api,
          record.entrypoint,
          signature,
          record.examples,
          status,
          latency * 1e3,
          None,
        )
      )

  def record_reload(
    self,
    entrypoint: str,
    peer: str,
    principal: str,
    authenticated: bool,
    code: grpc.StatusCode,
    start: float,
    arrived: float,
    changes: Optional[dict] = None,
    error: str = "",
  ) -> None:
    """Audits a config reload, done or refused: who, from where, what it changed, the result.

    Args:
      entrypoint: "GRPC" (HandleReloadConfigRequest) or "CONFIG_FILE" (the file polled).
      peer: the caller's address, or the config file polled.
      code: how it ended.
      start: `time.perf_counter()` when it was asked for.
      arrived: `time.time()` when it was asked for.
      changes: the models it added, removed and changed (audit.config_changes),
        or None when it was refused before the config was looked at.
      error: why it failed.
    """
    if self.audit is None:
      return
    details = dict(changes or {})
    if error:
      details["error"] = error
    self.audit.record(
      audit_lib.AuditRecord(
        arrived,
        peer,
        audit_lib.cap(principal),
        authenticated,
        "",
        "",
        RELOAD_API,
        entrypoint,
        "",
        0,
        code.name,
        (time.perf_counter() - start) * 1e3,
        details or None,
      )
    )
