"""Load-generator pieces the serving benches share, without TensorFlow.

`bench/serving_bench.py` imports TensorFlow; `bench/rest_server_bench.py`
measures HTTP servers alone and should not pay for it, so both take the
keep-alive REST client and the CPU clock of a server process from here.
"""

import asyncio
import os
import socket
import time
from typing import List
from typing import Tuple


def process_cpu_seconds(pid: int) -> float:
  """User and system CPU of process `pid` so far (/proc/PID/stat)."""
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rest_load(
  port: int, path: str, body: bytes, concurrency: int, seconds: float
) -> Tuple[List[float], int]:
  """Closed-loop keep-alive clients POSTing `body` to `path` for `seconds`.

  Each of `concurrency` connections sends its next request when the previous
  answer arrives. Returns the latencies in seconds of the 200 answers and
  the number of other answers.
  """
  latencies, errors = [], 0
  head = (
    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
  ).encode()
  end = time.perf_counter() + seconds

  async def worker():
    nonlocal errors
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
      while (start := time.perf_counter()) < end:
        writer.write(head + body)
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
          if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        await reader.readexactly(length)
        if status_line.split(b" ")[1] == b"200":
          latencies.append(time.perf_counter() - start)
        else:
          errors += 1
    finally:
      writer.close()

  await asyncio.gather(*(worker() for _ in range(concurrency)))
  return latencies, errors
