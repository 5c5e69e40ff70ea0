"""A model server that speaks TensorFlow Serving's gRPC and REST APIs.

    python -m next_category.serving.server --port=8500 --rest_api_port=8501 \\
        --model_name=next_category --model_base_path=/abs/path/next_category

The command line is tensorflow_model_server's (tensorflow_serving/model_servers/
main.cc, TensorFlow Serving 2.16): every flag with its name, type and default
(REST is off unless --rest_api_port is set), the config files in its text
formats, and its answers to a bad command line: a value that does not parse
or `--help` prints the usage to stdout and exits with status 255; an unknown
argument is reported with the usage and ignored; a failed start prints
`Failed to start server. Error: <CODE>: <message>` to stdout and exits with
255. So the same command line and files work with the real server (see
serving/deploy/). This one runs where the real binary cannot be installed,
and in tests.

This module only reads the command line (config/flags.py), builds the server
(model_server.py), runs it until SIGINT or SIGTERM, and stops it. A signal
that comes while it still waits for the first versions ends that wait at
once (exit status 0); TensorFlow Serving has no handler and dies of it.
"""

import logging
import signal
import sys
import threading
from typing import Optional
from typing import Sequence

import grpc

from next_category.serving import model_server
from next_category.serving import status
from next_category.serving.config import flags

# What the usage line names, where tensorflow_model_server prints its argv[0].
PROGRAM = "python -m next_category.serving.server"
# main.cc's `return -1`.
_FAILURE_EXIT_STATUS = 255


def _failure(error: BaseException) -> str:
  """A start-up failure as absl's `Status::ToString` writes it: `CODE: message`."""
  if isinstance(error, status.ServingError):
    return str(error)
  if isinstance(error, ValueError):
    return f"{grpc.StatusCode.INVALID_ARGUMENT.name}: {error}"
  return f"{grpc.StatusCode.UNKNOWN.name}: {error}"


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  command_line = flags.parse_command_line(sys.argv[1:] if argv is None else argv)
  if not command_line.ok:  # main.cc:307-311.
    for error in command_line.errors:
      logging.error("%s", error)
    sys.stdout.write(flags.usage(PROGRAM))
    sys.stdout.flush()
    return _FAILURE_EXIT_STATUS
  options = command_line.options
  if options.version:  # main.cc:318-322, before the unknown arguments are reported.
    sys.stdout.write(flags.version_text())
    sys.stdout.flush()
    return 0
  if command_line.unknown:  # main.cc:324-326: reported, then ignored.
    sys.stdout.write(f"unknown argument: {command_line.unknown[0]}\n{flags.usage(PROGRAM)}")
    sys.stdout.flush()
  server = None
  stop_requested = threading.Event()
  try:
    server = model_server.ModelServer(options)

    def request_stop(*_) -> None:
      # Also while `start` waits for the first versions (up to
      # --model_load_timeout_seconds, 60 s): Kubernetes kills after 30 s.
      stop_requested.set()
      server.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
      signal.signal(sig, request_stop)
    server.start()
  except (status.ServingError, ValueError, RuntimeError, OSError) as e:
    stopped = stop_requested.is_set()
    if stopped:
      logging.info("Stopped before serving: %s", e)
    else:
      # main.cc:333-337: on stdout, exit status 255.
      print(f"Failed to start server. Error: {_failure(e)}", flush=True)
    if server is not None:
      server.stop()
    return 0 if stopped else _FAILURE_EXIT_STATUS
  stop_requested.wait()
  logging.info("Shutting down")
  server.stop()
  return 0


if __name__ == "__main__":
  sys.exit(main())
