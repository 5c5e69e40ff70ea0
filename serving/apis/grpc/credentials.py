"""Credentials checked from a call's metadata, before its request message is read.

A `grpc.aio` server interceptor: gRPC hands it the method and the invocation
metadata before it receives the request message, so a caller whose
credentials do not check out is answered UNAUTHENTICATED with a handler that
never asks for the message. Its bytes are neither parsed nor copied into
Python; what gRPC buffers of them is bounded by HTTP/2 flow control (the
stream's receive window) until the call ends. Without this, every refused
request was received whole (up to --max_request_bytes) and parsed before the
check (issue 21: 40 requests with 8 MB model names took the server from 0.87
to 2.2 GB).

Only the credentials can be checked here; whether the principal may use the
model named in the message is decided after it is read (servicer.py). The
refusal is audited as the servicer audits one: the principal claimed,
`authenticated` false, no model (the message was never read).
"""

import time
from typing import Optional

import grpc

from next_category.serving import status
from next_category.serving.apis.grpc import servicer
from next_category.serving.observability import request_policy

MODEL_SERVICE = "tensorflow.serving.ModelService"
_CHECKED_SERVICES = (f"/{servicer.PREDICTION_SERVICE}/", f"/{MODEL_SERVICE}/")
_RELOAD_METHOD = f"/{MODEL_SERVICE}/{request_policy.RELOAD_API}"


class CredentialsInterceptor(grpc.aio.ServerInterceptor):
  """Refuses PredictionService and ModelService calls with bad credentials, their messages unread.

  Other services (health checks, the profiler, which checks its own) pass.

  Args:
    policy: the server's request policy; its authenticator must be set.
  """

  def __init__(self, policy: request_policy.RequestPolicy):
    if policy.authenticator is None:
      raise ValueError("The credentials interceptor needs access control (an authenticator).")
    self._policy = policy
    self._authenticator = policy.authenticator

  async def intercept_service(self, continuation, handler_call_details):
    method = handler_call_details.method
    if not method.startswith(_CHECKED_SERVICES):
      return await continuation(handler_call_details)
    if method == _RELOAD_METHOD and self._policy.reload_config is None:
      return await continuation(handler_call_details)  # UNIMPLEMENTED, as always.
    authorization = servicer.metadata_value(
      handler_call_details.invocation_metadata, request_policy.AUTHORIZATION
    )
    try:
      self._authenticator.authenticate(authorization)
    except request_policy.AccessDenied as e:
      return self._refusal(method, e)
    except status.ServingError as e:
      return self._refusal(method, request_policy.AccessDenied(e.code, e.message, "", False))
    return await continuation(handler_call_details)

  def _refusal(self, method: str, denied: request_policy.AccessDenied) -> grpc.RpcMethodHandler:
    """A handler that audits the refusal and aborts, never reading the request."""
    start, arrived = time.perf_counter(), time.time()
    api = method.rsplit("/", 1)[-1]
    policy = self._policy

    async def refuse(request_iterator, context):
      if method == _RELOAD_METHOD:
        policy.record_reload(
          servicer.ENTRYPOINT,
          context.peer(),
          denied.principal,
          False,
          denied.code,
          start,
          arrived,
          None,
          denied.message,
        )
      else:
        record = request_policy.RequestRecord(
          servicer.ENTRYPOINT,
          api,
          "",
          "",
          denied.code,
          start,
          time.perf_counter(),
          arrived,
          context.peer,
          denied.principal,
        )
        policy.finish(record)
      await context.abort(denied.code, status.client_message(denied.message))

    return grpc.stream_unary_rpc_method_handler(refuse)


def interceptors(policy: request_policy.RequestPolicy) -> Optional[list]:
  """The server's interceptors: the credentials check with access control on, else none."""
  if policy.authenticator is None:
    return None
  return [CredentialsInterceptor(policy)]
