"""A model server that speaks TensorFlow Serving's gRPC and REST APIs.

    python -m serving.server --model_name=next_category \\
        --model_base_path=artifacts/serving/next_category

Flags carry tensorflow_model_server's names and defaults, and the config files
(--model_config_file, --batching_parameters_file, --monitoring_config_file,
--ssl_config_file) its text formats, so the same command line and files work
with the real server (see serving/deploy/). This one runs where the real binary
cannot be installed, and in tests.

This module only parses the flags (config/flags.py), builds the server
(model_server.py), runs it until SIGINT or SIGTERM, and stops it.
"""

import logging
import signal
import sys
import threading
from typing import Optional
from typing import Sequence

from serving import model_server
from serving.config import flags
from serving.models import loader


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  options = flags.parse_flags(argv)
  try:
    server = model_server.ModelServer(options)
    stop_requested = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
      signal.signal(sig, lambda *_: stop_requested.set())
    server.start()
  except (ValueError, loader.NoServableVersionError, RuntimeError, OSError) as e:
    # As tensorflow_model_server: "Failed to start server", exit status 1.
    print(f"Failed to start server. Error: {e}", file=sys.stderr, flush=True)
    return 1
  print(
    f"Serving gRPC on {options.host}:{server.grpc_port}"
    + (f", REST on {options.host}:{server.rest_port}" if server.rest_port else ""),
    flush=True,
  )
  stop_requested.wait()
  logging.info("Shutting down")
  server.stop()
  return 0


if __name__ == "__main__":
  sys.exit(main())
