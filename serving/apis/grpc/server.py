"""The gRPC server: a `grpc.aio` server with both services, on its port and UNIX socket.

Message limits, channel arguments, TLS (an `SSLConfig`, as `--ssl_config_file`
gives it) and `--grpc_socket_path` are set here; what each RPC does is in
servicer.py.
"""

import re
from typing import List

import grpc

from next_category.serving.apis import inference
from next_category.serving.apis.grpc import credentials
from next_category.serving.apis.grpc import health
from next_category.serving.apis.grpc import profiler
from next_category.serving.apis.grpc import servicer
from next_category.serving.observability import request_policy

# TensorFlow Serving sends messages up to 2 GiB.
_MAX_MESSAGE_BYTES = 2**31 - 1


# strings::safe_strto32: optional white space around an optionally signed decimal.
_INT32_TEXT = re.compile(r"\s*[+-]?\d+\s*")


def channel_arguments(text: str) -> List[tuple]:
  """`--grpc_channel_arguments` as gRPC server options, read as server.cc reads it.

  Items are split on `,`, then each on `=`; the value is passed as an int
  when it parses as an int32, else as a string (model_servers/server.cc:
  98-109, 391-403). Nothing is trimmed; in `k=v=w` the value is `v`. An
  item without `=` (or an empty one, as a trailing comma gives) makes
  TensorFlow Serving read past the end of a vector, which is undefined; it
  is refused here.

  Raises:
    ValueError: for an item that is not key=value.
  """
  arguments = []
  for item in text.split(",") if text else ():
    parts = item.split("=")
    if len(parts) < 2:
      raise ValueError(
        f"--grpc_channel_arguments: {item!r} is not key=value (the arguments are "
        "key=value items separated by commas, e.g. grpc.max_connection_age_ms=2000)."
      )
    key, value = parts[0], parts[1]
    if _INT32_TEXT.fullmatch(value) and -(2**31) <= int(value) < 2**31:
      arguments.append((key, int(value)))
    else:
      arguments.append((key, value))
  return arguments


def create(
  service: inference.InferenceService,
  policy: request_policy.RequestPolicy,
  max_request_bytes: int,
  max_concurrent_rpcs: int,
  grpc_channel_arguments: str = "",
  health_check: bool = False,
  enable_profiler: bool = False,
) -> grpc.aio.Server:
  """A gRPC server of both TensorFlow Serving services; call it on the server's event loop.

  Args:
    service: the data plane the services call.
    policy: access control, metrics, audit and request logs.
    max_request_bytes: larger request messages are refused.
    max_concurrent_rpcs: requests in progress before RESOURCE_EXHAUSTED.
    grpc_channel_arguments: `--grpc_channel_arguments`.
    health_check: also serve grpc.health.v1.Health
      (`--enable_grpc_healthcheck_service`).
    enable_profiler: also serve tensorflow.ProfilerService (`--enable_profiler`).

  Raises:
    ValueError: if `grpc_channel_arguments` is malformed.
  """
  options = [
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", max_request_bytes),
  ] + channel_arguments(grpc_channel_arguments)
  server = grpc.aio.server(
    options=options,
    maximum_concurrent_rpcs=max_concurrent_rpcs,
    # With access control on: credentials checked before a message is read.
    interceptors=credentials.interceptors(policy),
  )
  servicer.add_services(server, service, policy)
  if health_check:
    server.add_generic_rpc_handlers((health.handler(),))
  if enable_profiler:
    profiler.add_service(server, policy)
  return server


def _credentials(ssl_config, use_alts: bool):
  """server.cc `BuildServerCredentials`: ALTS, else TLS from an SSLConfig, else none."""
  if use_alts:
    return grpc.alts_server_credentials()
  if ssl_config is None:
    return None
  return grpc.ssl_server_credentials(
    [(ssl_config.server_key.encode(), ssl_config.server_cert.encode())],
    root_certificates=ssl_config.custom_ca.encode() or None,
    require_client_auth=ssl_config.client_verify,
  )


async def bind_and_start(
  server: grpc.aio.Server,
  host: str,
  port: int,
  socket_path: str = "",
  ssl_config=None,
  use_alts: bool = False,
) -> int:
  """Binds the port and the UNIX socket, starts serving, and returns the port bound.

  As server.cc:369-382: `port` 0 binds no TCP port; `socket_path` also serves
  gRPC on `unix:<socket_path>` (relative or absolute), with the same
  credentials.

  Args:
    server: from `create`.
    host: the address to bind the port on.
    port: the port; 0: none.
    socket_path: `--grpc_socket_path`; empty: none.
    ssl_config: an `SSLConfig` (server_config.load_ssl_config); None: plaintext.
    use_alts: `--use_alts_credentials`.

  Returns:
    the port (0 with none).

  Raises:
    RuntimeError: if the port or the socket cannot be bound.
  """
  credentials = _credentials(ssl_config, use_alts)
  addresses = []
  if port:
    addresses.append(f"{host}:{port}")
  if socket_path:
    addresses.append(f"unix:{socket_path}")
  bound = 0
  for address in addresses:
    if credentials is not None:
      result = server.add_secure_port(address, credentials)
    else:
      result = server.add_insecure_port(address)
    if not result:
      raise RuntimeError(f"Could not bind the gRPC address {address}.")
    if not address.startswith("unix:"):
      bound = result
  await server.start()
  return bound
