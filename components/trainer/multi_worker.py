"""A real MultiWorkerMirroredStrategy cluster of local worker processes.

On Kubernetes the platform sets TF_CONFIG and each worker runs the Trainer.
Locally, `run_local_cluster` plays the platform's part: it starts one process
per worker on loopback ports with a generated TF_CONFIG, so the same training
code path runs a genuine multi-worker cluster on one machine. A worker that
fails or a cluster that outlives its deadline ends every worker and raises a
clear error instead of hanging in a collective.

Each worker runs a training function named by dotted path, so this module
imports nothing from the Trainer module that calls it.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any
from typing import Dict
from typing import List

import portpicker

# How long to wait between checks on the workers.
_POLL_SECONDS = 0.5
# Lines of a failed worker's log quoted in the error.
_LOG_TAIL_LINES = 15


def cluster_spec(num_workers: int, host: str = "localhost") -> Dict[str, List[str]]:
  """A cluster of `num_workers` workers on free ports of `host`."""
  return {"worker": [f"{host}:{portpicker.pick_unused_port()}" for _ in range(num_workers)]}


def worker_dir(model_run_dir: str, task_id: int) -> str:
  """Where worker `task_id` keeps its log and, if not the chief, its model copy."""
  return os.path.join(model_run_dir, "workers", f"worker-{task_id}")


def _tail(path: str) -> str:
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-_LOG_TAIL_LINES:])
  except OSError:
    return "(no log)"


def _stop(processes) -> None:
  for process in processes:
    if process.poll() is None:
      process.kill()
  for process in processes:
    process.wait()


def run_local_cluster(
  train_fn: str, fn_args_dict: Dict[str, Any], num_workers: int, timeout_seconds: float
) -> None:
  """Trains with `num_workers` local worker processes and waits for all of them.

  Args:
    train_fn: dotted path of the function each worker calls with the FnArgs
      (`module.function`).
    fn_args_dict: the Trainer's FnArgs fields that `train_fn` needs
      (train_files, eval_files, train_steps, eval_steps, serving_model_dir,
      model_run_dir, schema_path, custom_config).
    num_workers: worker processes to start (>= 2).
    timeout_seconds: deadline for the whole cluster.

  Raises:
    ValueError: if `num_workers` < 2.
    RuntimeError: if a worker exits with an error (its log tail is quoted).
    TimeoutError: if the workers have not finished by the deadline.
  """
  if num_workers < 2:
    raise ValueError(f"A local cluster needs at least 2 workers, got {num_workers}.")
  model_run_dir = fn_args_dict["model_run_dir"]
  os.makedirs(model_run_dir, exist_ok=True)
  spec_path = os.path.join(model_run_dir, "worker_fn_args.json")
  with open(spec_path, "w") as f:
    json.dump(fn_args_dict, f)
  cluster = cluster_spec(num_workers)
  processes, logs = [], []
  try:
    for task_id in range(num_workers):
      directory = worker_dir(model_run_dir, task_id)
      os.makedirs(directory, exist_ok=True)
      env = dict(os.environ)
      env["TF_CONFIG"] = json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": task_id}}
      )
      logs.append(os.path.join(directory, "worker.log"))
      with open(logs[-1], "w") as log:
        processes.append(
          subprocess.Popen(
            [
              sys.executable,
              "-m",
              "next_category.components.trainer.multi_worker",
              f"--train_fn={train_fn}",
              f"--fn_args={spec_path}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
          )
        )
    deadline = time.monotonic() + timeout_seconds
    while any(p.poll() is None for p in processes):
      for task_id, process in enumerate(processes):
        if process.poll() not in (None, 0):
          raise RuntimeError(
            f"Trainer worker {task_id} of {num_workers} failed with exit code "
            f"{process.returncode}; the other workers were stopped. Last lines of "
            f"{logs[task_id]}:\n{_tail(logs[task_id])}"
          )
      if time.monotonic() > deadline:
        raise TimeoutError(
          f"Trainer workers did not finish within {timeout_seconds:.0f} s; all were "
          f"stopped. Logs: {', '.join(logs)}"
        )
      time.sleep(_POLL_SECONDS)
    for task_id, process in enumerate(processes):
      if process.returncode != 0:
        raise RuntimeError(
          f"Trainer worker {task_id} of {num_workers} failed with exit code "
          f"{process.returncode}. Last lines of {logs[task_id]}:\n{_tail(logs[task_id])}"
        )
  finally:
    _stop(processes)


def main(argv=None) -> int:
  """Entry point of one worker process (TF_CONFIG is set by the launcher)."""
  parser = argparse.ArgumentParser(description="Runs one Trainer worker of a local cluster.")
  parser.add_argument(
    "--train_fn", required=True, help="Dotted path of the training function, module.function."
  )
  parser.add_argument("--fn_args", required=True, help="JSON file of the Trainer's FnArgs.")
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  # Imported after the environment is set: TensorFlow reads it at import.
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top

  module_name, _, function_name = args.train_fn.rpartition(".")
  train_fn = getattr(importlib.import_module(module_name), function_name)
  with open(args.fn_args) as f:
    train_fn(tfx.components.FnArgs(**json.load(f)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
