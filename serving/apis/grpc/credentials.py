"""Credentials checked from a call's metadata, before its request message is read.

With access control on, the server looks a call's method up here
(`CredentialsCheck`, a generic handler): gRPC hands it the method and the
invocation metadata before it receives the request message, so a caller whose
credentials do not check out is answered UNAUTHENTICATED with a handler that
never asks for the message. Its bytes are neither parsed nor copied into
Python; what gRPC buffers of them is bounded by HTTP/2 flow control (the
stream's receive window) until the call ends. Without this, every refused
request was received whole (up to --max_request_bytes) and parsed before the
check (issue 21: 40 requests with 8 MB model names took the server from 0.87
to 2.2 GB).

Only the credentials can be checked here; whether the principal may use the
model named in the message is decided after it is read (servicer.py), with
the principal found here (`servicer.CALL_PRINCIPAL`): a call's credentials
are checked once. The refusal is audited as the servicer audits one: the
principal claimed, `authenticated` false, no model (the message was never
read).

A generic handler rather than a `grpc.aio` server interceptor: grpc.aio runs
interceptors as a chain of coroutines on every call (`_run_interceptor` in
grpc/_cython/_cygrpc/aio/server.pyx.pxi), which took 1.8 us a call on the event
loop where the lookup with the check takes 1.0 and the lookup alone 0.6
(docs/serving-production.md#cost). Other services (health checks, the
profiler, which checks its own) have generic handlers of their own and are
never looked up here.
"""

import time
from typing import Dict

import grpc

from next_category.serving import status
from next_category.serving.apis.grpc import servicer
from next_category.serving.observability import request_policy


class CredentialsCheck(servicer.MethodHandlers):
  """Finds a method's handler for a caller whose credentials check out, else a refusal.

  The principal goes to the handler through `servicer.CALL_PRINCIPAL`: grpc.aio
  looks the handler up and runs it in the same task, one per call
  (`_handle_rpc` in grpc/_cython/_cygrpc/aio/server.pyx.pxi), and a task's
  context is its own, so a call never sees another's principal. (Handing it
  over in a `functools.partial` instead costs more than it saves: grpc.aio
  takes the partial apart on every call to learn whether it is a coroutine.)

  Args:
    handlers: the methods by full name (`servicer.method_handlers`).
    policy: the server's request policy; its authenticator must be set.
  """

  def __init__(
    self, handlers: Dict[str, grpc.RpcMethodHandler], policy: request_policy.RequestPolicy
  ):
    if policy.authenticator is None:
      raise ValueError("The credentials check needs access control (an authenticator).")
    super().__init__(handlers)
    self._policy = policy
    self._authenticator = policy.authenticator
    # The methods whose callers are checked: all but the reload RPC when it is
    # off, answered UNIMPLEMENTED as always, whoever calls.
    self._checked = {
      method: handler
      for method, handler in handlers.items()
      if policy.reload_config is not None or method != servicer.RELOAD_METHOD
    }

  def service(self, handler_call_details):
    method = handler_call_details.method
    handler = self._checked.get(method)
    if handler is None:  # Unchecked, or not a method of these services.
      return self._handlers.get(method)
    authorization = servicer.metadata_value(
      handler_call_details.invocation_metadata, request_policy.AUTHORIZATION
    )
    try:
      principal = self._authenticator.authenticate(authorization)
    except request_policy.AccessDenied as e:
      return self._refusal(method, e)
    except status.ServingError as e:
      return self._refusal(method, request_policy.AccessDenied(e.code, e.message, "", False))
    servicer.CALL_PRINCIPAL.set(principal)
    return handler

  def _refusal(self, method: str, denied: request_policy.AccessDenied) -> grpc.RpcMethodHandler:
    """A handler that audits the refusal and aborts, never reading the request."""
    start, arrived = time.perf_counter(), time.time()
    api = method.rsplit("/", 1)[-1]
    policy = self._policy

    async def refuse(request_iterator, context):
      if method == servicer.RELOAD_METHOD:
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


def generic_handler(
  handlers: Dict[str, grpc.RpcMethodHandler], policy: request_policy.RequestPolicy
) -> grpc.GenericRpcHandler:
  """Looks calls up in `handlers`: through the credentials check with access control on."""
  if policy.authenticator is None:
    return servicer.MethodHandlers(handlers)
  return CredentialsCheck(handlers, policy)
