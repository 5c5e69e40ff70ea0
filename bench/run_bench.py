"""Benchmark: `make run` end to end, per component, from a cold ML Metadata store.

Runs the pipeline runner as `make run` does (a new process, a fresh
OUTPUT_ROOT each time, so nothing is cached), several times, and reads each
component's time from ML Metadata. Prints the median per component, the
median wall time and the eval accuracy, and writes bench/results/run.json.

With --project_roots, runs several checkouts (e.g. the code before a change
and after it) in turn, round after round, so that the load of a shared
machine falls on all of them alike.

Usage: python -m bench.run_bench [--data_root data/default] [--runs 3]
           [--project_roots /path/old,/path/new]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict
from typing import List

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RESULTS = os.path.join(_PROJECT_ROOT, "bench", "results")
_ACCURACY = "sparse_categorical_accuracy"


def _summary(output_root: str) -> Dict[str, object]:
  # pylint: disable=g-import-not-at-top
  from tfx import v1 as tfx

  from next_category.pipeline import configs
  from next_category.pipeline.reports import run_summary

  # pylint: enable=g-import-not-at-top
  connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
    os.path.join(output_root, "metadata.sqlite")
  )
  summary = run_summary.summarize(connection, configs.PIPELINE_NAME)
  overall = dict(summary.slice_metrics).get("Overall", {})
  return {
    "components": {c.node_id: round(c.seconds, 2) for c in summary.components},
    "states": sorted({c.state for c in summary.components}),
    "accuracy": overall.get(_ACCURACY),
    "blessed": summary.blessed,
  }


def run_once(project_root: str, data_root: str, output_root: str, extra: List[str]) -> dict:
  """Runs the Beam runner of `project_root` once into `output_root`; returns its figures."""
  env = dict(os.environ, PYTHONPATH=project_root, TF_USE_LEGACY_KERAS="1")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  command = [
    sys.executable,
    "-m",
    "next_category.pipeline.run.beam_runner",
    f"--data_root={data_root}",
    f"--output_root={output_root}",
    *extra,
  ]
  start = time.perf_counter()
  result = subprocess.run(
    command, cwd=project_root, env=env, capture_output=True, text=True, check=False
  )
  wall = time.perf_counter() - start
  if result.returncode != 0:
    raise RuntimeError(
      f"The run of {project_root} failed with exit code {result.returncode}:\n"
      f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    )
  return {
    "wall_seconds": round(wall, 2),
    "console_lines": len(result.stdout.splitlines()),
    **_summary(output_root),
  }


def _median(values):
  values = [v for v in values if v is not None]
  return statistics.median(values) if values else None


def summarize(runs: List[dict]) -> dict:
  """Medians over runs of one checkout: wall time, each component, accuracy."""
  names = []
  for run in runs:
    names += [n for n in run["components"] if n not in names]
  return {
    "runs": len(runs),
    "wall_seconds": _median([r["wall_seconds"] for r in runs]),
    "components": {n: _median([r["components"].get(n) for r in runs]) for n in names},
    "accuracy": _median([r["accuracy"] for r in runs]),
  }


def table(labels: List[str], medians: List[dict]) -> str:
  """The per-component medians of each checkout side by side."""
  names = []
  for median in medians:
    names += [n for n in median["components"] if n not in names]
  width = max(len(n) for n in names + ["wall (process)"]) + 2
  lines = [f"{'median seconds':<{width}}" + "".join(f"{label:>14}" for label in labels)]

  def row(name, values, fmt="{:>14.1f}"):
    lines.append(
      f"{name:<{width}}" + "".join(fmt.format(v) if v is not None else f"{'-':>14}" for v in values)
    )

  for name in names:
    row(name, [m["components"].get(name) for m in medians])
  row("sum of components", [sum(v for v in m["components"].values() if v) for m in medians])
  row("wall (process)", [m["wall_seconds"] for m in medians])
  row("eval accuracy", [m["accuracy"] for m in medians], "{:>14.4f}")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_root", default=os.path.join(_PROJECT_ROOT, "data", "default"))
  parser.add_argument("--runs", type=int, default=3, help="Runs per checkout (median of these).")
  parser.add_argument(
    "--project_roots",
    default=_PROJECT_ROOT,
    help="Comma-separated checkouts to run in turn (default: this one).",
  )
  parser.add_argument("--output", default=os.path.join(_RESULTS, "run.json"))
  args, extra = parser.parse_known_args(argv)
  if args.runs < 1:
    parser.error(f"--runs must be at least 1, got {args.runs}.")
  data_root = os.path.abspath(args.data_root)
  if not os.path.isdir(data_root):
    parser.error(f"--data_root {data_root} does not exist; run `make data` first.")
  roots = [os.path.abspath(r) for r in args.project_roots.split(",") if r]
  runs: Dict[str, List[dict]] = {root: [] for root in roots}
  with tempfile.TemporaryDirectory(prefix="run_bench-") as scratch:
    for round_number in range(args.runs):
      for i, root in enumerate(roots):
        output_root = os.path.join(scratch, f"round{round_number}-checkout{i}")
        run = run_once(root, data_root, output_root, extra)
        runs[root].append(run)
        _write(args.output, data_root, roots, runs)
        components = ", ".join(f"{n} {v:.1f}" for n, v in run["components"].items() if v >= 0.5)
        print(
          f"round {round_number + 1}/{args.runs} {root}: {run['wall_seconds']:.1f} s, "
          f"accuracy {run['accuracy']}, {run['console_lines']} console lines ({components})",
          flush=True,
        )
  medians = _write(args.output, data_root, roots, runs)
  labels = [os.path.basename(root.rstrip("/")) or root for root in roots]
  print(table(labels, medians))
  print(f"Wrote {args.output}")
  return 0


def _write(path: str, data_root: str, roots: List[str], runs: Dict[str, List[dict]]) -> List[dict]:
  """Writes the results so far (after every run, so a long benchmark keeps what it measured)."""
  medians = [summarize(runs[root]) if runs[root] else None for root in roots]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(
      {
        "data_root": data_root,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "checkouts": {
          root: {"median": m, "runs": runs[root]} for root, m in zip(roots, medians, strict=True)
        },
      },
      f,
      indent=2,
    )
  return medians


if __name__ == "__main__":
  sys.exit(main())
