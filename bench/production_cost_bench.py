"""Server CPU per request of each production feature: access control, audit log, request log.

    python -m bench.production_cost_bench [--rounds=10] [--requests=10000]
        [--baseline_tree=../wt-before]

On this shared 2-core machine a round's throughput moves by 10-15%, so
serving_bench's production rows need 20 rounds to tell a 5% loss; the CPU a
server spends on a fixed number of requests moves less and says where the cost
is. For each feature (and all three together), a server with it on and one
with everything off answer `--requests` gRPC Predicts (one example, batching
on, `--concurrency` streams from nghttp2's h2load) at the same time, so that
both see the same machine; their CPU is read from /proc: the server process
(every thread) and its children, the log writer processes (serving/observability/
log_writer.py). A feature's cost is the median over `--rounds` rounds of the
on-minus-off difference within a round. With `--baseline_tree`, that tree's
pair of servers runs in the same group, so before and after are measured side
by side. Writes bench/results/production_cost.json and prints a table.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

from bench import load
from bench import serving_bench
from next_category.serving import client as client_lib

RESULTS_PATH = os.path.join("bench", "results", "production_cost.json")
# The configurations measured against all off, by the features they turn on.
CONFIGS = {
  **{feature: (feature,) for feature in serving_bench.PRODUCTION_FEATURES},
  "all": serving_bench.PRODUCTION_FEATURES,
}
OFF = "off"
# Time for the log writers to take a run's last records (rounds of 250 ms).
_WRITERS_SECONDS = 0.6


def children_cpu_seconds(pid: int) -> float:
  """User and system CPU so far of the processes `pid` started that are still running."""
  total = 0.0
  for task in os.listdir(f"/proc/{pid}/task"):
    try:
      with open(f"/proc/{pid}/task/{task}/children") as f:
        children = f.read().split()
    except OSError:  # The thread ended.
      continue
    for child in children:
      try:
        total += load.process_cpu_seconds(int(child))
      except OSError:  # The child ended.
        pass
  return total


def _measure(server, body: str, concurrency: int, requests: int) -> Dict[str, float]:
  """µs of CPU per request of the server process and of its log writers over `requests` calls."""
  server_cpu, writers_cpu = load.process_cpu_seconds(server.pid), children_cpu_seconds(server.pid)
  start = time.perf_counter()
  serving_bench.run_h2load(server, body, concurrency, f"--requests={requests}")
  seconds = time.perf_counter() - start
  time.sleep(_WRITERS_SECONDS)
  server_cpu = load.process_cpu_seconds(server.pid) - server_cpu
  writers_cpu = children_cpu_seconds(server.pid) - writers_cpu
  return {
    "server_us": 1e6 * server_cpu / requests,
    "writers_us": 1e6 * writers_cpu / requests,
    "total_us": 1e6 * (server_cpu + writers_cpu) / requests,
    "requests_per_second": requests / seconds,
  }


def _at_once(function, arguments: Sequence) -> list:
  """`function(*a)` for each `a` of `arguments`, each on a thread of its own, all at once."""
  results = [None] * len(arguments)

  def run(index):
    results[index] = function(*arguments[index])

  threads = [threading.Thread(target=run, args=(i,)) for i in range(len(arguments))]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  return results


def run_benchmark(
  preset: str = "small",
  rounds: int = 10,
  requests: int = 10_000,
  concurrency: int = 32,
  baseline_tree: str = "",
  configs: Sequence[str] = tuple(CONFIGS),
) -> dict:
  """Measures each of `configs` against all off, on this tree (and `baseline_tree`)."""
  if shutil.which("h2load") is None:
    raise RuntimeError("h2load is needed: apt-get install nghttp2-client")
  trees = {serving_bench.THIS_TREE: serving_bench._REPO_ROOT}  # pylint: disable=protected-access
  if baseline_tree:
    trees[serving_bench.BASELINE_TREE] = os.path.abspath(baseline_tree)
  rows: Dict[str, Dict[str, List[dict]]] = {
    tree: {name: [] for name in (OFF, *configs)} for tree in trees
  }
  with tempfile.TemporaryDirectory(prefix="production_cost_") as workdir:
    base_path = os.path.join(workdir, "model")
    serving_bench.build_model(preset, base_path)
    request = client_lib.make_predict_request(
      serving_bench.serialized_examples(1), serving_bench.MODEL_NAME
    )
    body = serving_bench.write_grpc_body(request, os.path.join(workdir, "request.bin"))
    servers = {}
    try:
      for tree_name, tree in trees.items():
        for name in (OFF, *configs):
          # Each server's logs and files in a folder of its own.
          folder = os.path.join(workdir, tree_name, name)
          os.makedirs(folder)
          servers[tree_name, name] = serving_bench._Server(  # pylint: disable=protected-access
            base_path, True, os.path.join(folder, "server.log"), CONFIGS.get(name, ()), tree=tree
          )
      for index in range(rounds):
        # The order of the configurations turns from round to round.
        for name in configs[index % len(configs) :] + configs[: index % len(configs)]:
          group = [(tree, config) for tree in trees for config in (OFF, name)]
          warmup = max(requests // 5, 1)
          _at_once(
            serving_bench.run_h2load,
            [(servers[key], body, concurrency, f"--requests={warmup}") for key in group],
          )
          measured = _at_once(
            _measure, [(servers[key], body, concurrency, requests) for key in group]
          )
          for (tree, config), row in zip(group, measured, strict=True):
            rows[tree][config].append(dict(row, round=index, beside=name))
            print(
              f"round {index} {tree:8} {config:11} server {row['server_us']:6.1f} us, "
              f"writers {row['writers_us']:5.1f} us, {row['requests_per_second']:6.0f} req/s",
              flush=True,
            )
    finally:
      for server in servers.values():
        server.stop()
  return {
    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    "rounds": rounds,
    "requests": requests,
    "concurrency": concurrency,
    "baseline_tree": os.path.abspath(baseline_tree) if baseline_tree else None,
    "summary": {tree: _summary(rows[tree], configs) for tree in trees},
    "runs": rows,
  }


def _summary(rows: Dict[str, List[dict]], configs: Sequence[str]) -> dict:
  """Per configuration: all off's CPU, and the on-minus-off medians of the rounds' pairs (µs)."""
  summary = {OFF: {"total_us": round(statistics.median(r["total_us"] for r in rows[OFF]), 1)}}
  for name in configs:
    off = [r for r in rows[OFF] if r["beside"] == name]
    on = rows[name]
    extra = [a["total_us"] - b["total_us"] for a, b in zip(on, off, strict=True)]
    summary[name] = {
      "extra_total_us": round(statistics.median(extra), 1),
      "extra_total_us_rounds": [round(x, 1) for x in extra],
      "extra_server_us": round(
        statistics.median(a["server_us"] - b["server_us"] for a, b in zip(on, off, strict=True)), 1
      ),
      "writers_us": round(statistics.median(r["writers_us"] for r in on), 1),
      "total_us": round(statistics.median(r["total_us"] for r in on), 1),
    }
  return summary


def print_table(report: dict) -> None:
  print(
    f"\nCPU per request (µs; medians of {report['rounds']} rounds of {report['requests']} "
    f"gRPC Predicts, concurrency {report['concurrency']}, batching on)"
  )
  print(f"{'tree':8} {'features':11} {'on - off':>9} {'server':>8} {'writers':>8} {'all off':>8}")
  for tree, summary in report["summary"].items():
    off = summary[OFF]["total_us"]
    for name, row in summary.items():
      if name != OFF:
        print(
          f"{tree:8} {name:11} {row['extra_total_us']:+9.1f} {row['extra_server_us']:+8.1f} "
          f"{row['writers_us']:8.1f} {off:8.1f}"
        )


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="small", help="Model preset (default: %(default)s).")
  parser.add_argument("--rounds", type=int, default=10, help="Rounds (default: %(default)s).")
  parser.add_argument(
    "--requests", type=int, default=10_000, help="Requests per run (default: %(default)s)."
  )
  parser.add_argument(
    "--concurrency", type=int, default=32, help="Streams in flight (default: %(default)s)."
  )
  parser.add_argument(
    "--configs",
    default=",".join(CONFIGS),
    help="Features measured against all off, comma-separated (default: %(default)s).",
  )
  parser.add_argument(
    "--baseline_tree", default="", help="Another source tree, measured side by side."
  )
  args = parser.parse_args(argv)
  configs = [name for name in args.configs.split(",") if name]
  unknown = set(configs) - set(CONFIGS)
  if unknown:
    parser.error(f"--configs: unknown {sorted(unknown)}; choose from {list(CONFIGS)}")
  report = run_benchmark(
    args.preset, args.rounds, args.requests, args.concurrency, args.baseline_tree, configs
  )
  os.makedirs(os.path.dirname(RESULTS_PATH), exist_ok=True)
  with open(RESULTS_PATH, "w") as f:
    json.dump(report, f, indent=1)
  print_table(report)
  print(f"\nWrote {RESULTS_PATH}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
