"""Benchmark: the default pipeline on 50,000, 1,000,000 and 5,000,000 generated examples.

For each size, generates the default dataset into its own data root (or
reuses one already there), runs the Beam runner as `make run` does into a
fresh output root (nothing cached), and samples the resident memory of the
runner and all its child processes (model servers, Beam workers) every
--sample_seconds. Per component: wall time (from ML Metadata, as
`bench.run_bench`) and the peak RSS of the process tree while it ran; per
run: wall time, peak RSS, seconds per example, the Evaluator's eval examples
per second, and top-1 / top-3 accuracy on the eval split. Writes
bench/results/scale.json after every size and prints a table.

Usage: python -m bench.scale_bench [--sizes 50000,1000000,5000000]
           [--work_dir DIR] [--keep_data] [BEAM ARGS...]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict
from typing import List
from typing import Optional
from typing import Tuple

import psutil

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RESULTS = os.path.join(_PROJECT_ROOT, "bench", "results")
_DEFAULT_SIZES = "50000,1000000,5000000"
_ACCURACY = "sparse_categorical_accuracy"
_TOP_3 = "top_3_accuracy"
_EXAMPLE_COUNT = "example_count"


class TreeMemorySampler:
  """Samples the summed RSS of a process and all its descendants in a thread.

  Args:
    pid: the root process.
    interval: seconds between samples.
  """

  def __init__(self, pid: int, interval: float):
    self.pid = pid
    self.interval = interval
    self.samples: List[Tuple[float, int]] = []  # (time.time(), bytes)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  def _run(self):
    try:
      root = psutil.Process(self.pid)
    except psutil.NoSuchProcess:
      return
    while not self._stop.is_set():
      total = 0
      try:
        processes = [root, *root.children(recursive=True)]
      except psutil.NoSuchProcess:
        return
      for process in processes:
        try:
          total += process.memory_info().rss
        except psutil.Error:
          pass  # Exited between listing and reading.
      self.samples.append((time.time(), total))
      self._stop.wait(self.interval)

  def peak(self, start: float = float("-inf"), end: float = float("inf")) -> Optional[int]:
    """The largest sample taken between `start` and `end` (seconds since the epoch)."""
    inside = [rss for t, rss in self.samples if start <= t <= end]
    return max(inside) if inside else None


def generate(data_root: str, num_examples: int) -> Optional[float]:
  """Writes span 1 of the default dataset unless `data_root` has a span; returns its seconds."""
  if os.path.isdir(os.path.join(data_root, "span-1")):
    return None
  start = time.perf_counter()
  subprocess.run(
    [
      sys.executable,
      "-m",
      "next_category.dataset.generate",
      f"--data_root={data_root}",
      "--span=1",
      f"--num_examples={num_examples}",
    ],
    cwd=_PROJECT_ROOT,
    env=_env(),
    check=True,
    capture_output=True,
  )
  return round(time.perf_counter() - start, 1)


def _env() -> Dict[str, str]:
  env = dict(os.environ, PYTHONPATH=_PROJECT_ROOT, TF_USE_LEGACY_KERAS="1")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


def _component_windows(output_root: str) -> Tuple[Dict[str, float], Dict[str, tuple], dict]:
  """Per component: seconds and (start, end) in epoch seconds; and the eval metrics."""
  # pylint: disable=g-import-not-at-top
  from ml_metadata.metadata_store import metadata_store
  from tfx import v1 as tfx

  from next_category.pipeline import configs
  from next_category.pipeline.reports import run_summary

  # pylint: enable=g-import-not-at-top
  connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
    os.path.join(output_root, "metadata.sqlite")
  )
  summary = run_summary.summarize(connection, configs.PIPELINE_NAME)
  store = metadata_store.MetadataStore(connection)
  executions = {
    e.id: e for e in store.get_executions_by_id([c.execution_id for c in summary.components])
  }
  seconds, windows = {}, {}
  for component in summary.components:
    execution = executions[component.execution_id]
    seconds[component.node_id] = round(component.seconds, 2)
    windows[component.node_id] = (
      execution.create_time_since_epoch / 1000.0,
      execution.last_update_time_since_epoch / 1000.0,
    )
  overall = dict(summary.slice_metrics).get("Overall", {})
  return seconds, windows, {**overall, "blessed": summary.blessed}


def run_size(num_examples: int, data_root: str, output_root: str, extra: List[str], interval):
  """Runs the pipeline on `data_root` once; returns its figures."""
  command = [
    sys.executable,
    "-m",
    "next_category.pipeline.run.beam_runner",
    f"--data_root={data_root}",
    f"--output_root={output_root}",
    *extra,
  ]
  log_path = output_root + ".console.log"
  start = time.perf_counter()
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, cwd=_PROJECT_ROOT, env=_env(), stdout=log, stderr=log)
    with TreeMemorySampler(process.pid, interval) as sampler:
      returncode = process.wait()
  wall = time.perf_counter() - start
  if returncode != 0:
    with open(log_path) as log:
      tail = log.read()[-3000:]
    raise RuntimeError(f"The run on {data_root} failed with exit code {returncode}:\n{tail}")
  seconds, windows, metrics = _component_windows(output_root)
  eval_examples = metrics.get(_EXAMPLE_COUNT)
  evaluator_seconds = seconds.get("Evaluator")
  return {
    "num_examples": num_examples,
    "wall_seconds": round(wall, 1),
    "microseconds_per_example": round(wall / num_examples * 1e6, 1),
    "peak_rss_mb": _mb(sampler.peak()),
    "components": {
      name: {"seconds": seconds[name], "peak_rss_mb": _mb(sampler.peak(*windows[name]))}
      for name in seconds
    },
    "eval_examples": eval_examples,
    "evaluator_examples_per_second": (
      round(eval_examples / evaluator_seconds) if eval_examples and evaluator_seconds else None
    ),
    "top_1": metrics.get(_ACCURACY),
    "top_3": metrics.get(_TOP_3),
    "blessed": metrics.get("blessed"),
    "load_average_after": [round(x, 2) for x in os.getloadavg()],
  }


def _mb(value: Optional[int]) -> Optional[float]:
  return None if value is None else round(value / 2**20, 1)


def table(results: List[dict]) -> str:
  """Per component seconds and peak RSS (MB), one column pair per size."""
  names = []
  for result in results:
    names += [n for n in result["components"] if n not in names]
  width = max(len(n) for n in names + ["evaluator examples/s"]) + 2
  header = f"{'':<{width}}" + "".join(
    f"{result['num_examples']:>12,} ex  {'':>10}" for result in results
  )
  lines = [header, f"{'':<{width}}" + "".join(f"{'s':>15}{'RSS MB':>11}" for _ in results)]
  for name in names:
    cells = []
    for result in results:
      component = result["components"].get(name)
      if component is None:
        cells.append(f"{'-':>15}{'-':>11}")
      else:
        rss = component["peak_rss_mb"]
        cells.append(f"{component['seconds']:>15.1f}{rss if rss is not None else '-':>11}")
    lines.append(f"{name:<{width}}" + "".join(cells))
  lines.append(
    f"{'whole run':<{width}}"
    + "".join(f"{r['wall_seconds']:>15.1f}{r['peak_rss_mb']:>11}" for r in results)
  )

  def row(label, key, fmt):
    values = [r.get(key) for r in results]
    cells = "".join(
      (f"{fmt.format(v):>15}" if v is not None else f"{'-':>15}") + f"{'':>11}" for v in values
    )
    lines.append(f"{label:<{width}}{cells}")

  row("us per example", "microseconds_per_example", "{:.1f}")
  row("evaluator examples/s", "evaluator_examples_per_second", "{:,}")
  row("top-1", "top_1", "{:.4f}")
  row("top-3", "top_3", "{:.4f}")
  return "\n".join(lines)


def _parse_sizes(text: str) -> List[int]:
  try:
    sizes = [int(s.replace("_", "")) for s in text.split(",") if s]
  except ValueError:
    raise ValueError(f"--sizes must be comma-separated example counts, got {text!r}.") from None
  if not sizes or any(s < 1000 for s in sizes):
    raise ValueError(f"--sizes must name at least one size of at least 1,000, got {text!r}.")
  return sizes


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--sizes", default=_DEFAULT_SIZES, help=f"Example counts to run (default {_DEFAULT_SIZES})."
  )
  parser.add_argument(
    "--work_dir",
    default=None,
    help="Where data-N/ and the runs' outputs go; data-N/ already there is reused "
    "(default: a temporary directory, removed afterwards unless --keep_data).",
  )
  parser.add_argument(
    "--keep_data", action="store_true", help="Keep the generated data and the runs' outputs."
  )
  parser.add_argument("--sample_seconds", type=float, default=0.5)
  parser.add_argument("--output", default=os.path.join(_RESULTS, "scale.json"))
  args, extra = parser.parse_known_args(argv)
  try:
    sizes = _parse_sizes(args.sizes)
  except ValueError as error:
    parser.error(str(error))
  stray = [a for a in extra if not a.startswith("--")]
  if stray:
    parser.error(f"unexpected arguments {stray}; Beam args must be --name=value.")
  work_dir = args.work_dir or tempfile.mkdtemp(prefix="scale_bench-")
  os.makedirs(work_dir, exist_ok=True)
  results = []
  try:
    for size in sizes:
      data_root = os.path.join(work_dir, f"data-{size}")
      generation_seconds = generate(data_root, size)
      output_root = os.path.join(work_dir, f"run-{size}-{int(time.time())}")
      result = run_size(size, data_root, output_root, extra, args.sample_seconds)
      result["generation_seconds"] = generation_seconds
      results.append(result)
      _write(args.output, results, extra)
      print(
        f"{size:,} examples: {result['wall_seconds']:.1f} s, peak RSS "
        f"{result['peak_rss_mb']} MB, top-1 {result['top_1']}, Evaluator "
        f"{result['evaluator_examples_per_second']} eval examples/s",
        flush=True,
      )
  finally:
    if not args.keep_data and not args.work_dir:
      shutil.rmtree(work_dir, ignore_errors=True)
  print(table(results))
  print(f"Wrote {args.output}")
  return 0


def _write(path: str, results: List[dict], beam_args: List[str]) -> None:
  """Writes the results so far (after every size, so a long benchmark keeps what it measured)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(
      {
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "beam_args": beam_args,
        "sizes": results,
      },
      f,
      indent=2,
    )


if __name__ == "__main__":
  sys.exit(main())
