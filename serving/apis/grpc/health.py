"""grpc.health.v1.Health, as tensorflow_model_server serves it (--enable_grpc_healthcheck_service).

tensorflow_model_server turns on gRPC's default health service
(`grpc::EnableDefaultHealthCheckService`) and marks `ModelService` and
`PredictionService` SERVING (model_servers/server.cc:405-417); the overall
server (service "") is SERVING as in every gRPC default health service, and
an unknown service gets NOT_FOUND "service name unregistered" from Check and
SERVICE_UNKNOWN from Watch (grpc/src/cpp/server/health/
default_health_check_service.cc). The messages are declared here with the
package, names and field numbers of grpc/health/v1/health.proto, since
grpcio-health-checking is not installed.
"""

import asyncio

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

SERVICE = "grpc.health.v1.Health"
SERVING = 1
SERVICE_UNKNOWN = 3
# The services TensorFlow Serving marks SERVING, and the server's own ("").
_STATUSES = {"": SERVING, "ModelService": SERVING, "PredictionService": SERVING}


def _messages():
  F = descriptor_pb2.FieldDescriptorProto
  file = descriptor_pb2.FileDescriptorProto(
    name="serving/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
  )
  file.message_type.add(
    name="HealthCheckRequest",
    field=[F(name="service", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)],
  )
  response = file.message_type.add(
    name="HealthCheckResponse",
    field=[
      F(
        name="status",
        number=1,
        type=F.TYPE_ENUM,
        label=F.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
      )
    ],
  )
  response.enum_type.add(
    name="ServingStatus",
    value=[
      descriptor_pb2.EnumValueDescriptorProto(name=name, number=number)
      for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"))
    ],
  )
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file)
  return tuple(
    message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.health.v1.{name}"))
    for name in ("HealthCheckRequest", "HealthCheckResponse")
  )


HealthCheckRequest, HealthCheckResponse = _messages()


async def _check(request, context):
  status = _STATUSES.get(request.service)
  if status is None:
    await context.abort(grpc.StatusCode.NOT_FOUND, "service name unregistered")
  return HealthCheckResponse(status=status)


async def _watch(request, context):
  yield HealthCheckResponse(status=_STATUSES.get(request.service, SERVICE_UNKNOWN))
  # The statuses never change while the server runs: wait for the client to go.
  await asyncio.Event().wait()


def handler() -> grpc.GenericRpcHandler:
  """The Health service's handler, for `grpc.aio.Server.add_generic_rpc_handlers`."""
  return grpc.method_handlers_generic_handler(
    SERVICE,
    {
      "Check": grpc.unary_unary_rpc_method_handler(
        _check,
        request_deserializer=HealthCheckRequest.FromString,
        response_serializer=HealthCheckResponse.SerializeToString,
      ),
      "Watch": grpc.unary_stream_rpc_method_handler(
        _watch,
        request_deserializer=HealthCheckRequest.FromString,
        response_serializer=HealthCheckResponse.SerializeToString,
      ),
    },
  )
