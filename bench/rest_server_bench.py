"""Compares HTTP servers for the REST API: aiohttp (today's), its bare framework, a tree before.

    python -m bench.rest_server_bench [--concurrency=1,32] [--duration_seconds=5]
        [--rounds=3] [--baseline_tree=../wt-base]

Issue 21 asked for REST on a maintained asynchronous HTTP server, tornado or
aiohttp, picked by a side-by-side measurement against today's. This bench puts
the HTTP servers alone side by side, so that what differs is the server and
nothing else: each serves the same small API object (the JSON of a
one-example Predict request parsed, a fixed `{"predictions": ...}`
answered; no model), handed to the same number of pool threads, on loopback,
in a process of its own:

- `aiohttp`: `next_category.serving.apis.rest.http_server.RestServer`, the
  server `--rest_api_port` runs (aiohttp's low-level server), with its
  deadlines and caps;
- `aiohttp-web`: a bare `aiohttp.web` application on uvloop, one catch-all
  route, the API called on a pool thread (`run_in_executor`), with none of the
  limits: the floor of what aiohttp costs;
- with `--baseline_tree`, that tree's REST server, named for what it is:
  `tornado` (`RestServer` on tornado, up to the commit that moved REST onto
  aiohttp), or `before` (`serving.rest_api.RestServer`, the hand-written
  `http.server` + `selectors` server of trees such as 48bc47b).
  bench/source_tree.py imports it from that tree.

Each round runs every server once per client and concurrency, in turn, so a
machine whose speed drifts weighs on all alike; medians over the rounds are
compared. Clients: this process's asyncio keep-alive client (one connection
per concurrent client), and nghttp2's `h2load --h1` where it is installed
(`apt-get install nghttp2-client`), a C client that leaves the cores to the
server. Reports requests/s, p50/p99 latency (Python client) and the server's
CPU per request. Writes bench/results/rest_server.json and prints a table.
"""

import argparse
import asyncio
import concurrent.futures
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import numpy as np

RESULTS_PATH = os.path.join(os.path.dirname(__file__), "results", "rest_server.json")
_PATH = "/v1/models/next_category:predict"
_BODY = json.dumps(
  {
    "signature_name": "serving_default",
    "instances": [{"item_ids": [3, 17, 5, 230, 41], "user_segment": "new", "city_tier": "tier2"}],
  }
).encode()
# This tree's server; the bare framework; a baseline tree's (see the module docstring).
SERVERS = ("aiohttp", "aiohttp-web", "tornado", "before", "baseline")


class EchoApi:
  """The API every server serves: parses the request's JSON, answers a fixed prediction."""

  checks_credentials = False

  def refusal(self, method, path, authorization, peer, origin=""):
    return None

  def handle(self, method, path, body, authorization=None, peer="", origin=""):
    if method != "POST":
      return 200, "application/json", b'{"model_version_status": []}'
    instances = json.loads(body)["instances"]
    answer = {"predictions": [{"classes": ["category_1"], "scores": [0.5]} for _ in instances]}
    return 200, "application/json", json.dumps(answer).encode()


def _serve_rest_server(port: int, threads: int) -> None:
  # This tree's, or (on a baseline tree's PYTHONPATH) that tree's.
  from next_category.serving.apis.rest import http_server

  server = http_server.RestServer(EchoApi(), "127.0.0.1", port, num_threads=threads)
  server.start()


def _serve_before(port: int, threads: int) -> None:
  # The baseline tree's top-level package (before the next_category namespace),
  # found on its PYTHONPATH; by name, as it is not this tree's.
  rest_api = importlib.import_module("serving.rest_api")

  server = rest_api.RestServer(EchoApi(), "127.0.0.1", port, num_threads=threads)
  server.start()


def _serve_aiohttp_web(port: int, threads: int) -> None:
  import uvloop
  from aiohttp import web

  api = EchoApi()
  pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="rest")

  async def answer(request: web.Request) -> web.Response:
    body = await request.read()
    code, content_type, payload = await asyncio.get_running_loop().run_in_executor(
      pool,
      api.handle,
      request.method,
      request.path_qs,
      body,
      request.headers.get("Authorization"),
      request.remote or "",
      request.headers.get("Origin", ""),
    )
    return web.Response(status=code, body=payload, content_type=content_type)

  async def start() -> None:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()

  loop = uvloop.new_event_loop()
  loop.run_until_complete(start())
  loop.run_forever()


def serve(kind: str, port: int, threads: int) -> None:
  """Runs one server until killed (the subprocess's job)."""
  serve_kind = {"aiohttp-web": _serve_aiohttp_web, "before": _serve_before}
  serve_kind.get(kind, _serve_rest_server)(port, threads)
  while True:
    time.sleep(3600)


_BASELINE_KINDS = ("tornado", "before", "baseline")


def baseline_kind(tree: str) -> str:
  """What REST server `tree` has: "before" (hand-written), "tornado", or "baseline" (another).

  Raises:
    ValueError: if `tree` has no REST server this bench knows.
  """
  if os.path.isfile(os.path.join(tree, "serving", "rest_api.py")):
    return "before"
  path = os.path.join(tree, "serving", "apis", "rest", "http_server.py")
  if not os.path.isfile(path):
    raise ValueError(
      f"{tree} has neither serving/rest_api.py nor serving/apis/rest/http_server.py."
    )
  with open(path) as f:
    return "tornado" if "from tornado import" in f.read() else "baseline"


class _ServerProcess:
  """One server in a subprocess of this module, ready once its port answers."""

  def __init__(self, kind: str, threads: int, baseline_tree: str):
    self.kind = kind
    self.port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if kind in _BASELINE_KINDS:
      # That tree's packages; this file runs as a script, so that tree's own
      # `bench` package does not shadow this one.
      from bench import source_tree  # In this process only.

      cwd = os.path.abspath(baseline_tree)
      env["PYTHONPATH"] = source_tree.python_path(baseline_tree)
    self._log = tempfile.TemporaryFile()
    self.process = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), f"--serve={kind}", f"--port={self.port}"]
      + [f"--threads={threads}"],
      cwd=cwd,
      env=env,
      stdout=self._log,
      stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        self._log.seek(0)
        raise RuntimeError(f"The {kind} server exited: {self._log.read()[-2000:].decode()}")
      try:
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        return
      except OSError:
        time.sleep(0.1)
    self.close()
    raise RuntimeError(f"The {kind} server did not listen within 60 s.")

  def cpu_seconds(self) -> float:
    from bench import load  # In this process only: the servers run this file as a script.

    return load.process_cpu_seconds(self.process.pid)

  def close(self) -> None:
    self.process.kill()
    self.process.wait()
    self._log.close()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


async def _python_load(port: int, concurrency: int, seconds: float):
  from bench import load  # In this process only: the servers run this file as a script.

  latencies, errors = await load.rest_load(port, _PATH, _BODY, concurrency, seconds)
  return len(latencies), errors, latencies


def _h2load(port: int, concurrency: int, seconds: float):
  with tempfile.NamedTemporaryFile(suffix=".json") as body:
    body.write(_BODY)
    body.flush()
    result = subprocess.run(
      [
        "h2load",
        "--h1",
        f"-c{concurrency}",
        "-m1",
        f"-D{max(1, round(seconds))}",  # Whole seconds only.
        "-d",
        body.name,
        "-H",
        "Content-Type: application/json",
        f"http://127.0.0.1:{port}{_PATH}",
      ],
      capture_output=True,
      text=True,
      timeout=seconds + 60,
    )
  done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", result.stdout)
  codes = re.search(r"status codes: (\d+) 2xx", result.stdout)
  if not done or not codes:
    raise RuntimeError(f"h2load's output was not understood:\n{result.stdout}{result.stderr}")
  ok = int(codes.group(1))
  return ok, int(done.group(1)) - ok, []


def measure(server: _ServerProcess, client: str, concurrency: int, seconds: float, warmup: float):
  """One run: requests/s, latency and the server's CPU per request."""
  load = (
    (lambda s: asyncio.run(_python_load(server.port, concurrency, s)))
    if client == "python"
    else (lambda s: _h2load(server.port, concurrency, s))
  )
  if warmup:
    load(warmup)
  cpu, start = server.cpu_seconds(), time.perf_counter()
  ok, errors, latencies = load(seconds)
  elapsed, cpu = time.perf_counter() - start, server.cpu_seconds() - cpu
  row = {
    "server": server.kind,
    "client": client,
    "concurrency": concurrency,
    "requests_per_second": round(ok / elapsed, 1),
    "errors": errors,
    "server_cpu_ms_per_request": round(cpu * 1e3 / max(ok, 1), 3),
  }
  if latencies:
    ms = np.array(latencies) * 1e3
    row.update(p50_ms=round(float(np.percentile(ms, 50)), 2))
    row.update(p99_ms=round(float(np.percentile(ms, 99)), 2))
  return row


def _median_rows(runs: List[dict]) -> List[dict]:
  groups: Dict[tuple, List[dict]] = {}
  for run in runs:
    groups.setdefault((run["client"], run["concurrency"], run["server"]), []).append(run)
  rows = []
  for (client, concurrency, kind), group in groups.items():
    row = {"server": kind, "client": client, "concurrency": concurrency, "runs": len(group)}
    for field in ("requests_per_second", "p50_ms", "p99_ms", "server_cpu_ms_per_request"):
      values = [run[field] for run in group if field in run]
      if values:
        row[field] = round(float(np.median(values)), 3)
    row["errors"] = sum(run["errors"] for run in group)
    rows.append(row)
  return rows


def _print_table(rows: List[dict]) -> None:
  print(
    f"{'client':7} {'conc':>4} {'server':11} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'srv cpu ms/req':>14} {'errors':>6} runs"
  )
  for r in rows:
    print(
      f"{r['client']:7} {r['concurrency']:>4} {r['server']:11} {r['requests_per_second']:>8.0f} "
      f"{r.get('p50_ms', float('nan')):>7.2f} {r.get('p99_ms', float('nan')):>7.2f} "
      f"{r['server_cpu_ms_per_request']:>14.3f} {r['errors']:>6} {r['runs']}"
    )


def run_benchmark(
  kinds: Sequence[str],
  concurrencies: Sequence[int],
  clients: Sequence[str],
  seconds: float,
  warmup: float,
  rounds: int,
  threads: int,
  baseline_tree: str,
  output: str,
) -> dict:
  servers, runs = [], []
  try:
    for kind in kinds:
      servers.append(_ServerProcess(kind, threads, baseline_tree))
    for round_index in range(rounds):
      for client in clients:
        for concurrency in concurrencies:
          # Each round starts with another server, so none is always first.
          order = servers[round_index % len(servers) :] + servers[: round_index % len(servers)]
          for server in order:
            row = measure(server, client, concurrency, seconds, warmup)
            print(json.dumps(row), flush=True)
            runs.append(row)
  finally:
    for server in servers:
      server.close()
  rows = _median_rows(runs)
  report = {
    "servers": list(kinds),
    "threads": threads,
    "duration_seconds": seconds,
    "rounds": rounds,
    "load_average_after": os.getloadavg(),
    "runs": runs,
    "medians": rows,
  }
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w") as f:
    json.dump(report, f, indent=2)
  _print_table(rows)
  print(f"wrote {output}")
  return report


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m bench.rest_server_bench", description=__doc__.split("\n", 1)[0]
  )
  parser.add_argument("--concurrency", default="1,32", help="Client concurrencies.")
  parser.add_argument("--duration_seconds", type=float, default=5.0)
  parser.add_argument("--warmup_seconds", type=float, default=1.0)
  parser.add_argument("--rounds", type=int, default=3, help="Turns of every server (medians).")
  parser.add_argument(
    "--threads",
    type=int,
    default=8,
    help="Pool threads of every server (TensorFlow Serving's "
    "--rest_api_num_threads default on 2 cores).",
  )
  parser.add_argument(
    "--baseline_tree",
    default="",
    help="Also serve with this tree's REST server: tornado's (a worktree of a commit before "
    "aiohttp) or the hand-written one (serving/rest_api.py, e.g. 48bc47b).",
  )
  parser.add_argument("--output", default=RESULTS_PATH)
  parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
  parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.serve:
    serve(args.serve, args.port, args.threads)
    return 0
  kinds = ["aiohttp", "aiohttp-web"]
  if args.baseline_tree:
    try:
      kinds.append(baseline_kind(args.baseline_tree))
    except ValueError as e:
      parser.error(str(e))
  clients = ["python"] + (["h2load"] if shutil.which("h2load") else [])
  if "h2load" not in clients:
    print("h2load not found (apt-get install nghttp2-client): the Python client only.")
  run_benchmark(
    kinds,
    [int(c) for c in args.concurrency.split(",")],
    clients,
    args.duration_seconds,
    args.warmup_seconds,
    args.rounds,
    args.threads,
    args.baseline_tree,
    args.output,
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
