"""Request errors with TensorFlow Serving's status codes, for gRPC and REST alike."""

import http
import re

import grpc
import tensorflow as tf

# tensorflow_serving/model_servers/http_server.cc ToHTTPStatusCode.
_HTTP_STATUS = {
  grpc.StatusCode.OK: http.HTTPStatus.OK,
  grpc.StatusCode.CANCELLED: 499,  # Client closed request (nginx's code).
  grpc.StatusCode.UNKNOWN: http.HTTPStatus.INTERNAL_SERVER_ERROR,
  grpc.StatusCode.INVALID_ARGUMENT: http.HTTPStatus.BAD_REQUEST,
  grpc.StatusCode.DEADLINE_EXCEEDED: http.HTTPStatus.GATEWAY_TIMEOUT,
  grpc.StatusCode.NOT_FOUND: http.HTTPStatus.NOT_FOUND,
  grpc.StatusCode.ALREADY_EXISTS: http.HTTPStatus.CONFLICT,
  grpc.StatusCode.PERMISSION_DENIED: http.HTTPStatus.FORBIDDEN,
  grpc.StatusCode.RESOURCE_EXHAUSTED: http.HTTPStatus.TOO_MANY_REQUESTS,
  grpc.StatusCode.FAILED_PRECONDITION: http.HTTPStatus.BAD_REQUEST,
  grpc.StatusCode.ABORTED: http.HTTPStatus.CONFLICT,
  grpc.StatusCode.OUT_OF_RANGE: http.HTTPStatus.BAD_REQUEST,
  grpc.StatusCode.UNIMPLEMENTED: http.HTTPStatus.NOT_IMPLEMENTED,
  grpc.StatusCode.INTERNAL: http.HTTPStatus.INTERNAL_SERVER_ERROR,
  grpc.StatusCode.UNAVAILABLE: http.HTTPStatus.SERVICE_UNAVAILABLE,
  grpc.StatusCode.DATA_LOSS: http.HTTPStatus.INTERNAL_SERVER_ERROR,
  grpc.StatusCode.UNAUTHENTICATED: http.HTTPStatus.UNAUTHORIZED,
}

_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
  """A request failed with a canonical status code and a message for the caller.

  Attributes:
    code: the `grpc.StatusCode`.
    message: the message returned to the client.
  """

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(f"{code.name}: {message}")
    self.code = code
    self.message = message

  @property
  def http_status(self) -> int:
    """The HTTP status TensorFlow Serving's REST API answers this error with."""
    return int(_HTTP_STATUS.get(self.code, http.HTTPStatus.INTERNAL_SERVER_ERROR))


def invalid_argument(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.NOT_FOUND, message)


def from_tf_error(error: tf.errors.OpError) -> ServingError:
  """Maps a TensorFlow runtime error to the same status, as TF Serving does.

  TensorFlow's error codes are the canonical codes gRPC uses, so an undecodable
  tf.Example stays INVALID_ARGUMENT with TensorFlow's own message.
  """
  code = _CODE_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN)
  # Keep the cause; drop the graph location and node traces (server-side detail).
  lines = []
  for line in error.message.split("\n"):
    line = line.strip()
    if not line or line.startswith(
      ("Graph execution error", "Detected at node", "[[", "<stack traces unavailable>", 'File "')
    ):
      continue
    lines.append(line.split(" [[", 1)[0].strip())
  message = " ".join(lines) or error.message
  # Eager errors wrap the cause in the function and op names.
  message = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", message)
  message = re.sub(r"\s*\[Op:[^\]]*\]$", "", message)
  return ServingError(code, message)


def http_status(code: grpc.StatusCode) -> int:
  """The HTTP status for a gRPC status code."""
  return int(_HTTP_STATUS.get(code, http.HTTPStatus.INTERNAL_SERVER_ERROR))


# Messages returned to clients are cut to this many characters: an error never
# echoes a large payload back.
MAX_CLIENT_MESSAGE_CHARS = 512
_TRACEBACK_LINE = re.compile(r'^\s*(Traceback \(most recent call last\)|File "|\^+$)')
_TRACEBACK_FRAME = re.compile(r'File "[^"\n]*", line \d+(?:, in \S+)?\s*')
# An absolute path with two or more components (/usr/lib/python3/x.py).
_PATH = re.compile(r"(?<![\w:/])/(?:[\w.@+-]+/)+[\w.@+-]*")


def client_message(message: str) -> str:
  """`message` as a client may see it: no stack trace, no file path, bounded length."""
  if "\n" in message:
    lines = [line for line in message.split("\n") if not _TRACEBACK_LINE.match(line)]
    text = " ".join(line.strip() for line in lines if line.strip())
  else:  # Kept as it is: some of TensorFlow Serving's messages end in a space.
    text = message
  text = _PATH.sub("<path>", _TRACEBACK_FRAME.sub("", text))
  if len(text) > MAX_CLIENT_MESSAGE_CHARS:
    cut = len(text) - MAX_CLIENT_MESSAGE_CHARS
    text = f"{text[:MAX_CLIENT_MESSAGE_CHARS]}... ({cut} more characters not shown)"
  return text


# Stand-ins for the base path while other paths are replaced (no path holds a NUL).
_UNDER_BASE_PATH = "\0base_path/\0"
_BASE_PATH = "\0base_path\0"


def without_paths(message: str, base_path: str = "") -> str:
  """`message` with no absolute file path: under `base_path` as `<base_path>/...`, else `<path>`.

  TensorFlow Serving's model status carries its loader's message, file paths
  and all (`Specified file path: /models/m/3`); this server's shows where
  under the model's base path, and nothing of the server's own directories.
  """
  if base_path:
    base_path = base_path.rstrip("/")
    message = message.replace(base_path + "/", _UNDER_BASE_PATH)
    message = re.sub(re.escape(base_path) + r"(?![\w@+-]|\.[\w.])", _BASE_PATH, message)
  message = _PATH.sub("<path>", message)
  return message.replace(_UNDER_BASE_PATH, "<base_path>/").replace(_BASE_PATH, "<base_path>")
