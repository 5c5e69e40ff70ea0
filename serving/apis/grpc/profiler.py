"""`tensorflow.ProfilerService` on the server's gRPC port, as TensorFlow Serving registers it.

TensorFlow Serving adds TensorFlow's profiler service to its gRPC server
(`--enable_profiler`, tensorflow_serving/model_servers/server.cc:385-389), so
TensorBoard's "capture profile" and `tf.profiler.experimental.client.trace`
can trace the model server through its own port. TensorFlow's Python wheel
has no stubs for that service, and its own profiler server
(`tf.profiler.experimental.server.start`) listens on every interface of a
port of its own, with no way to choose the address: forwarding to it would
open a second, unauthenticated port to the network. So this is the service
itself, in Python, as TensorFlow's `ProfilerServiceImpl`
(tsl/profiler/rpc/profiler_service_impl.cc) does it: `Profile` runs an
in-process profiler session (TensorFlow's own, `_pywrap_profiler`) for the
request's duration, stopping early on a `Terminate` for its session, and
writes the XSpace to `<repository_root>/<session_id>/<host_name>.xplane.pb`
(':' in the file name replaced by '_'); `Monitor` is UNIMPLEMENTED, as there.

`Profile` makes the server write files under a directory the client names.
So, unlike TensorFlow Serving (where `--enable_profiler` defaults to true),
the service is off unless `--enable_profiler` is given; with access control
on, only a principal allowed every model may call it; and a session id or
host name that is not a single path component is refused.

The messages are declared here from TensorFlow's profiler_service.proto
(field numbers from tsl/profiler/protobuf/profiler_service.pb.h in the
wheel's headers), in a descriptor pool of their own.
"""

import asyncio
import logging
import os
import tempfile
import threading
import time
from typing import Optional

import grpc
import tensorflow as tf
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from tensorflow.python.profiler.internal import _pywrap_profiler
from tensorflow.tsl.profiler.protobuf import profiler_options_pb2
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from next_category.serving import status
from next_category.serving.observability import request_policy

PROFILER_SERVICE = "tensorflow.ProfilerService"
_XPLANE_SUFFIX = ".xplane.pb"
# ProfilerSession::DefaultOptions (tsl/profiler/lib/profiler_session.cc), used
# when a request's ProfileOptions has no version.
_DEFAULT_TRACER_LEVELS = {
  "host_tracer_level": 2,
  "device_tracer_level": 1,
  "python_tracer_level": 0,
}


def _message_classes():
  """ProfileRequest, ProfileResponse, TerminateRequest and TerminateResponse classes."""
  pool = descriptor_pool.DescriptorPool()
  options_file = descriptor_pb2.FileDescriptorProto()
  profiler_options_pb2.DESCRIPTOR.CopyToProto(options_file)
  pool.Add(options_file)
  service_file = descriptor_pb2.FileDescriptorProto(
    name="serving/tsl/profiler/protobuf/profiler_service.proto",
    package="tensorflow",
    syntax="proto3",
    dependency=[options_file.name],
  )
  field = descriptor_pb2.FieldDescriptorProto
  optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED
  messages = {
    "ProfileRequest": [
      ("duration_ms", 1, field.TYPE_UINT64, optional, None),
      ("max_events", 2, field.TYPE_UINT64, optional, None),
      ("tools", 3, field.TYPE_STRING, repeated, None),
      ("opts", 4, field.TYPE_MESSAGE, optional, ".tensorflow.ProfileOptions"),
      ("repository_root", 5, field.TYPE_STRING, optional, None),
      ("session_id", 6, field.TYPE_STRING, optional, None),
      ("host_name", 7, field.TYPE_STRING, optional, None),
      # 8, tool_options (a map), is kept as an unknown field.
    ],
    "ProfileToolData": [
      ("name", 1, field.TYPE_STRING, optional, None),
      ("data", 2, field.TYPE_BYTES, optional, None),
    ],
    "ProfileResponse": [
      ("tool_data", 6, field.TYPE_MESSAGE, repeated, ".tensorflow.ProfileToolData"),
      ("empty_trace", 7, field.TYPE_BOOL, optional, None),
    ],
    "TerminateRequest": [("session_id", 1, field.TYPE_STRING, optional, None)],
    "TerminateResponse": [],
  }
  for name, fields in messages.items():
    message = service_file.message_type.add(name=name)
    for field_name, number, kind, label, type_name in fields:
      added = message.field.add(name=field_name, number=number, type=kind, label=label)
      if type_name:
        added.type_name = type_name
  pool.Add(service_file)
  return {
    name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
    for name in ("ProfileRequest", "ProfileResponse", "TerminateRequest", "TerminateResponse")
  }


_MESSAGES = _message_classes()
ProfileRequest = _MESSAGES["ProfileRequest"]
ProfileResponse = _MESSAGES["ProfileResponse"]
TerminateRequest = _MESSAGES["TerminateRequest"]
TerminateResponse = _MESSAGES["TerminateResponse"]


def _tracer_levels(options) -> dict:
  """The profiler session's options (`ProfilerSession::GetOptions`: defaults without a version)."""
  if not options.version:
    return dict(_DEFAULT_TRACER_LEVELS)
  return {
    "host_tracer_level": options.host_tracer_level,
    "device_tracer_level": options.device_tracer_level,
    "python_tracer_level": options.python_tracer_level,
  }


def _single_component(value: str, what: str) -> None:
  if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
    raise status.invalid_argument(f"The profile {what} {value!r} is not a single path component.")


def is_empty(space: xplane_pb2.XSpace) -> bool:
  """No events on any line of any plane (tsl/profiler/utils/xplane_utils.cc `IsEmpty`)."""
  return not any(line.events for plane in space.planes for line in plane.lines)


class _Session:
  """One in-process TensorFlow profiler session, collected into an XSpace."""

  def __init__(self, levels: dict):
    self._logdir = tempfile.mkdtemp(prefix="profile_")
    self._session = _pywrap_profiler.ProfilerSession()
    self._session.start(self._logdir, levels)

  def collect(self) -> xplane_pb2.XSpace:
    """Stops the session and reads what it traced."""
    try:
      self._session.export_to_tb()
      space = xplane_pb2.XSpace()
      for root, _, files in os.walk(self._logdir):
        for name in files:
          if name.endswith(_XPLANE_SUFFIX):
            with open(os.path.join(root, name), "rb") as f:
              space.MergeFromString(f.read())
      return space
    finally:
      tf.io.gfile.rmtree(self._logdir)


def save_xspace(repository_root: str, session_id: str, host_name: str, space) -> str:
  """Writes `space` where TensorFlow's profiler service writes it; returns the path."""
  directory = os.path.join(repository_root, session_id)
  tf.io.gfile.makedirs(directory)
  path = os.path.join(directory, f"{host_name}{_XPLANE_SUFFIX}".replace(":", "_"))
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(space.SerializeToString())
  return path


class ProfilerServicer:
  """tensorflow.ProfilerService: Profile, Terminate, Monitor (see the module docstring).

  Args:
    policy: access control (with it on, only a principal allowed every model).
  """

  def __init__(self, policy: request_policy.RequestPolicy):
    self._policy = policy
    self._lock = threading.Lock()
    self._stopped = set()

  def _authorize(self, context) -> str:
    authorization = None
    for item in context.invocation_metadata() or ():
      if item.key == request_policy.AUTHORIZATION:
        authorization = item.value
    return self._policy.authorize_admin(authorization, "profile the server")

  async def Profile(self, request, context):
    try:
      principal = self._authorize(context)
      _single_component(request.session_id, "session id")
      _single_component(request.host_name, "host name")
    except status.ServingError as e:
      await context.abort(e.code, e.message)
    loop = asyncio.get_running_loop()
    try:
      session = await loop.run_in_executor(None, _Session, _tracer_levels(request.opts))
    except Exception as e:  # TensorFlow's status (e.g. another session running): INTERNAL.
      await context.abort(grpc.StatusCode.INTERNAL, str(e))
    logging.info(
      "Profiling for %d ms for %r into %s",
      request.opts.duration_ms,
      principal or "an anonymous caller",
      request.repository_root,
    )
    # ProfilerServiceImpl::Profile: sleep out the duration, checking for a
    # cancelled call or a Terminate of this session every millisecond.
    deadline = time.monotonic() + request.opts.duration_ms / 1e3
    try:
      while time.monotonic() < deadline and not self._take_stop(request.session_id):
        await asyncio.sleep(min(0.001, max(0.0, deadline - time.monotonic())))
    except asyncio.CancelledError:
      await loop.run_in_executor(None, session.collect)  # Ends the session.
      raise
    try:
      space = await loop.run_in_executor(None, session.collect)
    except Exception as e:
      await context.abort(grpc.StatusCode.INTERNAL, str(e))
    response = ProfileResponse(empty_trace=is_empty(space))
    space.hostnames.append(request.host_name)
    try:
      await loop.run_in_executor(
        None, save_xspace, request.repository_root, request.session_id, request.host_name, space
      )
    except (OSError, tf.errors.OpError) as e:
      await context.abort(grpc.StatusCode.INTERNAL, str(e))
    return response

  def _take_stop(self, session_id: str) -> bool:
    with self._lock:
      if session_id in self._stopped:
        self._stopped.discard(session_id)
        return True
      return False

  async def Terminate(self, request, context):
    try:
      self._authorize(context)
    except status.ServingError as e:
      await context.abort(e.code, e.message)
    with self._lock:
      self._stopped.add(request.session_id)
    return TerminateResponse()

  async def Monitor(self, request: Optional[bytes], context):
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "unimplemented.")

  def handler(self) -> grpc.GenericRpcHandler:
    """The service's handler, as a generated `add_ProfilerServiceServicer_to_server` would be."""
    unary = grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler(
      PROFILER_SERVICE,
      {
        "Profile": unary(
          self.Profile,
          request_deserializer=ProfileRequest.FromString,
          response_serializer=ProfileResponse.SerializeToString,
        ),
        "Terminate": unary(
          self.Terminate,
          request_deserializer=TerminateRequest.FromString,
          response_serializer=TerminateResponse.SerializeToString,
        ),
        "Monitor": unary(self.Monitor),
      },
    )


def add_service(server: grpc.aio.Server, policy: request_policy.RequestPolicy) -> None:
  """Registers tensorflow.ProfilerService on `server`."""
  server.add_generic_rpc_handlers((ProfilerServicer(policy).handler(),))
