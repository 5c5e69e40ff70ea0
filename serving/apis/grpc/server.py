"""The gRPC server: a `grpc.aio` server with both services, bound to its port.

Message limits, channel arguments and TLS (an `SSLConfig`, as
`--ssl_config_file` gives it) are set here; what each RPC does is in
servicer.py.
"""

from typing import List

import grpc

from serving.apis import inference
from serving.apis.grpc import profiler
from serving.apis.grpc import servicer
from serving.observability import request_policy

# TensorFlow Serving sends messages up to 2 GiB.
_MAX_MESSAGE_BYTES = 2**31 - 1


def channel_arguments(text: str) -> List[tuple]:
  """`--grpc_channel_arguments` (`key=value,key=value`) as gRPC server options.

  Raises:
    ValueError: if an item is not key=value.
  """
  arguments = []
  for item in filter(None, (part.strip() for part in text.split(","))):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value.")
    arguments.append((key, int(value) if value.lstrip("-").isdigit() else value))
  return arguments


def create(
  service: inference.InferenceService,
  policy: request_policy.RequestPolicy,
  max_request_bytes: int,
  max_concurrent_rpcs: int,
  grpc_channel_arguments: str = "",
  enable_profiler: bool = False,
) -> grpc.aio.Server:
  """A gRPC server of both TensorFlow Serving services; call it on the server's event loop.

  Args:
    service: the data plane the services call.
    policy: access control, metrics, audit and request logs.
    max_request_bytes: larger request messages are refused.
    max_concurrent_rpcs: requests in progress before RESOURCE_EXHAUSTED.
    grpc_channel_arguments: `--grpc_channel_arguments`.
    enable_profiler: `--enable_profiler`: also serve tensorflow.ProfilerService.

  Raises:
    ValueError: if `grpc_channel_arguments` is malformed.
  """
  options = [
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", max_request_bytes),
  ] + channel_arguments(grpc_channel_arguments)
  server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs)
  servicer.add_services(server, service, policy)
  if enable_profiler:
    profiler.add_service(server, policy)
  return server


async def bind_and_start(server: grpc.aio.Server, address: str, ssl_config=None) -> int:
  """Binds `address` (`host:port`; port 0: any free one), starts serving, and returns the port.

  Args:
    server: from `create`.
    address: where to listen.
    ssl_config: an `SSLConfig` (server_config.load_ssl_config); None: plaintext.

  Raises:
    RuntimeError: if the port cannot be bound.
  """
  if ssl_config is not None:
    credentials = grpc.ssl_server_credentials(
      [(ssl_config.server_key.encode(), ssl_config.server_cert.encode())],
      root_certificates=ssl_config.custom_ca.encode() or None,
      require_client_auth=ssl_config.client_verify,
    )
    port = server.add_secure_port(address, credentials)
  else:
    port = server.add_insecure_port(address)
  if not port:
    raise RuntimeError(f"Could not bind the gRPC port {address}.")
  await server.start()
  return port
